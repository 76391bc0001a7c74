//! A request head read by `httparse` (the parser hyper uses) into `http` types, for the
//! requests the inline server answers itself: HTTP/1.1 without an upgrade or an expectation,
//! and without a body or with a small one (a `Content-Length` up to [`SMALL_BODY`]) that came
//! whole with its head. Whatever else comes (a larger or later body, a chunked one, `Upgrade`,
//! `Expect`, `TE`, HTTP/1.0, the HTTP/2 preface, a head hyper would refuse) is left to hyper,
//! which reads the same bytes.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use httpkit::h1::{HeaderSpans, digits, has_token};

/// The most header lines a request head may have (hyper's limit; more gets its `431`).
const MAX_HEADERS: usize = 100;

/// The largest body read with its head: a small JSON `POST` that came in the same packets.
pub(super) const SMALL_BODY: u64 = 16 * 1024;

/// The longest request target hyper reads (longer gets its `414`).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Room for the header lines the request gains on its way upstream (request id, trace
/// context, `X-Forwarded-*`, `Host`, ...), so that the map is not regrown once per layer.
const ADDED_LINES: usize = 8;

/// What the front of the buffer holds.
// Matched where it is returned: boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Parsed {
    /// A whole request this server answers, taken off the buffer (its header values and its
    /// body share the buffer's bytes); whether the client keeps the connection after it.
    Head(Request<Option<Bytes>>, bool),
    /// Not a whole head yet.
    Partial,
    /// Not for this server: hyper takes the connection, starting with these bytes.
    Elsewhere,
}

/// Reads a request from the front of `buf` if a whole one is there: its head within
/// `max_head` bytes, its body (if any) within [`SMALL_BODY`] and `max_body` bytes.
pub(super) fn parse(buf: &mut BytesMut, max_head: usize, max_body: u64) -> Parsed {
    // Uninitialized, as hyper's are: a parse writes only the slots its headers use.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too long, too many headers, not HTTP/1.x, malformed: hyper answers (or, for the
        // HTTP/2 preface, serves) it.
        Ok(httparse::Status::Complete(_)) | Err(_) => return Parsed::Elsewhere,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Elsewhere;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Elsewhere;
    };
    if method == Method::CONNECT || target.len() > MAX_TARGET {
        return Parsed::Elsewhere;
    }
    // Where the target and each name and value lie in the head, to slice the frozen bytes.
    let target = {
        let at = target.as_ptr() as usize - buf.as_ptr() as usize;
        at..at + target.len()
    };
    let count = req.headers.len();
    let mut spans = HeaderSpans::default();
    let spans = spans.record(
        buf,
        req.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    );
    // hyper answers a name of 64 KiB or more with `431`.
    if spans.iter().any(|s| s.name_len() >= 1 << 16) {
        return Parsed::Elsewhere;
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target)) else {
        // hyper answers `400`: give it back the bytes it needs to.
        return elsewhere(buf, head);
    };
    let mut headers = HeaderMap::with_capacity(count + ADDED_LINES);
    let mut keep_alive = true;
    let mut length = None;
    for span in spans {
        let Ok(name) = HeaderName::from_bytes(&head[span.name.0..span.name.1]) else {
            return elsewhere(buf, head);
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
        else {
            return elsewhere(buf, head);
        };
        match name {
            // A body, an upgrade, an expectation, trailers asked for: hyper's.
            TRANSFER_ENCODING | UPGRADE | EXPECT | TE => return elsewhere(buf, head),
            CONTENT_LENGTH => match (digits(value.as_bytes()), length) {
                // hyper answers lengths that do not parse or disagree with `400`.
                (None, _) => return elsewhere(buf, head),
                (Some(n), Some(first)) if n != first => return elsewhere(buf, head),
                // hyper keeps one of the lines that agree.
                (Some(_), Some(_)) => continue,
                (Some(n), None) => length = Some(n),
            },
            // Once any `Connection` line asks to close, nothing undoes it.
            CONNECTION if has_token(&value, "close") => keep_alive = false,
            _ => {}
        }
        headers.append(name, value);
    }
    // A body is served here only when it is small and all there; else hyper streams it.
    let body = match length {
        None | Some(0) => None,
        Some(n) if n > SMALL_BODY || n > max_body || n > buf.len() as u64 => {
            return elsewhere(buf, head);
        }
        Some(n) => Some(buf.split_to(n as usize).freeze()),
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Head(request, keep_alive)
}

/// Puts a head already taken off `buf` back in front of the bytes after it, for hyper.
fn elsewhere(buf: &mut BytesMut, head: bytes::Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Elsewhere
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(s.as_bytes());
        (parse(&mut buf, 64 * 1024, u64::MAX), buf)
    }

    #[test]
    fn a_plain_get_is_served_here_and_leaves_what_follows() {
        let (parsed, rest) =
            parse_str("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
        let Parsed::Head(req, keep_alive) = parsed else {
            panic!("{parsed:?}")
        };
        assert!(keep_alive);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn connection_close_is_read_from_any_line() {
        let (parsed, _) =
            parse_str("GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n");
        assert!(matches!(parsed, Parsed::Head(_, false)), "{parsed:?}");
    }

    #[test]
    fn what_hyper_serves_is_handed_over_whole() {
        for s in [
            "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabc",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:1 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\n\r\n",
        ] {
            let (parsed, rest) = parse_str(s);
            assert!(matches!(parsed, Parsed::Elsewhere), "{s:?}: {parsed:?}");
            assert_eq!(&rest[..], s.as_bytes(), "{s:?}");
        }
    }

    #[test]
    fn a_small_body_that_came_whole_is_read_here_and_others_are_hypers() {
        let (parsed, rest) = parse_str("POST /j HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET");
        let Parsed::Head(req, _) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(req.body().as_deref(), Some(&b"abc"[..]));
        assert_eq!(&rest[..], b"GET");
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n{}",
            "x".repeat(SMALL_BODY as usize + 1),
            n = SMALL_BODY + 1
        );
        assert!(matches!(parse_str(&big).0, Parsed::Elsewhere));
        let mut over = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..]);
        assert!(matches!(parse(&mut over, 1024, 2), Parsed::Elsewhere));
    }

    #[test]
    fn a_zero_length_is_no_body_and_a_long_head_is_hypers() {
        let (parsed, _) = parse_str("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(parsed, Parsed::Head(..)), "{parsed:?}");
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        let mut buf = BytesMut::from(long.as_bytes());
        assert!(matches!(parse(&mut buf, 100, u64::MAX), Parsed::Elsewhere));
        let mut half = BytesMut::from(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert!(matches!(parse(&mut half, 100, u64::MAX), Parsed::Partial));
    }
}
