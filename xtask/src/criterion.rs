//! `cargo xtask bench-router` and `bench-balancer`: criterion runs, then a table of medians
//! and ratios read from criterion's `estimates.json`, ready for BENCHMARKS.md.

use std::path::Path;

/// `cargo bench -p router`, then its table.
pub fn router(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "-p", "router", "--bench", "router", "--"];
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(&args)?;
    let dir = crate::workspace_root().join("target").join("criterion");
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

/// `cargo bench -p balancer`, then its table.
pub fn balancer(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "-p", "balancer", "--bench", "pick", "--"];
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(&args)?;
    let dir = crate::workspace_root().join("target").join("criterion");
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
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}
