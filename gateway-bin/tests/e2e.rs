//! The whole product over real sockets: two fake backends and the gateway in-process (and once
//! as real processes), with a configuration that mirrors the default.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_bin::app;
use gateway_bin::config::Source;
use gateway_bin::serve::ServedBody;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::*;

#[tokio::test]
async fn the_demo_topology_end_to_end() {
    let d = demo().await;
    let gw = d.gateway.addr;
    let (n1, n2) = (d.b1.name().to_owned(), d.b2.name().to_owned());

    // Round-robin alternation over the two backends, path stripped to the catch-all.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = fetch(gw, "/api/users?page=2").await;
        assert_eq!(r.status, StatusCode::OK);
        let j = json(&r);
        assert_eq!(j["path"], "/users");
        assert_eq!(j["query"], "page=2");
        seen.push(j["backend"].as_str().unwrap().to_owned());
    }
    assert_ne!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    assert!(seen.contains(&n1) && seen.contains(&n2));

    // /static goes to the first backend only, with the suffix as path.
    let r = fetch(gw, "/static/css/app.css").await;
    let j = json(&r);
    assert_eq!(
        (j["backend"].as_str().unwrap(), j["path"].as_str().unwrap()),
        (n1.as_str(), "/css/app.css")
    );
    let r = fetch(gw, "/static/").await;
    assert_eq!(json(&r)["path"], "/");

    // The admin gate.
    let r = fetch(gw, "/admin/dashboard").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        gw,
        get("/admin/dashboard")
            .header("x-admin-token", "wrong")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        gw,
        get("/admin/dashboard")
            .header("x-admin-token", "letmein")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(json(&r)["backend"], n2.as_str());
    assert_eq!(json(&r)["path"], "/dashboard");

    // 404, 405 with Allow.
    assert_eq!(fetch(gw, "/nothing").await.status, StatusCode::NOT_FOUND);
    let r = call(
        gw,
        Request::patch("/api/x")
            .header("host", "g")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, HEAD, POST, PUT, DELETE, OPTIONS");

    // X-Forwarded-* and the request id, at the backend and on the response.
    let r = call(
        gw,
        get("/api/who")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-request-id", "e2e-42")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    let h = &json(&r)["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "gateway.test");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"], "e2e-42");
    assert_eq!(r.headers["x-request-id"], "e2e-42");
    let r = fetch(gw, "/api/who").await;
    assert_eq!(
        r.headers["x-request-id"],
        json(&r)["headers"]["x-request-id"].as_str().unwrap()
    );

    // The index page, as text for curl.
    let r = fetch(gw, "/").await;
    let page = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        page.contains("/api/*path") && page.contains(&d.b1.addr().to_string()),
        "{page}"
    );
    let r = call(
        gw,
        get("/")
            .header("accept", "text/html")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    // A declared body over the limit.
    let r = call(
        gw,
        Request::post("/api/up")
            .header("host", "g")
            .header("content-length", "5000")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn faults_502_retry_504_sse_and_websocket() {
    let live = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("live"))
        .await
        .unwrap();
    let dead = testkit::upstream::Refusing::new();
    // api: one dead and one live target; static: only the dead one.
    let d = start_gateway(config(dead.addr(), live.addr())).await;
    for _ in 0..4 {
        let r = fetch(d.addr, "/api/x").await;
        assert_eq!(r.status, StatusCode::OK, "retried on the live target");
        assert_eq!(json(&r)["backend"], "live");
    }
    assert_eq!(
        fetch(d.addr, "/static/x").await.status,
        StatusCode::BAD_GATEWAY
    );

    // Server-sent events through the gateway.
    let r = fetch(d.addr, "/api/events?sse=3&interval_ms=10").await;
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(
        String::from_utf8_lossy(&r.body)
            .matches("data: event")
            .count(),
        3
    );

    // A WebSocket echo through the gateway (api, live target).
    let stream = TcpStream::connect(d.addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{}/api/ws", d.addr), stream)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("through the gateway")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("through the gateway")
    );
    ws.close(None).await.unwrap();

    // The api upstream answers within 300 ms or it is a 504 (the timeout counts as a
    // failure and takes the live target out for fail_timeout).
    let start = Instant::now();
    assert_eq!(
        fetch(d.addr, "/api/x?delay_ms=3000").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // Both targets are out now: their passive state is forgotten and the request tried, as
    // nginx does, rather than refused untried.
    let r = fetch(d.addr, "/api/x").await;
    assert_eq!(r.status, StatusCode::OK, "all down: reset and tried");
    assert_eq!(json(&r)["backend"], "live");
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let mut d = demo().await;
    let gw = d.gateway.addr;
    let in_flight = tokio::spawn(async move { fetch(gw, "/static/slow?delay_ms=400").await });
    // Wait until the request is being served, by watching the backend's side: poll the
    // gateway's index page until static shows a request in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = String::from_utf8(fetch(gw, "/").await.body.to_vec()).unwrap();
        if page
            .lines()
            .any(|l| l.contains("static") && l.contains("in flight 1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = d.gateway.stop.take().unwrap().send(());
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the accepted request completed");
    assert!(
        d.gateway.done.await.unwrap(),
        "every connection finished within the grace"
    );
    assert!(TcpStream::connect(gw).await.is_err(), "no longer accepting");
    drop(d.b2);
}

#[test]
fn config_errors_name_the_line_and_key() {
    let src = |text: &str| Source {
        name: "bad.toml".into(),
        text: text.into(),
    };
    let e = src("[server]\nlisten = [\"127.0.0.1:0\"]\nmax_body_bytes = \"lots\"\n")
        .parse()
        .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("max_body_bytes")),
        "{e}"
    );

    let text = "[upstreams.a]\ntargets = [\"http://127.0.0.1:1\"]\n\n[[routes]]\npath = \"/x\"\nupstream = \"nope\"\n";
    let s = src(text);
    let e = app::build::<ServedBody>(&s.parse().unwrap(), &s)
        .err()
        .unwrap();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(6), Some("upstream")),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("bad.toml:6: `upstream`: no upstream named `nope`"),
        "{e}"
    );

    let text = "[upstreams.a]\ntargets = [\"ftp://127.0.0.1:1\"]\n";
    let s = src(text);
    let e = app::build::<ServedBody>(&s.parse().unwrap(), &s)
        .err()
        .unwrap();
    assert_eq!(e.line, Some(2), "{e}");

    let text = "[upstreams.a]\ntargets = [\"http://127.0.0.1:1\"]\n\n[[routes]]\npath = \"/x/:a/:a\"\nupstream = \"a\"\n";
    let s = src(text);
    let e = app::build::<ServedBody>(&s.parse().unwrap(), &s)
        .err()
        .unwrap();
    assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("path")), "{e}");

    let s = src("[server]\nmax_header_bytes = 100\n");
    let e = s.parse().err().unwrap();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("max_header_bytes")),
        "{e}"
    );
}

#[tokio::test]
async fn the_real_binary_serves_a_config_file_and_exits_0_on_sigterm() {
    // config: --config, --check, server.listen, routes.path, routes.upstream, routes.auth

    let one = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("one"))
        .await
        .unwrap();
    let two = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("two"))
        .await
        .unwrap();
    let text = config(one.addr(), two.addr());
    let dir = tempdir("e2e");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    let exe = env!("CARGO_BIN_EXE_gateway");

    let check = std::process::Command::new(exe)
        .arg("--check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success());
    let table = String::from_utf8_lossy(&check.stdout);
    assert!(
        table.contains("/admin/*path") && table.contains("auth"),
        "{table}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = 5\n").unwrap();
    let out = std::process::Command::new(exe)
        .arg("--check")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml:2: `listen`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (mut child, addr) = start_binary(&file);
    let a = json(&fetch(addr, "/api/1").await)["backend"].clone();
    let b = json(&fetch(addr, "/api/2").await)["backend"].clone();
    assert_ne!(a, b, "round-robin across processes");
    let r = call(
        addr,
        get("/admin/x")
            .header("x-admin-token", "letmein")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(json(&r)["backend"], "two");

    assert!(child.signal("TERM"));
    let status = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the gateway exits on SIGTERM");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn http2_with_prior_knowledge_on_the_same_port() {
    let d = demo().await;
    let stream = TcpStream::connect(d.gateway.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get(format!("http://{}/api/h2", d.gateway.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.version(), http::Version::HTTP_2);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["path"], "/h2");
    }
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = demo().await;
    let mut stream = TcpStream::connect(d.gateway.addr).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let head = format!("GET /api/x HTTP/1.1\r\nhost: g\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut reply = vec![0u8; 64];
    let n = stream.read(&mut reply).await.unwrap();
    let text = String::from_utf8_lossy(&reply[..n]);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}
