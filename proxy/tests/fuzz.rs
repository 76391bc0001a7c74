//! Header rewriting on arbitrary header maps: never a panic, and the invariants hold.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proxy::headers::{
    Forwarding, HOP_BY_HOP, PROTECTED, TrustedProxies, consume_connection_options,
    odd_transfer_encoding, rewrite_request_headers, rewrite_response_headers,
};

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
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn request_rewriting_holds_its_invariants(
        pairs in proptest::collection::vec((name(), value()), 0..16),
        client in proptest::option::of(any::<[u8; 4]>()),
        trusted in any::<bool>(),
    ) {
        let mut h = header_map(&pairs);
        let before = h.clone();
        let host = before.get("host").cloned();
        consume_connection_options(&mut h);
        let client = client.map(IpAddr::from);
        let info = Forwarding { client, host: host.clone(), proto: "http" };
        let trust = if trusted { TrustedProxies::parse(["0.0.0.0/0"]).unwrap() } else { TrustedProxies::none() };
        rewrite_request_headers(&mut h, &info, &trust);

        // `Trailer` is announced again on purpose when the request carries trailers.
        for hop in HOP_BY_HOP.iter().filter(|h| *h != "trailer") {
            prop_assert!(!h.contains_key(hop), "{} left", hop);
        }
        for p in PROTECTED.iter() {
            prop_assert_eq!(h.get_all(p).iter().count(), before.get_all(p).iter().count(), "{} touched", p);
        }
        match client {
            Some(ip) if !trusted => {
                let xff: Vec<_> = h.get_all("x-forwarded-for").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
                prop_assert_eq!(xff, vec![ip.to_string()]);
                prop_assert!(!h.contains_key("forwarded"));
            }
            Some(ip) => {
                let last = h.get_all("x-forwarded-for").iter().next_back().unwrap().as_bytes().to_vec();
                prop_assert!(last.ends_with(ip.to_string().as_bytes()), "{:?}", last);
            }
            None if !trusted => prop_assert!(!h.contains_key("x-forwarded-for")),
            None => {}
        }
        prop_assert_eq!(h.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"http"[..]));
        // A trusted proxy's X-Forwarded-Host stands; anyone else's is replaced.
        if let (Some(host), false) = (host, trusted && client.is_some()) {
            prop_assert_eq!(h.get("x-forwarded-host"), Some(&host));
        }
    }

    #[test]
    fn response_rewriting_and_framing_checks_never_panic(
        pairs in proptest::collection::vec((name(), value()), 0..16),
        switching in any::<bool>(),
    ) {
        let mut h = header_map(&pairs);
        let _ = odd_transfer_encoding(&h);
        rewrite_response_headers(&mut h, switching);
        prop_assert!(!h.contains_key("transfer-encoding"));
        prop_assert!(!h.contains_key("keep-alive"));
    }
}
