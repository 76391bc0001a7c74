//! Small HTTP/1.1 value rules both of the gateway's own HTTP/1.1 codecs (the proxy's client
//! and the gateway's server) read headers by, as hyper reads them.

use http::{HeaderMap, HeaderValue};

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

/// The bytes `headers` take as HTTP/1.1 header lines (`name: value` and CRLF each): the room
/// a head encoder reserves for them, so that its buffer is not regrown.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// let mut h = HeaderMap::new();
/// h.insert("host", HeaderValue::from_static("example.com"));
/// assert_eq!(httpkit::h1::lines_len(&h), "host: example.com\r\n".len());
/// ```
pub fn lines_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
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

/// A hex digit's value, either case (a chunk size, a percent-escape).
///
/// ```
/// assert_eq!(httpkit::h1::hex_value(b'b'), Some(11));
/// assert_eq!(httpkit::h1::hex_value(b'F'), Some(15));
/// assert_eq!(httpkit::h1::hex_value(b'g'), None);
/// ```
pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where one header line's name and value lie in a head's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderSpan {
    /// The name's bytes.
    pub name: (usize, usize),
    /// The value's bytes.
    pub value: (usize, usize),
}

impl HeaderSpan {
    /// The name's length.
    pub fn name_len(&self) -> usize {
        self.name.1 - self.name.0
    }
}

/// Header lines whose places [`HeaderSpans`] keeps on the stack.
const FEW_HEADERS: usize = 24;

/// The places of a parsed head's header lines in its buffer, so that the buffer can be frozen
/// (and sliced into header values without a copy) once the parser's borrow of it has ended.
/// Kept on the stack for the usual few headers (clearing room for a parser's 100 would cost
/// more than the parse), on the heap for more.
///
/// ```
/// use httpkit::h1::HeaderSpans;
///
/// let head = b"x-a: 1\r\nhost: h\r\n";
/// let lines = [(&head[0..3], &head[5..6]), (&head[8..12], &head[14..15])];
/// let mut spans = HeaderSpans::default();
/// let spans = spans.record(head, lines.iter().copied());
/// assert_eq!(&head[spans[1].name.0..spans[1].name.1], b"host");
/// assert_eq!(&head[spans[1].value.0..spans[1].value.1], b"h");
/// ```
#[derive(Debug, Default)]
pub struct HeaderSpans {
    few: [HeaderSpan; FEW_HEADERS],
    many: Vec<HeaderSpan>,
}

impl HeaderSpans {
    /// Records where each `(name, value)` of `lines` (slices of `head`) lies in `head`.
    pub fn record<'h>(
        &mut self,
        head: &[u8],
        lines: impl ExactSizeIterator<Item = (&'h [u8], &'h [u8])>,
    ) -> &[HeaderSpan] {
        let base = head.as_ptr() as usize;
        let count = lines.len();
        let spans = if count <= FEW_HEADERS {
            &mut self.few[..count]
        } else {
            self.many.resize(count, HeaderSpan::default());
            &mut self.many[..]
        };
        for (span, (name, value)) in spans.iter_mut().zip(lines) {
            let n = name.as_ptr() as usize - base;
            let v = value.as_ptr() as usize - base;
            *span = HeaderSpan {
                name: (n, n + name.len()),
                value: (v, v + value.len()),
            };
        }
        spans
    }
}
