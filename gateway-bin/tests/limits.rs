//! Limits under hostile clients: big and many headers, big bodies, slowloris, idle
//! connections and the connection cap.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::wire::{Message, Wire};
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
    // config: server.max_header_bytes

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
    // config: server.header_read_timeout_ms

    // config: server.idle_park_after_ms
    // Also with a parking wait shorter than the client's pace: a connection with part of a
    // head read is never parked, and its clock runs on.
    for park in ["", "idle_park_after_ms = 20"] {
        let (gw, _b) = gateway(&format!(
            "header_read_timeout_ms = 400\nidle_timeout_ms = 60000\n{park}"
        ))
        .await;
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
        assert!(closed, "{park}: still open after {elapsed:?} of trickling");
        assert!(
            elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
            "{park}: {elapsed:?}"
        );
        assert_eq!(parked(gw.admin_addr).await, 0, "{park}");
    }
}

#[tokio::test]
async fn a_kept_alive_connection_waits_for_its_next_request_within_the_header_read_timeout() {
    // config: server.header_read_timeout_ms, server.inline_http1
    // As hyper (behind its protocol detection) does, on both HTTP/1.1 servers: a new
    // connection's clock starts at its first byte; after a response, the wait for the next
    // request is within the header-read timeout, and the connection closes unanswered.
    // Parked too (the inline server's), before its first request and after its response: the
    // wait resumed keeps its clock.
    for server in ["", "inline_http1 = false", "idle_park_after_ms = 50"] {
        let (gw, _b) = gateway(&format!(
            "header_read_timeout_ms = 400\nidle_timeout_ms = 60000\n{server}"
        ))
        .await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        // Quiet for longer than the timeout before the first byte: still served.
        let mut probe = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(700), s.read(&mut probe)).await;
        assert!(early.is_err(), "{server}: closed before its first request");
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: g\r\n\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        let (text, at) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{server}: {text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{server}: {text}");
        let waited = at - start;
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
            "{server}: {waited:?}"
        );
    }
}

#[tokio::test]
async fn idle_http1_connections_close_at_the_idle_timeout() {
    // config: server.idle_timeout_ms

    // Parked or not.
    for park in ["", "idle_park_after_ms = 50"] {
        let (gw, _b) = gateway(&format!(
            "header_read_timeout_ms = 10000\nidle_timeout_ms = 300\n{park}"
        ))
        .await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: g\r\n\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        let (text, at) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{park}: {text}");
        let idle = at - start;
        assert!(
            idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
            "{park}: {idle:?}"
        );
    }
}

/// `gateway_client_connections_parked`, from the admin listener's metrics.
async fn parked(admin: SocketAddr) -> u64 {
    let text = fetch(admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("gateway_client_connections_parked "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no parked gauge in {text}"))
}

/// Waits until `count` connections are parked, at most 5 s (the gauge has nothing to wake on:
/// this looks every 10 ms).
async fn until_parked(admin: SocketAddr, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = parked(admin).await;
        if now == count {
            return;
        }
        assert!(Instant::now() < deadline, "{now} parked, not {count}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a GET for `path` on `w` and reads its response (at most 5 s), leaving the
/// connection open.
async fn get_on(w: &mut Wire, path: &str) -> Message {
    w.send(format!("GET {path} HTTP/1.1\r\nHost: g\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), w.read_response("GET"))
        .await
        .unwrap_or_else(|_| panic!("no response to {path} within 5 s"))
        .unwrap()
}

#[tokio::test]
async fn idle_keep_alive_connections_are_parked_and_picked_up_where_they_were() {
    // config: server.idle_park_after_ms
    let (gw, _b) = gateway("idle_park_after_ms = 50").await;
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut w = Wire::connect(gw.addr).await.unwrap();
        let answer = get_on(&mut w, &format!("/api/first/{i}")).await;
        assert_eq!(answer.head.status(), 200, "{answer:?}");
        conns.push(w);
    }
    until_parked(gw.admin_addr, 20).await;
    // Each answers its next request on the same socket, and is parked again after it.
    for (i, w) in conns.iter_mut().enumerate() {
        let answer = get_on(w, &format!("/api/again/{i}")).await;
        assert_eq!(answer.head.status(), 200, "{answer:?}");
        let text = answer.text();
        assert!(text.contains(&format!("\"path\":\"/again/{i}\"")), "{text}");
    }
    until_parked(gw.admin_addr, 20).await;
    // A client that closes a parked connection: it is gone from the table and the counts.
    drop(conns.pop());
    // One that half-closes it (its FIN, reading on): the gateway closes its side.
    let mut half = conns.pop().unwrap();
    half.stream().shutdown().await.unwrap();
    let (rest, closed) = half.read_to_close(Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "{closed} {rest:?}");
    until_parked(gw.admin_addr, 18).await;
    let open = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("gateway_client_connections_open{protocol=\"http1\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    // (The metrics request's own connection is not an HTTP/1.1 one of this listener.)
    while open(&fetch(gw.admin_addr, "/metrics").await.text()) != 18 {
        assert!(
            Instant::now() < deadline,
            "closed parked connections still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Pipelined requests sent at once to a parked connection: both answered, in order.
    let w = &mut conns[0];
    w.send(b"GET /api/p1 HTTP/1.1\r\nHost: g\r\n\r\nGET /api/p2 HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for path in ["/p1", "/p2"] {
        let answer = tokio::time::timeout(Duration::from_secs(5), w.read_response("GET"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.head.status(), 200, "{answer:?}");
        let text = answer.text();
        assert!(text.contains(&format!("\"path\":\"{path}\"")), "{text}");
    }
    assert!(w.closed_within(Duration::from_secs(5)).await);
    // Shutdown: the parked ones are picked up and finish at once.
    assert!(gw.shutdown().await, "connections outlived the grace");
    for w in &mut conns[1..] {
        let (rest, closed) = w.read_to_close(Duration::from_secs(5)).await;
        assert!(closed && rest.is_empty(), "{closed} {rest:?}");
    }
}

#[tokio::test]
async fn a_parked_connection_still_closes_at_the_header_read_timeout() {
    // config: server.idle_park_after_ms
    let (gw, _b) = gateway("header_read_timeout_ms = 600\nidle_park_after_ms = 50").await;
    let mut w = Wire::connect(gw.addr).await.unwrap();
    let answer = get_on(&mut w, "/api/x").await;
    let answered = Instant::now();
    assert_eq!(answer.head.status(), 200, "{answer:?}");
    until_parked(gw.admin_addr, 1).await;
    let (rest, closed) = w.read_to_close(Duration::from_secs(5)).await;
    let waited = answered.elapsed();
    assert!(closed && rest.is_empty(), "{closed} {rest:?}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    until_parked(gw.admin_addr, 0).await;
}

#[tokio::test]
async fn idle_http2_connections_get_goaway_at_the_idle_timeout() {
    // A well-behaved client, frame by frame: it acknowledges SETTINGS and PINGs, makes one
    // request, then stays quiet. The gateway must say GOAWAY at the idle timeout and close.
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    let (gw, _b) = gateway("idle_timeout_ms = 300").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // GET /api/h2 with HPACK's static table: :method GET, :scheme http, :path literal,
    // :authority literal.
    let mut headers = vec![0x82, 0x86, 0x04, 7];
    headers.extend_from_slice(b"/api/h2");
    headers.extend_from_slice(&[0x01, 1, b'g']);
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(1, 0x05, 1, &headers)); // HEADERS, END_STREAM | END_HEADERS
    s.write_all(&hello).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let mut goaway_at = None;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                seen.push(kind);
                match kind {
                    SETTINGS if flags & 1 == 0 => {
                        let _ = s.write_all(&frame(SETTINGS, 1, 0, &[])).await;
                    }
                    PING if flags & 1 == 0 => {
                        let _ = s.write_all(&frame(PING, 1, 0, &payload)).await;
                    }
                    GOAWAY => goaway_at = goaway_at.or(Some(start.elapsed())),
                    _ => {}
                }
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the HTTP/2 connection stayed open: frames {seen:?}"
    );
    assert!(seen.contains(&1), "no response HEADERS: {seen:?}");
    let goaway = goaway_at.unwrap_or_else(|| panic!("closed without GOAWAY: {seen:?}"));
    assert!(
        goaway >= Duration::from_millis(250),
        "GOAWAY after {goaway:?}"
    );
    // Acknowledged, the graceful close completes without the hard close's grace.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
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
    // config: server.max_connections

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
