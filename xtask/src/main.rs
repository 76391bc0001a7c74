//! Project automation, run as `cargo xtask <task>` through the alias in `.cargo/config.toml`.
//!
//! Tasks:
//! - `ci`: the checks CI runs (`cargo fmt --check`, clippy with warnings denied, the tests).
//! - `bench-router`: `cargo bench -p router`, then a table of medians and ratios against matchit
//!   read from criterion's output, ready for BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench-router") => bench_router(&args[1..]),
        Some("help") | None => {
            println!("usage: cargo xtask <ci | bench-router [criterion args...]>");
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

/// Reads `median.point_estimate` (nanoseconds) from a criterion `estimates.json`.
fn read_median(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let estimate = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = estimate.find([',', '}'])?;
    estimate[..end].trim().parse().ok()
}
