//! `cargo xtask bench --instructions`: the user-space instructions each proxy executes per
//! proxied request, counted by valgrind's callgrind. A count, not a time: the same binary,
//! configuration and load give the same figure (within about 1 %, from how many requests one
//! wake-up serves) whatever else the machine is doing, so a step of 1 % shows where the
//! load runs' noise hides it. Kernel time is not in it (it is the same per request for the
//! three proxies: the load rounds show it).

use std::path::Path;
use std::process::Command;

use super::{Contender, Rig};
use crate::procs::which;

/// Requests of the warm-up (connections made, pools filled), not counted.
const WARM_UP: u32 = 3_000;

/// Client connections, as in the load rounds' first row.
const CONNS: u32 = 64;

/// Counts every contender started under callgrind (`rig` made with counting on) and returns
/// the report's lines.
pub(super) fn count(rig: &Rig, contenders: &[Contender], requests: u32) -> Result<String, String> {
    let control = which("callgrind_control")
        .ok_or("callgrind_control is missing: `apt-get install valgrind`")?;
    let mut rows: Vec<(&str, u64)> = Vec::new();
    for c in contenders {
        let Some(pid) = c.pid else { continue };
        let url = format!("http://127.0.0.1:{}/api/count", c.port);
        h2load(&url, WARM_UP, rig.pin)?;
        callgrind(&control, pid, "-z")?;
        let served = h2load(&url, requests, rig.pin)?;
        callgrind(&control, pid, "-d")?;
        let total = newest_total(&rig.work.join("callgrind"), pid)?;
        if served == 0 {
            return Err(format!("{}: no request succeeded", c.name));
        }
        // A proxy whose requests a forked worker serves would count next to nothing here:
        // callgrind_control reaches only the process valgrind started.
        if total / served < 1_000 {
            return Err(format!(
                "{}: {total} instructions for {served} requests: the serving process was not counted",
                c.name
            ));
        }
        eprintln!(
            "{}: {} instructions per request ({served} requests)",
            c.name,
            total / served
        );
        rows.push((c.name, total / served));
    }
    let ours = rows
        .iter()
        .find(|r| r.0 == "gateway (ours)")
        .map_or(0, |r| r.1);
    let mut out = format!(
        "User-space instructions per proxied request (valgrind's callgrind; h2load --h1, {CONNS} connections, \
         {WARM_UP} requests of warm-up, then {requests} counted; the `fixed` upstreams):\n\n\
         | contender | instructions per request | ours / it |\n|---|---|---|\n"
    );
    for (name, per) in &rows {
        out.push_str(&format!(
            "| {name} | {per} | {:.2}x |\n",
            ours as f64 / (*per).max(1) as f64
        ));
    }
    Ok(out)
}

/// `callgrind_control FLAG PID`: `-z` zeroes the counts, `-d` dumps them.
fn callgrind(control: &Path, pid: u32, flag: &str) -> Result<(), String> {
    crate::run_command(
        Command::new(control)
            .arg(flag)
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null()),
    )
}

/// The instruction total of the newest dump of `pid` in `work` (`callgrind.PID.N`).
fn newest_total(work: &Path, pid: u32) -> Result<u64, String> {
    let prefix = format!("callgrind.{pid}.");
    let newest = std::fs::read_dir(work)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .ok_or_else(|| format!("no callgrind dump of {pid} in {}", work.display()))?;
    let text = std::fs::read_to_string(newest.path()).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", newest.path().display()))
}

/// `requests` requests over HTTP/1.1 from h2load (on core 1 when pinned); how many succeeded.
fn h2load(url: &str, requests: u32, pin: bool) -> Result<u64, String> {
    let out = super::on_core1("h2load", pin)
        .args([
            "--h1",
            "-t1",
            &format!("-c{CONNS}"),
            &format!("-n{requests}"),
        ])
        .arg(url)
        .output()
        .map_err(|e| format!("could not run h2load (`apt-get install nghttp2-client`): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: N total, N started, N done, N succeeded, ..."
    text.lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.trim_end().ends_with("succeeded"))
                .and_then(|p| p.split_whitespace().next()?.parse().ok())
        })
        .ok_or_else(|| format!("no request count in h2load's output:\n{text}"))
}
