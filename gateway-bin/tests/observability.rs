//! The admin listener: `/metrics` parses as Prometheus text and its series move with traffic
//! (a 200, a 404, a 502, a 504, a retry, a 431), histograms have sensible buckets, label sets
//! stay bounded under 10,000 random paths, `/readyz` follows the upstreams, the admin listener
//! and the traffic port keep to their own paths; and W3C trace context end to end.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fetch, json, start_gateway};
use http_body_util::Empty;
use testkit::client::{call, get, h1, send_h1};
use testkit::upstream::{Refusing, Upstream};

/// One series: its name and labels.
type Series = (String, BTreeMap<String, String>);

/// `/metrics` read strictly: every line a comment, a `TYPE`/`HELP` or a sample; every sample
/// of a declared family, named as its type requires, with well-formed labels and value; no
/// series twice; histogram buckets cumulative and ending at `+Inf` = `_count`. Returns each
/// series' value.
fn strict(text: &str) -> BTreeMap<Series, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut values: BTreeMap<Series, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "bad family name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{line:?}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family declared twice: {line:?}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let (series, value) = sample(line);
        let family = types
            .iter()
            .filter(|(name, _)| series.0.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .unwrap_or_else(|| panic!("sample of no declared family: {line:?}"));
        match family.1.as_str() {
            "counter" => assert!(
                series.0 == *family.0 && family.0.ends_with("_total"),
                "{line:?}"
            ),
            "gauge" => assert_eq!(&series.0, family.0, "{line:?}"),
            _ => {
                let suffix = &series.0[family.0.len()..];
                assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{line:?}");
            }
        }
        assert!(
            values.insert(series, value).is_none(),
            "series twice: {line:?}"
        );
    }
    // Histograms: cumulative buckets, the last one +Inf and equal to _count.
    for (name, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut by_labels: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for ((n, labels), v) in &values {
            if *n == format!("{name}_bucket") {
                let mut rest = labels.clone();
                let le = rest.remove("le").expect("bucket without le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                by_labels.entry(rest).or_default().push((le, *v));
            }
        }
        for (labels, mut buckets) in by_labels {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name} {labels:?} not cumulative"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{name} {labels:?} without +Inf");
            let count = values[&(format!("{name}_count"), labels.clone())];
            assert_eq!(last.1, count, "{name} {labels:?}: +Inf != _count");
        }
    }
    values
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn sample(line: &str) -> (Series, f64) {
    let (head, value) = line.rsplit_once(' ').expect("name and value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            (name, labels(body, line))
        }
    };
    assert!(valid_name(name), "bad sample name in {line:?}");
    ((name.to_owned(), labels), value)
}

fn labels(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
        assert!(valid_name(key), "bad label name in {line:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            out.insert(key.to_owned(), value).is_none(),
            "label twice: {line:?}"
        );
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    out
}

async fn scrape(admin: SocketAddr) -> (String, BTreeMap<Series, f64>) {
    let reply = fetch(admin, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text();
    let values = strict(&text);
    // A third-party reader agrees on what is there.
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(
        parsed.samples.len()
            >= values
                .keys()
                .filter(|(n, _)| !n.ends_with("_bucket"))
                .count()
                / 2,
        "prometheus-parse read {} samples",
        parsed.samples.len()
    );
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (text, values)
}

fn value(values: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    values
        .get(&(name.to_owned(), want))
        .copied()
        .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
}

#[tokio::test]
async fn metrics_move_with_every_kind_of_answer() {
    // config: admin.listen, pre.metrics
    let good = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let refusing = Refusing::new();
    let refusing2 = Refusing::new();
    let silent = Upstream::silent().await;
    let g = good.addr();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
max_header_bytes = 8192

[upstreams.api]
targets = ["http://{g}"]

[upstreams.broken]
targets = ["{broken}"]

[upstreams.slow]
targets = ["{slow}"]
response_timeout_ms = 200

[upstreams.retry]
strategy = "round-robin"
targets = ["{r2}", "http://{g}"]
max_fails = 1000

[[routes]]
path = "/api/*path"
upstream = "api"

[[routes]]
path = "/broken/*path"
upstream = "broken"

[[routes]]
path = "/slow/*path"
upstream = "slow"

[[routes]]
path = "/retry/*path"
upstream = "retry"
"#,
        broken = refusing.url(),
        slow = silent.url(),
        r2 = refusing2.url(),
    );
    let gw = start_gateway(text).await;
    let (_, before) = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &before,
            "gateway_requests_rejected_total",
            &[("reason", "header_too_large")]
        ),
        0.0
    );

    for _ in 0..3 {
        assert_eq!(fetch(gw.addr, "/api/ok").await.status, 200);
    }
    assert_eq!(fetch(gw.addr, "/nowhere").await.status, 404);
    assert_eq!(fetch(gw.addr, "/broken/x").await.status, 502);
    assert_eq!(fetch(gw.addr, "/slow/x").await.status, 504);
    for _ in 0..2 {
        assert_eq!(fetch(gw.addr, "/retry/x").await.status, 200);
    }
    // A head over max_header_bytes: hyper answers 431 itself.
    let huge = "x".repeat(10_000);
    let mut sender = h1(gw.addr).await;
    let req = get("/api/x")
        .header("x-huge", huge)
        .body(Empty::<Bytes>::new())
        .unwrap();
    match send_h1(&mut sender, req).await {
        Ok(reply) => assert_eq!(reply.status, 431),
        Err(e) => panic!("expected a 431: {e}"),
    }

    let (text, after) = scrape(gw.admin_addr).await;
    let requests = |route: &str, class: &str| {
        value(
            &after,
            "gateway_requests_total",
            &[("route", route), ("method", "GET"), ("status_class", class)],
        )
    };
    assert_eq!(requests("/api/*path", "2xx"), 3.0);
    assert_eq!(requests("(unmatched)", "4xx"), 1.0);
    assert_eq!(requests("/broken/*path", "5xx"), 1.0);
    assert_eq!(requests("/slow/*path", "5xx"), 1.0);
    assert_eq!(requests("/retry/*path", "2xx"), 2.0);
    let attempts = |up: &str, target: &str, outcome: &str| {
        value(
            &after,
            "gateway_upstream_attempts_total",
            &[("upstream", up), ("target", target), ("outcome", outcome)],
        )
    };
    let api = format!("http://{g}");
    assert_eq!(attempts("api", &api, "ok"), 3.0);
    assert_eq!(attempts("broken", &refusing.url(), "connect_error"), 1.0);
    assert_eq!(attempts("slow", &silent.url(), "timeout"), 1.0);
    // Each request that met the refusing target first went on to the good one.
    let refused = attempts("retry", &refusing2.url(), "connect_error");
    assert!(refused >= 1.0);
    assert_eq!(attempts("retry", &api, "ok"), 2.0);
    assert_eq!(
        value(
            &after,
            "gateway_upstream_retries_total",
            &[("upstream", "retry"), ("reason", "next_target")]
        ),
        refused
    );
    assert_eq!(
        value(
            &after,
            "gateway_upstream_exhausted_total",
            &[("upstream", "broken")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "gateway_requests_rejected_total",
            &[("reason", "header_too_large")]
        ),
        1.0
    );
    // The 504 took the response timeout: its duration lands in the (0.1, 0.25] bucket.
    let bucket = |le: &str| {
        value(
            &after,
            "gateway_request_duration_seconds_bucket",
            &[("route", "/slow/*path"), ("le", le)],
        )
    };
    assert_eq!(
        (bucket("0.1"), bucket("0.25"), bucket("+Inf")),
        (0.0, 1.0, 1.0)
    );
    let sum = value(
        &after,
        "gateway_request_duration_seconds_sum",
        &[("route", "/slow/*path")],
    );
    assert!((0.2..0.25).contains(&sum), "{sum}");
    // Time to the response head, per target: the three 200s are all in.
    assert_eq!(
        value(
            &after,
            "gateway_upstream_response_head_seconds_count",
            &[("upstream", "api"), ("target", &api)]
        ),
        3.0
    );
    assert!(value(&after, "gateway_client_connections_accepted_total", &[]) >= 9.0);
    assert!(value(&after, "gateway_client_sent_bytes_total", &[]) > 0.0);
    assert!(
        value(
            &after,
            "gateway_upstream_connections_opened_total",
            &[("upstream", "api"), ("target", &api)]
        ) >= 1.0
    );
    assert!(text.contains("gateway_build_info{version=\""), "{text}");

    // OpenMetrics for a scraper that asks for it.
    let om = call(
        gw.admin_addr,
        get("/metrics")
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert!(
        om.header("content-type")
            .starts_with("application/openmetrics-text")
    );
    assert!(om.text().ends_with("# EOF\n"));
    assert!(om.text().contains("# TYPE gateway_requests counter"));
}

#[tokio::test]
async fn label_sets_stay_bounded_under_random_paths() {
    let good = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let gw = start_gateway(format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstreams.api]\ntargets = [\"http://{}\"]\n\n[[routes]]\npath = \"/api/*path\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"api\"\n",
        good.addr()
    ))
    .await;
    let (_, before) = scrape(gw.admin_addr).await;
    let addr = gw.addr;
    let mut tasks = Vec::new();
    for worker in 0..16u64 {
        tasks.push(tokio::spawn(async move {
            let mut sender = h1(addr).await;
            let mut seed = worker.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for i in 0..625u64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let path = if i % 2 == 0 {
                    format!("/api/{seed:x}/{i}")
                } else {
                    format!("/{seed:x}")
                };
                let method = if seed % 3 == 0 { "POST" } else { "GET" };
                let req = http::Request::builder()
                    .method(method)
                    .uri(&path)
                    .header("host", "g")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let reply = send_h1(&mut sender, req).await.unwrap();
                assert!(
                    reply.status == 200 || reply.status == 404,
                    "{path}: {}",
                    reply.status
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (text, after) = scrape(gw.admin_addr).await;
    let series = |v: &BTreeMap<Series, f64>| -> BTreeSet<Series> { v.keys().cloned().collect() };
    let new: Vec<Series> = series(&after)
        .difference(&series(&before))
        .cloned()
        .collect();
    // Only method and status-class combinations can be new: two routes x two methods x
    // two classes at most.
    assert!(new.len() <= 8, "new series: {new:?}");
    assert!(
        new.iter().all(|(name, _)| name == "gateway_requests_total"),
        "{new:?}"
    );
    assert!(after.len() < 400, "{} series in all", after.len());
    assert!(
        !text.contains("/api/1") && !text.contains("/api/a"),
        "a raw path became a label"
    );
    let total: f64 = after
        .iter()
        .filter(|((n, _), _)| n == "gateway_requests_total")
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(total, 10_000.0);
}

#[tokio::test]
async fn readyz_follows_the_upstreams() {
    // config: upstreams.*.health_check
    let healthy = Arc::new(AtomicBool::new(true));
    let h = Arc::clone(&healthy);
    let up = Upstream::serving(move |_| {
        if h.load(Ordering::SeqCst) {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
        } else {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown".to_vec()
        }
    })
    .await;
    let gw = start_gateway(format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstreams.api]\ntargets = [\"{}\"]\n\n[upstreams.api.health_check]\ninterval_ms = 20\ntimeout_ms = 500\nrise = 1\nfall = 1\n\n[[routes]]\npath = \"/api/*path\"\nupstream = \"api\"\n",
        up.url()
    ))
    .await;
    let readyz = |addr| async move { fetch(addr, "/readyz").await };
    assert_eq!(fetch(gw.admin_addr, "/healthz").await.status, 200);
    wait_for(
        || async { readyz(gw.admin_addr).await.status == 200 },
        "ready",
    )
    .await;
    healthy.store(false, Ordering::SeqCst);
    wait_for(
        || async { readyz(gw.admin_addr).await.status == 503 },
        "not ready",
    )
    .await;
    let reply = readyz(gw.admin_addr).await;
    assert!(reply.text().contains("upstream `api`"), "{}", reply.text());
    healthy.store(true, Ordering::SeqCst);
    wait_for(
        || async { readyz(gw.admin_addr).await.status == 200 },
        "ready again",
    )
    .await;
}

/// Polls `done` every 10 ms for at most 10 s (health lives in atomics with nothing to wake on).
async fn wait_for<F, Fut>(done: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_admin_listener_and_the_traffic_port_keep_to_their_paths() {
    let d = common::demo().await;
    let gw = &d.gateway;
    // The admin listener never proxies, whatever the path.
    for path in ["/api/x", "/static/a.css", "/admin/x", "/anything"] {
        assert_eq!(fetch(gw.admin_addr, path).await.status, 404, "{path}");
    }
    // The traffic port never answers the admin paths.
    for path in ["/metrics", "/readyz", "/healthz", "/stats.json"] {
        assert_eq!(fetch(gw.addr, path).await.status, 404, "{path}");
    }
    // And the dashboard is there, self-contained: nothing loaded from elsewhere.
    let page = fetch(gw.admin_addr, "/").await;
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let html = page.text();
    assert!(html.contains("/stats.json"));
    for external in ["<link", " src=", "@import", "url(", "https://"] {
        assert!(
            !html.contains(external),
            "the page loads nothing from elsewhere: {external}"
        );
    }
    assert!(
        html.match_indices("http://")
            .all(|(i, _)| html[i..].starts_with("http://www.w3.org/2000/svg")),
        "the only URL is SVG's namespace"
    );
    // stats.json lists every route and target of the demo.
    let reply = fetch(gw.admin_addr, "/stats.json").await;
    let stats: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let routes: Vec<&str> = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        ["/admin/*path", "/api/*path", "/static/*path", "(unmatched)"]
    );
    assert_eq!(stats["targets"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn stats_json_reports_the_last_minute() {
    let d = common::demo().await;
    let gw = &d.gateway;
    gw.admin.tick();
    for _ in 0..10 {
        assert_eq!(fetch(gw.addr, "/api/x").await.status, 200);
    }
    assert_eq!(fetch(gw.addr, "/api/x?status=500").await.status, 500);
    let stats = gw.admin.stats_json();
    let api = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/api/*path")
        .unwrap();
    assert_eq!(api["requests"], 11);
    assert!(api["rps"].as_f64().unwrap() > 0.0, "{api}");
    let error_rate = api["error_rate"].as_f64().unwrap();
    assert!((error_rate - 1.0 / 11.0).abs() < 1e-9, "{api}");
    assert!(api["p99_ms"].as_f64().unwrap() > 0.0, "{api}");
    assert_eq!(api["upstream"], "api");
    let served: u64 = stats["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["upstream"] == "api")
        .map(|t| {
            t["per_second"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(served, 11, "{stats}");
}

#[tokio::test]
async fn trace_context_is_continued_started_replaced_and_logged() {
    // config: pre.trace_context, pre.trace_sample_ratio
    testkit::logs::capture();
    let d = common::demo().await;
    let gw = &d.gateway;
    let send = |traceparent: Option<&'static str>,
                tracestate: Option<&'static str>,
                id: &'static str| async move {
        let mut b = get("/api/trace").header("x-request-id", id);
        if let Some(tp) = traceparent {
            b = b.header("traceparent", tp);
        }
        if let Some(ts) = tracestate {
            b = b.header("tracestate", ts);
        }
        let reply = call(gw.addr, b.body(Empty::<Bytes>::new()).unwrap()).await;
        assert_eq!(reply.status, 200);
        let seen = json(&reply);
        let h = &seen["headers"];
        (
            h["traceparent"].as_str().map(str::to_owned),
            h["tracestate"].as_str().map(str::to_owned),
        )
    };
    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Continued: same trace and flags, a span id of the gateway's own; tracestate along.
    let (tp, ts) = send(Some(inbound), Some("congo=t61rcWkgMzE"), "trace-continued").await;
    let tp = tp.unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-01"));
    assert_ne!(&tp[36..52], "00f067aa0ba902b7", "a new span id upstream");
    assert_eq!(ts.as_deref(), Some("congo=t61rcWkgMzE"));
    // Started: a valid new trace.
    let (tp, ts) = send(None, None, "trace-started").await;
    let started = httpkit::TraceContext::parse(tp.as_deref().unwrap().as_bytes()).expect("valid");
    assert!(
        started.sampled(),
        "traces started here are sampled by default"
    );
    assert_eq!(ts, None);
    // Invalid: replaced, never forwarded; its tracestate dropped with it.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let (tp, ts) = send(Some(bad), Some("congo=t61rcWkgMzE"), "trace-replaced").await;
    let tp = tp.unwrap();
    assert_ne!(tp, bad);
    assert!(
        !tp.to_ascii_lowercase()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{tp}"
    );
    assert!(httpkit::TraceContext::parse(tp.as_bytes()).is_some());
    assert_eq!(ts, None);
    // The trace id is on the request's access log line, beside the request id.
    let line = testkit::logs::lines_with("request_id=trace-continued ")
        .into_iter()
        .find(|l| l.contains("access_log"))
        .expect("an access log line");
    assert!(
        line.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
        "{line}"
    );
}
