//! The inline server against hyper's, byte for byte: generated request streams (plain and
//! odd: bodies, `Expect`, HTTP/1.0, bad names, pipelined) and generated responses (every
//! framing the routes can produce: no body, a known length, a stream of unknown length, with
//! and without `Content-Length`, `Transfer-Encoding`, `Connection`, `Trailer`, `Date`, reason
//! phrases, HTTP/1.0 answers, `HEAD`, `204`, `304`) go through the inline server (with its
//! handover to hyper) and through hyper alone, over in-memory connections. The client must
//! read the same bytes (the `Date` value aside) and the routes must see the same requests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Host, Outcome, Prefixed, Settings, Transport};
use crate::serve::ServedBody;
use httpkit::Body;

impl Transport for DuplexStream {}

const MAX_HEAD: usize = 16 * 1024;

/// A response as the routes would make it.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    http10: bool,
    reason: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Empty,
    Full(Vec<u8>),
    /// Chunks of a length not declared, then trailers or not.
    Stream(Vec<Vec<u8>>, bool),
}

/// A body handing out its frames at once, of a length it does not tell.
struct Frames(VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

impl Answer {
    fn build(&self) -> Response<Body> {
        let body = match &self.body {
            Shape::Empty => Body::empty(),
            Shape::Full(bytes) => Body::from(bytes.clone()),
            Shape::Stream(chunks, trailers) => {
                let mut frames: VecDeque<_> = chunks
                    .iter()
                    .map(|c| Frame::data(Bytes::from(c.clone())))
                    .collect();
                if *trailers {
                    let mut t = HeaderMap::new();
                    t.insert("x-t", http::HeaderValue::from_static("done"));
                    frames.push_back(Frame::trailers(t));
                }
                Body::new(Frames(frames))
            }
        };
        let mut res = Response::new(body);
        *res.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        if self.http10 {
            *res.version_mut() = Version::HTTP_10;
        }
        if let Some(Ok(r)) = self
            .reason
            .map(|reason| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()))
        {
            res.extensions_mut().insert(r);
        }
        for (name, value) in &self.headers {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                res.headers_mut().append(*name, v);
            }
        }
        res
    }
}

/// What the routes saw of a request.
type Seen = Arc<Mutex<Vec<String>>>;

async fn answer<B>(req: Request<B>, answer: Answer, seen: Seen) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes());
    if let Ok(mut seen) = seen.lock() {
        seen.push(format!(
            "{} {} {:?} {:?} {:?}",
            parts.method, parts.uri, parts.version, parts.headers, body
        ));
    }
    answer.build()
}

struct TestHost {
    answer: Answer,
    seen: Seen,
}

impl Host for TestHost {
    fn call(
        &self,
        req: Request<ServedBody>,
    ) -> impl Future<Output = Response<Body>> + Send + Unpin + 'static {
        Box::pin(answer(req, self.answer.clone(), Arc::clone(&self.seen)))
    }

    fn finishing(&self) -> bool {
        false
    }

    fn header_timeout(&self) {}

    // The differential streams come whole: no head waits for a timer here.
    fn head_deadline(&self, _at: Option<tokio::time::Instant>) {}

    fn head_expired(&self) -> bool {
        false
    }

    fn park_asked(&self) -> bool {
        false
    }
}

fn builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(MAX_HEAD);
    builder
}

/// Serves `io` with hyper alone.
async fn hyper_serves(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    reply: Answer,
    seen: Seen,
) {
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let reply = answer(req, reply.clone(), Arc::clone(&seen));
        async move { Ok::<_, Infallible>(reply.await) }
    });
    let _ = builder()
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

/// Serves `io` inline, then with hyper if handed over.
async fn inline_serves(io: DuplexStream, reply: Answer, seen: Seen, handed: Arc<AtomicBool>) {
    let host = Arc::new(TestHost {
        answer: reply.clone(),
        seen: Arc::clone(&seen),
    });
    let settings = Settings {
        header_read_timeout: Duration::from_secs(10),
        max_head: MAX_HEAD,
        max_body: u64::MAX,
    };
    if let Outcome::Handover(io, read) = super::serve(io, host, settings, super::Start::New).await {
        handed.store(true, Ordering::Relaxed);
        hyper_serves(Prefixed { read, io }, reply, seen).await;
    }
}

/// What a client sending `pieces` reads back (the `Date` value blanked), and what the routes saw.
async fn exchange(pieces: &[Vec<u8>], reply: &Answer, inline: bool) -> (String, Vec<String>, bool) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let seen = Seen::default();
    let handed = Arc::new(AtomicBool::new(false));
    let task = if inline {
        tokio::spawn(inline_serves(
            server,
            reply.clone(),
            Arc::clone(&seen),
            Arc::clone(&handed),
        ))
    } else {
        tokio::spawn(hyper_serves(server, reply.clone(), Arc::clone(&seen)))
    };
    for piece in pieces {
        if client.write_all(piece).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    task.abort();
    let mut text = String::from_utf8_lossy(&got).into_owned();
    if read.is_err() {
        text.push_str("<no end>");
    }
    let mut at = 0;
    while let Some(i) = text[at..].find("date: ") {
        let start = at + i + 6;
        let end = (start + 29).min(text.len());
        text.replace_range(start..end, &"D".repeat(end - start));
        at = end;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    (text, seen, handed.load(Ordering::Relaxed))
}

fn request() -> impl Strategy<Value = String> {
    let method = prop::sample::select(vec!["GET", "HEAD", "DELETE", "OPTIONS", "POST", "PURGE"]);
    let target = prop::sample::select(vec!["/", "/a/b?c=d", "http://h.example/x", "*", "/%zz"]);
    let line = prop::sample::select(vec![
        "Host: h\r\n",
        "Accept: */*\r\n",
        "X-Many: 1\r\nX-Many: 2\r\n",
        "Connection: keep-alive\r\n",
        "Connection: x-hop\r\nX-Hop: 1\r\n",
        "Content-Length: 0\r\n",
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "Content-Length: 3\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n",
        "Content-Length: 3, 3\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Expect: 100-continue\r\n",
        "TE: trailers\r\n",
        "Upgrade: h2c\r\n",
        "Bad Name: x\r\n",
        "X-Obs: caf\u{e9}\r\n",
        "X-Tab:\tv \r\n",
    ]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
    (method, target, prop::collection::vec(line, 0..4), version).prop_map(
        |(method, target, lines, version)| {
            let mut head = format!("{method} {target} {version}\r\n");
            let mut body = "";
            for l in &lines {
                head.push_str(l);
                if l.starts_with("Content-Length: 3") {
                    body = "abc";
                } else if l.starts_with("Transfer-Encoding") {
                    body = "3\r\nabc\r\n0\r\n\r\n";
                }
            }
            // A length and chunked both: only the chunked body is sent (hyper reads that).
            if lines.iter().any(|l| l.starts_with("Transfer-Encoding")) {
                body = "3\r\nabc\r\n0\r\n\r\n";
            }
            format!("{head}\r\n{body}")
        },
    )
}

fn answer_strategy() -> impl Strategy<Value = Answer> {
    let status = prop::sample::select(vec![200u16, 200, 201, 204, 206, 304, 404, 500, 502, 299]);
    let header = prop::sample::select(vec![
        ("content-type", "text/plain"),
        ("x-a", "1"),
        ("x-a", "2"),
        ("connection", "close"),
        ("connection", "x-custom"),
        ("transfer-encoding", "chunked"),
        ("trailer", "x-t"),
        ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("content-length", "LEN"),
        ("content-length", "2"),
        ("content-length", "0"),
        ("content-length", "x"),
    ]);
    let body = prop_oneof![
        Just(Shape::Empty),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Shape::Full),
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..4),
            any::<bool>()
        )
            .prop_map(|(c, t)| Shape::Stream(c, t)),
    ];
    (
        status,
        prop::bool::weighted(0.15),
        prop::option::weighted(0.2, Just("Fine")),
        prop::collection::vec(header, 0..4),
        body,
    )
        .prop_map(|(status, http10, reason, headers, body)| {
            let len = match &body {
                Shape::Full(b) => b.len(),
                Shape::Stream(c, _) => c.iter().map(Vec::len).sum(),
                Shape::Empty => 0,
            };
            let exact = matches!(body, Shape::Full(_) | Shape::Empty);
            let headers = headers
                .into_iter()
                // A fixed body must not contradict its own length (hyper asserts it).
                .filter(|(n, v)| !(exact && *n == "content-length" && *v != "LEN"))
                .map(|(n, v)| {
                    (
                        n,
                        if v == "LEN" {
                            len.to_string()
                        } else {
                            v.to_owned()
                        },
                    )
                })
                .collect();
            Answer {
                status,
                http10,
                reason,
                headers,
                body,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn the_inline_server_and_hyper_answer_alike(
        first in request(),
        second in request(),
        close_last in any::<bool>(),
        reply in answer_strategy(),
        cut in 0usize..200,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(rt) = rt else { return Err(TestCaseError::fail("no runtime")) };
        // The last request asks to close, so that every exchange ends.
        let last = if close_last {
            second.replacen("\r\n", "\r\nConnection: close\r\n", 1)
        } else {
            "GET /last HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned()
        };
        let stream = format!("{first}{last}").into_bytes();
        let cut = cut.min(stream.len());
        let pieces = vec![stream[..cut].to_vec(), stream[cut..].to_vec()];
        let (inline, inline_seen, _) = rt.block_on(exchange(&pieces, &reply, true));
        let (hyper, hyper_seen, _) = rt.block_on(exchange(&pieces, &reply, false));
        prop_assert_eq!(&inline, &hyper, "requests {:?}, answer {:?}", String::from_utf8_lossy(&stream), reply);
        prop_assert_eq!(inline_seen, hyper_seen);
        prop_assert!(!inline.ends_with("<no end>"));
    }
}

/// The common case stays inline (else the test above would compare hyper with itself): plain
/// requests and a small body that came with its head; a larger body is hyper's.
#[tokio::test]
async fn plain_requests_and_small_bodies_are_answered_inline_and_large_ones_handed_over() {
    let reply = Answer {
        status: 200,
        http10: false,
        reason: None,
        headers: vec![],
        body: Shape::Full(b"hi".to_vec()),
    };
    let plain = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\
        HEAD /c HTTP/1.1\r\nConnection: close\r\n\r\n"
        .to_vec();
    let (text, seen, handed) = exchange(&[plain], &reply, true).await;
    assert!(!handed, "{text}");
    assert_eq!(seen.len(), 3);
    assert!(seen[1].contains("b\"hi\""), "{seen:?}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    let large = "x".repeat(super::request::SMALL_BODY as usize + 1);
    let body = format!(
        "POST /a HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{large}",
        large.len()
    );
    let (text, seen, handed) = exchange(&[body.into_bytes()], &reply, true).await;
    assert!(handed, "{text}");
    assert!(seen[0].contains("xxxx"), "{seen:?}");
}
