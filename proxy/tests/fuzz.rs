//! Header rewriting on arbitrary header maps: never a panic, and the invariants hold.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use httpkit::hop_by_hop::{consume_connection_options, odd_transfer_encoding};
use proptest::prelude::*;
use proxy::headers::{
    Forwarding, TrustedProxies, rewrite_request_headers, rewrite_response_headers,
};

/// RFC 9110 §7.6.1's hop-by-hop headers, with the ones Go's proxy also strips: none may be
/// forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Facts about the message, which no `Connection` header may remove (`Trailer` announces the
/// trailer fields the body ends with, which are forwarded).
const PROTECTED: [&str; 3] = ["host", "content-length", "trailer"];

/// Names from a pool that mixes hop-by-hop, forwarding, protected and random ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("connection".to_owned()),
        Just("keep-alive".to_owned()),
        Just("upgrade".to_owned()),
        Just("te".to_owned()),
        Just("trailer".to_owned()),
        Just("transfer-encoding".to_owned()),
        Just("x-forwarded-for".to_owned()),
        Just("x-forwarded-host".to_owned()),
        Just("forwarded".to_owned()),
        Just("host".to_owned()),
        Just("content-length".to_owned()),
        Just("x-request-id".to_owned()),
        "[a-z][a-z0-9-]{0,12}",
    ]
}

/// Values: token lists naming headers, or arbitrary visible bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(name(), 0..5).prop_map(|v| v.join(", ").into_bytes()),
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff], 0..40),
    ]
}

/// A client address: IPv4, IPv6, or IPv4-mapped IPv6, often inside the trusted networks.
fn client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<u8>().prop_map(|b| IpAddr::from([10, b, 0, 1])),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        any::<u16>().prop_map(|x| IpAddr::V6(Ipv6Addr::new(0xfd00, x, 0, 0, 0, 0, 0, 1))),
        any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
    ]
}

/// Trusted networks: none, everyone, or a partial list (chains of proxies where only some
/// hops are trusted).
fn trust() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        Just(vec![]),
        Just(vec!["0.0.0.0/0", "::/0"]),
        proptest::sample::subsequence(
            vec![
                "10.0.0.0/8",
                "10.1.0.0/16",
                "192.168.1.1",
                "fd00::/8",
                "::1",
                "127.0.0.0/8"
            ],
            0..4
        ),
    ]
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `peer` is inside one of `networks` (`ip` or `ip/len`), bit by bit.
fn trust_model(networks: &[&str], peer: IpAddr) -> bool {
    let networks = networks.iter().map(|n| match n.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().unwrap(), len.parse::<u8>().unwrap()),
        None => {
            let ip: IpAddr = n.parse().unwrap();
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    });
    let bits = |ip: IpAddr| -> Vec<bool> {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
            .collect()
    };
    let peer = canonical(peer);
    networks.into_iter().any(|(net, len)| {
        net.is_ipv4() == peer.is_ipv4()
            && bits(net)[..usize::from(len)] == bits(peer)[..usize::from(len)]
    })
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            h.append(n, v);
        }
    }
    h
}

proptest! {
    // Failures are saved next to this file (fuzz.proptest-regressions) and replayed first.
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn request_rewriting_holds_its_invariants(
        pairs in proptest::collection::vec((name(), value()), 0..16),
        client in proptest::option::of(client()),
        trust in trust(),
    ) {
        let mut h = header_map(&pairs);
        let before = h.clone();
        let host = before.get("host").cloned();
        consume_connection_options(&mut h);
        let info = Forwarding { client, host: host.clone(), proto: "http" };
        // Whether this peer may set X-Forwarded-*, by a model of CIDR matching.
        let trusted = client.is_some_and(|c| trust_model(&trust, c));
        let trust = TrustedProxies::parse(trust).unwrap();
        rewrite_request_headers(&mut h, &info, &trust);

        for hop in HOP_BY_HOP.iter() {
            prop_assert!(!h.contains_key(*hop), "{} left", hop);
        }
        for p in PROTECTED.iter() {
            prop_assert_eq!(h.get_all(*p).iter().count(), before.get_all(*p).iter().count(), "{} touched", p);
        }
        match client {
            Some(ip) if !trusted => {
                let ip = canonical(ip);
                let xff: Vec<_> = h.get_all("x-forwarded-for").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
                prop_assert_eq!(xff, vec![ip.to_string()]);
                prop_assert!(!h.contains_key("forwarded"));
            }
            Some(ip) => {
                let ip = canonical(ip);
                let last = h.get_all("x-forwarded-for").iter().next_back().unwrap().as_bytes().to_vec();
                prop_assert!(last.ends_with(ip.to_string().as_bytes()), "{:?}", last);
            }
            None if !trusted => prop_assert!(!h.contains_key("x-forwarded-for")),
            None => {}
        }
        prop_assert_eq!(h.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"http"[..]));
        // A trusted proxy's X-Forwarded-Host stands; anyone else's is replaced.
        if let (Some(host), false) = (host, trusted) {
            prop_assert_eq!(h.get("x-forwarded-host"), Some(&host));
        }
    }

    #[test]
    fn response_rewriting_and_framing_checks_never_panic(
        pairs in proptest::collection::vec((name(), value()), 0..16),
        switching in any::<bool>(),
    ) {
        let mut h = header_map(&pairs);
        // Anything but exactly one `Transfer-Encoding: chunked` (any case, trimmed) is odd.
        let te: Vec<&[u8]> = h.get_all("transfer-encoding").iter().map(|v| v.as_bytes()).collect();
        let expected = match te.as_slice() {
            [] => false,
            [one] => !one.trim_ascii().eq_ignore_ascii_case(b"chunked"),
            _ => true,
        };
        prop_assert_eq!(odd_transfer_encoding(&h), expected, "{:?}", te);
        rewrite_response_headers(&mut h, switching);
        prop_assert!(!h.contains_key("transfer-encoding"));
        prop_assert!(!h.contains_key("keep-alive"));
    }
}
