//! [`RequestId`]: the id a request is logged under, in its extensions for every layer and the
//! proxy to name it in their log lines.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

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

    /// A new id: 128 bits from a per-thread keyed hash of a counter, as 32 hex digits.
    pub fn generate() -> RequestId {
        thread_local! {
            // RandomState is seeded from the operating system's randomness.
            static KEYS: (RandomState, Cell<u64>) = (RandomState::new(), Cell::new(0));
        }
        let (hi, lo) = KEYS.with(|(keys, counter)| {
            let n = counter.get();
            counter.set(n.wrapping_add(1));
            (keys.hash_one((n, 0u8)), keys.hash_one((n, 1u8)))
        });
        let mut text = [0u8; 32];
        for (i, digit) in text.iter_mut().enumerate() {
            let word = if i < 16 { hi } else { lo };
            let nibble = (word >> (60 - 4 * (i % 16))) & 0xF;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        RequestId(HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0")))
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
