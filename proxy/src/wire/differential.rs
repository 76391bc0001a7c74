//! The wire client against hyper's, its oracle: the same response bytes (generated, then
//! mutated, delivered in random pieces) go to hyper's HTTP/1.1 client over an in-memory pipe
//! and to [`parse_response`] and [`Decoder`]; both must agree on whether the head is
//! rejected, on the status, version, reason, headers, on whether the body fails, and on every
//! body byte and trailer of a body that does not. And the request head bytes hyper writes
//! for a bodiless request are the ones [`encode_request`] writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::decode::{Decoder, Step};
use super::head::{encode_request, parse_response};

/// The response head limit both are given; generated heads stay well under it, away from
/// where the two read differently sized pieces near the limit.
const MAX_HEAD: usize = 8192;

type Fields = Vec<(String, Vec<u8>)>;

/// What a client made of a response.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The head was rejected (or never came whole).
    HeadRejected,
    Response {
        status: u16,
        version: http::Version,
        reason: Option<Vec<u8>>,
        headers: Fields,
        /// `None`: the body failed.
        body: Option<(Vec<u8>, Option<Fields>)>,
    },
}

fn fields(map: &HeaderMap) -> Fields {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// `input` cut into pieces at `cuts` (positions, any order, out-of-range ones ignored).
fn pieces(input: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < input.len())
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for c in at.into_iter().chain(std::iter::once(input.len())) {
        out.push(Bytes::copy_from_slice(&input[from..c]));
        from = c;
    }
    out
}

fn via_wire(input: &[u8], cuts: &[usize], method: &Method) -> Outcome {
    let mut feed = pieces(input, cuts).into_iter();
    let mut buf = BytesMut::new();
    let mut closed = false;
    let mut more = |buf: &mut BytesMut, closed: &mut bool| match feed.next() {
        Some(p) => buf.extend_from_slice(&p),
        None => *closed = true,
    };
    let head = loop {
        match parse_response(&mut buf, method, MAX_HEAD) {
            Ok(Some(head)) => break head,
            Ok(None) if closed => return Outcome::HeadRejected,
            Ok(None) => more(&mut buf, &mut closed),
            Err(_) => return Outcome::HeadRejected,
        }
    };
    let reason = head
        .parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes().to_vec());
    let mut decoder = Decoder::new(head.framing);
    let mut data = Vec::new();
    let body = loop {
        match decoder.step(&mut buf, closed) {
            Ok(Step::Data(d)) => data.extend_from_slice(&d),
            Ok(Step::Trailers(t)) => break Some((data, Some(fields(&t)))),
            Ok(Step::End) => break Some((data, None)),
            Ok(Step::More) => more(&mut buf, &mut closed),
            Err(_) => break None,
        }
    };
    Outcome::Response {
        status: head.parts.status.as_u16(),
        version: head.parts.version,
        reason,
        headers: fields(&head.parts.headers),
        body,
    }
}

async fn via_hyper(input: &[u8], cuts: &[usize], method: &Method) -> Outcome {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let pieces = pieces(input, cuts);
    let upstream = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            if server.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            seen.push(byte[0]);
        }
        for p in pieces {
            if server.write_all(&p).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = server.shutdown().await;
        // Held open for reading until the client is done.
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
    });
    let req = Request::builder()
        .method(method.clone())
        .uri("/")
        .body(Empty::new())
        .unwrap();
    let outcome = match sender.send_request(req).await {
        Err(_) => Outcome::HeadRejected,
        Ok(res) => {
            let reason = res
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes().to_vec());
            let status = res.status().as_u16();
            let version = res.version();
            let headers = fields(res.headers());
            let mut body = res.into_body();
            let mut data = Vec::new();
            let mut trailers = None;
            let mut failed = false;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(f) => trailers = f.into_trailers().ok().map(|t| fields(&t)),
                    },
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            Outcome::Response {
                status,
                version,
                reason,
                headers,
                body: (!failed).then_some((data, trailers)),
            }
        }
    };
    drop(sender);
    driver.abort();
    upstream.abort();
    outcome
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn agree(input: &[u8], cuts: &[usize], method: &Method) -> Result<(), TestCaseError> {
    let ours = via_wire(input, cuts, method);
    let theirs = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), via_hyper(input, cuts, method))
            .await
            .expect("hyper's client finished")
    });
    let shown = String::from_utf8_lossy(&input[..input.len().min(400)]).into_owned();
    if ours != theirs {
        let ours = format!("{ours:?}");
        let theirs = format!("{theirs:?}");
        prop_assert!(
            false,
            "input {:?} (of {} bytes), method {}, cuts {:?}:\n ours {}\n hyper {}",
            shown,
            input.len(),
            method,
            cuts,
            &ours[..ours.len().min(600)],
            &theirs[..theirs.len().min(600)]
        );
    }
    Ok(())
}

/// Status lines: the usual, the odd, the invalid.
fn status_line() -> impl Strategy<Value = Vec<u8>> {
    let version = prop::sample::select(vec![
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "http/1.1",
        "HTTP/1.1 ",
    ]);
    let code = prop::sample::select(vec![
        "200", "200", "200", "200", "200", "204", "304", "404", "500", "101", "199", "999", "099",
        "20", "2000",
    ]);
    let reason = prop::sample::select(vec![
        "OK",
        "OK",
        "",
        "Custom Reason",
        "Not Found",
        "ok\t",
        "caf\u{e9}",
    ]);
    (version, code, reason).prop_map(|(v, c, r)| format!("{v} {c} {r}\r\n").into_bytes())
}

/// Header lines, framing ones among them, valid and not.
fn header_line() -> impl Strategy<Value = Vec<u8>> {
    let named = prop::sample::select(vec![
        "Content-Length: 5",
        "Content-Length: 0",
        "content-length:  5 ",
        "Content-Length: 5, 5",
        "Content-Length: 5, 6",
        "Content-Length: +5",
        "Content-Length: ",
        "Content-Length: 5x",
        "Content-Length: 18446744073709551615",
        "Content-Length: 18446744073709551616",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, gzip",
        "transfer-encoding: Chunked",
        "Transfer-Encoding: identity",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: Upgrade, Close",
        "Keep-Alive: timeout=5",
        "Content-Type: text/plain; charset=utf-8",
        "X-Empty:",
        "X-Tab:\tvalue\t",
        "X-Obs: caf\u{e9}",
        "Set-Cookie: a=1",
        "Set-Cookie: b=2",
        "Bad Name: x",
        "X-Ctl: a\u{1}b",
        "X-Del: a\u{7f}b",
        " X-Folded: leading space",
        "NoColon",
        ": empty-name",
    ]);
    let random = ("[A-Za-z0-9-]{1,12}", "[ -~]{0,24}").prop_map(|(n, v)| format!("{n}: {v}"));
    prop_oneof![3 => named.prop_map(str::to_owned), 1 => random]
        .prop_map(|l| format!("{l}\r\n").into_bytes())
}

/// A chunked body, well-formed or bent.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..40),
        prop::sample::select(vec!["", "", ";ext=1", " ", "\t;a", ";\n", " x"]),
        any::<bool>(),
    )
        .prop_map(|(data, ext, upper)| {
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            let mut out = format!("{size}{ext}\r\n").into_bytes();
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            out
        });
    let end = prop::sample::select(vec![
        "0\r\n\r\n",
        "0\r\n\r\n",
        "0\r\nX-Trailer: yes\r\n\r\n",
        "0\r\nA: 1\r\nB: 2\r\n\r\n",
        "0;ext\r\n\r\n",
        "000\r\n\r\n",
        "0\r\n",
        "0\r\nBad Trailer\r\n\r\n",
        "0\n\n",
        "ffffffffffffffffff\r\n",
        "",
    ]);
    (prop::collection::vec(chunk, 0..4), end).prop_map(|(chunks, end)| {
        let mut out = chunks.concat();
        out.extend_from_slice(end.as_bytes());
        out
    })
}

/// A body and the header line that frames it: a matching length, chunked, or none (until
/// the connection closes).
fn framed_body() -> impl Strategy<Value = (String, Vec<u8>)> {
    let bytes = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        bytes
            .clone()
            .prop_map(|b| (format!("Content-Length: {}\r\n", b.len()), b)),
        chunked_body().prop_map(|b| ("Transfer-Encoding: chunked\r\n".to_owned(), b)),
        bytes.prop_map(|b| (String::new(), b)),
    ]
}

/// A whole response: maybe an interim one first, a head with its framing line among others
/// (which may contradict it), then the body.
fn response() -> impl Strategy<Value = Vec<u8>> {
    let interim = prop::sample::select(vec![
        "",
        "",
        "",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    ]);
    (
        interim,
        status_line(),
        prop::collection::vec(header_line(), 0..4),
        any::<prop::sample::Index>(),
        framed_body(),
    )
        .prop_map(|(interim, status, mut headers, at, (framing, body))| {
            let at = at.index(headers.len() + 1);
            headers.insert(at, framing.into_bytes());
            let mut out = interim.as_bytes().to_vec();
            out.extend(status);
            out.extend(headers.concat());
            out.extend_from_slice(b"\r\n");
            out.extend(body);
            out
        })
}

/// A response, sometimes with one byte changed, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        response(),
        0..6u8,
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(mut r, kind, at, byte)| {
            if r.is_empty() {
                return r;
            }
            let i = at.index(r.len());
            match kind {
                1 => r[i] = byte,
                2 => r.insert(i, byte),
                3 => {
                    r.remove(i);
                }
                _ => {}
            }
            r
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn responses_read_as_hyper_reads_them(
        input in mutated(),
        cuts in prop::collection::vec(0..200usize, 0..6),
        method in method(),
    ) {
        agree(&input, &cuts, &method)?;
    }
}

#[test]
fn many_headers_and_long_heads_read_as_hyper_reads_them() {
    for count in [99, 100, 101, 150] {
        let mut input = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for i in 0..count {
            input.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\nok");
        agree(&input, &[], &Method::GET).unwrap();
    }
    // A head far over the limit.
    let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
    input.extend_from_slice(format!("x-big: {}\r\n\r\n", "a".repeat(3 * MAX_HEAD)).as_bytes());
    agree(&input, &[], &Method::GET).unwrap();
}

/// The request head hyper writes for a bodiless request, from a header map.
async fn hyper_request_head(method: Method, uri: Uri, headers: HeaderMap) -> Vec<u8> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut req = Request::new(Empty::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let sent = tokio::spawn(async move { sender.send_request(req).await });
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if server.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        seen.push(byte[0]);
    }
    sent.abort();
    driver.abort();
    seen
}

/// Outbound heads of bodiless requests: never a `Transfer-Encoding` (the proxy adds one only
/// for a body), which hyper removes, reordering the map as it does.
fn header_map() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "host",
            "x-forwarded-for",
            "accept",
            "content-length",
            "cookie",
            "user-agent",
        ])
        .prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,10}",
    ];
    let value = "[ -~]{0,20}";
    prop::collection::vec((name, value), 0..8).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                map.append(n, v);
            }
        }
        map
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn request_heads_are_the_bytes_hyper_writes(
        method in prop::sample::select(vec![Method::GET, Method::HEAD, Method::DELETE, Method::POST, Method::OPTIONS]),
        path in "/[a-z0-9/._~-]{0,30}(\\?[a-z0-9=&%]{0,20})?",
        headers in header_map(),
    ) {
        let uri: Uri = path.parse().unwrap();
        let mut ours = Vec::new();
        encode_request(&mut ours, &method, &uri, &headers);
        let theirs = runtime().block_on(hyper_request_head(method, uri, headers));
        prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
    }
}
