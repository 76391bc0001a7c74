//! Hostile input: raw bytes from a client, through the gateway, to an upstream that records
//! exactly what it receives. Every case checks what the client got and what the upstream saw.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::net::SocketAddr;

fn hostile_config(up: SocketAddr, inline: bool) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
inline_http1 = {inline}
max_body_bytes = 1000
header_read_timeout_ms = 3000

[upstreams.api]
targets = ["http://{up}"]
pool_max_idle_per_target = 0
response_timeout_ms = 500

[upstreams.admin]
targets = ["http://{up}"]
pool_max_idle_per_target = 0

[[routes]]
path = "/api/*path"
methods = ["GET", "POST"]
upstream = "api"

[[routes]]
path = "/static/*path"
methods = ["GET"]
upstream = "api"

[[routes]]
path = "/admin/*path"
methods = ["GET"]
upstream = "admin"
auth = {{ header = "X-Admin-Token", secrets = ["letmein"] }}
"#
    )
}

struct Rig {
    gw: Gateway,
    up: Recorder,
}

/// Every case runs against both HTTP/1.1 servers: the inline one (which hands what it does
/// not serve to hyper) and hyper alone.
async fn rigs() -> Vec<Rig> {
    // config: server.inline_http1
    let mut rigs = Vec::new();
    for inline in [true, false] {
        let up = Recorder::start().await;
        let gw = start_gateway(hostile_config(up.addr, inline)).await;
        rigs.push(Rig { gw, up });
    }
    rigs
}

/// Every upstream connection carried exactly one request, framed one way, and its bytes were
/// exactly that request: nothing hidden after it.
fn assert_clean(seen: &[Seen], case: &str) {
    for conn in seen {
        let raw = String::from_utf8_lossy(&conn.raw);
        assert!(conn.requests.len() <= 1, "{case}: {raw}");
        for (head, _) in &conn.requests {
            // The bytes after the head are exactly the body its framing announces.
            let end = raw.find("\r\n\r\n").unwrap() + 4;
            let rest = &conn.raw[end..];
            match head.headers.get("content-length") {
                Some(n) => assert_eq!(
                    rest.len(),
                    n.to_str().unwrap().parse::<usize>().unwrap(),
                    "{case}: {raw}"
                ),
                None if head.headers.contains_key("transfer-encoding") => {
                    assert!(rest.ends_with(b"0\r\n\r\n"), "{case}: {raw}")
                }
                None => assert!(
                    rest.is_empty(),
                    "{case}: bytes after a bodiless request: {raw}"
                ),
            }
            assert!(
                !(head.headers.contains_key("content-length")
                    && head.headers.contains_key("transfer-encoding")),
                "{case}: two framings: {raw}"
            );
            assert!(head.headers.get_all("content-length").iter().count() <= 1);
            assert!(
                !head.uri.path().starts_with("/x"),
                "{case}: the hidden request arrived"
            );
        }
    }
}

#[tokio::test]
async fn request_smuggling_gets_400_or_one_framing() {
    for r in rigs().await {
        const HIDDEN: &str = "GET /admin/x HTTP/1.1\r\nHost: g\r\n\r\n";
        let post = |headers: &str, body: &str| {
            format!("POST /api/a HTTP/1.1\r\nHost: g\r\n{headers}\r\n{body}")
        };
        // (case, request, statuses, body the upstream gets when it gets one)
        let cases: Vec<(&str, String, Vec<u16>, Option<&str>)> = vec![
        // Chunked wins over Content-Length, and hyper closes the connection after the
        // response, so neither the bytes after the chunked body nor the sentinel are read.
        ("CL then TE", post("Content-Length: 40\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{HIDDEN}")), vec![200], Some("")),
        ("TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", &format!("0\r\n\r\n{HIDDEN}")), vec![200], Some("")),
        ("equal duplicate CL", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), vec![200, 404], Some("hello")),
        ("conflicting CL", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), vec![400], None),
        ("CL list", post("Content-Length: 5, 5\r\n", "hello"), vec![400], None),
        ("CL +5", post("Content-Length: +5\r\n", "hello"), vec![400], None),
        ("CL hex", post("Content-Length: 0x5\r\n", "hello"), vec![400], None),
        ("chunked, identity", post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("identity, chunked", post("Transfer-Encoding: identity, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("TE twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("TE casing", post("Transfer-Encoding: ChUnKeD\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![200, 404], Some("hello")),
        ("TE tab and trailing space", post("Transfer-Encoding:\tchunked \r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![200, 404], Some("hello")),
        ("space before colon", post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("xchunked", post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("chunk size overflow", post("Transfer-Encoding: chunked\r\n", "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("chunk size junk", post("Transfer-Encoding: chunked\r\n", "5x\r\nhello\r\n0\r\n\r\n"), vec![400], None),
        ("bare LF in chunks", post("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"), vec![400], None),
        ("bare LF head", "GET /api/a HTTP/1.1\nHost: g\n\n".to_owned(), vec![200, 404], Some("")),
        ("obs-fold", "GET /api/a HTTP/1.1\r\nHost: g\r\nX-A: 1\r\n  folded\r\n\r\n".to_owned(), vec![400], None),
        ("HTTP/1.0 with TE", "POST /api/a HTTP/1.0\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned(), vec![400], None),
        ("NUL in a value", "GET /api/a HTTP/1.1\r\nHost: g\r\nX-A: a\0b\r\n\r\n".to_owned(), vec![400], None),
        ("space in the target", "GET /api/a b HTTP/1.1\r\nHost: g\r\n\r\n".to_owned(), vec![400], None),
        // A request inside a body stays a body.
        ("request in a body", post(&format!("Content-Length: {}\r\n", HIDDEN.len()), HIDDEN), vec![200, 404], Some(HIDDEN)),
    ];
        for (case, bytes, want, body) in &cases {
            r.up.clear();
            let (statuses, text) = raw_exchange(r.gw.addr, bytes.as_bytes()).await;
            assert_eq!(&statuses, want, "{case}: {text}");
            let seen = r.up.settled().await;
            assert_clean(&seen, case);
            let bodies: Vec<&[u8]> = seen
                .iter()
                .flat_map(|c| c.requests.iter().map(|(_, b)| &b[..]))
                .collect();
            match body {
                Some(b) => assert_eq!(bodies, vec![b.as_bytes()], "{case}"),
                None => assert!(bodies.is_empty(), "{case}: reached the upstream"),
            }
        }
        // None of the client's mistakes counted against the upstream.
        r.up.clear();
        let (statuses, _) =
            raw_exchange(r.gw.addr, b"GET /api/after HTTP/1.1\r\nHost: g\r\n\r\n").await;
        assert_eq!(statuses, vec![200, 404]);
    }
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408_and_the_upstream_stays_healthy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for r in rigs().await {
        let mut stream = tokio::net::TcpStream::connect(r.gw.addr).await.unwrap();
        stream
            .write_all(b"POST /api/a HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\nhello")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within the response timeout")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        let (statuses, _) =
            raw_exchange(r.gw.addr, b"GET /api/b HTTP/1.1\r\nHost: g\r\n\r\n").await;
        assert_eq!(statuses, vec![200, 404], "the target was not taken out");
    }
}

#[tokio::test]
async fn connection_header_abuse_neither_bypasses_auth_nor_strips_gateway_headers() {
    for r in rigs().await {
        // Naming the token makes it hop-by-hop: consumed on arrival, so the gate never sees it.
        for connection in [
            "X-Admin-Token",
            "x-admin-token, keep-alive",
            "close, X-ADMIN-TOKEN",
        ] {
            let req = format!(
                "GET /admin/x HTTP/1.1\r\nHost: g\r\nX-Admin-Token: letmein\r\nConnection: {connection}\r\n\r\n"
            );
            let (statuses, _) = raw_exchange(r.gw.addr, req.as_bytes()).await;
            assert_eq!(statuses.first(), Some(&403), "{connection}");
        }
        // Without the token and naming it: still 403.
        let (statuses, _) = raw_exchange(
            r.gw.addr,
            b"GET /admin/x HTTP/1.1\r\nHost: g\r\nConnection: X-Admin-Token\r\n\r\n",
        )
        .await;
        assert_eq!(statuses.first(), Some(&403));

        r.up.clear();
        let req = "POST /api/a HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer t\r\nX-Request-Id: mine\r\n\
        X-Forwarded-For: 6.6.6.6\r\nContent-Length: 5\r\n\
        Connection: Authorization, X-Forwarded-For, X-Request-Id, Host, Content-Length, X-Forwarded-Proto\r\n\r\nhello";
        let (statuses, text) = raw_exchange(r.gw.addr, req.as_bytes()).await;
        assert_eq!(statuses, vec![200, 404], "{text}");
        let seen = r.up.settled().await;
        assert_clean(&seen, "connection abuse");
        let (head, body) = &seen[0].requests[0];
        let h = &head.headers;
        assert!(h.get("authorization").is_none(), "named: removed");
        assert_eq!(
            h["x-forwarded-for"], "127.0.0.1",
            "the gateway's own, set after"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "g", "Host cannot be named away");
        assert_eq!(h["host"], r.up.addr.to_string().as_str());
        let id = h["x-request-id"].to_str().unwrap();
        assert_ne!(
            id, "mine",
            "the client's id was consumed; the gateway made one"
        );
        assert!(text.contains(&format!("x-request-id: {id}")), "{text}");
        assert_eq!(&body[..], b"hello");
        assert!(
            h.get("connection")
                .is_none_or(|v| !v.to_str().unwrap().contains("x-"))
        );
    }
}

#[tokio::test]
async fn spoofed_forwarding_headers_never_reach_the_upstream() {
    for r in rigs().await {
        let req = "GET /api/a HTTP/1.1\r\nHost: real.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
        Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
        let (statuses, _) = raw_exchange(r.gw.addr, req.as_bytes()).await;
        assert_eq!(statuses, vec![200, 404]);
        let seen = r.up.settled().await;
        let (head, _) = &seen[0].requests[0];
        let h = &head.headers;
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, vec!["127.0.0.1"]);
        assert_eq!(h["x-forwarded-host"], "real.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());
    }
}

#[tokio::test]
async fn path_confusion_never_reaches_admin_and_what_is_routed_is_forwarded() {
    for r in rigs().await {
        let cases: &[(&str, u16, Option<&str>)] = &[
            ("/static/../admin/x", 403, None),
            ("/static/%2e%2e/admin/x", 403, None),
            ("/static/%2E%2E/admin/x", 403, None),
            ("/static/.%2e/admin/x", 403, None),
            ("/%61dmin/x", 403, None),
            ("/static/..%2Fadmin/x", 400, None),
            ("/static/..%5cadmin/x", 400, None),
            ("/static/..;/admin/x", 400, None),
            ("/static/x/../../../admin/x", 400, None),
            ("/admin/x%00", 400, None),
            ("//admin/x", 404, None),
            ("/admin%2Fx", 404, None),
            ("/admin%2fx", 404, None),
            ("/ADMIN/x", 404, None),
            ("/admin;/x", 404, None),
            ("http://g/admin/x", 403, None),
            ("http://evil.example/admin/x", 403, None),
            ("*", 404, None),
            // Routed, and forwarded as routed.
            ("/api/v1/../v2/x?q=%2e%2e", 200, Some("/v2/x?q=%2e%2e")),
            ("/api/%7Euser/a%2Fb", 200, Some("/~user/a%2Fb")),
            ("/static/./css/app.css", 200, Some("/css/app.css")),
            ("http://evil.example/api/abs", 200, Some("/abs")),
        ];
        for (target, want, forwarded) in cases {
            r.up.clear();
            let req = format!("GET {target} HTTP/1.1\r\nHost: g\r\n\r\n");
            let (statuses, text) = raw_exchange(r.gw.addr, req.as_bytes()).await;
            assert_eq!(statuses.first(), Some(want), "{target}: {text}");
            let seen = r.up.settled().await;
            let paths: Vec<String> = seen
                .iter()
                .flat_map(|c| c.requests.iter().map(|(h, _)| h.uri.to_string()))
                .collect();
            match forwarded {
                Some(p) => assert_eq!(paths, vec![p.to_string()], "{target}"),
                None => assert!(
                    paths.is_empty(),
                    "{target} reached the upstream as {paths:?}"
                ),
            }
        }
        // With the token, the normalized form reaches admin, as the normalized path.
        r.up.clear();
        let (statuses, _) = raw_exchange(
            r.gw.addr,
            b"GET /static/%2e%2e/admin/x HTTP/1.1\r\nHost: g\r\nX-Admin-Token: letmein\r\n\r\n",
        )
        .await;
        assert_eq!(statuses.first(), Some(&200));
        let seen = r.up.settled().await;
        assert_eq!(seen[0].requests[0].0.uri, "/x");
    }
}

#[tokio::test]
async fn h2c_upgrades_are_never_forwarded_and_a_200_is_not_a_tunnel() {
    for r in rigs().await {
        let req = "GET /api/a HTTP/1.1\r\nHost: g\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
        let (statuses, text) = raw_exchange(r.gw.addr, req.as_bytes()).await;
        assert_eq!(statuses, vec![200, 404], "served as HTTP/1.1: {text}");
        let seen = r.up.settled().await;
        let h = &seen[0].requests[0].0.headers;
        assert!(h.get("upgrade").is_none(), "{h:?}");
        assert!(h.get("http2-settings").is_none(), "{h:?}");
        assert!(h.get("connection").is_none(), "{h:?}");

        // The recorder answers a WebSocket upgrade with a plain 200: the client connection
        // stays HTTP, so the next request on it is parsed as a request (the sentinel's 404).
        r.up.clear();
        let req = "GET /api/ws HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let (statuses, text) = raw_exchange(r.gw.addr, req.as_bytes()).await;
        assert_eq!(statuses, vec![200, 404], "{text}");
        let seen = r.up.settled().await;
        assert_eq!(seen[0].requests[0].0.headers["upgrade"], "websocket");
    }
}
