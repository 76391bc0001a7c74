//! Every configuration key end to end: the reference (docs/configuration.md), the code
//! (`gateway-bin/src/config`) and the tests agree, and the keys no other suite covers are
//! exercised here through the config path. A test that exercises a key says so with a
//! `// config: <key>` line; the coverage test fails for a documented key without one.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::Empty;
use testkit::upstream::{Blackhole, Conn, Upstream};
use testkit::wire::{self, Wire};

fn read(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The keys the reference documents: the first cell of its table rows.
fn documented() -> BTreeSet<String> {
    read("docs/configuration.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// The keys the code reads: the fields of the configuration structs (in the config module's
/// files), under their sections.
fn in_code() -> BTreeSet<String> {
    let sections: BTreeMap<&str, &str> = [
        ("Server", "server"),
        ("Pre", "pre"),
        ("Index", "index"),
        ("Admin", "admin"),
        ("UpstreamConfig", "upstreams.*"),
        ("HealthCheckConfig", "upstreams.*.health_check"),
        ("RouteConfig", "routes"),
        ("AuthConfig", "routes.auth"),
        ("MatchConfig", "routes.matches"),
        ("SplitConfig", "routes.split"),
        ("StickyConfig", "routes.sticky"),
        ("RedirectConfig", "routes.redirect"),
        ("RespondConfig", "routes.respond"),
        ("RewriteConfig", "routes.rewrite"),
        // One struct for both sides.
        (
            "HeadersConfig",
            "routes.request_headers|routes.response_headers",
        ),
        ("RateLimitConfig", "routes.rate_limit"),
        ("CompressConfig", "routes.compress"),
        ("CorsConfig", "routes.cors"),
        ("RetryConfig", "routes.retry"),
        ("MirrorConfig", "routes.mirror"),
        ("Tls", "tls"),
        ("CertificateConfig", "tls.certificates"),
    ]
    .into();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let source: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let mut keys = BTreeSet::new();
    let mut current: Option<&str> = None;
    for line in source.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split([' ', '{']).next().unwrap_or_default();
            current = match name {
                // The whole file, and what reports on it: no keys of their own.
                "Config" | "Source" | "ConfigError" => None,
                other => Some(
                    sections
                        .get(other)
                        .copied()
                        .unwrap_or_else(|| panic!("config struct {other} has no section here")),
                ),
            };
        } else if line == "}" {
            current = None;
        } else if let (Some(section), Some(field)) = (current, line.strip_prefix("pub "))
            && let Some((name, _)) = field.split_once(':')
        {
            for section in section.split('|') {
                keys.insert(format!("{section}.{name}"));
            }
        }
    }
    // `targets` entries: `{ url, weight }`.
    keys.insert("upstreams.*.targets.weight".into());
    keys
}

/// `config: <key>` markers in the gateway's test files.
fn exercised() -> BTreeMap<String, Vec<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for line in text.lines() {
                if let Some(keys) = line.trim().strip_prefix("// config: ") {
                    for key in keys.split(',') {
                        found
                            .entry(key.trim().to_owned())
                            .or_default()
                            .push(file.clone());
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_reference_the_code_and_the_tests_agree_on_every_key() {
    let doc = documented();
    let code = in_code();
    let tested = exercised();
    let undocumented: Vec<_> = code.difference(&doc).collect();
    assert!(
        undocumented.is_empty(),
        "keys in the code, not in docs/configuration.md: {undocumented:?}"
    );
    let gone: Vec<_> = doc
        .iter()
        .filter(|k| !k.starts_with("--") && !code.contains(*k))
        .collect();
    assert!(
        gone.is_empty(),
        "documented keys the code does not read: {gone:?}"
    );
    let untested: Vec<_> = doc.iter().filter(|k| !tested.contains_key(*k)).collect();
    assert!(
        untested.is_empty(),
        "documented keys no test exercises: {untested:?}"
    );
    let unknown: Vec<_> = tested.keys().filter(|k| !doc.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "tests claim keys the reference lacks: {unknown:?}"
    );
}

fn route(upstream_block: &str, route_block: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstreams.up]\n{upstream_block}\n\n[[routes]]\npath = \"/u/*path\"\nupstream = \"up\"\n{route_block}\n"
    )
}

/// An upstream that answers `<name> <method> <target> host=<host> xff=<x-forwarded-for>`.
async fn echo(name: &'static str) -> Upstream {
    Upstream::serving(move |req| {
        wire::fixed(
            200,
            &format!(
                "{name} {} {} host={} xff={}",
                req.head.method(),
                req.head.target(),
                req.head.header("host").unwrap_or("-"),
                req.head.header("x-forwarded-for").unwrap_or("-"),
            ),
        )
    })
    .await
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String) {
    let r = fetch(addr, path).await;
    (r.status, r.text())
}

#[tokio::test]
async fn every_strategy_and_weighted_targets_from_the_config() {
    // config: upstreams.*.strategy, upstreams.*.targets, upstreams.*.targets.weight
    let a = echo("a").await;
    let b = echo("b").await;
    for (strategy, a_weight, expect_a) in [
        ("round-robin", 3, 6),
        ("weighted-ticket", 3, 9),
        ("smooth-weighted", 3, 9),
    ] {
        let gw = start_gateway(route(
            &format!(
                "strategy = \"{strategy}\"\ntargets = [{{ url = \"{}\", weight = {a_weight} }}, \"{}\"]",
                a.url(),
                b.url()
            ),
            "",
        ))
        .await;
        let mut to_a = 0;
        for _ in 0..12 {
            if get_text(gw.addr, "/u/x").await.1.starts_with("a ") {
                to_a += 1;
            }
        }
        assert_eq!(to_a, expect_a, "{strategy}: {to_a} of 12 to a");
    }
    // least-request: a target busy with a slow request gets the next ones.
    let slow = Upstream::start(|mut c: Conn| async move {
        while let Some(req) = c.next_request().await {
            if req.head.target() == "/slow" {
                let _ = c.wire.closed_within(Duration::from_secs(30)).await;
                return;
            }
            if !c.send(&wire::fixed(200, "slow-target")).await {
                return;
            }
        }
    })
    .await;
    let gw = start_gateway(route(
        &format!(
            "strategy = \"least-request\"\ntargets = [\"{}\", \"{}\"]",
            slow.url(),
            b.url()
        ),
        "",
    ))
    .await;
    // One request at a time until the slow target holds one (it never answers it; `b`
    // answers the others at once).
    let mut held = None;
    for _ in 0..20 {
        let mut c = Wire::connect(gw.addr).await.unwrap();
        c.send(b"GET /u/slow HTTP/1.1\r\nHost: g\r\n\r\n")
            .await
            .unwrap();
        let answered =
            tokio::time::timeout(Duration::from_millis(200), c.read_response("GET")).await;
        if answered.is_err() {
            held = Some(c);
            break;
        }
    }
    assert!(held.is_some(), "the slow target never got a request");
    slow.wait_requests(1, Duration::from_secs(10)).await;
    for _ in 0..10 {
        let (_, text) = get_text(gw.addr, "/u/x").await;
        assert!(text.starts_with("b "), "{text}: {:?}", gw.health("up"));
    }
}

#[tokio::test]
async fn connect_timeout_moves_on_from_a_target_that_never_answers_the_handshake() {
    // config: upstreams.*.connect_timeout_ms
    let hole = Blackhole::new().await;
    let live = echo("live").await;
    let gw = start_gateway(route(
        &format!(
            "connect_timeout_ms = 200\ntargets = [\"{}\", \"{}\"]",
            hole.url(),
            live.url()
        ),
        "",
    ))
    .await;
    let start = Instant::now();
    for _ in 0..2 {
        let (status, text) = get_text(gw.addr, "/u/x").await;
        assert_eq!((status, text.starts_with("live ")), (StatusCode::OK, true));
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        gw.health("up")[0].failures,
        1,
        "the blackholed target counted once, then out"
    );
}

#[tokio::test]
async fn preserve_host_and_trusted_proxies() {
    // config: upstreams.*.preserve_host, upstreams.*.trusted_proxies
    let up = echo("up").await;
    // A request as a proxy in front of us would send it: its own Host, a client's address.
    let spoofed = |trust: &str, preserve: bool| {
        let text = route(
            &format!(
                "preserve_host = {preserve}\ntrusted_proxies = [\"{trust}\"]\ntargets = [\"{}\"]",
                up.url()
            ),
            "",
        );
        async move {
            let gw = start_gateway(text).await;
            let req = http::Request::get("/u/x")
                .header("host", "public.example")
                .header("x-forwarded-for", "203.0.113.9")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            call(gw.addr, req).await.text()
        }
    };
    assert_eq!(
        spoofed("127.0.0.0/8", true).await,
        "up GET /x host=public.example xff=203.0.113.9, 127.0.0.1"
    );
    // Not trusted (another network), and the target's Host.
    assert_eq!(
        spoofed("10.0.0.0/8", false).await,
        format!("up GET /x host={} xff=127.0.0.1", up.addr())
    );
}

#[tokio::test]
async fn all_down_reset_panic_and_fail_fast() {
    // config: upstreams.*.all_down, upstreams.*.max_fails, upstreams.*.fail_timeout_ms
    // Two targets that refuse at first; both get taken out; then one comes back on its
    // address while still serving its penalty.
    for (mode, expect) in [("reset", 200), ("panic", 200), ("fail-fast", 503)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener); // refused from now on; taken back below
        let other = testkit::upstream::Refusing::new();
        let gw = start_gateway(route(
            &format!(
                "all_down = \"{mode}\"\nmax_fails = 1\nfail_timeout_ms = 60000\ntargets = [\"http://{addr}\", \"{}\"]",
                other.url()
            ),
            "",
        ))
        .await;
        assert_eq!(fetch(gw.addr, "/u/x").await.status, StatusCode::BAD_GATEWAY);
        assert!(
            gw.health("up").iter().all(|t| t.failures == 1),
            "both tried once"
        );
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(_) => continue, // the port was taken meanwhile: nothing to learn this round
        };
        let _back = Upstream::on(listener, |c: Conn| c.serve(|_| wire::fixed(200, "back")));
        assert_eq!(
            fetch(gw.addr, "/u/x").await.status.as_u16(),
            expect,
            "{mode}"
        );
    }
}

#[tokio::test]
async fn slow_start_ramps_a_returning_target() {
    // config: upstreams.*.slow_start_ms
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = start_gateway(route(
        &format!(
            "slow_start_ms = 60000\nfail_timeout_ms = 100\ntargets = [\"{}\", \"{}\"]",
            a.url(),
            b.url()
        ),
        "",
    ))
    .await;
    // Take `a` out by hand for a moment: it comes back through its passive penalty.
    let state = gw.upstreams[0].1.upstream().balancer().targets()[0]
        .state()
        .clone();
    state.report(
        gw.upstreams[0].1.upstream().balancer().policy(),
        balancer::Outcome::Failure,
        true,
    );
    gw.wait_health("up", "a back", Duration::from_secs(5), |h| h[0].available)
        .await;
    let mut to_a = 0;
    for _ in 0..40 {
        if get_text(gw.addr, "/u/x").await.1.starts_with("a ") {
            to_a += 1;
        }
    }
    // A tenth of its half at the start of a 60 s ramp: about 2 of 40, never near 20.
    assert!(to_a <= 6, "a got {to_a} of 40 while ramping");
    assert!(
        state
            .ramp(gw.upstreams[0].1.upstream().balancer().policy())
            .is_some()
    );
}

#[tokio::test]
async fn pool_settings_and_the_response_head_limit() {
    // config: upstreams.*.pool_idle_timeout_ms, upstreams.*.pool_max_idle_per_target, upstreams.*.max_response_header_bytes
    let up = Upstream::serving(|req| {
        if req.head.target() == "/big" {
            let mut out = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            out.extend(std::iter::repeat_n(b'v', 20_000));
            out.extend(b"\r\ncontent-length: 2\r\n\r\nok");
            out
        } else {
            wire::fixed(200, "small")
        }
    })
    .await;
    let gw = start_gateway(route(
        &format!(
            "pool_idle_timeout_ms = 100\nmax_response_header_bytes = 16384\ntargets = [\"{}\"]",
            up.url()
        ),
        "",
    ))
    .await;
    assert_eq!(
        get_text(gw.addr, "/u/a").await,
        (StatusCode::OK, "small".into())
    );
    assert_eq!(get_text(gw.addr, "/u/big").await.0, StatusCode::BAD_GATEWAY);
    let before = up.connections();
    assert_eq!(get_text(gw.addr, "/u/b").await.0, StatusCode::OK);
    // The idle timeout passing is the scenario.
    tokio::time::sleep(Duration::from_millis(250)).await;
    up.wait("the idle connection closed", Duration::from_secs(5), |u| {
        u.open() == 0
    })
    .await;
    assert_eq!(get_text(gw.addr, "/u/c").await.0, StatusCode::OK);
    assert!(
        up.connections() > before,
        "reused after the pool idle timeout"
    );
    // No idle connections at all: one connection per request.
    let gw = start_gateway(route(
        &format!("pool_max_idle_per_target = 0\ntargets = [\"{}\"]", up.url()),
        "",
    ))
    .await;
    let before = up.connections();
    for _ in 0..3 {
        assert_eq!(get_text(gw.addr, "/u/x").await.0, StatusCode::OK);
    }
    assert_eq!(up.connections(), before + 3);
}

#[tokio::test]
async fn route_timeout_strip_prefix_extension_methods_and_auth_forms() {
    // config: routes.timeout_ms, routes.strip_prefix, routes.extension_methods, routes.methods
    // config: routes.auth.header, routes.auth.secrets
    let up = Upstream::start(|mut c: Conn| async move {
        while let Some(req) = c.next_request().await {
            if req.head.target().contains("slow") {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if !c
                .send(&wire::fixed(
                    200,
                    &format!("{} {}", req.head.method(), req.head.target()),
                ))
                .await
            {
                return;
            }
        }
    })
    .await;
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.up]
targets = ["{url}"]

[[routes]]
path = "/deadline/*path"
upstream = "up"
timeout_ms = 100

[[routes]]
path = "/full/*path"
upstream = "up"
strip_prefix = false

[[routes]]
path = "/cache/*path"
methods = ["PURGE"]
extension_methods = ["PURGE"]
upstream = "up"

[[routes]]
path = "/header/*path"
upstream = "up"
auth = {{ header = "X-Token", secrets = ["t0ken"] }}
"#,
        url = up.url()
    );
    let gw = start_gateway(text).await;
    let start = Instant::now();
    assert_eq!(
        fetch(gw.addr, "/deadline/slow").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        start.elapsed() < Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(get_text(gw.addr, "/deadline/fast").await.1, "GET /fast");
    assert_eq!(
        get_text(gw.addr, "/full/a/b?q=1").await.1,
        "GET /full/a/b?q=1"
    );
    let purge = call(
        gw.addr,
        http::Request::builder()
            .method("PURGE")
            .uri("/cache/x")
            .header("host", "g")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(purge.text(), "PURGE /x");
    assert_eq!(
        fetch(gw.addr, "/cache/x").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let with = |path: &str, name: &str, value: &str| {
        http::Request::get(path)
            .header("host", "g")
            .header(name, value)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        call(gw.addr, with("/header/x", "x-token", "t0ken"))
            .await
            .text(),
        "GET /x"
    );
    assert_eq!(
        call(gw.addr, with("/header/x", "x-token", "nope"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn the_pre_switches_and_an_unlimited_body() {
    // config: pre.request_id, pre.access_log, pre.recover, server.max_body_bytes
    testkit::logs::capture();
    let up = Upstream::serving(|req| {
        wire::fixed(
            200,
            &format!(
                "id={} len={}",
                req.head.header("x-request-id").unwrap_or("-"),
                req.body.len()
            ),
        )
    })
    .await;
    let text = |pre: &str, server: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n[pre]\n{pre}\n[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\npath = \"/u/*path\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"up\"\n",
            up.url()
        )
    };
    // All off: no id made, nothing logged, still served.
    let gw = start_gateway(text(
        "request_id = false\naccess_log = false\nrecover = false",
        "",
    ))
    .await;
    let r = call(
        gw.addr,
        http::Request::get("/u/x")
            .header("host", "g")
            .header("x-request-id", "switches-off")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.text(),
        "id=switches-off len=0",
        "the client's id passes untouched"
    );
    assert!(
        r.headers.get("x-request-id").is_none(),
        "no id made or returned"
    );
    assert!(
        testkit::logs::lines_with("switches-off")
            .iter()
            .all(|l| !l.contains("access_log"))
    );
    // On (the defaults): an id is made and the request is logged.
    let gw = start_gateway(text("", "max_body_bytes = 0")).await;
    let r = fetch(gw.addr, "/u/x").await;
    let id = r.header("x-request-id").to_owned();
    assert_eq!(id.len(), 32, "{r:?}");
    assert_eq!(r.text(), format!("id={id} len=0"));
    assert!(
        testkit::logs::lines_with(&id)
            .iter()
            .any(|l| l.contains("access_log"))
    );
    // max_body_bytes = 0: no limit (well past the 10 MiB default).
    let big = vec![b'x'; 11 * 1024 * 1024];
    let r = call(
        gw.addr,
        http::Request::post("/u/up")
            .header("host", "g")
            .body(http_body_util::Full::new(bytes::Bytes::from(big)))
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.text().split_once(" len=").unwrap().1,
        (11 * 1024 * 1024).to_string()
    );
}

#[tokio::test]
async fn health_check_host_is_sent() {
    // config: upstreams.*.health_check.host
    let up = Upstream::serving(|req| {
        let host = req.head.header("host").unwrap_or_default();
        wire::fixed(if host == "health.internal" { 200 } else { 503 }, host)
    })
    .await;
    let gw = start_gateway(format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.up]\ntargets = [\"{}\"]\n[upstreams.up.health_check]\nhost = \"health.internal\"\ninterval_ms = 50\nfall = 1\n[[routes]]\npath = \"/u/*path\"\nupstream = \"up\"\n",
        up.url()
    ))
    .await;
    gw.wait_health(
        "up",
        "a passing check with the configured Host",
        Duration::from_secs(5),
        |_| {
            gw.upstreams[0].1.upstream().balancer().targets()[0]
                .state()
                .last_check()
                .is_some_and(|c| c.ok && c.detail == "200")
        },
    )
    .await;
}

#[tokio::test]
async fn the_listen_backlog_holds_a_burst_the_gateway_has_not_accepted_yet() {
    // config: server.listen_backlog
    // One connection served and held (`max_connections = 1`): the gateway accepts no more, so
    // every later connection the kernel completes waits in the listener's backlog. 250 of them
    // fit in 300; with the 128 tokio's and std's `bind` ask for, the 130th SYN is dropped and
    // its connect hangs (the kernel retries at 1, 3, 7 s...).
    let up = echo("up").await;
    let dir = tempdir("backlog");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        route(&format!("targets = [\"{}\"]", up.url()), "").replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:0\"]\nmax_connections = 1\nlisten_backlog = 300",
        ),
    )
    .unwrap();
    let (_child, addr) = start_binary(&file);
    let mut held = Wire::connect(addr).await.unwrap();
    held.send(b"GET /u/x HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let answer = held.read_response("GET").await.unwrap();
    assert_eq!(answer.head.status(), 200, "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut burst = Vec::new();
    for i in 0..250 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => burst.push(s),
            Ok(Err(e)) => panic!("connection {i} of the burst: {e}"),
            Err(_) => panic!(
                "connection {i} of the burst not completed in 10 s: the backlog is too short"
            ),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_cli_prints_the_default_and_logs_json_with_the_worker_count() {
    // config: --print-default-config, --log-json, server.worker_threads
    // config: routes.auth.bearer, routes.auth.secrets_env
    let exe = env!("CARGO_BIN_EXE_gateway");
    let out = std::process::Command::new(exe)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        gateway_bin::config::DEFAULT
    );
    let up = echo("up").await;
    let dir = tempdir("cli");
    let file = dir.join("gateway.toml");
    // A bearer gate with its secrets in the environment (set for the child process only).
    std::fs::write(
        &file,
        route(&format!("targets = [\"{}\"]", up.url()), "")
            .replace(
                "listen = [\"127.0.0.1:0\"]",
                "listen = [\"127.0.0.1:0\"]\nworker_threads = 1",
            )
            .replace(
                "upstream = \"up\"\n",
                "upstream = \"up\"\nauth = { bearer = true, secrets_env = \"GATEWAY_BEARER\" }\n",
            ),
    )
    .unwrap();
    let mut child = Guarded::spawn(
        std::process::Command::new(exe)
            .arg("--config")
            .arg(&file)
            .arg("--log-json")
            .env("GATEWAY_BEARER", "s3cret,other"),
    )
    .unwrap();
    let line = child
        .wait_line("gateway listening", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{}", child.output()));
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let addr: std::net::SocketAddr = json["fields"]["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(get_text(addr, "/u/x").await.0, StatusCode::FORBIDDEN);
    let bearer = |token: &str| {
        http::Request::get("/u/x")
            .header("host", "g")
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        call(addr, bearer("wrong")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(addr, bearer("other")).await.status, StatusCode::OK);
    // One worker: a single-threaded runtime (the main thread; no worker pool).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let threads: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(threads <= 2, "{threads} threads with worker_threads = 1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_example_in_the_reference_builds() {
    let reference = read("docs/configuration.md");
    let examples: Vec<&str> = reference
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(
        examples.len() >= 8,
        "an example per section: {}",
        examples.len()
    );
    for example in examples {
        let source = gateway_bin::config::Source {
            name: "docs/configuration.md".into(),
            text: example.to_owned(),
        };
        let config = source.parse().unwrap_or_else(|e| panic!("{e}\n{example}"));
        gateway_bin::app::build::<gateway_bin::serve::ServedBody>(&config, &source)
            .unwrap_or_else(|e| panic!("{e}\n{example}"));
    }
}
