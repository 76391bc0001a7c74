//! Project automation, run as `cargo xtask <task>` through the alias in `.cargo/config.toml`.
//!
//! Tasks:
//! - `demo`: builds and starts two fake backends (127.0.0.1:9001, :9002) and the gateway on
//!   127.0.0.1:8080 with its embedded default configuration, waits until all three answer,
//!   prints what to try, and runs until Ctrl-C (or until one of them exits, which stops the
//!   others).
//! - `bench [--install-peers] [--duration S] [--rounds N] [--conns 64,256]`: the gateway next to
//!   nginx, HAProxy and Caddy as reverse proxies under wrk, interleaved rounds, a table of
//!   medians written to BENCHMARKS.md (see `bench.rs`).
//! - `soak [--minutes N] [--clients C]`: N minutes (default 2) of mixed traffic through the
//!   release gateway; fails on any failed request, on growth of RSS, descriptors, threads or
//!   tasks between minute 1 and the end, or on a lost response at SIGTERM (see `soak.rs`).
//! - `ci`: the checks CI runs (`cargo fmt --check`, clippy with warnings denied, the tests).
//! - `bench-router`: `cargo bench -p router`, then a table of medians and ratios against matchit
//!   read from criterion's output, ready for BENCHMARKS.md.
//! - `bench-balancer`: `cargo bench -p balancer`, then a table of pick medians, alone and under
//!   two threads, as ratios to a bare `fetch_add` and to a naive mutex round-robin.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod soak;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo") => demo(),
        Some("bench") => {
            bench::Options::parse(&args[1..]).and_then(|o| bench::run(&workspace_root(), &o))
        }
        Some("soak") => {
            soak::Options::parse(&args[1..]).and_then(|o| soak::run(&workspace_root(), &o))
        }
        Some("bench-router") => bench_router(&args[1..]),
        Some("bench-balancer") => bench_balancer(&args[1..]),
        Some("help") | None => {
            println!(
                "usage: cargo xtask <demo | bench [--install-peers] | soak [--minutes N] [--clients C] | ci | bench-router [criterion args...] | bench-balancer [criterion args...]>"
            );
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing if it does.
fn run_command(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The demo topology: (what, arguments, port).
const DEMO: [(&str, &[&str], u16); 3] = [
    ("fake-backend", &["9001"], 9001),
    ("fake-backend", &["9002"], 9002),
    ("gateway", &[], 8080),
];

fn demo() -> Result<(), String> {
    use std::net::{Ipv4Addr, TcpListener};
    use std::time::{Duration, Instant};

    // Say clearly which port is taken before starting anything.
    for (_, _, port) in DEMO {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Err(format!(
                "port {port} on 127.0.0.1 is not free ({e}); stop whatever holds it (`ss -ltnp | grep :{port}`) and try again"
            ));
        }
    }
    cargo(&["build", "--bin", "gateway", "--bin", "fake-backend"])?;
    let bin = workspace_root().join("target").join("debug");

    let mut children: Vec<(String, std::process::Child)> = Vec::new();
    let stop_all = |children: &mut Vec<(String, std::process::Child)>| {
        for (_, child) in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    };
    for (program, args, port) in DEMO {
        match Command::new(bin.join(program)).args(args).spawn() {
            Ok(child) => children.push((format!("{program} :{port}"), child)),
            Err(e) => {
                stop_all(&mut children);
                return Err(format!("could not start {program}: {e}"));
            }
        }
    }

    // Wait until each answers HTTP, for 15 s at most.
    let deadline = Instant::now() + Duration::from_secs(15);
    for (_, _, port) in DEMO {
        while !answers(port) {
            if Instant::now() > deadline {
                stop_all(&mut children);
                return Err(format!("nothing answered on 127.0.0.1:{port} within 15 s"));
            }
            if let Some(name) = exited(&mut children) {
                stop_all(&mut children);
                return Err(format!("{name} exited during start-up"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "
The demo is up: fake backends on 127.0.0.1:9001 and :9002, the gateway on http://127.0.0.1:8080

  curl http://localhost:8080/api/users                                    # alternates :9001 / :9002
  curl http://localhost:8080/static/x.png                                 # :9001, path /x.png
  curl -H 'X-Admin-Token: letmein' http://localhost:8080/admin/dashboard  # :9002
  curl http://localhost:8080/                                             # routes and upstream health
  curl 'http://localhost:8080/api/slow?delay_ms=500'                      # faults: see fake-backend docs

Ctrl-C stops all three.
"
    );
    // Ctrl-C reaches the whole process group: the three children stop on it too. Until then,
    // watch them: if one exits, stop the others.
    loop {
        if let Some(name) = exited(&mut children) {
            stop_all(&mut children);
            return Err(format!("{name} exited; stopped the others"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether something on 127.0.0.1:`port` answers an HTTP request.
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    use std::time::Duration;
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

/// The name of a child that has exited, if any.
fn exited(children: &mut [(String, std::process::Child)]) -> Option<String> {
    for (name, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Some(name.clone());
        }
    }
    None
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])
}

fn bench_router(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "-p", "router", "--bench", "router", "--"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    let dir = workspace_root().join("target").join("criterion");
    println!("| group | router | matchit | path-tree | router / matchit |");
    println!("|---|---|---|---|---|");
    for group in ["github_api", "github_get130", "github_get130_params"] {
        let median = |id: &str| read_median(&dir.join(group).join(id).join("new/estimates.json"));
        let Some(ours) = median("router") else {
            continue;
        };
        let theirs = median("matchit");
        let tree = median("path-tree");
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |ns| format!("{:.2} µs", ns / 1e3));
        let ratio = theirs.map_or("-".to_owned(), |m| format!("{:.2}x", ours / m));
        println!(
            "| {group} | {} | {} | {} | {ratio} |",
            fmt(Some(ours)),
            fmt(theirs),
            fmt(tree)
        );
    }
    Ok(())
}

fn bench_balancer(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "-p", "balancer", "--bench", "pick", "--"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    let dir = workspace_root().join("target").join("criterion");
    // Criterion stores group `a/b/c` under `a_b_c`.
    let median = |group: &str| read_median(&dir.join(group).join("pick/new/estimates.json"));
    let base_single = median("baseline_fetch_add_single");
    let mutex_contended = median("baseline_mutex_rr_contended");
    let ns = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} ns"));
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".to_owned(),
    };
    println!(
        "| strategy | targets | single | / fetch_add | two threads | / mutex round-robin (two threads) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, base) in [
        ("baseline_fetch_add", ""),
        ("baseline_mutex_rr", ""),
        ("round_robin", "2 3 8 64"),
        ("weighted_ticket", "2 3 8 64"),
        ("smooth_weighted", "2 3 8 64"),
        ("smooth_weighted_locked", "2 3 8 64"),
        ("least_request", "2 3 8 64"),
    ] {
        let sizes: Vec<&str> = if base.is_empty() {
            vec![""]
        } else {
            base.split(' ').collect()
        };
        for n in sizes {
            let group = if n.is_empty() {
                name.to_owned()
            } else {
                format!("{name}_{n}")
            };
            let single = median(&format!("{group}_single"));
            let contended = median(&format!("{group}_contended"));
            if single.is_none() && contended.is_none() {
                continue;
            }
            println!(
                "| {name} | {n} | {} | {} | {} | {} |",
                ns(single),
                ratio(single, base_single),
                ns(contended),
                ratio(contended, mutex_contended)
            );
        }
    }
    Ok(())
}

/// Reads `median.point_estimate` (nanoseconds) from a criterion `estimates.json`.
fn read_median(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let estimate = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = estimate.find([',', '}'])?;
    estimate[..end].trim().parse().ok()
}
