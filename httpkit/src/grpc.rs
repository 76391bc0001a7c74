//! gRPC as a gateway sees it: which requests are gRPC calls, their `grpc-timeout`, the status
//! codes, the answer a gateway gives a gRPC client when it answers by itself (HTTP `200`, no
//! body, `grpc-status` and `grpc-message` in the head: a "trailers-only" response), and the
//! wire's framing and varints (for health checks and test services).
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use httpkit::grpc::{self, Code};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", HeaderValue::from_static("application/grpc+proto"));
//! headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
//! assert!(grpc::is_grpc(&headers));
//! assert_eq!(grpc::timeout(&headers), Some(Duration::from_millis(250)));
//! assert_eq!(Code::for_status(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
//!
//! let res: http::Response<()> = grpc::error_response(Code::Unavailable, "no upstream answered");
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "14");
//! assert_eq!(res.headers()["grpc-message"], "no upstream answered");
//! ```

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// `grpc-status`: in the trailers of every gRPC response, or in the head of a trailers-only one.
pub const STATUS: &str = "grpc-status";
/// `grpc-message`: the error's text, percent-encoded.
pub const MESSAGE: &str = "grpc-message";
/// `grpc-timeout`: the client's deadline for the call.
pub const TIMEOUT: &str = "grpc-timeout";

/// Whether a request (or response) with these headers is gRPC: a `content-type` of
/// `application/grpc`, alone or with a `+format` or `;parameters` after it.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The call's deadline from `grpc-timeout` (a positive integer of at most 8 digits and a unit:
/// `H`, `M`, `S`, `m`, `u`, `n`); `None` when absent or malformed (a malformed one is ignored,
/// as gRPC servers do).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status codes a gateway answers with (the others pass through from upstreams as
/// numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// 0: not an error.
    Ok = 0,
    /// 1: the call was cancelled.
    Cancelled = 1,
    /// 2: an error with no better code.
    Unknown = 2,
    /// 3: the request is malformed.
    InvalidArgument = 3,
    /// 4: the deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// 5: nothing there.
    NotFound = 5,
    /// 7: the caller may not do this.
    PermissionDenied = 7,
    /// 8: a limit was reached (a rate limit, a size limit).
    ResourceExhausted = 8,
    /// 12: no such method.
    Unimplemented = 12,
    /// 13: an internal error.
    Internal = 13,
    /// 14: the service is unavailable; the call may be tried again.
    Unavailable = 14,
    /// 16: the caller did not authenticate.
    Unauthenticated = 16,
}

impl Code {
    /// The code for an HTTP status the gateway answered with, after the gRPC specification's
    /// HTTP-to-gRPC mapping, except that a `504` (the gateway's own timeouts) is
    /// `DEADLINE_EXCEEDED`, a `429` (a rate limit) and a `413` are `RESOURCE_EXHAUSTED`, and a
    /// `405` is `UNIMPLEMENTED`, as Envoy answers.
    pub fn for_status(status: StatusCode) -> Code {
        match status.as_u16() {
            200..=399 => Code::Unknown,
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 | 501 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            413 | 429 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            500 => Code::Internal,
            _ => Code::Unknown,
        }
    }

    /// The code's number, as `grpc-status` carries it.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// `grpc-status`'s value for this code.
    pub fn header_value(self) -> HeaderValue {
        const DIGITS: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        HeaderValue::from_static(DIGITS[self as usize])
    }
}

/// A gateway's answer to a gRPC call it did not forward (or whose upstream failed): HTTP `200`,
/// `content-type: application/grpc`, `grpc-status` and a percent-encoded `grpc-message`, no
/// body, so that it leaves as one HEADERS frame that ends the stream.
pub fn error_response<T: Default>(code: Code, message: &str) -> Response<T> {
    let mut res = Response::new(T::default());
    set_error(res.headers_mut(), code, message);
    res
}

/// Turns `headers` into those of a trailers-only gRPC error (see [`error_response`]); what
/// described a body before (length, type, encoding) goes.
pub fn set_error(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_ENCODING);
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(STATUS, code.header_value());
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(MESSAGE, v);
    }
}

/// The trailers that end a gRPC response the gateway had to cut (its deadline passed).
pub fn error_trailers(code: Code, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(STATUS, code.header_value());
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        trailers.insert(MESSAGE, v);
    }
    trailers
}

/// `grpc-message`'s encoding: printable ASCII and space but `%` as they are, everything else
/// as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// `message` in gRPC's length-prefixed frame: no compression flag, its length (4 bytes, big
/// endian), the message.
pub fn frame(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    bytes::Bytes::from(out)
}

/// The message of `framed` when it is exactly one uncompressed frame.
pub fn unframe(framed: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = framed.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let (len, message) = rest.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    (message.len() == len).then_some(message)
}

/// Appends `n` as a protobuf varint (7 bits a byte, low first).
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a protobuf varint from the front of `buf`, advancing it; `None` when malformed or cut.
pub fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=x",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_parse_in_every_unit_and_refuse_the_malformed() {
        let t = |v| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("40m"), Some(Duration::from_millis(40)));
        assert_eq!(t("50u"), Some(Duration::from_micros(50)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%c"), "a b%25c");
        assert_eq!(percent_encode("é"), "%C3%A9");
        let res: Response<()> = error_response(Code::DeadlineExceeded, "late");
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(res.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn frames_and_varints_round_trip() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&framed), Some(&b"abc"[..]));
        assert_eq!(unframe(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(unframe(&[0, 0, 0, 0, 2, 1]), None, "cut");
        for n in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            let mut read = &out[..];
            assert_eq!(varint(&mut read), Some(n));
            assert!(read.is_empty());
        }
        assert_eq!(varint(&mut &[0x80u8][..]), None);
    }

    #[test]
    fn every_code_has_its_number_as_header() {
        for code in [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::Unauthenticated,
        ] {
            assert_eq!(code.header_value(), code.as_u8().to_string().as_str());
        }
    }
}
