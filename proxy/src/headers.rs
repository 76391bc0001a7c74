//! Header rewriting for a forwarded request and its response, in the order a proxy must apply
//! it: strip hop-by-hop headers (the fixed list and whatever `Connection` names), drop the
//! client's `Forwarded` / `X-Forwarded-*` unless the peer is a trusted proxy, then set the
//! gateway's own `X-Forwarded-For/-Host/-Proto`. Because the gateway's headers are set last, a
//! client's `Connection: X-Forwarded-For` cannot strip them.
//!
//! ```
//! use std::net::IpAddr;
//! use http::{HeaderMap, HeaderValue};
//! use proxy::headers::{Forwarding, TrustedProxies, rewrite_request_headers};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
//! headers.insert("x-secret", HeaderValue::from_static("dropped"));
//! headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6")); // spoofed
//!
//! let client: IpAddr = "192.0.2.7".parse().unwrap();
//! let info = Forwarding { client: Some(client), host: Some(HeaderValue::from_static("example.com")), proto: "http" };
//! rewrite_request_headers(&mut headers, &info, &TrustedProxies::none());
//!
//! assert!(headers.get("x-secret").is_none());
//! assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
//! assert_eq!(headers["x-forwarded-host"], "example.com");
//! assert_eq!(headers["x-forwarded-proto"], "http");
//! ```

use std::net::IpAddr;

use http::header::{
    CONNECTION, CONTENT_LENGTH, FORWARDED, HOST, HeaderName, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, never forwarded as they are (RFC 9110 §7.6.1, plus
/// `Proxy-Connection`, `Keep-Alive` and `HTTP2-Settings` as Go's reverse proxy also strips).
pub const HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Headers a `Connection` header can never remove: the target of the request and the length
/// of its body are facts about the message, not the connection.
pub const PROTECTED: [HeaderName; 2] = [HOST, CONTENT_LENGTH];

/// Whether a trimmed `Connection` token names a header of its own to remove: not empty, not
/// `close`, and not one of the [`HOP_BY_HOP`] headers, which go anyway.
fn names_an_end_to_end_header(token: &[u8]) -> bool {
    !token.is_empty()
        && !token.eq_ignore_ascii_case(b"close")
        && !HOP_BY_HOP
            .iter()
            .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Removes, on receipt, every header a `Connection` header names (except [`PROTECTED`] and
/// the hop-by-hop headers [`strip_hop_by_hop`] handles itself, such as `Upgrade` and `TE`),
/// and drops those names from `Connection`.
///
/// RFC 9110 §7.6.1 has an intermediary remove connection options before forwarding. A server
/// that runs middleware before the proxy calls this first, so that the auth gate sees what
/// the upstream will see, and a client's `Connection: X-Request-Id` cannot remove a header
/// the gateway sets later. Costs one lookup when there is no `Connection` header and no
/// allocation when it names only hop-by-hop headers (`keep-alive`, `close`, `upgrade`).
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use proxy::headers::consume_connection_options;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", HeaderValue::from_static("x-admin-token, upgrade"));
/// headers.insert("upgrade", HeaderValue::from_static("websocket"));
/// headers.insert("x-admin-token", HeaderValue::from_static("letmein"));
/// consume_connection_options(&mut headers);
/// assert!(headers.get("x-admin-token").is_none());
/// assert_eq!(headers["connection"], "upgrade");
/// assert_eq!(headers["upgrade"], "websocket");
/// ```
pub fn consume_connection_options(headers: &mut HeaderMap) {
    let connection_level = |t: &[u8]| {
        !names_an_end_to_end_header(t)
            || PROTECTED
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h.as_str().as_bytes()))
    };
    let tokens = || {
        headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    if tokens().all(connection_level) {
        return;
    }
    let mut keep = Vec::new();
    let mut drop = Vec::new();
    for t in tokens() {
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
    if !keep.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&keep.join(&b", "[..])) {
            headers.insert(CONNECTION, v);
        }
    }
}

/// Whether a request's `Transfer-Encoding` is anything but a single `chunked`, which is the
/// only transfer coding a gateway should accept from a client: `identity` is obsolete,
/// `gzip, chunked` asks the gateway to decode, and `chunked, chunked` or a second
/// `Transfer-Encoding` line are framing games. nginx refuses the same set with `400`.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use proxy::headers::odd_transfer_encoding;
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

/// What the hop-by-hop pass found that the request still needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HopByHop {
    /// The client sent `TE: trailers` (to be forwarded: it says the client accepts trailers).
    pub te_trailers: bool,
    /// The protocol the client asked to upgrade to (`Connection: upgrade` + `Upgrade`), except
    /// `h2c`, which is never forwarded.
    pub upgrade: Option<HeaderValue>,
}

/// Whether a `Connection` header lists `token` (comma-separated, trimmed, case-insensitive).
fn lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes the hop-by-hop headers and every header named in a `Connection` header (except
/// [`PROTECTED`] ones).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> HopByHop {
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    let upgrade = headers
        .get(UPGRADE)
        .filter(|_| lists(headers, "upgrade"))
        .filter(|v| {
            !v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
        })
        .cloned();
    // Tokens naming hop-by-hop headers (`keep-alive`, `upgrade`) or `close` need no name of
    // their own: the common `Connection` values allocate nothing here.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| names_an_end_to_end_header(t))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| !PROTECTED.contains(n))
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    HopByHop {
        te_trailers,
        upgrade,
    }
}

/// Networks whose peers may set `X-Forwarded-*` and `Forwarded` (load balancers in front of
/// the gateway). Empty by default: nobody is trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Trusts nobody.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses networks like `10.0.0.0/8`, `127.0.0.1` or `::1/128`.
    pub fn parse<S: AsRef<str>>(
        networks: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidNetwork> {
        let mut out = Vec::new();
        for net in networks {
            let net = net.as_ref();
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (net, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| InvalidNetwork(net.to_owned()))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| InvalidNetwork(net.to_owned()))?,
                None => max,
            };
            out.push((addr, len));
        }
        Ok(TrustedProxies(out))
    }

    /// Whether `peer` is inside one of the networks.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|&(net, len)| match (net, peer) {
            (IpAddr::V4(n), IpAddr::V4(p)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(p) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(p)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(p) & mask
            }
            _ => false,
        })
    }
}

/// A trusted-proxy network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or network (like 10.0.0.0/8)")]
pub struct InvalidNetwork(pub String);

/// What the gateway knows about the client connection.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The peer address of the client connection, when the server recorded it (without it no
    /// `X-Forwarded-For` is set).
    pub client: Option<IpAddr>,
    /// The `Host` the client asked for (or the authority of an absolute-form request).
    pub host: Option<HeaderValue>,
    /// `http` or `https`: how the client reached the gateway.
    pub proto: &'static str,
}

/// Rewrites the headers of a request about to be forwarded (see the [module docs](self)).
/// Returns what the hop-by-hop pass found; the caller re-adds `TE: trailers` and the upgrade
/// headers it decides to forward.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    info: &Forwarding,
    trusted: &TrustedProxies,
) -> HopByHop {
    let trailer = announced_trailers(headers);
    let found = strip_hop_by_hop(headers);
    reannounce(headers, trailer);
    let trusted_peer = info.client.is_some_and(|c| trusted.contains(c));
    if !trusted_peer {
        headers.remove(FORWARDED);
        headers.remove(X_FORWARDED_FOR);
        headers.remove(X_FORWARDED_HOST);
        headers.remove(X_FORWARDED_PROTO);
    }
    // X-Forwarded-For: a trusted proxy's list, extended with its address; else just the peer.
    if let Some(client) = info.client {
        // The address is written into a stack buffer; only the header value allocates.
        let mut ip = [0u8; 48];
        let ip = {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut ip[..]);
            // An IPv4 client seen through a dual-stack socket is written as IPv4.
            let _ = write!(cursor, "{}", client.to_canonical());
            let n = usize::try_from(cursor.position()).unwrap_or(0);
            &ip[..n]
        };
        let value = if headers.contains_key(X_FORWARDED_FOR) {
            let mut list = Vec::new();
            for v in headers.get_all(X_FORWARDED_FOR) {
                list.extend_from_slice(v.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(ip);
            HeaderValue::from_bytes(&list)
        } else {
            HeaderValue::from_bytes(ip)
        };
        if let Ok(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = &info.host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
    }
    found
}

/// The `Trailer` header's values: they name the trailer fields the body will end with, and are
/// announced again after the hop-by-hop pass (as Go's reverse proxy does), so that trailers
/// pass through.
fn announced_trailers(headers: &HeaderMap) -> Vec<HeaderValue> {
    headers.get_all(TRAILER).iter().cloned().collect()
}

fn reannounce(headers: &mut HeaderMap, trailer: Vec<HeaderValue>) {
    for value in trailer {
        headers.append(TRAILER, value);
    }
}

/// Strips hop-by-hop headers from an upstream's response, except on a `101 Switching
/// Protocols`, whose `Connection` and `Upgrade` make the switch. `Trailer` is kept.
pub fn rewrite_response_headers(headers: &mut HeaderMap, switching_protocols: bool) {
    let trailer = announced_trailers(headers);
    rewrite_response_hop_by_hop(headers, switching_protocols);
    reannounce(headers, trailer);
}

fn rewrite_response_hop_by_hop(headers: &mut HeaderMap, switching_protocols: bool) {
    if switching_protocols {
        let connection = headers.get(CONNECTION).cloned();
        let upgrade = headers.get(UPGRADE).cloned();
        strip_hop_by_hop(headers);
        if let (Some(c), Some(u)) = (connection, upgrade) {
            headers.insert(CONNECTION, c);
            headers.insert(UPGRADE, u);
        }
    } else {
        strip_hop_by_hop(headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn info(client: &str) -> Forwarding {
        Forwarding {
            client: Some(client.parse().unwrap()),
            host: Some(HeaderValue::from_static("gw.example")),
            proto: "http",
        }
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
        let found = strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "3");
        assert!(!found.te_trailers);
        assert_eq!(
            found.upgrade, None,
            "upgrade without Connection: upgrade is dropped"
        );
    }

    #[test]
    fn connection_cannot_remove_host_or_content_length() {
        let mut h = map(&[
            ("connection", "host, content-length, x-a"),
            ("host", "example.com"),
            ("content-length", "5"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn connection_options_are_consumed_on_receipt() {
        // Only hop-by-hop tokens: nothing changes.
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
        // A header set after this point survives the proxy's own pass.
        h.insert("x-request-id", HeaderValue::from_static("gateway-id"));
        let found = rewrite_request_headers(&mut h, &info("192.0.2.1"), &TrustedProxies::none());
        assert!(found.te_trailers);
        assert_eq!(h["x-request-id"], "gateway-id");
    }

    #[test]
    fn te_trailers_and_upgrades_are_reported() {
        let mut h = map(&[
            ("te", "gzip, Trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let found = strip_hop_by_hop(&mut h);
        assert!(found.te_trailers);
        assert_eq!(found.upgrade.unwrap(), "websocket");
        let mut h = map(&[
            ("connection", "upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "x"),
        ]);
        assert_eq!(
            strip_hop_by_hop(&mut h).upgrade,
            None,
            "h2c is never forwarded"
        );
    }

    #[test]
    fn untrusted_clients_cannot_spoof_or_strip_forwarding_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            (
                "connection",
                "x-forwarded-for, x-forwarded-host, x-forwarded-proto",
            ),
        ]);
        rewrite_request_headers(&mut h, &info("192.0.2.1"), &TrustedProxies::none());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());
    }

    #[test]
    fn trusted_proxies_are_appended_to() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8", "::1"]).unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-host", "public.example"),
            ("x-forwarded-proto", "https"),
        ]);
        rewrite_request_headers(&mut h, &info("10.1.2.3"), &trusted);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 198.51.100.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "public.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut h = map(&[("x-forwarded-for", "1.1.1.1")]);
        rewrite_request_headers(&mut h, &info("::1"), &trusted);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, ::1");
    }

    #[test]
    fn networks_parse_and_match() {
        let t =
            TrustedProxies::parse(["10.0.0.0/8", "192.168.1.1", "fd00::/8", "0.0.0.0/0"]).unwrap();
        assert!(t.contains("10.255.0.1".parse().unwrap()));
        assert!(
            t.contains("::ffff:10.0.0.1".parse().unwrap()),
            "v4-mapped v6"
        );
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::1/129"] {
            assert!(TrustedProxies::parse([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_hop_by_hop_stripped_except_for_a_switch() {
        let mut h = map(&[
            ("connection", "x-internal"),
            ("x-internal", "1"),
            ("keep-alive", "5"),
            ("x-app", "2"),
        ]);
        rewrite_response_headers(&mut h, false);
        assert_eq!(h.len(), 1);
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "k"),
        ]);
        rewrite_response_headers(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["sec-websocket-accept"], "k");
    }
}
