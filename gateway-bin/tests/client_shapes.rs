//! The client half of the shape matrix: the real gateway facing clients that behave the way
//! real ones do (HTTP/1.0, pipelining, `Expect: 100-continue`, half-close, bodies on GET, a
//! reader that stops, an abort mid-response, HTTP/2 with bodies, many streams, cancels,
//! oversized headers, shutdown, a silent HTTP/2 client). Each checks what the client got and
//! what the upstream saw.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full, StreamBody};
use testkit::upstream::{Conn, Upstream};
use testkit::wire::{self, Message, Wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

fn config(up: &Upstream, server: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
max_body_bytes = 100000
{server}

[upstreams.up]
targets = ["{}"]
response_timeout_ms = 2000

[[routes]]
path = "/u/*path"
methods = ["*"]
upstream = "up"
"#,
        up.url()
    )
}

/// `METHOD /path len=N chunked=B`: what the upstream got.
fn echo(req: &Message) -> Vec<u8> {
    wire::fixed(
        200,
        &format!(
            "{} {} len={} chunked={}",
            req.head.method(),
            req.head.target(),
            req.body.len(),
            req.chunked
        ),
    )
}

async fn echo_upstream() -> Upstream {
    Upstream::serving(echo).await
}

async fn rig(server: &str) -> (Gateway, Upstream) {
    let up = echo_upstream().await;
    let gw = start_gateway(config(&up, server)).await;
    (gw, up)
}

#[tokio::test]
async fn http10_without_keep_alive_gets_one_response_and_a_close() {
    let (gw, up) = rig("").await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    c.send(b"GET /u/old HTTP/1.0\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let res = c.read_response("GET").await.unwrap();
    assert_eq!(res.head.status(), 200);
    assert_eq!(res.text(), "GET /old len=0 chunked=false");
    assert!(c.closed_within(Duration::from_secs(5)).await, "not closed");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn http10_keep_alive_is_honoured() {
    let (gw, up) = rig("").await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    for i in 0..3 {
        let req = format!("GET /u/{i} HTTP/1.0\r\nHost: g\r\nConnection: keep-alive\r\n\r\n");
        c.send(req.as_bytes()).await.unwrap();
        let res = c.read_response("GET").await.unwrap();
        assert_eq!(res.text(), format!("GET /{i} len=0 chunked=false"));
        assert_eq!(
            res.head.header("connection").map(str::to_ascii_lowercase),
            Some("keep-alive".into())
        );
    }
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    // Both HTTP/1.1 servers: the inline one and hyper alone.
    // config: server.inline_http1
    for server in ["", "inline_http1 = false"] {
        pipelined(server).await;
    }
}

async fn pipelined(server: &str) {
    let (gw, up) = rig(server).await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    let batch: String = (1..=4)
        .map(|i| format!("GET /u/p{i} HTTP/1.1\r\nHost: g\r\n\r\n"))
        .collect();
    c.send(batch.as_bytes()).await.unwrap();
    for i in 1..=4 {
        let res = c.read_response("GET").await.unwrap();
        assert_eq!(res.text(), format!("GET /p{i} len=0 chunked=false"));
    }
    assert_eq!(up.requests().len(), 4);
}

#[tokio::test]
async fn a_request_that_crosses_a_graceful_close_meets_an_end_of_stream_not_a_reset() {
    // A client reusing a kept-alive connection can send its next request just as the gateway
    // closes it (shutdown, idle timeout). Closing a socket with bytes unread makes the kernel
    // answer with a reset, which can also destroy a response the client has not read yet
    // (RFC 9112 9.6). The gateway lingers as nginx does: its FIN first, then it reads and
    // drops what still comes, so the client sees an answer or an end of stream, never a reset.
    let (gw, _up) = rig("").await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    c.send(b"GET /u/a HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_response("GET").await.unwrap().head.status(), 200);
    // The next request is on its way as the gateway is told to stop.
    c.stream()
        .write_all(b"GET /u/b HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let stopping = tokio::spawn(gw.shutdown());
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), c.stream().read_to_end(&mut got)).await;
    let Ok(end) = end else {
        panic!("the connection did not end")
    };
    assert!(
        end.is_ok(),
        "{end:?} after {:?}",
        String::from_utf8_lossy(&got)
    );
    // No reset came after the end of stream either (it would have made this write fail):
    // the gateway was still reading and dropping what the client sent.
    let more = c.stream().write_all(b"GET /u/c HTTP/1.1\r\n\r\n").await;
    assert!(more.is_ok(), "{more:?}");
    drop(c);
    assert!(stopping.await.unwrap(), "the connection did not finish");
}

#[tokio::test]
async fn expect_100_continue_gets_its_interim_response_then_the_body_goes_through() {
    let (gw, up) = rig("").await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    c.send(
        b"POST /u/upload HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = c.read_response("POST").await.unwrap();
    assert_eq!(interim.head.status(), 100);
    c.send(b"hello").await.unwrap();
    let res = c.read_response("POST").await.unwrap();
    assert_eq!(res.text(), "POST /upload len=5 chunked=false");
    assert_eq!(up.requests()[0].request.body, b"hello");
}

#[tokio::test]
async fn a_client_that_shuts_its_side_abandons_its_request_and_blames_nobody() {
    // As nginx and Envoy: an end of stream from the client before its response means a
    // client that gave up (curl's Ctrl-C closes with FIN), so the upstream exchange is
    // dropped rather than left running for nobody. Both HTTP/1.1 servers do so.
    testkit::logs::capture();
    for (server, id) in [
        ("", "half-closed"),
        ("inline_http1 = false", "half-closed-hyper"),
    ] {
        half_closed(server, id).await;
    }
}

async fn half_closed(server: &str, id: &str) {
    let up = Upstream::silent().await;
    let gw = start_gateway(config(&up, server)).await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    let req = format!("GET /u/half HTTP/1.1\r\nHost: g\r\nX-Request-Id: {id}\r\n\r\n");
    c.send(req.as_bytes()).await.unwrap();
    up.wait_requests(1, Duration::from_secs(10)).await;
    c.stream().shutdown().await.unwrap();
    up.wait(
        "the upstream exchange to be dropped",
        Duration::from_secs(10),
        |u| u.open() == 0,
    )
    .await;
    let (_, closed) = c.read_to_close(Duration::from_secs(10)).await;
    assert!(closed);
    let lines: Vec<String> = testkit::logs::lines_with(&format!("request_id={id} "))
        .into_iter()
        .filter(|l| l.contains("access_log"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("status=499"), "{lines:?}");
    assert_eq!(gw.health("up")[0].failures, 0);
}

#[tokio::test]
async fn request_bodies_without_a_length_reach_the_upstream_whatever_the_method() {
    let (gw, up) = rig("").await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    for method in ["GET", "POST", "DELETE", "OPTIONS"] {
        let req = format!(
            "{method} /u/search HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        c.send(req.as_bytes()).await.unwrap();
        let res = c.read_response(method).await.unwrap();
        assert_eq!(
            res.text(),
            format!("{method} /search len=5 chunked=true"),
            "{method}"
        );
    }
    // And with a length, as it was.
    c.send(b"GET /u/search HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let res = c.read_response("GET").await.unwrap();
    assert_eq!(res.text(), "GET /search len=5 chunked=false");
    assert!(up.requests().iter().all(|s| s.request.body == b"hello"));
}

/// An upstream whose `/u/big` streams without end (until the peer goes), and counts how
/// often it was cut off.
async fn endless_upstream() -> Upstream {
    Upstream::start(|mut c: Conn| async move {
        while let Some(req) = c.next_request().await {
            if req.head.target() != "/big" {
                if !c.send(&echo(&req)).await {
                    return;
                }
                continue;
            }
            if !c
                .send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
            {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            while c.send(chunk.as_bytes()).await {}
            return;
        }
    })
    .await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout_and_a_grace() {
    let up = endless_upstream().await;
    let gw = start_gateway(config(&up, "idle_timeout_ms = 300")).await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    c.send(b"GET /u/big HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    // Never read: the socket buffers fill and no byte moves on the client's connection.
    let start = Instant::now();
    up.wait(
        "the gateway to let go of the upstream",
        Duration::from_secs(10),
        |u| u.connections() == 1 && u.open() == 0,
    )
    .await;
    let held = start.elapsed();
    // 300 ms idle, then at most min(300 ms, 5 s) of grace; generous for a loaded machine.
    assert!(held < Duration::from_secs(5), "held for {held:?}");
    assert!(
        held >= Duration::from_millis(250),
        "closed too early: {held:?}"
    );
    let (_, closed) = c.read_to_close(Duration::from_secs(10)).await;
    assert!(closed, "the client's connection stayed open");
}

#[tokio::test]
async fn a_client_that_aborts_mid_response_frees_the_upstream_and_blames_nobody() {
    testkit::logs::capture();
    for (server, id) in [
        ("", "abort-mid-body"),
        ("inline_http1 = false", "abort-mid-body-hyper"),
    ] {
        aborts_mid_response(server, id).await;
    }
}

async fn aborts_mid_response(server: &str, id: &str) {
    let up = endless_upstream().await;
    let gw = start_gateway(config(&up, server)).await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    let req = format!("GET /u/big HTTP/1.1\r\nHost: g\r\nX-Request-Id: {id}\r\n\r\n");
    c.send(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = c.stream().read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(c);
    // The upstream connection is closed (never pooled mid-body)...
    up.wait(
        "the upstream connection to close",
        Duration::from_secs(10),
        |u| u.open() == 0,
    )
    .await;
    // ...the target is not blamed, and the access log says the response was cut.
    let health = &gw.health("up")[0];
    assert_eq!((health.failures, health.available), (0, true), "{health:?}");
    let lines: Vec<String> = testkit::logs::lines_with(&format!("request_id={id} "))
        .into_iter()
        .filter(|l| l.contains("access_log"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("complete=false"), "{lines:?}");
    // The next request gets a fresh upstream connection and works.
    let r = fetch(gw.addr, "/u/after").await;
    assert_eq!(r.text(), "GET /after len=0 chunked=false");
}

#[tokio::test]
async fn http2_request_bodies_arrive_with_and_without_a_length() {
    let (gw, up) = rig("").await;
    let mut h2 = testkit::client::h2::<Full<Bytes>>(gw.addr).await;
    let with_length = Request::post(format!("http://{}/u/a", gw.addr))
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let r = testkit::client::send_h2(&mut h2, with_length)
        .await
        .unwrap();
    assert_eq!(r.text(), "POST /a len=5 chunked=false");
    // DATA frames without content-length, on a GET: sent on as chunked, never dropped.
    let mut h2 = testkit::client::h2::<StreamBody<_>>(gw.addr).await;
    let frames = futures_util::stream::iter(vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"hel"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"lo"))),
    ]);
    let no_length = Request::get(format!("http://{}/u/b", gw.addr))
        .body(StreamBody::new(frames))
        .unwrap();
    let r = testkit::client::send_h2(&mut h2, no_length).await.unwrap();
    assert_eq!(r.text(), "GET /b len=5 chunked=true");
    assert!(up.requests().iter().all(|s| s.request.body == b"hello"));
}

#[tokio::test]
async fn http2_many_concurrent_streams_on_one_connection() {
    let (gw, up) = rig("").await;
    let h2 = testkit::client::h2::<Empty<Bytes>>(gw.addr).await;
    let mut all = Vec::new();
    for i in 0..64 {
        let mut h2 = h2.clone();
        let addr = gw.addr;
        all.push(tokio::spawn(async move {
            let req = Request::get(format!("http://{addr}/u/s{i}"))
                .body(Empty::new())
                .unwrap();
            testkit::client::send_h2(&mut h2, req).await
        }));
    }
    for (i, task) in all.into_iter().enumerate() {
        let r = task.await.unwrap().unwrap();
        assert_eq!(r.text(), format!("GET /s{i} len=0 chunked=false"));
    }
    assert_eq!(up.requests().len(), 64);
    assert!(up.connections() <= 64);
}

#[tokio::test]
async fn http2_a_cancelled_stream_cancels_upstream_and_the_connection_goes_on() {
    let release = Arc::new(Notify::new());
    let r2 = Arc::clone(&release);
    let up = Upstream::start(move |mut c: Conn| {
        let release = Arc::clone(&r2);
        async move {
            while let Some(req) = c.next_request().await {
                if req.head.target() == "/slow" {
                    // Holds the answer until the test says so (never, here), or until the
                    // gateway hangs up.
                    tokio::select! {
                        _ = release.notified() => {}
                        _ = c.wire.closed_within(Duration::from_secs(30)) => return,
                    }
                }
                if !c.send(&echo(&req)).await {
                    return;
                }
            }
        }
    })
    .await;
    let gw = start_gateway(config(&up, "")).await;
    let mut h2 = testkit::client::h2::<Empty<Bytes>>(gw.addr).await;
    let slow = Request::get(format!("http://{}/u/slow", gw.addr))
        .body(Empty::new())
        .unwrap();
    let pending = h2.send_request(slow);
    let cancelled = tokio::spawn(pending);
    up.wait_requests(1, Duration::from_secs(10)).await;
    cancelled.abort();
    // The upstream exchange is abandoned: its connection closes.
    up.wait(
        "the cancelled exchange's connection to close",
        Duration::from_secs(10),
        |u| u.open() == 0,
    )
    .await;
    let next = Request::get(format!("http://{}/u/next", gw.addr))
        .body(Empty::new())
        .unwrap();
    let r = testkit::client::send_h2(&mut h2, next).await.unwrap();
    assert_eq!(r.text(), "GET /next len=0 chunked=false");
    assert_eq!(gw.health("up")[0].failures, 0);
    drop(release);
}

#[tokio::test]
async fn http2_oversized_headers_are_refused_and_the_connection_survives() {
    let (gw, up) = rig("max_header_bytes = 16384").await;
    let mut h2 = testkit::client::h2::<Empty<Bytes>>(gw.addr).await;
    let big = Request::get(format!("http://{}/u/big-head", gw.addr))
        .header("x-big", "a".repeat(64 * 1024))
        .body(Empty::new())
        .unwrap();
    match testkit::client::send_h2(&mut h2, big).await {
        Ok(r) => assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(!e.is_empty()),
    }
    assert!(
        up.requests().is_empty(),
        "an oversized head reached the upstream"
    );
    let mut h2 = testkit::client::h2::<Empty<Bytes>>(gw.addr).await;
    let ok = Request::get(format!("http://{}/u/fine", gw.addr))
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        testkit::client::send_h2(&mut h2, ok).await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_shutdown_sends_goaway_and_finishes_the_stream_in_flight() {
    let up = Upstream::start(|mut c: Conn| async move {
        while let Some(req) = c.next_request().await {
            if req.head.target() == "/slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if !c.send(&echo(&req)).await {
                return;
            }
        }
    })
    .await;
    let gw = start_gateway(config(&up, "shutdown_grace_ms = 5000")).await;
    let addr = gw.addr;
    let mut h2 = testkit::client::h2::<Empty<Bytes>>(addr).await;
    let slow = Request::get(format!("http://{addr}/u/slow"))
        .body(Empty::new())
        .unwrap();
    let mut h2_for_slow = h2.clone();
    let in_flight =
        tokio::spawn(async move { testkit::client::send_h2(&mut h2_for_slow, slow).await });
    up.wait_requests(1, Duration::from_secs(10)).await;
    let done = tokio::spawn(gw.shutdown());
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(
        r.text(),
        "GET /slow len=0 chunked=false",
        "the stream in flight finished"
    );
    assert!(
        done.await.unwrap(),
        "every connection finished within the grace"
    );
    let after = Request::get(format!("http://{addr}/u/after"))
        .body(Empty::new())
        .unwrap();
    assert!(
        testkit::client::send_h2(&mut h2, after).await.is_err(),
        "a new stream after GOAWAY"
    );
}

/// HTTP/2 frame types seen in `bytes` (from the server, after its preface).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

#[tokio::test]
async fn a_silent_http2_client_gets_goaway_and_is_closed() {
    const GOAWAY: u8 = 7;
    let (gw, _up) = rig("idle_timeout_ms = 300").await;
    let mut c = Wire::connect(gw.addr).await.unwrap();
    // The preface and an empty SETTINGS frame, then nothing: no SETTINGS ack, no PING ack.
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let start = Instant::now();
    let (bytes, closed) = c.read_to_close(Duration::from_secs(10)).await;
    let held = start.elapsed();
    assert!(closed, "a silent HTTP/2 client was held open");
    // Idle timeout, then the graceful close's grace (min(idle, 5 s)).
    assert!(held >= Duration::from_millis(250), "{held:?}");
    assert!(held < Duration::from_secs(5), "{held:?}");
    assert!(
        frame_types(&bytes).contains(&GOAWAY),
        "closed without GOAWAY: {:?}",
        frame_types(&bytes)
    );
}
