//! The upstream half of the shape matrix: the real gateway in front of upstreams shaped the
//! way production ones are (chunked, close-delimited, HTTP/1.0, `Connection: close`, idle
//! keep-alives closed, 1xx, bodiless statuses, stalls, oversized and contradictory heads,
//! resets). For each cell: what the client got, how many connections the upstream saw, the
//! access-log line of each request, and the target's health afterwards.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use testkit::upstream::{Conn, Upstream};
use testkit::wire::{self, Wire};

fn config(up: &Upstream, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
idle_timeout_ms = 5000

[upstreams.up]
targets = ["{}"]
response_timeout_ms = 500
{extra}

[[routes]]
path = "/u/*path"
methods = ["*"]
upstream = "up"
"#,
        up.url()
    )
}

/// The shapes, each an upstream script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Fixed,
    Chunked,
    ChunkedTrailers,
    CloseDelimited,
    Http10,
    Http10KeepAlive,
    ConnectionClose,
    Continue100,
    EarlyHints103,
    NoContent204,
    NotModified304,
    HeadLength,
    ClAndTe,
    DuplicateClSame,
    DuplicateClDiffer,
    OversizedHead,
    ResetBeforeHead,
}

async fn upstream(shape: Shape) -> Upstream {
    match shape {
        Shape::Fixed => Upstream::serving(|_| wire::fixed(200, "fixed")).await,
        Shape::Chunked => Upstream::serving(|_| wire::chunked("chunked body", 3, &[])).await,
        Shape::ChunkedTrailers => {
            Upstream::serving(|_| wire::chunked("with trailers", 4, &[("x-checksum", "42")])).await
        }
        Shape::CloseDelimited => {
            Upstream::start(|mut c: Conn| async move {
                if c.next_request().await.is_some() {
                    c.send(b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
                }
            })
            .await
        }
        Shape::Http10 => {
            Upstream::start(|mut c: Conn| async move {
                if c.next_request().await.is_some() {
                    c.send(b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold!")
                        .await;
                }
            })
            .await
        }
        Shape::Http10KeepAlive => {
            Upstream::serving(|_| {
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 4\r\n\r\nold!"
                    .to_vec()
            })
            .await
        }
        Shape::ConnectionClose => {
            Upstream::start(|mut c: Conn| async move {
                if c.next_request().await.is_some() {
                    c.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose")
                        .await;
                }
            })
            .await
        }
        Shape::Continue100 => {
            Upstream::start(|mut c: Conn| async move {
                while c.next_request().await.is_some() {
                    // The interim response on its own, a pause (its own packet), then the
                    // final one.
                    c.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    c.send(&wire::fixed(200, "after 100")).await;
                }
            })
            .await
        }
        Shape::EarlyHints103 => {
            Upstream::serving(|_| {
                let mut out =
                    b"HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\n\r\n".to_vec();
                out.extend(wire::fixed(200, "after 103"));
                out
            })
            .await
        }
        Shape::NoContent204 => {
            Upstream::serving(|_| b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_vec()).await
        }
        Shape::NotModified304 => {
            Upstream::serving(|_| b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec())
                .await
        }
        Shape::HeadLength => {
            Upstream::serving(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec()).await
        }
        Shape::ClAndTe => {
            Upstream::serving(|_| {
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec()
            })
            .await
        }
        Shape::DuplicateClSame => {
            Upstream::serving(|_| {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok".to_vec()
            })
            .await
        }
        Shape::DuplicateClDiffer => {
            Upstream::serving(|_| {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!".to_vec()
            })
            .await
        }
        Shape::OversizedHead => {
            Upstream::serving(|_| {
                let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..50 {
                    out.extend(format!("x-big-{i}: {}\r\n", "v".repeat(4000)).into_bytes());
                }
                out.extend(b"content-length: 2\r\n\r\nok");
                out
            })
            .await
        }
        Shape::ResetBeforeHead => {
            Upstream::start(|mut c: Conn| async move {
                if c.next_request().await.is_some() {
                    c.reset();
                }
            })
            .await
        }
    }
}

/// What a cell expects.
struct Expect {
    method: &'static str,
    /// Requests sent one after the other on one client connection (a new one when the
    /// gateway closes it).
    requests: usize,
    status: u16,
    body: &'static str,
    /// Upstream connections opened for all of them.
    upstream_conns: usize,
    /// Failures the target's passive health counted.
    failures: u64,
}

const fn ok(body: &'static str, requests: usize, upstream_conns: usize) -> Expect {
    Expect {
        method: "GET",
        requests,
        status: 200,
        body,
        upstream_conns,
        failures: 0,
    }
}

/// The gateway's two HTTP/1.1 clients: a request without a body goes on a connection its own
/// task drives (`proxy`'s wire client), one with a body through hyper's client. Every shape is
/// run through both, with the same expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Bodiless,
    WithBody,
}

#[tokio::test]
async fn every_upstream_shape_is_relayed_pooled_logged_and_judged_right_without_a_body() {
    shape_matrix(Path::Bodiless).await;
}

#[tokio::test]
async fn every_upstream_shape_is_relayed_pooled_logged_and_judged_right_with_a_body() {
    shape_matrix(Path::WithBody).await;
}

async fn shape_matrix(path: Path) {
    testkit::logs::capture();
    let cells: Vec<(Shape, Expect)> = vec![
        (Shape::Fixed, ok("fixed", 20, 1)),
        (Shape::Chunked, ok("chunked body", 20, 1)),
        (Shape::ChunkedTrailers, ok("with trailers", 20, 1)),
        (Shape::CloseDelimited, ok("until close", 5, 5)),
        (Shape::Http10, ok("old!", 5, 5)),
        (Shape::Http10KeepAlive, ok("old!", 5, 1)),
        (Shape::ConnectionClose, ok("close", 5, 5)),
        (Shape::Continue100, ok("after 100", 5, 1)),
        (Shape::EarlyHints103, ok("after 103", 5, 1)),
        (
            Shape::NoContent204,
            Expect {
                status: 204,
                ..ok("", 10, 1)
            },
        ),
        (
            Shape::NotModified304,
            Expect {
                status: 304,
                ..ok("", 10, 1)
            },
        ),
        (
            Shape::HeadLength,
            Expect {
                method: "HEAD",
                ..ok("", 10, 1)
            },
        ),
        // Both framings: the body is read as chunked, and a connection that spoke like this
        // is never reused.
        (Shape::ClAndTe, ok("hello", 3, 3)),
        (Shape::DuplicateClSame, ok("ok", 5, 1)),
        (
            Shape::DuplicateClDiffer,
            Expect {
                status: 502,
                body: "Bad Gateway\n",
                failures: 3,
                ..ok("", 3, 3)
            },
        ),
        (
            Shape::OversizedHead,
            Expect {
                status: 502,
                body: "Bad Gateway\n",
                failures: 3,
                ..ok("", 3, 3)
            },
        ),
        (
            Shape::ResetBeforeHead,
            Expect {
                status: 502,
                body: "Bad Gateway\n",
                failures: 3,
                ..ok("", 3, 3)
            },
        ),
    ];
    let mut problems = Vec::new();
    for (shape, expect) in cells {
        let up = upstream(shape).await;
        let gw = start_gateway(config(&up, "")).await;
        let mut client = Wire::connect(gw.addr).await.unwrap();
        for i in 0..expect.requests {
            let id = format!("shape-{path:?}-{shape:?}-{i}");
            let te = if shape == Shape::ChunkedTrailers {
                "te: trailers\r\n"
            } else {
                ""
            };
            let body = match path {
                Path::Bodiless => "",
                Path::WithBody => "content-length: 4\r\n\r\nping",
            };
            let req = format!(
                "{} /u/x HTTP/1.1\r\nhost: g\r\nx-request-id: {id}\r\n{te}{}",
                expect.method,
                if body.is_empty() { "\r\n" } else { body }
            );
            if client.send(req.as_bytes()).await.is_err() {
                client = Wire::connect(gw.addr).await.unwrap();
                client.send(req.as_bytes()).await.unwrap();
            }
            let res = match client.read_final(expect.method).await {
                Ok((_, res)) => res,
                Err(e) => {
                    problems.push(format!("{shape:?} #{i}: no response: {e}"));
                    break;
                }
            };
            if res.head.status() != expect.status || res.text() != expect.body {
                problems.push(format!(
                    "{shape:?} #{i}: got {} {:?}, expected {} {:?}",
                    res.head.status(),
                    res.text(),
                    expect.status,
                    expect.body
                ));
            }
            if shape == Shape::ChunkedTrailers
                && !res
                    .trailers
                    .iter()
                    .any(|(n, v)| n == "x-checksum" && v == "42")
            {
                problems.push(format!("{shape:?} #{i}: trailers lost: {res:?}"));
            }
            if shape == Shape::ClAndTe && res.head.all("content-length").count() > 0 && res.chunked
            {
                problems.push(format!("{shape:?} #{i}: two framings relayed: {res:?}"));
            }
            if res.head.header("connection") == Some("close") {
                client = Wire::connect(gw.addr).await.unwrap();
            }
            let logged: Vec<String> = testkit::logs::lines_with(&format!("request_id={id} "))
                .into_iter()
                .filter(|l| l.contains("access_log"))
                .collect();
            let status = format!("status={}", expect.status);
            if logged.len() != 1 || !logged[0].contains(&status) {
                problems.push(format!("{shape:?} #{i}: access log {logged:?}"));
            }
        }
        if path == Path::WithBody
            && let Some(seen) = up.requests().iter().find(|s| s.request.body != b"ping")
        {
            problems.push(format!(
                "{shape:?}: the body did not arrive: {:?}",
                seen.request
            ));
        }
        let health = gw.health("up");
        if up.connections() != expect.upstream_conns {
            problems.push(format!(
                "{shape:?}: {} upstream connections for {} requests, expected {}",
                up.connections(),
                expect.requests,
                expect.upstream_conns
            ));
        }
        if health[0].failures != expect.failures {
            problems.push(format!(
                "{shape:?}: {} failures counted, expected {}",
                health[0].failures, expect.failures
            ));
        }
        if !health[0].available {
            problems.push(format!("{shape:?}: the only target was taken out"));
        }
    }
    assert!(problems.is_empty(), "{path:?}:\n{}", problems.join("\n"));
}
