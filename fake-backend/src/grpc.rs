//! The gRPC echo service (`echo.v1.Echo`, described in `fake-backend/proto/echo.proto`) and
//! the standard health service (`grpc.health.v1.Health/Check`: always `SERVING`), written
//! out by hand on the HTTP/2 server: gRPC's framing is a flag byte and a length before each
//! message, and the one message type has three fields.
//!
//! Knobs, as request metadata: `x-grpc-status: N` (with `x-grpc-message`) answers that
//! status instead; `x-delay-ms: N` waits before answering; `x-reset: 1` resets the stream.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use httpkit::grpc::{frame, put_varint, varint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::Body;
use crate::bodies::Reset;

/// The largest message accepted (gRPC's default limit).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Whether the request is a gRPC call.
pub(crate) fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `echo.v1.EchoMessage`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Echo {
    message: String,
    count: u32,
    interval_ms: u32,
}

impl Echo {
    fn decode(mut buf: &[u8]) -> Option<Echo> {
        let mut echo = Echo::default();
        while buf.has_remaining() {
            let key = varint(&mut buf)?;
            match (key >> 3, key & 7) {
                (1, 2) => {
                    let len = usize::try_from(varint(&mut buf)?).ok()?;
                    if buf.len() < len {
                        return None;
                    }
                    echo.message = String::from_utf8(buf[..len].to_vec()).ok()?;
                    buf.advance(len);
                }
                (2, 0) => echo.count = u32::try_from(varint(&mut buf)?).ok()?,
                (3, 0) => echo.interval_ms = u32::try_from(varint(&mut buf)?).ok()?,
                (_, 0) => {
                    varint(&mut buf)?;
                }
                (_, 2) => {
                    let len = usize::try_from(varint(&mut buf)?).ok()?;
                    if buf.len() < len {
                        return None;
                    }
                    buf.advance(len);
                }
                _ => return None,
            }
        }
        Some(echo)
    }

    /// The message in its gRPC frame.
    fn framed(&self) -> Bytes {
        let mut message = Vec::new();
        if !self.message.is_empty() {
            message.push(0x0a);
            put_varint(&mut message, self.message.len() as u64);
            message.extend_from_slice(self.message.as_bytes());
        }
        for (tag, value) in [(0x10, self.count), (0x18, self.interval_ms)] {
            if value != 0 {
                message.push(tag);
                put_varint(&mut message, u64::from(value));
            }
        }
        frame(&message)
    }
}

/// Messages as they arrive on a request body.
struct Messages {
    body: Incoming,
    buf: BytesMut,
}

impl Messages {
    /// The next message; `Ok(None)` at the end; `Err` with a status for a broken stream.
    async fn next(&mut self) -> Result<Option<Echo>, (u8, &'static str)> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err((12, "compressed messages are not supported"));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err((8, "message larger than 4 MiB"));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len);
                    return Echo::decode(&message)
                        .map(Some)
                        .ok_or((13, "malformed EchoMessage"));
                }
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => return Err((13, "the stream ended inside a message")),
                Some(Err(_)) => return Err((1, "the request stream failed")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Answers a gRPC call.
pub(crate) async fn handle(req: Request<Incoming>) -> Response<Body> {
    let knob = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(ms) = knob("x-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if knob("x-reset").is_some() {
        return grpc_response(Reset(false).boxed());
    }
    if let Some(status) = knob("x-grpc-status").and_then(|v| v.parse::<u8>().ok()) {
        let message = knob("x-grpc-message").unwrap_or_default();
        return trailers_only(status, &message);
    }
    let method = req.uri().path().to_owned();
    let mut messages = Messages {
        body: req.into_body(),
        buf: BytesMut::new(),
    };
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(8);
    match method.as_str() {
        "/echo.v1.Echo/Unary" | "/echo.v1.Echo/ServerStream" => {
            let first = match messages.next().await {
                Ok(Some(m)) => m,
                Ok(None) => return trailers_only(13, "no request message"),
                Err((code, text)) => return trailers_only(code, text),
            };
            let count = if method.ends_with("Unary") {
                1
            } else {
                first.count.max(1)
            };
            tokio::spawn(async move {
                for i in 0..count {
                    if i > 0 && first.interval_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(u64::from(first.interval_ms)))
                            .await;
                    }
                    if tx.send(Frame::data(first.framed())).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Frame::trailers(status_trailers(0, ""))).await;
            });
        }
        "/echo.v1.Echo/ClientStream" => {
            let mut joined = Echo::default();
            loop {
                match messages.next().await {
                    Ok(Some(m)) => {
                        joined.message.push_str(&m.message);
                        joined.count += 1;
                    }
                    Ok(None) => break,
                    Err((code, text)) => return trailers_only(code, text),
                }
            }
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(joined.framed())).await;
                let _ = tx.send(Frame::trailers(status_trailers(0, ""))).await;
            });
        }
        "/echo.v1.Echo/Bidi" => {
            tokio::spawn(async move {
                let (code, text) = loop {
                    match messages.next().await {
                        Ok(Some(m)) => {
                            if tx.send(Frame::data(m.framed())).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break (0, ""),
                        Err(e) => break e,
                    }
                };
                let _ = tx.send(Frame::trailers(status_trailers(code, text))).await;
            });
        }
        "/grpc.health.v1.Health/Check" => {
            // HealthCheckResponse { status: SERVING }.
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(frame(&[0x08, 0x01]))).await;
                let _ = tx.send(Frame::trailers(status_trailers(0, ""))).await;
            });
        }
        _ => return trailers_only(12, "no such method"),
    }
    let body =
        http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (Ok::<_, std::io::Error>(f), rx))
        }));
    grpc_response(body.boxed())
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    res
}

fn status_trailers(code: u8, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(message)
        && !message.is_empty()
    {
        trailers.insert("grpc-message", v);
    }
    trailers
}

/// An answer with no message: the status in the head.
fn trailers_only(code: u8, message: &str) -> Response<Body> {
    let mut res = grpc_response(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
    res.headers_mut().extend(status_trailers(code, message));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_encode_and_decode() {
        let m = Echo {
            message: "héllo".into(),
            count: 300,
            interval_ms: 5,
        };
        let framed = m.framed();
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(len, framed.len() - 5);
        assert_eq!(Echo::decode(&framed[5..]), Some(m));
        assert_eq!(Echo::decode(&[0x0a, 5, b'a']), None);
        assert_eq!(Echo::decode(&[]), Some(Echo::default()));
    }
}
