//! Hop-by-hop headers (RFC 9110 §7.6.1): the ones that describe one connection and are never
//! forwarded, the `Connection` header's options, and the framing a gateway refuses.
//!
//! A server calls [`consume_connection_options`] on receipt, before any middleware, so that
//! what an auth gate checks is what the upstream will see; a proxy calls [`strip`] on what it
//! forwards, both ways.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use httpkit::hop_by_hop;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", HeaderValue::from_static("keep-alive, x-secret, upgrade"));
//! headers.insert("x-secret", HeaderValue::from_static("dropped"));
//! headers.insert("upgrade", HeaderValue::from_static("websocket"));
//! hop_by_hop::consume_connection_options(&mut headers);
//! assert!(headers.get("x-secret").is_none());
//! assert_eq!(headers["connection"], "keep-alive, upgrade");
//!
//! let found = hop_by_hop::strip(&mut headers);
//! assert_eq!(found.upgrade.unwrap(), "websocket");
//! assert!(headers.is_empty());
//! ```

use http::header::Entry;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};

/// Headers that describe one connection, never forwarded as they are (RFC 9110 §7.6.1, plus
/// `Proxy-Connection`, `Keep-Alive` and `HTTP2-Settings` as Go's reverse proxy also strips).
/// Not `Trailer`, which RFC 2616 listed: RFC 9110 does not, and a relay forwards it with the
/// trailers it announces (Go's proxy strips it and announces it again).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Headers a `Connection` header can never remove: the target of the request, the length of
/// its body and the trailer fields it announces are facts about the message, not the
/// connection.
const PROTECTED: [HeaderName; 3] = [HOST, CONTENT_LENGTH, TRAILER];

/// Whether `name` is one of the fixed hop-by-hop headers.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_index(name).is_some()
}

/// Where `name` (any case) is in [`HOP_BY_HOP`]: picked by its length first, so that a name
/// is compared with at most two of them (every `Connection` token goes through here).
fn hop_index(name: &[u8]) -> Option<usize> {
    let candidates: &[usize] = match name.len() {
        2 => &[5],
        7 => &[7],
        10 => &[0, 2],
        14 => &[8],
        16 => &[1],
        17 => &[6],
        18 => &[3],
        19 => &[4],
        _ => &[],
    };
    candidates
        .iter()
        .copied()
        .find(|&i| name.eq_ignore_ascii_case(HOP_BY_HOP[i].as_str().as_bytes()))
}

/// The comma-separated tokens of every value of `name`, trimmed, empty ones included.
pub fn tokens<'a>(
    headers: &'a HeaderMap,
    name: &'a HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether a `Connection` token is about the connection itself: empty, `close`, a fixed
/// hop-by-hop header (which go anyway), or a protected one (which never go).
fn connection_level(token: &[u8]) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case(b"close")
        || is_hop_by_hop(token)
        || PROTECTED
            .iter()
            .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Removes, on receipt, every header a `Connection` header names (except `Host`,
/// `Content-Length` and the fixed hop-by-hop headers, which [`strip`] handles), and drops those
/// names from `Connection`. Costs one lookup when there is no `Connection` header, and no
/// allocation when it names only connection-level tokens (`keep-alive`, `close`, `upgrade`).
pub fn consume_connection_options(headers: &mut HeaderMap) {
    if tokens(headers, &CONNECTION).all(connection_level) {
        return;
    }
    let mut keep = Vec::new();
    let mut drop = Vec::new();
    for t in tokens(headers, &CONNECTION) {
        if connection_level(t) {
            if !t.is_empty() {
                keep.push(t.to_ascii_lowercase());
            }
        } else if let Ok(name) = HeaderName::from_bytes(t) {
            drop.push(name);
        }
    }
    for name in &drop {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    if !keep.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&keep.join(&b", "[..]))
    {
        headers.insert(CONNECTION, v);
    }
}

/// Whether a request's `Transfer-Encoding` is anything but a single `chunked`, the only
/// transfer coding a gateway should accept from a client: `identity` is obsolete,
/// `gzip, chunked` asks the gateway to decode, and `chunked, chunked` or a second line are
/// framing games. nginx refuses the same set with `400`.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use httpkit::hop_by_hop::odd_transfer_encoding;
///
/// let mut h = HeaderMap::new();
/// h.insert("transfer-encoding", HeaderValue::from_static("Chunked"));
/// assert!(!odd_transfer_encoding(&h));
/// h.insert("transfer-encoding", HeaderValue::from_static("identity, chunked"));
/// assert!(odd_transfer_encoding(&h));
/// ```
pub fn odd_transfer_encoding(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => false,
        (Some(v), None) => !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// What [`strip`] found that the message still needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// `TE` listed `trailers` (the sender accepts trailers).
    pub te_trailers: bool,
    /// The protocol asked for with `Connection: upgrade` + `Upgrade`, except `h2c`, which is
    /// never forwarded.
    pub upgrade: Option<HeaderValue>,
}

/// Removes the hop-by-hop headers and every header a `Connection` header names (except
/// `Host`, `Content-Length` and `Trailer`); returns what the caller may want to forward again.
pub fn strip(headers: &mut HeaderMap) -> Found {
    // One pass over the names finds which fixed hop-by-hop headers are there (most messages
    // carry none, a response from nginx only `Connection`): a lookup, a hash, for each of
    // them would cost more. Everything below needs one of them (`Connection`, `TE`, `Upgrade`).
    // (`HeaderName`s compare as small integers when standard: cheaper than by their text.)
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return Found::default();
    }
    let has = |name: &HeaderName| {
        HOP_BY_HOP
            .iter()
            .position(|h| h == name)
            .is_some_and(|i| present & (1 << i) != 0)
    };
    let te_trailers = has(&TE) && tokens(headers, &TE).any(|t| t.eq_ignore_ascii_case(b"trailers"));
    // `Connection` read and removed in one lookup: the headers it names (tokens naming
    // hop-by-hop headers or `close` need no name of their own, so the common values allocate
    // nothing), and whether it asks for an upgrade.
    let mut named: Vec<HeaderName> = Vec::new();
    let mut asks_upgrade = false;
    if has(&CONNECTION)
        && let Entry::Occupied(lines) = headers.entry(CONNECTION)
    {
        for t in lines
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
        {
            asks_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            if !connection_level(t)
                && let Ok(name) = HeaderName::from_bytes(t)
            {
                named.push(name);
            }
        }
        lines.remove_entry_mult();
    }
    let upgrade = if asks_upgrade && has(&UPGRADE) {
        headers
            .get(UPGRADE)
            .filter(|v| {
                !v.as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
            })
            .cloned()
    } else {
        None
    };
    for name in &named {
        headers.remove(name);
    }
    // `Connection` (the first) is gone already.
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    Found {
        te_trailers,
        upgrade,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index picked by length finds every hop-by-hop name in any case, and nothing else.
    #[test]
    fn hop_index_agrees_with_the_list() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            let name = h.as_str();
            assert_eq!(hop_index(name.as_bytes()), Some(i), "{name}");
            assert_eq!(
                hop_index(name.to_ascii_uppercase().as_bytes()),
                Some(i),
                "{name}"
            );
            // One letter changed, or one more or fewer: not a hop-by-hop name.
            let mut changed = name.as_bytes().to_vec();
            changed[0] = b'x';
            assert_eq!(hop_index(&changed), None, "{name}");
            assert_eq!(hop_index(&name.as_bytes()[1..]), None, "{name}");
            assert_eq!(hop_index(format!("{name}s").as_bytes()), None, "{name}");
        }
        for other in [
            "host",
            "content-length",
            "x-request-id",
            "accept",
            "",
            "connectionx",
        ] {
            assert_eq!(hop_index(other.as_bytes()), None, "{other}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(CONNECTION),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Custom ,  x-other"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAA"),
            ("x-custom", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        let found = strip(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-kept"], "3");
        assert_eq!(
            h["trailer"], "x-checksum",
            "the trailers it announces pass with it"
        );
        assert!(!found.te_trailers);
        assert_eq!(found.upgrade, None, "upgrade without Connection: upgrade");
    }

    #[test]
    fn connection_cannot_remove_host_content_length_or_trailer() {
        let mut h = map(&[
            ("connection", "host, content-length, Trailer, x-a"),
            ("host", "example.com"),
            ("content-length", "5"),
            ("trailer", "x-sum"),
            ("x-a", "1"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["trailer"], "x-sum");
    }

    #[test]
    fn connection_options_are_consumed_on_receipt() {
        // Only connection-level tokens: nothing changes.
        let mut h = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "ws")]);
        let before = h.clone();
        consume_connection_options(&mut h);
        assert_eq!(h, before);

        let mut h = map(&[
            ("connection", "X-Request-Id, keep-alive"),
            ("connection", "x-forwarded-for,,host, TE"),
            ("x-request-id", "client-chosen"),
            ("x-forwarded-for", "6.6.6.6"),
            ("host", "example.com"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        consume_connection_options(&mut h);
        assert!(h.get("x-request-id").is_none());
        assert!(h.get("x-forwarded-for").is_none());
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "1");
        assert_eq!(h["connection"], "keep-alive, host, te");
    }

    #[test]
    fn te_trailers_and_upgrades_are_reported() {
        let mut h = map(&[
            ("te", "gzip, Trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let found = strip(&mut h);
        assert!(found.te_trailers);
        assert_eq!(found.upgrade.unwrap(), "websocket");
        let mut h = map(&[
            ("connection", "upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "x"),
        ]);
        assert_eq!(strip(&mut h).upgrade, None, "h2c is never forwarded");
    }
}
