//! `cargo xtask soak [--minutes N] [--clients C]`: N minutes (default 2) of mixed traffic
//! through the release gateway, then the checks that matter for a long-running edge process.
//!
//! Traffic, from C client threads (default 12), each op on loopback with 10 s socket
//! timeouts: small keep-alive GETs, 1 MiB downloads, 1 MiB uploads, server-sent events,
//! WebSocket echoes, and slow clients (a head in pieces, a body read in small sips).
//!
//! Checks:
//! - after the first minute and at the end, with every client gone and the upstream pools
//!   drained, the gateway's RSS, open file descriptors, threads and live tokio tasks: no
//!   growth between the two beyond a small allowance;
//! - no request failed;
//! - SIGTERM under load: every response that started completes, the process exits 0.
//!
//! Every process is started here and killed by PID on the way out; all traffic is on
//! 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Conn, websocket_echo};
use crate::procs::{Processes, free_port, proc_status, render, wait_for};

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Minutes of traffic (the first is the warm-up the end is compared with).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=240))]
    minutes: u64,
    /// Client threads.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=512))]
    clients: u64,
}

const MIB: usize = 1024 * 1024;

/// What one gateway process looks like from outside.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
}

fn sample(pid: u32, port: u16) -> Result<Sample, String> {
    let field = |name: &str| {
        proc_status(pid, name).ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("reading /proc/{pid}/fd: {e}"))?
        .count() as u64;
    let reply = Conn::open(port)?.request("GET", "/", 0, false)?;
    if reply.status != 200 {
        return Err(format!("index page answered {}", reply.status));
    }
    let page = String::from_utf8_lossy(&reply.body);
    let tasks = page
        .lines()
        .find_map(|l| l.trim().strip_prefix("tasks alive "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or("the index page shows no task count")?;
    Ok(Sample {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
        tasks,
    })
}

/// Samples until the readings agree on tasks and descriptors for 2 s (connections the
/// clients closed take a moment to end on the gateway's side, and an idle pooled upstream
/// connection, which has no task, lives up to 1.5 s: the soak's pool idle timeout and half
/// of it for the reaper's round), at most 10 s.
fn settled_sample(pid: u32, port: u16) -> Result<Sample, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = sample(pid, port)?;
    let mut steady_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = sample(pid, port)?;
        if now.tasks != last.tasks || now.fds != last.fds {
            steady_since = Instant::now();
        }
        if steady_since.elapsed() >= Duration::from_secs(2) || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// The kinds of traffic, in the order a client cycles through them.
const MIX: [&str; 8] = [
    "small",
    "small",
    "download",
    "small",
    "upload",
    "events",
    "websocket",
    "slow",
];

/// One operation of `kind`; Ok when the exchange was complete and correct.
fn op(port: u16, kind: &str, keep: &mut Option<Conn>) -> Result<(), String> {
    let expect = |status: u16, want: u16| {
        if status == want {
            Ok(())
        } else {
            Err(format!("{kind}: status {status}"))
        }
    };
    match kind {
        "small" => {
            // Reuses the client's keep-alive connection.
            let conn = match keep {
                Some(c) => c,
                None => keep.insert(Conn::open(port)?),
            };
            let result = conn.request("GET", "/api/small", 0, false);
            if result.is_err() {
                *keep = None;
            }
            expect(result?.status, 200)
        }
        "download" => {
            let r = Conn::open(port)?.request("GET", &format!("/api/d?bytes={MIB}"), 0, false)?;
            expect(r.status, 200)?;
            if r.body_len != MIB {
                return Err(format!("download: {} of {MIB} bytes", r.body_len));
            }
            Ok(())
        }
        "upload" => {
            let r = Conn::open(port)?.request("POST", "/api/u", MIB, false)?;
            expect(r.status, 200)?;
            let json: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(|e| format!("upload: not JSON: {e}"))?;
            if json["body_bytes"] != MIB {
                return Err(format!("upload: the upstream got {}", json["body_bytes"]));
            }
            Ok(())
        }
        "events" => {
            let r = Conn::open(port)?.request("GET", "/api/e?sse=5&interval_ms=20", 0, false)?;
            expect(r.status, 200)?;
            let n = String::from_utf8_lossy(&r.body).matches("data: ").count();
            if n != 5 {
                return Err(format!("events: {n} of 5"));
            }
            Ok(())
        }
        "websocket" => {
            let messages: Vec<String> = (0..3).map(|i| format!("soak message {i}")).collect();
            websocket_echo(port, "/api/ws", &messages)
        }
        "slow" => {
            let r = Conn::open(port)?.request("GET", "/api/s?bytes=65536", 0, true)?;
            expect(r.status, 200)
        }
        other => Err(format!("unknown traffic kind {other}")),
    }
}

/// Counts of one load phase.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// `clients` threads cycling through [`MIX`] until `until` or `stop`.
fn load(
    port: u16,
    clients: u64,
    until: Instant,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients as usize)
        .map(|c| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            std::thread::spawn(move || {
                let mut keep = None;
                let mut i = c;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let kind = MIX[i % MIX.len()];
                    i += 1;
                    match op(port, kind, &mut keep) {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut errors = tally.errors.lock().unwrap_or_else(|p| p.into_inner());
                            if errors.len() < 20 {
                                errors.push(e);
                            }
                            tally.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect()
}

/// Runs the soak.
pub fn run(root: &Path, opts: &Options) -> Result<(), String> {
    let (mut procs, pid, port) = start(root)?;
    let start = sample(pid, port)?;
    println!(
        "soak: {} minute(s), {} clients; gateway pid {pid}",
        opts.minutes, opts.clients
    );
    println!("  at start:        {}", show(&start));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // The first minute, then everyone leaves and the checkpoint is taken; then the rest.
    let phase = |seconds: u64| {
        for t in load(
            port,
            opts.clients,
            Instant::now() + Duration::from_secs(seconds),
            &stop,
            &tally,
        ) {
            let _ = t.join();
        }
    };
    phase(60);
    procs.check_alive()?;
    let first = settled_sample(pid, port)?;
    println!(
        "  after minute 1:  {}  ({} ops)",
        show(&first),
        tally.ok.load(Ordering::Relaxed)
    );
    if opts.minutes > 1 {
        phase(60 * (opts.minutes - 1));
    }
    procs.check_alive()?;
    let last = settled_sample(pid, port)?;
    println!(
        "  at the end:      {}  ({} ops, {} failed)",
        show(&last),
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    let mut problems = growth(&tally, &first, &last);
    problems.extend(sigterm_under_load(&mut procs, pid, port, opts.clients)?);
    if problems.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        Err(format!("soak failed:\n  - {}", problems.join("\n  - ")))
    }
}

/// Builds the release binaries and starts two fake backends and the gateway: the processes,
/// the gateway's pid and port.
fn start(root: &Path) -> Result<(Processes, u32, u16), String> {
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "gateway-bin",
        "-p",
        "fake-backend",
    ])?;
    let bin = root.join("target/release");
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut procs = Processes::default();
    let (b1, b2, port) = (free_port()?, free_port()?, free_port()?);
    for (b, name) in [(b1, "one"), (b2, "two")] {
        procs.start(
            name,
            Command::new(bin.join("fake-backend")).args(["--port", &b.to_string(), "--name", name]),
        )?;
        wait_for(b, name, &mut procs)?;
    }
    let file = dir.join("gateway.toml");
    let config = render(
        include_str!("../templates/gateway.soak.toml"),
        &[
            ("port", port.to_string()),
            ("b1", b1.to_string()),
            ("b2", b2.to_string()),
        ],
    )?;
    std::fs::write(&file, config).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let pid = procs.start(
        "gateway",
        Command::new(bin.join("gateway")).arg("--config").arg(&file),
    )?;
    wait_for(port, "gateway", &mut procs)?;
    Ok((procs, pid, port))
}

/// What went wrong during the load: failed operations, and growth between minute 1 and the
/// end beyond a small allowance (allocator caches may settle a little higher; descriptors and
/// tasks must come back to where they were).
fn growth(tally: &Tally, first: &Sample, last: &Sample) -> Vec<String> {
    let mut problems = Vec::new();
    let failed = tally.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let errors = tally.errors.lock().unwrap_or_else(|p| p.into_inner());
        problems.push(format!(
            "{failed} operations failed, e.g. {:?}",
            &errors[..errors.len().min(5)]
        ));
    }
    let rss_allow = (first.rss_kib / 10).max(8 * 1024);
    if last.rss_kib > first.rss_kib + rss_allow {
        problems.push(format!(
            "RSS grew from {} to {} KiB (allowed {rss_allow} KiB)",
            first.rss_kib, last.rss_kib
        ));
    }
    if last.fds > first.fds + 2 {
        problems.push(format!(
            "open descriptors grew from {} to {}",
            first.fds, last.fds
        ));
    }
    if last.tasks > first.tasks + 2 {
        problems.push(format!(
            "live tasks grew from {} to {}",
            first.tasks, last.tasks
        ));
    }
    if last.threads > first.threads {
        problems.push(format!(
            "threads grew from {} to {}",
            first.threads, last.threads
        ));
    }
    problems
}

/// SIGTERM under load: responses that started must complete, and the exit status is 0.
fn sigterm_under_load(
    procs: &mut Processes,
    pid: u32,
    port: u16,
    clients: u64,
) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    let term = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(
        port,
        clients,
        Instant::now() + Duration::from_secs(30),
        &stop,
        &term,
    );
    // Load under way before the signal.
    std::thread::sleep(Duration::from_secs(2));
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !killed.success() {
        problems.push("could not send SIGTERM".to_owned());
    }
    let exit = procs.wait("gateway", Duration::from_secs(20))?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let cut: Vec<String> = term
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        // Refused or closed before a response began is how a stopping server says no.
        .filter(|e| {
            !(e.starts_with("connect")
                || e.contains("closed before a response")
                || e.starts_with("write"))
        })
        .cloned()
        .collect();
    println!(
        "  SIGTERM under load: exit {exit:?}, {} ops completed, {} refused or closed before a response, {} cut",
        term.ok.load(Ordering::Relaxed),
        term.failed.load(Ordering::Relaxed) as usize - cut.len(),
        cut.len()
    );
    if exit != Some(0) {
        problems.push(format!("the gateway exited with {exit:?} on SIGTERM"));
    }
    if !cut.is_empty() {
        problems.push(format!("responses cut by the shutdown: {cut:?}"));
    }
    Ok(problems)
}

fn show(s: &Sample) -> String {
    format!(
        "RSS {:>7} KiB, {:>3} fds, {:>2} threads, {:>3} tasks",
        s.rss_kib, s.fds, s.threads, s.tasks
    )
}
