//! A fake upstream for demos and tests: it answers every request with a JSON description of
//! what it received, and query parameters make it misbehave, so faults can be driven through a
//! gateway.
//!
//! - Every request: `200`, `content-type: application/json`, `x-backend: <name>` (default
//!   `:<port>`), and `{"backend", "method", "path", "query", "headers", "body_bytes"}`; the
//!   request body is streamed and counted, never held whole. Header names are lower case;
//!   repeated headers become arrays.
//! - `status=N` answers with status `N`; `delay_ms=N` waits before the head; `bytes=N` sends
//!   an `N`-byte streamed body instead of JSON; `sse=N&interval_ms=M` sends `N` server-sent
//!   events `M` ms apart; `reset=1` aborts the connection right after the head; `chunked=1`
//!   sends the JSON without a length (chunked on HTTP/1.1), as most dynamic applications do.
//! - Every response carries `x-connections: N`, the connections this backend has accepted so
//!   far (this one included): how a test or a benchmark sees a proxy's connection reuse.
//! - `Upgrade: websocket` gets a WebSocket echo.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None).await?;
//! println!("listening on {}, as {}", backend.addr(), backend.name());
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A running fake backend; dropping it (or [`shutdown`](Self::shutdown)) stops it like a
/// killed process: the listener and every open connection close.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    name: Arc<str>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it reports in `x-backend` and the JSON body.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops it: the listener and every open connection close.
    pub fn shutdown(self) {}
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend on `addr` (port 0 picks a free port) with `name`, or `:<port>` by default.
pub async fn spawn(addr: SocketAddr, name: Option<&str>) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = match name {
        Some(n) => n.into(),
        None => format!(":{}", addr.port()).into(),
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(serve(listener, Arc::clone(&name), Arc::clone(&accepted)));
    Ok(Backend {
        addr,
        name,
        accepted,
        task,
    })
}

/// Serves connections from `listener` until the task is dropped (HTTP/1.1 and HTTP/2),
/// counting them in `accepted`. Dropping it also drops every open connection, as a process
/// that dies would.
pub async fn serve(listener: TcpListener, name: Arc<str>, counter: Arc<AtomicU64>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set stays as large as the open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let name = Arc::clone(&name);
        let number = counter.fetch_add(1, Ordering::Relaxed) + 1;
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&name), number, req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The fault-driving query parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Faults {
    status: Option<u16>,
    delay_ms: Option<u64>,
    bytes: Option<u64>,
    sse: Option<u64>,
    interval_ms: Option<u64>,
    reset: bool,
    chunked: bool,
}

impl Faults {
    fn parse(query: Option<&str>) -> Result<Faults, String> {
        let mut f = Faults::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("`{key}` needs a number, got `{value}`"))
            };
            match key {
                "status" => {
                    let n = number()?;
                    let code = u16::try_from(n).ok().filter(|c| (200..=599).contains(c));
                    f.status = Some(code.ok_or_else(|| format!("status {n} is not 200-599"))?);
                }
                "delay_ms" => f.delay_ms = Some(number()?),
                "bytes" => f.bytes = Some(number()?),
                "sse" => f.sse = Some(number()?),
                "interval_ms" => f.interval_ms = Some(number()?),
                "reset" => f.reset = value == "1" || value == "true",
                "chunked" => f.chunked = value == "1" || value == "true",
                _ => {}
            }
        }
        Ok(f)
    }
}

async fn handle(
    name: Arc<str>,
    connections: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let faults = match Faults::parse(req.uri().query()) {
        Ok(f) => f,
        Err(message) => {
            let mut res = Response::new(full(format!("{message}\n")));
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(res);
        }
    };
    if let Some(ms) = faults.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if is_websocket(&req) {
        return Ok(websocket_echo(&name, req));
    }

    let (parts, mut body) = req.into_parts();
    // Stream the body and count it; nothing is kept.
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }

    let mut res = if faults.reset {
        Response::new(BodyExt::boxed(Reset(false)))
    } else if let Some(n) = faults.sse {
        let interval = Duration::from_millis(faults.interval_ms.unwrap_or(1000));
        let mut res = Response::new(events(n, interval));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        res
    } else if let Some(n) = faults.bytes {
        let mut res = Response::new(BodyExt::boxed(Filler(n)));
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        res
    } else {
        let json = describe(&name, &parts, body_bytes);
        let body = if faults.chunked {
            // One frame and no size hint: sent chunked.
            let frame = Ok::<_, std::io::Error>(Frame::data(Bytes::from(json)));
            BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
                [frame],
            )))
        } else {
            full(json)
        };
        let mut res = Response::new(body);
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res
    };
    if let Some(code) = faults.status.and_then(|c| StatusCode::from_u16(c).ok()) {
        *res.status_mut() = code;
    }
    if let Ok(value) = HeaderValue::from_str(&name) {
        res.headers_mut().insert("x-backend", value);
    }
    res.headers_mut()
        .insert("x-connections", HeaderValue::from(connections));
    Ok(res)
}

fn full(text: String) -> Body {
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// The JSON description of a request.
fn describe(name: &str, parts: &http::request::Parts, body_bytes: u64) -> String {
    let mut json = String::with_capacity(256);
    json.push_str("{\"backend\":");
    quote(&mut json, name);
    json.push_str(",\"method\":");
    quote(&mut json, parts.method.as_str());
    json.push_str(",\"path\":");
    quote(&mut json, parts.uri.path());
    json.push_str(",\"query\":");
    match parts.uri.query() {
        Some(q) => quote(&mut json, q),
        None => json.push_str("null"),
    }
    json.push_str(",\"headers\":{");
    for (i, name) in parts.headers.keys().enumerate() {
        if i > 0 {
            json.push(',');
        }
        quote(&mut json, name.as_str());
        json.push(':');
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if let [one] = values.as_slice() {
            quote(&mut json, one);
        } else {
            json.push('[');
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    json.push(',');
                }
                quote(&mut json, v);
            }
            json.push(']');
        }
    }
    let _ = write!(json, "}},\"body_bytes\":{body_bytes}}}");
    json.push('\n');
    json
}

/// Appends `text` as a JSON string.
fn quote(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `n` bytes of `x`, made 16 KiB at a time.
struct Filler(u64);

const CHUNK: &[u8] = &[b'x'; 16 * 1024];

impl http_body::Body for Filler {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(CHUNK.len() as u64) as usize;
        self.0 -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0)
    }
}

/// Lets the head go out, then fails: the server aborts the connection.
struct Reset(bool);

impl http_body::Body for Reset {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.0 {
            self.0 = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset=1: aborting after the head",
        ))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        // Promise a body, so the client knows it was cut.
        http_body::SizeHint::with_exact(1024)
    }
}

/// `n` server-sent events, `interval` apart (the first at once).
fn events(n: u64, interval: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if tx
                .send(Bytes::from(format!("id: {i}\ndata: event {i}\n\n")))
                .await
                .is_err()
            {
                return; // the client went away
            }
        }
    });
    BodyExt::boxed(Channel(rx))
}

struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Accepts the WebSocket handshake and echoes every text and binary message back.
fn websocket_echo(name: &str, mut req: Request<Incoming>) -> Response<Body> {
    let accept = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()));
    let Some(accept) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) else {
        let mut res = Response::new(full("bad WebSocket handshake\n".into()));
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let who = name.to_owned();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(error) => {
                tracing::warn!(%error, backend = %who, "WebSocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            let reply = match message {
                Message::Text(_) | Message::Binary(_) => message,
                Message::Close(_) => {
                    // The close reply is queued on receipt; send it before leaving, as a
                    // well-behaved server completes the closing handshake.
                    let _ = ws.flush().await;
                    break;
                }
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Ok(value) = HeaderValue::from_str(name) {
        h.insert("x-backend", value);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(Faults::parse(None).unwrap(), Faults::default());
        let f = Faults::parse(Some(
            "status=503&delay_ms=10&bytes=5&sse=2&interval_ms=3&reset=1&chunked=1&x=y",
        ))
        .unwrap();
        assert_eq!(
            f,
            Faults {
                status: Some(503),
                delay_ms: Some(10),
                bytes: Some(5),
                sse: Some(2),
                interval_ms: Some(3),
                reset: true,
                chunked: true,
            }
        );
        assert!(Faults::parse(Some("status=abc")).is_err());
        assert!(Faults::parse(Some("status=99")).is_err());
        assert!(Faults::parse(Some("delay_ms=-1")).is_err());
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        quote(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }
}
