//! Upstream health through the real gateway: no blackout after one bad response, active checks
//! that find a dead target before a client does (and a hanging one at their timeout), a
//! target killed under load with checks on, and targets named by DNS, re-resolved under load.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use testkit::upstream::{Conn, Upstream};
use testkit::wire::{self, Wire};
use tokio::net::TcpListener;

/// The blackout of the issue, step by step, through the `gateway` binary: a target goes
/// down and comes back, then one response is cut mid-body. Every later request must be
/// answered by a live backend; none may get a `502` without an attempt.
#[tokio::test]
async fn one_bad_response_never_blacks_out_an_upstream() {
    let b1 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("one"))
        .await
        .unwrap();
    let b2 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("two"))
        .await
        .unwrap();
    let addr2 = b2.addr();
    let dir = tempdir("blackout");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config(b1.addr(), addr2)).unwrap();
    let (mut child, gw) = start_binary(&file);

    // :9002 stops; requests fail over to :9001 and :9002 is taken out.
    drop(b2);
    for _ in 0..4 {
        assert_eq!(fetch(gw, "/api/x").await.status, StatusCode::OK);
    }
    // :9002 comes back on the same address.
    let b2 = fake_backend::spawn(addr2, Some("two")).await.unwrap();
    // One response is cut mid-body, by whichever target gets it.
    let mut c = Wire::connect(gw).await.unwrap();
    c.send(b"GET /api/x?reset=1 HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let _ = c.read_response("GET").await;
    // From here on, within the default 10 s fail_timeout: every request is answered, by a
    // backend, including a slow one.
    for i in 0..20 {
        let r = fetch(gw, "/api/x").await;
        assert_eq!(r.status, StatusCode::OK, "request {i} after the cut body");
        assert!(["one", "two"].contains(&json(&r)["backend"].as_str().unwrap()));
    }
    let start = Instant::now();
    let r = fetch(gw, "/api/slow?delay_ms=150").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_millis(140),
        "answered without an attempt"
    );
    let out = child.output();
    assert!(
        !out.contains("tried=0"),
        "a request was refused untried:\n{out}"
    );
    drop((b1, b2));
    let _ = std::fs::remove_dir_all(&dir);
}

fn checked(targets: &[String], check: &str, extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.up]
targets = [{}]
response_timeout_ms = 2000
{extra}

[upstreams.up.health_check]
{check}

[[routes]]
path = "/u/*path"
methods = ["GET"]
upstream = "up"
"#,
        list.join(", ")
    )
}

/// An upstream whose `/healthz` answers, and that counts the other requests it gets.
async fn checked_upstream(name: &'static str) -> (Upstream, Arc<AtomicUsize>) {
    let traffic = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&traffic);
    let up = Upstream::start(move |c: Conn| {
        let t = Arc::clone(&t);
        c.serve(move |req| {
            if req.head.target() != "/healthz" {
                t.fetch_add(1, Ordering::SeqCst);
            }
            wire::fixed(200, name)
        })
    })
    .await;
    (up, traffic)
}

#[tokio::test]
async fn active_checks_take_a_dead_target_out_before_any_client_meets_it_and_bring_it_back() {
    // config: upstreams.*.health_check, upstreams.*.health_check.path, upstreams.*.health_check.interval_ms
    // config: upstreams.*.health_check.timeout_ms, upstreams.*.health_check.rise, upstreams.*.health_check.fall

    let (one, _) = checked_upstream("one").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = listener.local_addr().unwrap();
    let (two, traffic2) = {
        let traffic = Arc::new(AtomicUsize::new(0));
        let t = Arc::clone(&traffic);
        let up = Upstream::on(listener, move |c: Conn| {
            let t = Arc::clone(&t);
            c.serve(move |req| {
                if req.head.target() != "/healthz" {
                    t.fetch_add(1, Ordering::SeqCst);
                }
                wire::fixed(200, "two")
            })
        });
        (up, traffic)
    };
    let gw = start_gateway(checked(
        &[one.url(), two.url()],
        "path = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 200\nrise = 2\nfall = 2",
        "",
    ))
    .await;
    // Both pass their checks; traffic goes to both.
    gw.wait_health("up", "both checked", Duration::from_secs(10), |h| {
        h.iter().all(|t| !t.check_down)
    })
    .await;
    // `two` dies. Without any client request, the checks take it out within fall x
    // interval (plus jitter and a loaded machine's slack).
    drop(two);
    let died = Instant::now();
    gw.wait_health("up", "two out by its checks", Duration::from_secs(5), |h| {
        h[1].check_down
    })
    .await;
    assert!(
        died.elapsed() < Duration::from_secs(3),
        "{:?}",
        died.elapsed()
    );
    let before = traffic2.load(Ordering::SeqCst);
    for _ in 0..20 {
        let r = fetch(gw.addr, "/u/x").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "one"));
    }
    assert_eq!(
        gw.health("up")[1].failures,
        0,
        "no client request ever reached it"
    );
    // It comes back on the same address: back in rotation after rise passing checks.
    let listener = TcpListener::bind(addr2).await.unwrap();
    let traffic2b = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&traffic2b);
    let _two = Upstream::on(listener, move |c: Conn| {
        let t = Arc::clone(&t);
        c.serve(move |req| {
            if req.head.target() != "/healthz" {
                t.fetch_add(1, Ordering::SeqCst);
            }
            wire::fixed(200, "two")
        })
    });
    gw.wait_health(
        "up",
        "two back after rise checks",
        Duration::from_secs(5),
        |h| !h[1].check_down,
    )
    .await;
    for _ in 0..10 {
        assert_eq!(fetch(gw.addr, "/u/x").await.status, StatusCode::OK);
    }
    assert!(
        traffic2b.load(Ordering::SeqCst) > 0,
        "two got no traffic back"
    );
    assert_eq!(before, traffic2.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_check_that_hangs_fails_at_its_timeout_and_a_wrong_status_fails_too() {
    // config: upstreams.*.health_check.expect_status, upstreams.*.health_check.kind

    // Accepts, reads the probe, never answers.
    let hang = Upstream::silent().await;
    let gw = start_gateway(checked(
        &[hang.url()],
        "path = \"/healthz\"\ninterval_ms = 50\ntimeout_ms = 150\nfall = 1",
        "",
    ))
    .await;
    let start = Instant::now();
    gw.wait_health(
        "up",
        "the hanging target out",
        Duration::from_secs(5),
        |h| h[0].check_down,
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(140),
        "{:?}",
        start.elapsed()
    );
    let detail = gw.upstreams[0].1.upstream().balancer().targets()[0]
        .state()
        .last_check()
        .unwrap()
        .detail;
    assert!(detail.contains("timed out after 150 ms"), "{detail}");
    // Its only target fails its checks: no target available, 503 at once.
    assert_eq!(
        fetch(gw.addr, "/u/x").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let sick = Upstream::serving(|_| wire::fixed(503, "sick")).await;
    let gw = start_gateway(checked(
        &[sick.url()],
        "path = \"/healthz\"\nexpect_status = \"200-299\"\ninterval_ms = 50\nfall = 1",
        "",
    ))
    .await;
    gw.wait_health("up", "the 503 target out", Duration::from_secs(5), |h| {
        h[0].check_down
    })
    .await;
    let tcp = Upstream::serving(|_| wire::fixed(503, "sick")).await;
    let gw = start_gateway(checked(
        &[tcp.url()],
        "kind = \"tcp\"\ninterval_ms = 50\nfall = 1",
        "",
    ))
    .await;
    gw.wait_health(
        "up",
        "a TCP check that passes",
        Duration::from_secs(5),
        |_| {
            gw.upstreams[0].1.upstream().balancer().targets()[0]
                .state()
                .last_check()
                .is_some_and(|c| c.ok)
        },
    )
    .await;
    assert!(!gw.health("up")[0].check_down);
}

#[tokio::test]
async fn killing_a_target_under_load_with_checks_on_costs_only_its_requests_in_flight() {
    let (one, _) = checked_upstream("one").await;
    let (two, traffic2) = checked_upstream("two").await;
    let gw = start_gateway(checked(
        &[one.url(), two.url()],
        "path = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 200\nfall = 2",
        "max_fails = 0", // only the checks decide here
    ))
    .await;
    const WORKERS: usize = 4;
    let load = Load::start(gw.addr, "/u/x", WORKERS);
    load.until("200 answers", |l| l.ok() >= 200).await;
    drop(two);
    gw.wait_health("up", "two out by its checks", Duration::from_secs(5), |h| {
        h[1].check_down
    })
    .await;
    let after_out = traffic2.load(Ordering::SeqCst);
    let at = load.ok();
    load.until("200 more answers", |l| l.ok() >= at + 200).await;
    let lost = load.stop().await;
    // max_fails = 0: with passive health off, a failed exchange is retried on `one` when it
    // can be (bodiless GETs), so the clients lose at most what was in flight on `two`.
    assert!(lost.len() <= WORKERS, "{} failed: {lost:?}", lost.len());
    assert_eq!(
        traffic2.load(Ordering::SeqCst),
        after_out,
        "traffic reached `two` after it was out"
    );
    drop(one);
}

/// A resolver whose answers the test sets: a name to addresses.
#[derive(Default)]
struct Table(Mutex<HashMap<String, Vec<IpAddr>>>);

impl Table {
    fn set(&self, name: &str, ips: &[&str]) {
        self.0.lock().unwrap().insert(
            name.to_owned(),
            ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        );
    }
}

impl proxy::dns::Resolve for Table {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> proxy::dns::Resolving<'a> {
        let answer = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::other(format!("{host}: no such name")))
        })
    }
}

/// Upstreams on the same port at several loopback addresses (127.0.0.x), each answering
/// with its own address.
async fn same_port_upstreams(ips: &[&str]) -> (u16, Vec<Upstream>) {
    for _ in 0..20 {
        let first = TcpListener::bind(format!("{}:0", ips[0])).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind(format!("{ip}:{port}")).await {
                Ok(l) => listeners.push(l),
                Err(_) => break,
            }
        }
        if listeners.len() == ips.len() {
            let ups = listeners
                .into_iter()
                .map(|l| {
                    let me = l.local_addr().unwrap().ip().to_string();
                    Upstream::on(l, move |c: Conn| {
                        let me = me.clone();
                        c.serve(move |_| wire::fixed(200, &me))
                    })
                })
                .collect();
            return (port, ups);
        }
    }
    panic!("no port free on every one of {ips:?}");
}

#[tokio::test]
async fn dns_targets_resolve_to_every_address_and_follow_changes_under_load() {
    // config: upstreams.*.resolve_interval_ms

    let (port, _ups) = same_port_upstreams(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]).await;
    let table = Arc::new(Table::default());
    table.set("api.test", &["127.0.0.1", "127.0.0.2"]);
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.up]\ntargets = [\"http://api.test:{port}\"]\nresolve_interval_ms = 50\n[[routes]]\npath = \"/u/*path\"\nupstream = \"up\"\n"
    );
    let resolver: Arc<dyn proxy::dns::Resolve> = table.clone();
    let gw = start_gateway_with(text, resolver).await;
    gw.wait_health("up", "two addresses", Duration::from_secs(5), |h| {
        h.len() == 2
    })
    .await;
    let names: Vec<String> = gw.health("up").into_iter().map(|t| t.target).collect();
    assert_eq!(
        names,
        [
            format!("http://api.test:{port} (127.0.0.1)"),
            format!("http://api.test:{port} (127.0.0.2)")
        ]
    );

    // Load while the name changes: an address added, one removed, then the name stops
    // resolving (the last addresses stay).
    let load = Load::start(gw.addr, "/u/x", 3);
    load.until("traffic on .1 and .2", |l| {
        l.count("127.0.0.1") > 20 && l.count("127.0.0.2") > 20
    })
    .await;
    table.set("api.test", &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    load.until("traffic on the added .3", |l| l.count("127.0.0.3") > 20)
        .await;
    table.set("api.test", &["127.0.0.2", "127.0.0.3"]);
    gw.wait_health("up", ".1 removed", Duration::from_secs(5), |h| {
        h.len() == 2 && !h.iter().any(|t| t.target.contains("(127.0.0.1)"))
    })
    .await;
    let after_removal = load.count("127.0.0.1");
    let at = load.count("127.0.0.2");
    load.until("traffic on .2 after the removal", |l| {
        l.count("127.0.0.2") > at + 20
    })
    .await;
    table.0.lock().unwrap().clear(); // the name stops resolving
    let at = load.count("127.0.0.3");
    load.until("traffic continues on the last addresses", |l| {
        l.count("127.0.0.3") > at + 20
    })
    .await;
    let on_removed = load.count("127.0.0.1");
    let failures = load.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    // Requests in flight to .1 at the swap may finish there; none start after.
    assert!(on_removed <= after_removal + 3);
    assert_eq!(gw.health("up").len(), 2, "the last good set stays");
}

#[tokio::test]
async fn localhost_resolves_with_the_system_resolver_and_keeps_its_name_in_host() {
    let up =
        Upstream::serving(|req| wire::fixed(200, req.head.header("host").unwrap_or("none"))).await;
    let port = up.addr().port();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.up]\ntargets = [\"http://localhost:{port}\"]\n[[routes]]\npath = \"/u/*path\"\nupstream = \"up\"\n"
    );
    let gw = start_gateway(text).await;
    gw.wait_health("up", "localhost resolved", Duration::from_secs(10), |h| {
        h.iter().any(|t| t.target.contains("(127.0.0.1)"))
    })
    .await;
    let mut ok = 0;
    for _ in 0..6 {
        let r = fetch(gw.addr, "/u/x").await;
        // localhost may also resolve to ::1, where nothing listens: that target fails over.
        if r.status == StatusCode::OK {
            assert_eq!(r.text(), format!("localhost:{port}"));
            ok += 1;
        }
    }
    assert_eq!(ok, 6);
}
