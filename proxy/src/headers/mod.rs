//! Header rewriting for a forwarded request and its response, in the order a proxy must apply
//! it: strip hop-by-hop headers (the fixed list and whatever `Connection` names), drop the
//! client's `Forwarded` / `X-Forwarded-*` unless the peer is a [trusted proxy](TrustedProxies),
//! then set the gateway's own `X-Forwarded-For/-Host/-Proto`. Because the gateway's headers are
//! set last, a client's `Connection: X-Forwarded-For` cannot strip them. The hop-by-hop rules
//! themselves are [`httpkit::hop_by_hop`]'s.
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

use http::header::{CONNECTION, FORWARDED, HeaderName, UPGRADE};
use http::{HeaderMap, HeaderValue};
use httpkit::hop_by_hop::{self, Found};

mod trusted;

pub use trusted::{InvalidNetwork, TrustedProxies};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
) -> Found {
    // One pass over the names tells whether the lookups below can find anything: most
    // requests carry no forwarding header.
    let has_forwarding = headers.keys().any(|name| FORWARDING.contains(name));
    let found = hop_by_hop::strip(headers);
    let trusted_peer = info.client.is_some_and(|c| trusted.contains(c));
    if !trusted_peer && has_forwarding {
        for name in &FORWARDING {
            headers.remove(name);
        }
    }
    // What is left of the client's forwarding headers: a trusted proxy's, to extend or keep.
    let kept = trusted_peer && has_forwarding;
    // X-Forwarded-For: a trusted proxy's list, extended with its address; else just the peer.
    if let Some(client) = info.client {
        // The address is written into a stack buffer; only the header value allocates.
        let mut ip = [0u8; 48];
        let ip = write_ip(client, &mut ip);
        let value = if kept && headers.contains_key(X_FORWARDED_FOR) {
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
    if !(kept && headers.contains_key(X_FORWARDED_HOST))
        && let Some(host) = &info.host
    {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if !(kept && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
    }
    found
}

/// The headers that say where a request came from, which only a trusted proxy may send.
const FORWARDING: [HeaderName; 4] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
];

/// `client` as text in `buf` (an IPv4 client seen through a dual-stack socket as IPv4): IPv4
/// digit by digit, IPv6 through its `Display`.
fn write_ip(client: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    match client.to_canonical() {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            &buf[..n]
        }
        v6 => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let n = usize::try_from(cursor.position()).unwrap_or(0);
            &buf[..n]
        }
    }
}

/// Strips hop-by-hop headers from an upstream's response, except on a `101 Switching
/// Protocols`, whose `Connection` and `Upgrade` make the switch. `Trailer` is kept.
pub fn rewrite_response_headers(headers: &mut HeaderMap, switching_protocols: bool) {
    let switch = switching_protocols.then(|| {
        (
            headers.get(CONNECTION).cloned(),
            headers.get(UPGRADE).cloned(),
        )
    });
    hop_by_hop::strip(headers);
    if let Some((Some(c), Some(u))) = switch {
        headers.insert(CONNECTION, c);
        headers.insert(UPGRADE, u);
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
    fn addresses_are_written_as_display_writes_them() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.0.2.17",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(write_ip(addr, &mut buf), ip.as_bytes());
        }
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(write_ip(mapped, &mut buf), b"10.1.2.3");
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
