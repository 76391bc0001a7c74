//! What the backend answers: the JSON description of the request, or what the fault
//! parameters ask for.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::Body;
use crate::bodies::{Filler, Reset, events};
use crate::faults::Faults;
use crate::websocket::{is_websocket, websocket_echo};

pub(crate) async fn handle(
    name: Arc<str>,
    connections: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if crate::grpc::is_grpc(&req) {
        return Ok(crate::grpc::handle(req).await);
    }
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

pub(crate) fn full(text: String) -> Body {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        quote(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }
}
