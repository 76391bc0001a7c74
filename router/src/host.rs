//! [`Hosts`]: virtual-host lookup by exact name and by wildcard suffix.

use std::collections::HashMap;

use thiserror::Error;

/// The longest host name DNS allows (RFC 1035), in presentation form without the final dot.
const MAX_HOST: usize = 253;

/// Why a host name cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostError {
    /// Empty, too long, or with characters a host name cannot hold.
    #[error(
        "`{0}` is not a host name: letters, digits, `-`, `.` and `_`, at most 253 characters, or `*.` and a suffix (`*.example.com`)"
    )]
    Invalid(String),
    /// The same name (or wildcard) twice.
    #[error("host `{0}` is listed twice")]
    Duplicate(String),
}

/// Values keyed by host name: exact names (`api.example.com`) and wildcards (`*.example.com`,
/// any name ending in `.example.com`; the longest matching suffix wins). Names are compared
/// case-insensitively, without the port and without a final dot.
///
/// A lookup costs one hash probe for the exact name and one per dot in the name for the
/// wildcards, whatever the number of hosts registered.
///
/// ```
/// use router::Hosts;
///
/// let mut hosts = Hosts::new();
/// hosts.insert("api.example.com", "api").unwrap();
/// hosts.insert("*.example.com", "any").unwrap();
/// hosts.insert("*.eu.example.com", "eu").unwrap();
///
/// assert_eq!(hosts.get("API.example.com:8443"), Some(&"api"));
/// assert_eq!(hosts.get("www.example.com"), Some(&"any"));
/// assert_eq!(hosts.get("a.b.eu.example.com."), Some(&"eu"));
/// assert_eq!(hosts.get("example.com"), None);
/// assert_eq!(hosts.get("[::1]:8080"), None);
/// ```
#[derive(Debug, Clone)]
pub struct Hosts<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the suffix with its leading dot (`.example.com`).
    wildcard: HashMap<Box<str>, T>,
}

impl<T> Default for Hosts<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Hosts<T> {
    /// An empty table.
    pub fn new() -> Self {
        Hosts {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }

    /// Whether no host is registered.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Registers `name` (`api.example.com` or `*.example.com`).
    pub fn insert(&mut self, name: &str, value: T) -> Result<(), HostError> {
        let key = Self::key(name)?;
        let (map, key) = match key.strip_prefix('*') {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, key.as_str()),
        };
        if map.contains_key(key) {
            return Err(HostError::Duplicate(name.to_owned()));
        }
        map.insert(key.into(), value);
        Ok(())
    }

    /// The value of `name` if registered, for mutation.
    pub fn get_registered_mut(&mut self, name: &str) -> Option<&mut T> {
        let key = Self::key(name).ok()?;
        match key.strip_prefix('*') {
            Some(suffix) => self.wildcard.get_mut(suffix),
            None => self.exact.get_mut(key.as_str()),
        }
    }

    /// The canonical form of a name to register: lower case, no final dot, checked.
    fn key(name: &str) -> Result<String, HostError> {
        let invalid = || HostError::Invalid(name.to_owned());
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let plain = lower.strip_prefix("*.").unwrap_or(&lower);
        let ok = !plain.is_empty()
            && lower.len() <= MAX_HOST
            && plain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !plain.starts_with('.')
            && !plain.contains("..");
        if !ok {
            return Err(invalid());
        }
        Ok(lower)
    }

    /// The value for the host of a request (`Host` header or `:authority`): the exact name,
    /// else the longest matching wildcard suffix.
    pub fn get(&self, host: &str) -> Option<&T> {
        let mut buf = [0u8; MAX_HOST];
        let name = canonical(host, &mut buf)?;
        if let Some(v) = self.exact.get(name) {
            return Some(v);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Each dot starts a suffix; the first (leftmost) one that is registered is the longest.
        // The dot at index 0 would leave an empty label in front: not a match.
        name.char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .find_map(|(i, _)| self.wildcard.get(&name[i..]))
    }
}

/// `host` lower-cased into `buf`, without port and final dot; `None` for an IP literal in
/// brackets, an empty name or one too long for any registered name to match.
fn canonical<'b>(host: &str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let mut h = Hosts::new();
        h.insert("a.example.com", 1).unwrap();
        h.insert("*.example.com", 2).unwrap();
        h.insert("*.b.example.com", 3).unwrap();
        assert_eq!(h.get("a.example.com"), Some(&1));
        assert_eq!(h.get("A.EXAMPLE.COM:80"), Some(&1));
        assert_eq!(h.get("x.a.example.com"), Some(&2));
        assert_eq!(h.get("x.b.example.com"), Some(&3));
        assert_eq!(h.get("b.example.com"), Some(&2));
        assert_eq!(h.get(".example.com"), None);
        assert_eq!(h.get("example.com"), None);
        assert_eq!(h.get(""), None);
        assert_eq!(h.get(":80"), None);
    }

    #[test]
    fn bad_and_duplicate_names() {
        let mut h = Hosts::new();
        for bad in ["", "*", "*.", "a..b", "a b", "*.*.x", "x.*.y", "a/b", ".a"] {
            assert!(
                matches!(h.insert(bad, 0), Err(HostError::Invalid(_))),
                "{bad}"
            );
        }
        h.insert("Api.Example.com.", 0).unwrap();
        assert_eq!(
            h.insert("api.example.com", 1),
            Err(HostError::Duplicate("api.example.com".into()))
        );
        assert_eq!(h.get("api.example.com"), Some(&0));
    }
}
