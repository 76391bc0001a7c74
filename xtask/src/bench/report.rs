//! The bench's report: a table of medians and ratios, written into BENCHMARKS.md between
//! markers.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::{Contender, Options, Sample, Scenario};

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The table: one row per scenario, connection count and contender.
pub(super) fn table(
    samples: &[(Scenario, &str, u32, Sample)],
    contenders: &[Contender],
    opts: &Options,
) -> String {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| upstream | conns | contender | req/s (median) | min - max | p50 ms | p99 ms | p99.9 ms | CPU µs/req | upstream conns/run | ours / it (req/s) |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|");
    for scenario in opts.all_scenarios() {
        for conns in scenario.conns(opts) {
            let of = |name: &str| -> Vec<Sample> {
                samples
                    .iter()
                    .filter(|(s, n, c, _)| *s == scenario && *n == name && *c == conns)
                    .map(|(_, _, _, s)| *s)
                    .collect()
            };
            let ours = median(of("gateway (ours)").iter().map(|s| s.rps).collect());
            // The rich route's rows compare with the same gateway's plain route (`fixed`), the
            // h2c upstream's with the HTTP/1.1 upstream's.
            let of_scenario = |scenario: Scenario, name: &str| {
                median(
                    samples
                        .iter()
                        .filter(|(s, n, c, _)| *s == scenario && *n == name && *c == conns)
                        .map(|(_, _, _, s)| s.rps)
                        .collect(),
                )
            };
            let plain = |name: &str| of_scenario(Scenario::Fixed, name);
            for c in contenders {
                let v = of(c.name);
                if v.is_empty() {
                    continue;
                }
                let rps: Vec<f64> = v.iter().map(|s| s.rps).collect();
                let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
                let max = rps.iter().copied().fold(0.0, f64::max);
                let m = median(rps);
                let cpu = median(v.iter().map(|s| s.cpu_us.unwrap_or(f64::NAN)).collect());
                let conns_opened = median(
                    v.iter()
                        .map(|s| s.upstream_conns.map_or(f64::NAN, |n| n as f64))
                        .collect(),
                );
                let dash = |x: f64, digits: usize| {
                    if x.is_nan() {
                        "-".to_owned()
                    } else {
                        format!("{x:.digits$}")
                    }
                };
                let _ = writeln!(
                    table,
                    "| {} | {conns} | {} | {m:.0} | {min:.0} - {max:.0} | {} | {} | {} | {} | {} | {:.2}x |",
                    scenario.name(),
                    c.name,
                    dash(median(v.iter().map(|s| s.p50_ms).collect()), 2),
                    dash(median(v.iter().map(|s| s.p99_ms).collect()), 2),
                    dash(median(v.iter().map(|s| s.p999_ms).collect()), 2),
                    dash(cpu, 1),
                    dash(conns_opened, 0),
                    if scenario == Scenario::Routes {
                        // Both rich-route gateways against the shipped one's plain route.
                        m / plain("gateway (ours)")
                    } else if scenario == Scenario::UpstreamH2c {
                        m / of_scenario(Scenario::UpstreamH1, "gateway (ours)")
                    } else {
                        ours / m
                    },
                );
            }
        }
    }
    table
}

fn version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// What the run was: machine, versions, memory figures.
pub(super) fn header(
    opts: &Options,
    cores: usize,
    pin: bool,
    upstream_kind: &str,
    peak_rss: Option<u64>,
    memory: &str,
) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "Run of `cargo xtask bench --duration {} --rounds {}`: {cores} cores ({cpu}){}, wrk -t1 with a percentile script (h2c rows: h2load, 16 connections x 16 concurrent streams of cleartext HTTP/2 to the proxy, HTTP/1.1 upstreams; h2load reports no percentiles); fixed upstreams: {upstream_kind}; chunked upstream: the fake backend (`?chunked=1`). CPU µs/req: the contender's user + system time (with its worker processes) over the requests the load tool completed. Upstream conns/run: connections the contender opened to the upstream during the run. HTTPS rows (`--tls`): each proxy's TLS port (one ECDSA P-256 certificate for all, TLS 1.3 negotiated), plain HTTP to the upstreams; keep-alive rows: wrk's OpenSSL client; the `new connection each` rows: `cargo xtask handshakes` (rustls, one thread on epoll), a new TCP connection, a full handshake (X25519, no session resumption) and one `Connection: close` request each, the client skipping the verification of the server's chain and signature (its own cost, not the server's: so that one client core outpaces one server core); wrk resumed a session from a ticket on every connection after its first. Rich route rows: the gateway through a route with a virtual host, two header matchers, a prefix rewrite and a rate limit; their last column is their req/s over the shipped gateway's plain route (`fixed`, same connections); `1,000 hosts` is the same gateway with 998 more host names on that route. gRPC rows: h2load as for h2c, each request a unary call (`echo.v1.Echo/Unary`, an 11-byte framed message) to the fake backend's gRPC echo over h2c (nginx `grpc_pass`, HAProxy `proto h2`); `direct` calls the fake backend itself. Upstream-protocol rows: the gateway only, wrk with HTTP/1.1 to the fake backend's JSON over an HTTP/1.1 upstream and over an h2c one (its last column: h2c over HTTP/1.1). Versions: {}; {}; {}.\n\nGateway memory: peak RSS over the load runs {} KiB. {memory}\n",
        opts.seconds,
        opts.rounds,
        if pin {
            ", servers pinned to core 0 and wrk to core 1"
        } else {
            ", unpinned"
        },
        version("nginx", "-v"),
        version("haproxy", "-v"),
        version("caddy", "version"),
        peak_rss.map_or("?".into(), |k| k.to_string()),
    )
}

/// Replaces the generated section of BENCHMARKS.md (between markers) with `body`.
pub(super) fn write_benchmarks(root: &Path, body: &str) -> Result<(), String> {
    const START: &str = "<!-- xtask bench: start -->";
    const END: &str = "<!-- xtask bench: end -->";
    let path = root.join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let section = format!("{START}\n## Proxies under load: `cargo xtask bench`\n\n{body}{END}");
    let new = match (text.find(START), text.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &text[..a], &text[b + END.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(&path, new).map_err(|e| format!("cannot write BENCHMARKS.md: {e}"))
}
