//! The routes an API gateway needs, each over real sockets through the gateway: virtual
//! hosts, header and query matchers, weighted and sticky splits, redirects and direct
//! answers, path and header rewrites, rate limits, compression, CORS, retry policies and
//! mirroring.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use testkit::upstream::Upstream;

async fn backends() -> (fake_backend::Backend, fake_backend::Backend) {
    let b1 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("one"))
        .await
        .unwrap();
    let b2 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("two"))
        .await
        .unwrap();
    (b1, b2)
}

fn upstreams(b1: SocketAddr, b2: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.one]
targets = ["http://{b1}"]

[upstreams.two]
targets = ["http://{b2}"]
"#
    )
}

/// `GET path` with `Host: host` and the extra headers, on a new HTTP/1.1 connection.
async fn get_as(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    call(addr, b.body(Empty::<Bytes>::new()).unwrap()).await
}

fn build_error(text: String) -> String {
    let source = gateway_bin::config::Source {
        name: "test.toml".into(),
        text,
    };
    let config = match source.parse() {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    match gateway_bin::app::build::<gateway_bin::serve::ServedBody>(&config, &source) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn virtual_hosts_exact_wildcard_and_default() {
    let (b1, b2) = backends().await;
    // config: routes.hosts
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/*rest"
hosts = ["api.example.com"]
upstream = "one"

[[routes]]
path = "/*rest"
hosts = ["*.example.com", "*.example.org"]
upstream = "two"

[[routes]]
path = "/only-default"
respond = {{ body = "default" }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let backend = |r: &Reply| json(r)["backend"].as_str().unwrap().to_owned();
    let r = get_as(gw.addr, "API.Example.com:8080", "/x", &[]).await;
    assert_eq!((r.status, backend(&r)), (StatusCode::OK, "one".into()));
    let r = get_as(gw.addr, "www.example.com", "/x", &[]).await;
    assert_eq!(backend(&r), "two");
    let r = get_as(gw.addr, "a.b.example.org.", "/x", &[]).await;
    assert_eq!(backend(&r), "two");
    // Another host sees only the routes without `hosts`.
    let r = get_as(gw.addr, "example.com", "/x", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get_as(gw.addr, "elsewhere.test", "/only-default", &[]).await;
    assert_eq!(r.text(), "default");
    let r = get_as(gw.addr, "api.example.com", "/only-default", &[]).await;
    assert_eq!(backend(&r), "one");

    // HTTP/2: the :authority.
    let mut h2 = testkit::client::h2(gw.addr).await;
    let req = Request::get("http://api.example.com/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = testkit::client::send_h2(&mut h2, req).await.unwrap();
    assert_eq!(backend(&r), "one");

    // HTTP/1.1 without Host, or with two: 400 (RFC 9112 3.2). HTTP/1.0 without: served.
    let (statuses, _) = raw_exchange(gw.addr, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert_eq!(statuses, vec![400]);
    let (statuses, _) = raw_exchange(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: api.example.com\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert_eq!(statuses, vec![400]);
    let (_, text) = raw_exchange(gw.addr, b"GET /only-default HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
    assert!(text.contains("default"), "{text}");

    // Each host's routes count in a series of their own.
    let metrics = fetch(gw.admin_addr, "/metrics").await.text();
    for label in [
        "route=\"api.example.com /*rest\"",
        "route=\"*.example.com,*.example.org /*rest\"",
    ] {
        assert!(metrics.contains(label), "{label}\n{metrics}");
    }

    // A bad host name is refused with its place in the file.
    let e = build_error(format!(
        "{}\n[[routes]]\npath = \"/\"\nhosts = [\"bad host\"]\nupstream = \"one\"\n",
        upstreams(b1.addr(), b2.addr())
    ));
    assert!(e.contains("test.toml:13: `hosts`"), "{e}");
}

#[tokio::test]
async fn header_and_query_matchers_are_tried_before_the_plain_route() {
    let (b1, b2) = backends().await;
    // config: routes.matches, routes.matches.header, routes.matches.query, routes.matches.exact
    // config: routes.matches.prefix, routes.matches.regex, routes.matches.invert
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/items/:id"
upstream = "one"

[[routes]]
path = "/items/:id"
matches = [{{ header = "x-env", exact = "canary" }}]
respond = {{ body = "canary" }}

[[routes]]
path = "/items/:id"
matches = [{{ header = "user-agent", regex = "(?i)bot" }}, {{ query = "debug", prefix = "tr" }}]
respond = {{ body = "bot-debug" }}

[[routes]]
path = "/items/:id"
matches = [{{ query = "beta" }}, {{ header = "x-internal", invert = true }}]
respond = {{ body = "beta" }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let text = |r: Reply| r.text();
    assert!(text(get_as(gw.addr, "h", "/items/1", &[]).await).contains("\"backend\":\"one\""));
    assert_eq!(
        text(get_as(gw.addr, "h", "/items/1", &[("x-env", "canary")]).await),
        "canary"
    );
    assert!(text(get_as(gw.addr, "h", "/items/1", &[("x-env", "canaryx")]).await).contains("one"));
    assert_eq!(
        text(
            get_as(
                gw.addr,
                "h",
                "/items/1?debug=trace",
                &[("user-agent", "GoogleBot/2")]
            )
            .await
        ),
        "bot-debug"
    );
    // Both conditions must hold.
    assert!(text(get_as(gw.addr, "h", "/items/1?debug=trace", &[]).await).contains("one"));
    assert!(
        text(get_as(gw.addr, "h", "/items/1?debug=x", &[("user-agent", "bot")]).await)
            .contains("one")
    );
    assert_eq!(
        text(get_as(gw.addr, "h", "/items/1?beta", &[]).await),
        "beta"
    );
    // Inverted: with the header present the route does not take it.
    assert!(
        text(get_as(gw.addr, "h", "/items/1?beta", &[("x-internal", "1")]).await).contains("one")
    );

    for (bad, key) in [
        ("{ header = \"x\", regex = \"(\" }", "matches.regex"),
        ("{ header = \"x\", query = \"y\" }", "matches"),
        (
            "{ header = \"x\", exact = \"a\", prefix = \"b\" }",
            "matches",
        ),
    ] {
        let e = build_error(format!(
            "{}\n[[routes]]\npath = \"/\"\nmatches = [{bad}]\nupstream = \"one\"\n",
            upstreams(b1.addr(), b2.addr())
        ));
        assert!(e.contains(&format!("test.toml:13: `{key}`")), "{bad}: {e}");
    }
}

#[tokio::test]
async fn weighted_split_shares_and_sticky_keys() {
    let (b1, b2) = backends().await;
    // config: routes.split, routes.split.upstream, routes.split.weight
    // config: routes.sticky, routes.sticky.cookie, routes.sticky.header
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/split"
split = [{{ upstream = "one", weight = 80 }}, {{ upstream = "two", weight = 20 }}]

[[routes]]
path = "/sticky"
split = [{{ upstream = "one", weight = 50 }}, {{ upstream = "two", weight = 50 }}]
sticky = {{ cookie = "session" }}

[[routes]]
path = "/sticky-header"
split = [{{ upstream = "one", weight = 1 }}, {{ upstream = "two", weight = 1 }}]
sticky = {{ header = "x-user" }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let mut h1 = testkit::client::h1(gw.addr).await;
    let mut two = 0;
    let n = 400;
    for _ in 0..n {
        let req = get("/split").body(Empty::<Bytes>::new()).unwrap();
        let r = testkit::client::send_h1(&mut h1, req).await.unwrap();
        if r.header("x-backend") == "two" {
            two += 1;
        }
    }
    // 20 % of 400 is 80; the binomial standard deviation is 8: 40..120 is five of them.
    assert!((40..=120).contains(&two), "two got {two} of {n}");

    // The same cookie always lands on the same side; different cookies reach both.
    let mut sides = BTreeMap::new();
    for user in 0..40 {
        let cookie = format!("theme=dark; session=user-{user}");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let req = get("/sticky")
                .header("cookie", &cookie)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let r = testkit::client::send_h1(&mut h1, req).await.unwrap();
            seen.push(r.header("x-backend").to_owned());
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{cookie}: {seen:?}");
        *sides.entry(seen[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "{sides:?}");
    let first = get_as(gw.addr, "h", "/sticky-header", &[("x-user", "alice")]).await;
    for _ in 0..5 {
        let again = get_as(gw.addr, "h", "/sticky-header", &[("x-user", "alice")]).await;
        assert_eq!(again.header("x-backend"), first.header("x-backend"));
    }

    let e = build_error(format!(
        "{}\n[[routes]]\npath = \"/\"\nsplit = [{{ upstream = \"one\", weight = 0 }}]\n",
        upstreams(b1.addr(), b2.addr())
    ));
    assert!(
        e.contains("test.toml:13: `split`") && e.contains("sum to 0"),
        "{e}"
    );
    let e = build_error(format!(
        "{}\n[[routes]]\npath = \"/\"\nupstream = \"one\"\nsticky = {{ cookie = \"s\" }}\n",
        upstreams(b1.addr(), b2.addr())
    ));
    assert!(e.contains("`sticky`"), "{e}");
}

#[tokio::test]
async fn redirects_and_direct_answers() {
    let (b1, b2) = backends().await;
    // config: routes.redirect, routes.redirect.scheme, routes.redirect.host, routes.redirect.path
    // config: routes.redirect.prefix, routes.redirect.status, routes.redirect.keep_query
    // config: routes.respond, routes.respond.status, routes.respond.body, routes.respond.content_type
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/secure/*rest"
redirect = {{ scheme = "https", status = 308 }}

[[routes]]
path = "/moved"
redirect = {{ host = "new.example.com:8443", path = "/here", keep_query = false }}

[[routes]]
path = "/old/*rest"
redirect = {{ prefix = "/new", status = 302 }}

[[routes]]
path = "/health"
respond = {{ status = 203, body = '{{"ok":true}}', content_type = "application/json" }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let r = get_as(gw.addr, "shop.test", "/secure/cart?x=1", &[]).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.header("location"), "https://shop.test/secure/cart?x=1");
    let r = get_as(gw.addr, "shop.test", "/moved?drop=1", &[]).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), "http://new.example.com:8443/here");
    let r = get_as(gw.addr, "shop.test", "/old/a/b?q=2", &[]).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), "/new/a/b?q=2");
    let r = get_as(gw.addr, "shop.test", "/health", &[]).await;
    assert_eq!(r.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.text(), r#"{"ok":true}"#);

    for (bad, key) in [
        ("redirect = { status = 200, path = \"/x\" }", "redirect"),
        ("redirect = {}", "redirect"),
        ("redirect = { path = \"//evil.test\" }", "redirect"),
        ("respond = { status = 99 }", "respond"),
        ("upstream = \"one\"\nrespond = {}", "upstream"),
        (
            "redirect = { path = \"/x\" }\nrewrite = { prefix = \"/y\" }",
            "rewrite",
        ),
    ] {
        let e = build_error(format!(
            "{}\n[[routes]]\npath = \"/\"\n{bad}\n",
            upstreams(b1.addr(), b2.addr())
        ));
        assert!(e.contains(&format!("`{key}`")), "{bad}: {e}");
    }
}

#[tokio::test]
async fn path_rewrites_by_prefix_and_by_regex() {
    let (b1, b2) = backends().await;
    // config: routes.rewrite, routes.rewrite.prefix, routes.rewrite.regex, routes.rewrite.replace
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/api/v1/*rest"
upstream = "one"
rewrite = {{ prefix = "/v1" }}

[[routes]]
path = "/u/:id"
upstream = "one"
rewrite = {{ regex = "^/u/([0-9]+)$", replace = "/users/$1/profile" }}

[[routes]]
path = '/v1/projects\:batchGet'
upstream = "one"
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let r = get_as(gw.addr, "h", "/api/v1/users/7?full=1", &[]).await;
    assert_eq!(json(&r)["path"], "/v1/users/7");
    assert_eq!(json(&r)["query"], "full=1");
    let r = get_as(gw.addr, "h", "/u/42", &[]).await;
    assert_eq!(json(&r)["path"], "/users/42/profile");
    // No match: the path as it is.
    let r = get_as(gw.addr, "h", "/u/abc", &[]).await;
    assert_eq!(json(&r)["path"], "/u/abc");
    // An escaped colon is literal text.
    let r = get_as(gw.addr, "h", "/v1/projects:batchGet", &[]).await;
    assert_eq!(json(&r)["path"], "/v1/projects:batchGet");

    for (bad, key) in [
        ("rewrite = { prefix = \"/v1\" }", "rewrite"),
        (
            "rewrite = { regex = \"(\", replace = \"/\" }",
            "rewrite.regex",
        ),
        ("rewrite = { regex = \"^/$\" }", "rewrite"),
    ] {
        let e = build_error(format!(
            "{}\n[[routes]]\npath = \"/x\"\nupstream = \"one\"\n{bad}\n",
            upstreams(b1.addr(), b2.addr())
        ));
        assert!(e.contains(&format!("`{key}`")), "{bad}: {e}");
    }
    let e = build_error(format!(
        "{}\n[[routes]]\npath = \"/user_:id\"\nupstream = \"one\"\n",
        upstreams(b1.addr(), b2.addr())
    ));
    assert!(
        e.contains("test.toml:12: `path`") && e.contains(r"\:"),
        "{e}"
    );
}

#[tokio::test]
async fn request_and_response_headers_rewritten_with_variables() {
    let (b1, b2) = backends().await;
    // config: routes.request_headers, routes.request_headers.set, routes.request_headers.add
    // config: routes.request_headers.remove, routes.response_headers, routes.response_headers.set
    // config: routes.response_headers.add, routes.response_headers.remove
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/users/:id"
upstream = "one"
request_headers = {{ set = {{ "x-user" = "{{param.id}}", "x-env" = "prod" }}, add = {{ "x-via" = "ip={{client_ip}} host={{host}} {{{{lit}}}}" }}, remove = ["cookie"] }}
response_headers = {{ set = {{ "x-request" = "{{request_id}}" }}, add = {{ "x-extra" = "1" }}, remove = ["x-connections"] }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let r = get_as(
        gw.addr,
        "app.test:8080",
        "/users/7",
        &[
            ("cookie", "secret=1"),
            ("x-env", "dev"),
            ("x-request-id", "abc-123"),
        ],
    )
    .await;
    let seen = &json(&r)["headers"];
    assert_eq!(seen["x-user"], "7");
    assert_eq!(seen["x-env"], "prod");
    assert_eq!(seen["x-via"], "ip=127.0.0.1 host=app.test {lit}");
    assert!(seen.get("cookie").is_none(), "{seen}");
    assert_eq!(r.header("x-request"), "abc-123");
    assert_eq!(r.header("x-extra"), "1");
    assert_eq!(r.header("x-connections"), "");

    for (bad, why) in [
        (
            "request_headers = { set = { \"x-forwarded-for\" = \"1.2.3.4\" } }",
            "gateway's to set",
        ),
        (
            "request_headers = { remove = [\"connection\"] }",
            "gateway's to set",
        ),
        (
            "response_headers = { set = { \"x\" = \"{nope}\" } }",
            "not a variable",
        ),
    ] {
        let e = build_error(format!(
            "{}\n[[routes]]\npath = \"/x\"\nupstream = \"one\"\n{bad}\n",
            upstreams(b1.addr(), b2.addr())
        ));
        assert!(e.contains(why) && e.contains("test.toml:14"), "{bad}: {e}");
    }
}

#[tokio::test]
async fn rate_limits_by_client_header_and_param() {
    let (b1, b2) = backends().await;
    // A refill of one token every 1000 s: nothing comes back within the test.
    // config: routes.rate_limit, routes.rate_limit.rate, routes.rate_limit.burst
    // config: routes.rate_limit.key, routes.rate_limit.max_keys
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/client"
upstream = "one"
rate_limit = {{ rate = 0.001, burst = 3 }}

[[routes]]
path = "/keyed"
upstream = "one"
rate_limit = {{ rate = 0.001, burst = 2, key = "header:x-api-key", max_keys = 1024 }}

[[routes]]
path = "/tenants/:tenant/*rest"
upstream = "one"
rate_limit = {{ rate = 0.001, burst = 1, key = "param:tenant" }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = get_as(gw.addr, "h", "/client", &[]).await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.header("retry-after"), "1000");
            assert_eq!(r.header("ratelimit-limit"), "3");
            assert_eq!(r.header("ratelimit-remaining"), "0");
            assert_eq!(r.header("ratelimit-policy"), "3;w=3000");
        } else {
            assert!(!r.header("ratelimit-remaining").is_empty());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);

    let keyed = |key: &'static str| async move {
        get_as(gw.addr, "h", "/keyed", &[("x-api-key", key)])
            .await
            .status
            .as_u16()
    };
    assert_eq!(
        [keyed("a").await, keyed("a").await, keyed("a").await],
        [200, 200, 429]
    );
    // Another key has a bucket of its own.
    assert_eq!(keyed("b").await, 200);
    let tenant = |t: &'static str| async move {
        get_as(gw.addr, "h", &format!("/tenants/{t}/x"), &[])
            .await
            .status
            .as_u16()
    };
    assert_eq!(
        [tenant("t1").await, tenant("t1").await, tenant("t2").await],
        [200, 429, 200]
    );

    let metrics = fetch(gw.admin_addr, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_rate_limited_total 4"),
        "{metrics}"
    );

    for (bad, key) in [
        ("rate_limit = { rate = 0 }", "rate_limit.rate"),
        (
            "rate_limit = { rate = 1, key = \"param:nope\" }",
            "rate_limit.key",
        ),
        (
            "rate_limit = { rate = 1, key = \"cookie\" }",
            "rate_limit.key",
        ),
        ("rate_limit = { rate = 1, burst = 0 }", "rate_limit.burst"),
    ] {
        let e = build_error(format!(
            "{}\n[[routes]]\npath = \"/x\"\nupstream = \"one\"\n{bad}\n",
            upstreams(b1.addr(), b2.addr())
        ));
        assert!(e.contains(&format!("test.toml:14: `{key}`")), "{bad}: {e}");
    }
}

#[tokio::test]
async fn compression_by_accept_encoding_type_and_size() {
    let (b1, b2) = backends().await;
    // config: routes.compress, routes.compress.algorithms, routes.compress.min_bytes
    // config: routes.compress.types
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/json/*rest"
upstream = "one"
compress = {{ min_bytes = 16 }}

[[routes]]
path = "/gzip-only/*rest"
upstream = "one"
compress = {{ algorithms = ["gzip"], min_bytes = 16, types = ["application/json"] }}

[[routes]]
path = "/big-only/*rest"
upstream = "one"
compress = {{ min_bytes = 60000 }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let plain = get_as(gw.addr, "h", "/json/a", &[]).await;
    assert_eq!(plain.header("content-encoding"), "");
    let r = get_as(gw.addr, "h", "/json/a", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert!(
        r.header("vary")
            .to_ascii_lowercase()
            .contains("accept-encoding")
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["path"], "/a");
    // The client's preference, then zstd before br before gzip.
    let r = get_as(
        gw.addr,
        "h",
        "/json/a",
        &[("accept-encoding", "gzip, br, zstd")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "zstd");
    let r = get_as(
        gw.addr,
        "h",
        "/json/a",
        &[("accept-encoding", "gzip;q=1, br;q=0.5")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "gzip");
    let r = get_as(
        gw.addr,
        "h",
        "/gzip-only/a",
        &[("accept-encoding", "br, zstd, gzip;q=0.1")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "gzip");
    // Too small, not an allowed type, or an event stream: as it is.
    let r = get_as(gw.addr, "h", "/big-only/a", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), "");
    let r = get_as(
        gw.addr,
        "h",
        "/json/a?bytes=4000",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.body.len(), 4000);
    let r = get_as(
        gw.addr,
        "h",
        "/json/a?sse=2&interval_ms=1",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "");
    assert!(r.text().contains("data:"), "{}", r.text());

    // Already encoded by the upstream: passed through as it is, never encoded twice.
    let encoded = Upstream::serving(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: br\r\ncontent-length: 40\r\n\r\n0123456789012345678901234567890123456789".to_vec()
    })
    .await;
    let gw2 = start_gateway(format!(
        "[upstreams.enc]\ntargets = [\"{}\"]\n[[routes]]\npath = \"/e\"\nupstream = \"enc\"\ncompress = {{ min_bytes = 1 }}\n",
        encoded.url()
    ))
    .await;
    let r = get_as(gw2.addr, "h", "/e", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), "br");
    assert_eq!(r.body.len(), 40);

    let e = build_error(format!(
        "{}\n[[routes]]\npath = \"/x\"\nupstream = \"one\"\ncompress = {{ algorithms = [\"lz4\"] }}\n",
        upstreams(b1.addr(), b2.addr())
    ));
    assert!(e.contains("`compress.algorithms`"), "{e}");
}

#[tokio::test]
async fn cors_preflight_at_the_gateway_and_headers_on_answers() {
    let (b1, b2) = backends().await;
    // config: routes.cors, routes.cors.origins, routes.cors.methods, routes.cors.headers
    // config: routes.cors.expose_headers, routes.cors.credentials, routes.cors.max_age_s
    let gw = start_gateway(format!(
        r#"{}
[[routes]]
path = "/api/*rest"
methods = ["GET", "POST"]
upstream = "one"
cors = {{ origins = ["https://app.example.com"], methods = ["GET", "POST"], headers = ["x-token"], expose_headers = ["x-backend"], credentials = true, max_age_s = 120 }}
"#,
        upstreams(b1.addr(), b2.addr())
    ))
    .await;
    let preflight = Request::options("/api/items")
        .header("host", "h")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-token")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = call(gw.addr, preflight).await;
    assert!(r.status.is_success(), "{:?}", r.status);
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-max-age"), "120");
    assert!(r.header("access-control-allow-methods").contains("POST"));
    assert!(r.header("access-control-allow-headers").contains("x-token"));
    // The preflight never reached the upstream (the fake backend would answer JSON).
    assert!(r.header("x-backend").is_empty());

    let r = get_as(
        gw.addr,
        "h",
        "/api/items",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.header("x-backend"), "one");
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(r.header("access-control-expose-headers"), "x-backend");
    let r = get_as(
        gw.addr,
        "h",
        "/api/items",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), "");

    let e = build_error(format!(
        "{}\n[[routes]]\npath = \"/x\"\nupstream = \"one\"\ncors = {{ origins = [\"*\"], credentials = true }}\n",
        upstreams(b1.addr(), b2.addr())
    ));
    assert!(e.contains("test.toml:14: `cors.credentials`"), "{e}");
}

/// An upstream that answers every request `status` with a `who` header.
async fn answering(status: u16, who: &'static str) -> Upstream {
    Upstream::serving(move |_| {
        format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nx-who: {who}\r\n\r\nok").into_bytes()
    })
    .await
}

#[tokio::test]
async fn retry_policy_statuses_methods_and_budget() {
    let sick = answering(503, "sick").await;
    let well = answering(200, "well").await;
    let pair = format!("[\"{}\", \"{}\"]", sick.url(), well.url());
    let sick_url = sick.url();
    // config: routes.retry, routes.retry.tries, routes.retry.on, routes.retry.methods
    // config: routes.retry.budget_percent, routes.retry.min_per_s
    let gw = start_gateway(format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.pair]
strategy = "round-robin"
targets = {pair}
max_fails = 0

[[routes]]
path = "/retried"
methods = ["GET", "POST"]
upstream = "pair"
retry = {{ tries = 2, on = ["connect", "503"], methods = ["GET"] }}

[[routes]]
path = "/plain"
upstream = "pair"

[[routes]]
path = "/no-budget"
upstream = "pair"
retry = {{ tries = 2, on = ["503"], budget_percent = 0, min_per_s = 0 }}

[upstreams.alone]
targets = ["{sick_url}"]

[[routes]]
path = "/alone"
upstream = "alone"
retry = {{ tries = 3, on = ["503"] }}
"#
    ))
    .await;
    for _ in 0..6 {
        let r = get_as(gw.addr, "h", "/retried", &[]).await;
        assert_eq!((r.status, r.header("x-who")), (StatusCode::OK, "well"));
    }
    // POST is not in `methods`: the 503 is the answer when the sick target comes first.
    let mut post = Vec::new();
    for _ in 0..4 {
        let req = Request::post("/retried")
            .header("host", "h")
            .body(Empty::<Bytes>::new())
            .unwrap();
        post.push(call(gw.addr, req).await.status.as_u16());
    }
    assert!(post.contains(&503) && post.contains(&200), "{post:?}");
    // Without a policy a 503 is an answer, not a failure.
    let plain: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get_as(gw.addr, "h", "/plain", &[]).await.status.as_u16());
        }
        v
    };
    assert!(plain.contains(&503), "{plain:?}");
    // A budget of nothing: no retry is ever made.
    let mut none = Vec::new();
    for _ in 0..4 {
        none.push(
            get_as(gw.addr, "h", "/no-budget", &[])
                .await
                .status
                .as_u16(),
        );
    }
    assert!(none.contains(&503), "{none:?}");
    // Every target answered 503 and tries are left: the upstream's answer, not a 502.
    let r = get_as(gw.addr, "h", "/alone", &[]).await;
    assert_eq!(
        (r.status, r.header("x-who")),
        (StatusCode::SERVICE_UNAVAILABLE, "sick")
    );

    let e = build_error(
        "[upstreams.a]\ntargets = [\"http://127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\nupstream = \"a\"\nretry = { on = [\"500\"] }\n".into(),
    );
    assert!(e.contains("`retry.on`"), "{e}");
}

#[tokio::test]
async fn retry_policy_on_resets_only_when_asked() {
    // Reads the request, then closes the connection without a byte of answer.
    let resetting = Upstream::start(|mut c: testkit::upstream::Conn| async move {
        if c.next_request().await.is_some() {
            c.reset();
        }
    })
    .await;
    let well = answering(200, "well").await;
    let pair = format!("[\"{}\", \"{}\"]", resetting.url(), well.url());
    let gw = start_gateway(format!(
        r#"
[upstreams.pair]
strategy = "round-robin"
targets = {pair}
max_fails = 0

[[routes]]
path = "/resets"
upstream = "pair"
retry = {{ tries = 2, on = ["connect", "reset"] }}

[[routes]]
path = "/connect-only"
upstream = "pair"
retry = {{ tries = 2, on = ["connect"] }}
"#
    ))
    .await;
    for _ in 0..4 {
        let r = get_as(gw.addr, "h", "/resets", &[]).await;
        assert_eq!((r.status, r.header("x-who")), (StatusCode::OK, "well"));
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            get_as(gw.addr, "h", "/connect-only", &[])
                .await
                .status
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn mirror_copies_requests_without_slowing_them() {
    let (b1, b2) = backends().await;
    let shadow =
        Upstream::serving(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
    let stuck = Upstream::silent().await;
    // config: routes.mirror, routes.mirror.upstream, routes.mirror.percent
    // config: routes.mirror.max_body_bytes, routes.mirror.max_in_flight
    let gw = start_gateway(format!(
        r#"{}
[upstreams.shadow]
targets = ["{}"]

[upstreams.stuck]
targets = ["{}"]
response_timeout_ms = 60000

[[routes]]
path = "/copied/*rest"
methods = ["GET", "POST"]
upstream = "one"
rewrite = {{ prefix = "/v2" }}
mirror = {{ upstream = "shadow", percent = 100, max_body_bytes = 10 }}

[[routes]]
path = "/to-stuck"
upstream = "one"
mirror = {{ upstream = "stuck", max_in_flight = 1 }}
"#,
        upstreams(b1.addr(), b2.addr()),
        shadow.url(),
        stuck.url()
    ))
    .await;
    let r = get_as(gw.addr, "h", "/copied/a?x=1", &[]).await;
    assert_eq!(json(&r)["path"], "/v2/a");
    let req = Request::post("/copied/b")
        .header("host", "h")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    assert_eq!(call(gw.addr, req).await.status, StatusCode::OK);
    let req = Request::post("/copied/c")
        .header("host", "h")
        .body(Full::new(Bytes::from_static(b"too large for the copy")))
        .unwrap();
    assert_eq!(call(gw.addr, req).await.status, StatusCode::OK);
    let seen = shadow.wait_requests(2, Duration::from_secs(10)).await;
    // Two connections: the copies may arrive in either order.
    let by_method = |m: &str| {
        seen.iter()
            .find(|s| s.request.head.method() == m)
            .unwrap_or_else(|| panic!("no {m} copy in {seen:?}"))
    };
    let (get_copy, post_copy) = (by_method("GET"), by_method("POST"));
    assert_eq!(get_copy.request.head.target(), "/v2/a?x=1");
    assert_eq!(get_copy.request.head.header("x-gateway-mirror"), Some("1"));
    assert_eq!(post_copy.request.head.target(), "/v2/b");
    assert_eq!(post_copy.request.body, b"0123456789");

    // A shadow that never answers delays nothing, and holds at most one copy in flight.
    for _ in 0..3 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            get_as(gw.addr, "h", "/to-stuck", &[]),
        )
        .await
        .expect("the real request was held up by its mirror");
        assert_eq!(r.status, StatusCode::OK);
    }
    let metrics = fetch(gw.admin_addr, "/metrics").await.text();
    for line in [
        "gateway_mirror_requests_total{outcome=\"dropped\"} 2",
        "gateway_mirror_requests_total{outcome=\"skipped\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert_eq!(shadow.requests().len(), 2, "the over-limit body was copied");
}

#[test]
fn the_readme_routes_example_builds() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme
        .split("### Routes:")
        .nth(1)
        .expect("README has a Routes section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a TOML example");
    let mut text = String::new();
    for name in ["api", "shop", "stable", "canary"] {
        text.push_str(&format!(
            "[upstreams.{name}]\ntargets = [\"http://127.0.0.1:9\"]\n"
        ));
    }
    text.push_str(example);
    let source = gateway_bin::config::Source {
        name: "README.md".into(),
        text,
    };
    let config = source.parse().unwrap_or_else(|e| panic!("{e}"));
    let app = gateway_bin::app::build::<gateway_bin::serve::ServedBody>(&config, &source)
        .unwrap_or_else(|e| panic!("{e}"));
    let table: Vec<String> = app
        .routes
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}",
                r.hosts, r.methods, r.path, r.upstream, r.notes
            )
        })
        .collect();
    let all = table.join("\n");
    for expected in [
        "api.example.com GET /*rest api",
        "stable 95% / canary 5% (sticky by cookie session)",
        "/app/*rest when header x-canary = \"1\"",
        "rate limit 50/s burst 100 by header:x-api-key",
        "redirect 308 /new/*rest",
        "respond 200",
    ] {
        assert!(all.contains(expected), "{expected}\n{all}");
    }
}
