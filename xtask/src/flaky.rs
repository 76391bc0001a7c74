//! `cargo xtask flaky --runs N`: the whole test suite N times under background load (CPU hogs
//! on every core but one, as `stress -c` would), reporting every test that failed at least
//! once. It passes only when none did.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Options of `cargo xtask flaky`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// How many times to run the suite.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Busy threads competing with the tests.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    hogs: u32,
    /// Stop a run that takes longer than this many seconds (it counts as failed).
    #[arg(long, default_value_t = 900)]
    run_timeout: u64,
}

/// Runs the suite `runs` times (see the module docs).
pub fn run(opts: &Options) -> Result<(), String> {
    // Build once, so that every run measures the tests, not the compiler.
    crate::cargo(&["test", "--workspace", "--no-run"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..opts.hogs)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                x
            })
        })
        .collect();
    let started = Instant::now();
    let mut failed: BTreeMap<String, u32> = BTreeMap::new();
    let mut broken_runs = 0;
    for run in 1..=opts.runs {
        let t = Instant::now();
        let (ok, failures) = one_run(Duration::from_secs(opts.run_timeout))?;
        for name in &failures {
            *failed.entry(name.clone()).or_default() += 1;
        }
        if !ok && failures.is_empty() {
            broken_runs += 1;
        }
        eprintln!(
            "run {run}/{}: {} in {:.0} s{}",
            opts.runs,
            if ok { "passed" } else { "FAILED" },
            t.elapsed().as_secs_f64(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(": {}", failures.join(", "))
            }
        );
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    println!(
        "flaky: {} runs under {} CPU hogs in {:.0} s; {} tests failed at least once{}",
        opts.runs,
        opts.hogs,
        started.elapsed().as_secs_f64(),
        failed.len(),
        if broken_runs > 0 {
            format!(", {broken_runs} runs failed without a named test")
        } else {
            String::new()
        }
    );
    for (name, n) in &failed {
        println!("  {name}: failed {n} of {} runs", opts.runs);
    }
    if failed.is_empty() && broken_runs == 0 {
        Ok(())
    } else {
        Err("flaky tests found".into())
    }
}

/// One `cargo test --workspace`: whether it passed, and the tests that failed.
fn one_run(timeout: Duration) -> Result<(bool, Vec<String>), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut child = Command::new(cargo)
        .args(["test", "--workspace"])
        .current_dir(crate::workspace_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = stdout.join().unwrap_or_default() + &stderr.join().unwrap_or_default();
    // libtest prints `    name` lines under `failures:` and `test name ... FAILED`.
    let mut failures: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("test ")
                .and_then(|rest| rest.strip_suffix(" ... FAILED"))
                .map(str::to_owned)
        })
        .collect();
    failures.sort();
    failures.dedup();
    let ok = status.is_some_and(|s| s.success());
    if status.is_none() {
        failures.push(format!(
            "(the run took longer than {} s)",
            timeout.as_secs()
        ));
    }
    Ok((ok, failures))
}

/// Reads a child's pipe to its end on a thread of its own (so neither pipe fills up).
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    })
}
