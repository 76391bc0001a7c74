//! Limits under hostile clients: big and many headers, big bodies, slowloris, idle
//! connections and the connection cap.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits_config(up: SocketAddr, server: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
max_body_bytes = 1000
{server}

[upstreams.api]
targets = ["http://{up}"]

[[routes]]
path = "/api/*path"
methods = ["GET", "POST"]
upstream = "api"
"#
    )
}

async fn gateway(server: &str) -> (Gateway, fake_backend::Backend) {
    let b = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("b"))
        .await
        .unwrap();
    (start_gateway(limits_config(b.addr(), server)).await, b)
}

#[tokio::test]
async fn too_many_or_too_big_headers_get_431_and_the_connection_closes() {
    let (gw, _b) = gateway("max_header_bytes = 16384").await;
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "a".repeat(64 * 1024));
    for headers in [many, big] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!("GET /api/x HTTP/1.1\r\nhost: g\r\n{headers}\r\n");
        let _ = s.write_all(req.as_bytes()).await;
        let (text, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let (gw, _b) = gateway("").await;
    // Declared: refused before anything is read or forwarded.
    let (statuses, _) = raw_exchange(
        gw.addr,
        b"POST /api/x HTTP/1.1\r\nHost: g\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(statuses.first(), Some(&413));
    // Streamed without a length: cut at the limit.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /api/x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("400\r\n{}\r\n", "z".repeat(0x400));
    let _ = s.write_all(chunk.as_bytes()).await;
    let _ = s.write_all(chunk.as_bytes()).await;
    let (text, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // And the upstream was not blamed.
    let r = fetch(gw.addr, "/api/after").await;
    assert_eq!(r.status, http::StatusCode::OK);
}

#[tokio::test]
async fn a_slowloris_client_is_closed_at_the_header_read_timeout() {
    let (gw, _b) = gateway("header_read_timeout_ms = 400\nidle_timeout_ms = 60000").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    // One byte every 50 ms, never finishing the head: the gateway must not wait forever.
    let head = b"GET /api/x HTTP/1.1\r\nhost: g\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 256];
        // The pace of a slow client, and the check whether the gateway gave up.
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    let elapsed = start.elapsed();
    assert!(closed, "still open after {elapsed:?} of trickling");
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn idle_http1_connections_close_at_the_idle_timeout() {
    let (gw, _b) = gateway("header_read_timeout_ms = 10000\nidle_timeout_ms = 300").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let (text, at) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let idle = at - start;
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test]
async fn idle_http2_connections_get_goaway_at_the_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    let (gw, _b) = gateway("idle_timeout_ms = 300").await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/api/h2", gw.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    let _ = res.into_body().collect().await.unwrap();
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection stayed open");
    let idle = start.elapsed();
    assert!(idle >= Duration::from_millis(200), "{idle:?}");
}

#[tokio::test]
async fn busy_connections_are_not_idle() {
    use http_body_util::{BodyExt, Empty};
    // A response streaming for longer than the idle timeout keeps its connection alive:
    // the next request on it is still served.
    let (gw, _b) = gateway("idle_timeout_ms = 300").await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "g")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let res = sender
        .send_request(get("/api/events?sse=6&interval_ms=100"))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body)
            .matches("data: event")
            .count(),
        6
    );
    let res = sender.send_request(get("/api/after")).await;
    assert_eq!(
        res.expect("the connection was kept").status(),
        http::StatusCode::OK
    );
}

#[tokio::test]
async fn max_connections_holds_new_ones_without_stalling_accepted_ones() {
    let (gw, _b) = gateway("max_connections = 2\nidle_timeout_ms = 60000").await;
    let connect = || async {
        let s = TcpStream::connect(gw.addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
        (sender, tokio::spawn(conn))
    };
    let send = |sender: &mut hyper::client::conn::http1::SendRequest<
        http_body_util::Empty<bytes::Bytes>,
    >| {
        sender.send_request(
            http::Request::get("/api/x")
                .header("host", "g")
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
    };
    let (mut a, a_conn) = connect().await;
    let (mut b, _b_conn) = connect().await;
    assert_eq!(send(&mut a).await.unwrap().status(), 200);
    assert_eq!(send(&mut b).await.unwrap().status(), 200);

    // The third connects (the kernel's backlog) but is not served while two are open.
    let (mut c, _c_conn) = connect().await;
    let mut third = Box::pin(send(&mut c));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection was served beyond max_connections = 2"
    );
    // The accepted ones keep working meanwhile.
    for _ in 0..3 {
        assert_eq!(send(&mut a).await.unwrap().status(), 200);
        assert_eq!(send(&mut b).await.unwrap().status(), 200);
    }
    // One closes: the waiting one is served.
    drop(a);
    let _ = a_conn.await;
    let res = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(res.status(), 200);
}
