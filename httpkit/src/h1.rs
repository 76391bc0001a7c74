//! Small HTTP/1.1 value rules both of the gateway's own HTTP/1.1 codecs (the proxy's client
//! and the gateway's server) read headers by, as hyper reads them.

use http::HeaderValue;

/// A decimal number of digits only (no sign, no blank, no overflow): a `Content-Length`.
///
/// ```
/// assert_eq!(httpkit::h1::digits(b"42"), Some(42));
/// assert_eq!(httpkit::h1::digits(b"+1"), None);
/// assert_eq!(httpkit::h1::digits(b""), None);
/// ```
pub fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Whether a comma-separated header value lists `token` (case-insensitive). A value that is
/// not visible ASCII lists nothing.
///
/// ```
/// use http::HeaderValue;
/// assert!(httpkit::h1::has_token(&HeaderValue::from_static("keep-alive, Close"), "close"));
/// assert!(!httpkit::h1::has_token(&HeaderValue::from_static("closed"), "close"));
/// ```
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked` (RFC 9112 §6.1).
///
/// ```
/// use http::HeaderValue;
/// assert!(httpkit::h1::ends_chunked(&HeaderValue::from_static("gzip, chunked")));
/// assert!(!httpkit::h1::ends_chunked(&HeaderValue::from_static("chunked, gzip")));
/// ```
pub fn ends_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}
