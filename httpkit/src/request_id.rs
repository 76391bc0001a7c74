//! [`RequestId`]: the id a request is logged under, in its extensions for every layer and the
//! proxy to name it in their log lines.

use std::fmt;

use http::{Extensions, HeaderValue};

/// The request's id, in the request's extensions: always 1 to 128 characters of
/// `[A-Za-z0-9._-]`, so it is safe in a log line and a header.
///
/// ```
/// use http::HeaderValue;
/// use httpkit::RequestId;
///
/// let kept = RequestId::parse(&HeaderValue::from_static("abc-123")).unwrap();
/// assert_eq!(kept.as_str(), "abc-123");
/// assert!(RequestId::parse(&HeaderValue::from_static("no spaces")).is_none());
/// assert_eq!(RequestId::generate().as_str().len(), 32);
///
/// let mut ext = http::Extensions::new();
/// assert_eq!(RequestId::logged(&ext), "-");
/// ext.insert(kept);
/// assert_eq!(RequestId::logged(&ext), "abc-123");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// `value` as an id, if it is one (see [`is_valid`](Self::is_valid)).
    pub fn parse(value: &HeaderValue) -> Option<RequestId> {
        Self::is_valid(value.as_bytes()).then(|| RequestId(value.clone()))
    }

    /// Whether `value` is an acceptable id: 1 to 128 characters of `[A-Za-z0-9._-]`.
    pub fn is_valid(value: &[u8]) -> bool {
        (1..=128).contains(&value.len())
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    /// A new id: 128 random bits as 32 hex digits.
    pub fn generate() -> RequestId {
        let mut text = [0u8; 32];
        crate::random::hex_into(&crate::random::u128().to_be_bytes(), &mut text);
        // Owned by a shared buffer from the start: the id goes in the request's headers, its
        // extensions and the response's headers, and each clone is then a count, where a
        // value copied from a slice is moved to a shared buffer (a second allocation) at its
        // first clone.
        RequestId(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
                .unwrap_or_else(|_| HeaderValue::from_static("0")),
        )
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only valid ids are ever stored, and they are ASCII.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id of the request these extensions belong to, as logged: `-` without one.
    pub fn logged(extensions: &Extensions) -> &str {
        extensions.get::<RequestId>().map_or("-", RequestId::as_str)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ids a request's log lines carry, taken from its extensions once, for code that logs
/// after the request itself is gone (a response body, a tunnel).
///
/// ```
/// use httpkit::{LogIds, RequestId};
/// let mut ext = http::Extensions::new();
/// ext.insert(RequestId::generate());
/// let ids = LogIds::of(&ext);
/// assert_eq!(ids.request().len(), 32);
/// assert_eq!(ids.trace().to_string(), "-");
/// ```
#[derive(Debug, Clone)]
pub struct LogIds {
    request: Option<RequestId>,
    trace: crate::TraceId,
}

impl Default for LogIds {
    fn default() -> Self {
        LogIds {
            request: None,
            trace: crate::TraceId::NONE,
        }
    }
}

impl LogIds {
    /// The ids in `extensions`.
    pub fn of(extensions: &Extensions) -> LogIds {
        LogIds {
            request: extensions.get::<RequestId>().cloned(),
            trace: crate::TraceContext::logged(extensions),
        }
    }

    /// The request id as logged (`-` without one).
    pub fn request(&self) -> &str {
        self.request.as_ref().map_or("-", RequestId::as_str)
    }

    /// The trace id as logged (`-` without one).
    pub fn trace(&self) -> crate::TraceId {
        self.trace
    }
}
