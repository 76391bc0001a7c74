//! Project automation, run as `cargo xtask <task>` through the alias in `.cargo/config.toml`.
//!
//! Tasks:
//! - `ci`: the checks CI runs (`cargo fmt --check`, clippy with warnings denied, the tests).
//! - `bench-router`: `cargo bench -p router`, then a table of medians and ratios against matchit
//!   read from criterion's output, ready for BENCHMARKS.md.
//! - `bench-balancer`: `cargo bench -p balancer`, then a table of pick medians, alone and under
//!   two threads, as ratios to a bare `fetch_add` and to a naive mutex round-robin.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench-router") => bench_router(&args[1..]),
        Some("bench-balancer") => bench_balancer(&args[1..]),
        Some("help") | None => {
            println!(
                "usage: cargo xtask <ci | bench-router [criterion args...] | bench-balancer [criterion args...]>"
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
