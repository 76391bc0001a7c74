//! Upstream faults: each gets the right status, a log line with the request id, and
//! passive-health ejection so the other target takes the traffic; a target killed under load
//! costs only the requests in flight on it and is back within `fail_timeout`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Everything the gateway logs in this test binary.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let writer = || LogWriter;
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(writer)
            .try_init();
        Mutex::new(Vec::new())
    })
}

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        logs().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that mention `id`.
fn lines_with(id: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(id))
        .map(str::to_owned)
        .collect()
}

/// An upstream that runs `behave` on every connection.
async fn raw_upstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(behave(s));
        }
    });
    addr
}

/// Reads one request head (enough for these bodiless GETs).
async fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

fn upstream(name: &str, targets: &[SocketAddr]) -> String {
    let list: Vec<String> = targets.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!(
        "[upstreams.{name}]\ntargets = [{}]\nresponse_timeout_ms = 300\nfail_timeout_ms = 500\n\n\
         [[routes]]\npath = \"/{name}/*path\"\nmethods = [\"GET\"]\nupstream = \"{name}\"\n\n",
        list.join(", ")
    )
}

async fn get_with_id(
    addr: SocketAddr,
    path: &str,
    id: &str,
) -> Result<(StatusCode, String), String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "g")
        .header("x-request-id", id)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let backend = res
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    res.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, backend))
}

#[tokio::test]
async fn each_upstream_fault_gets_its_status_a_logged_request_id_and_ejection() {
    // config: upstreams.*.response_timeout_ms

    logs();
    let good = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("good"))
        .await
        .unwrap();
    let refusing = testkit::upstream::Refusing::new();
    let down = refusing.addr();
    let refuse = raw_upstream(|s| async move { drop(s) }).await;
    let hang = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        // Holds the connection without a word until the gateway gives up.
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let malformed = raw_upstream(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 2x0 Nonsense\r\n\r\n").await;
        }
    })
    .await;
    let half = raw_upstream(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
                .await;
        }
    })
    .await;
    let g = good.addr();
    let mut text = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\n\n");
    for (name, bad) in [
        ("down", down),
        ("refuse", refuse),
        ("hang", hang),
        ("malformed", malformed),
        ("half", half),
    ] {
        // Alone, the fault is what the client sees; paired with a good target, it is ejected.
        text.push_str(&upstream(name, &[bad]));
        text.push_str(&upstream(&format!("{name}pair"), &[bad, g]));
    }
    text.push_str(&upstream("slow", &[g]));
    text.push_str(&upstream("reset", &[g]));
    let gw = start_gateway(text).await;

    for (name, want) in [
        ("down", StatusCode::BAD_GATEWAY),
        ("refuse", StatusCode::BAD_GATEWAY),
        ("hang", StatusCode::GATEWAY_TIMEOUT),
        ("malformed", StatusCode::BAD_GATEWAY),
    ] {
        let id = format!("fault-{name}");
        let got = get_with_id(gw.addr, &format!("/{name}/x"), &id).await;
        assert_eq!(got.as_ref().map(|g| g.0), Ok(want), "{name}");
        let lines = lines_with(&id);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("WARN") || l.contains("ERROR")),
            "{name}: no warning with the request id: {lines:?}"
        );
    }
    // The body stops short of its Content-Length: the client's stream is cut, not completed.
    let got = get_with_id(gw.addr, "/half/x", "fault-half").await;
    assert!(
        got.is_err(),
        "a truncated body must not look complete: {got:?}"
    );
    // Logged under the request's id, though the request's future was long gone.
    assert!(
        lines_with("request_id=fault-half ")
            .iter()
            .any(|l| l.contains("upstream response body failed")),
        "the cut body was logged with its request id"
    );
    // A reset mid-body, from the fake backend's fault mode: cut, logged, and counted against
    // the target, but a head arrived, so one alone does not take it out (and it is the only
    // target): the next request is served.
    let got = get_with_id(gw.addr, "/reset/x?reset=1", "fault-reset").await;
    assert!(got.is_err(), "{got:?}");
    assert!(
        lines_with("request_id=fault-reset ")
            .iter()
            .any(|l| l.contains("upstream response body failed"))
    );
    let got = get_with_id(gw.addr, "/reset/x", "after-reset").await;
    assert_eq!(got.map(|g| g.0), Ok(StatusCode::OK));
    let reset = &gw.health("reset")[0];
    assert_eq!((reset.failures, reset.available), (1, true), "{reset:?}");
    // Slow but within the timeout: fine; over it: 504.
    let got = get_with_id(gw.addr, "/slow/x?delay_ms=100", "slow-ok").await;
    assert_eq!(got.map(|g| g.0), Ok(StatusCode::OK));
    let got = get_with_id(gw.addr, "/slow/x?delay_ms=2000", "slow-504").await;
    assert_eq!(got.map(|g| g.0), Ok(StatusCode::GATEWAY_TIMEOUT));

    // Paired with a good target: at most the first request fails (the connect failure is
    // retried on the good one), then the bad one is out and every request goes to `good`.
    // A target that cuts its bodies goes out after a run of them, not after the first.
    for name in ["down", "refuse", "hang", "malformed", "half"] {
        let tolerated = if name == "half" {
            2 * balancer::BODY_FAILURES_IN_A_ROW as usize
        } else {
            1
        };
        let mut statuses = Vec::new();
        for i in 0..tolerated + 5 {
            let got = get_with_id(
                gw.addr,
                &format!("/{name}pair/x"),
                &format!("pair-{name}-{i}"),
            )
            .await;
            statuses.push(got.map_or(0, |(s, b)| if b == "good" { s.as_u16() } else { 1 }));
        }
        assert!(
            statuses[tolerated..].iter().all(|&s| s == 200),
            "{name}: the bad target was not ejected: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn random_keep_alive_closes_cost_nothing() {
    // An upstream that closes its keep-alive connections at random (after 1 to 3 requests,
    // without saying so): the gateway notices a dead pooled connection or retries a request
    // that was never sent, so GETs all succeed.
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    let flaky = raw_upstream(move |mut s| {
        let count = Arc::clone(&count);
        async move {
            let n = 1 + count.load(Ordering::Relaxed) % 3;
            for _ in 0..n {
                if !read_head(&mut s).await {
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n{}",
        upstream("flaky", &[flaky])
    );
    let gw = start_gateway(text).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut failed = Vec::new();
    for i in 0..200 {
        let req = Request::get("/flaky/x")
            .header("host", "g")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        if res.status() != StatusCode::OK {
            failed.push((i, res.status()));
        }
        res.into_body().collect().await.unwrap();
    }
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(served.load(Ordering::Relaxed), 200);
}

#[tokio::test]
async fn killing_a_target_under_load_costs_only_its_in_flight_requests() {
    let b1 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("one"))
        .await
        .unwrap();
    let b2 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("two"))
        .await
        .unwrap();
    let addr1 = b1.addr();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n{}",
        upstream("api", &[addr1, b2.addr()])
    );
    let gw = start_gateway(text).await;

    const WORKERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen_one = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, ok, failures, seen_one) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failures),
            Arc::clone(&seen_one),
        );
        let addr = gw.addr;
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                match get_with_id(addr, "/api/x?delay_ms=5", &format!("load-{w}-{i}")).await {
                    Ok((StatusCode::OK, backend)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if backend == "one" {
                            seen_one.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    let wait_for = |counter: Arc<AtomicUsize>, at_least: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.load(Ordering::Relaxed) < at_least {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    wait_for(Arc::clone(&ok), 100).await;
    assert!(failures.lock().unwrap().is_empty());

    // Kill: the listener and every connection of `one` close.
    drop(b1);
    let killed_at = ok.load(Ordering::Relaxed);
    wait_for(Arc::clone(&ok), killed_at + 200).await;
    let lost = failures.lock().unwrap().len();
    assert!(
        lost <= WORKERS,
        "{lost} requests failed, more than were in flight: {:?}",
        failures.lock().unwrap()
    );

    // Restart on the same address: back in rotation within fail_timeout (500 ms) plus a
    // little for the next probe.
    let b1 = fake_backend::spawn(addr1, Some("one")).await.unwrap();
    let restarted = Instant::now();
    let before = seen_one.load(Ordering::Relaxed);
    wait_for(Arc::clone(&seen_one), before + 1).await;
    let back = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // fail_timeout is 500 ms; the bound is generous for a loaded machine.
    assert!(back < Duration::from_secs(5), "back after {back:?}");
    assert_eq!(
        failures.lock().unwrap().len(),
        lost,
        "failures after the kill settled"
    );
    drop(b1);
}
