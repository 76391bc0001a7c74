//! `cargo xtask bench`: the gateway next to nginx, HAProxy and Caddy as reverse proxies, in
//! the same run, over the same upstreams, under the same wrk load, in interleaved rounds.
//!
//! Two scenarios: `fixed` (two nginx upstreams answering with a length) and `chunked` (a
//! fake backend answering without one, as most dynamic applications do). For every run it
//! records req/s, latency percentiles, the contender's CPU time per request, and how many
//! upstream connections the contender opened: a proxy that does not pool chunked responses
//! shows up there. Everything listens on 127.0.0.1; every process started here is stopped
//! when the run ends, fails or is interrupted; every load run lasts `--duration` seconds.

mod memory;
mod report;

use std::path::Path;
use std::process::Command;

use crate::client::Conn;
use crate::procs::{Processes, cpu_ticks_with_children, free_port, render, wait_for, which};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Install wrk, nginx, HAProxy and Caddy with apt-get first.
    #[arg(long)]
    pub install_peers: bool,
    /// Seconds per load run.
    #[arg(long = "duration", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// Interleaved rounds of every run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Client connection counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256])]
    pub conns: Vec<u32>,
    /// Scenarios, comma-separated: fixed (upstreams answer with a length), chunked.
    #[arg(long, value_delimiter = ',', default_values = ["fixed", "chunked"])]
    pub scenarios: Vec<Scenario>,
}

/// What the upstream answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A fixed-length JSON answer from nginx.
    Fixed,
    /// A JSON answer without a length (chunked), from the fake backend.
    Chunked,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fixed => "fixed",
            Scenario::Chunked => "chunked",
        }
    }
}

/// One wrk run's results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Connections the contender opened to the upstream during the run.
    pub upstream_conns: Option<u64>,
    /// The contender's CPU time per request, in microseconds.
    pub cpu_us: Option<f64>,
}

/// A proxy under test (or `direct`: the upstream itself).
pub(crate) struct Contender {
    pub name: &'static str,
    pub port: u16,
    /// The process whose CPU time counts (with its children).
    pub pid: Option<u32>,
}

/// Where the upstreams listen, and how their accepted connections are counted.
struct Upstreams {
    u1: u16,
    u2: u16,
    /// nginx's stub_status, when nginx is the fixed upstream.
    status: Option<u16>,
    /// The fake backend: chunked answers and the streaming checks.
    fake: u16,
    kind: &'static str,
}

impl Upstreams {
    /// Connections the upstreams of `scenario` have accepted so far (our own query included).
    fn accepted(&self, scenario: Scenario) -> Option<u64> {
        match (scenario, self.status) {
            (Scenario::Fixed, Some(status)) => {
                let reply = Conn::open(status)
                    .ok()?
                    .request("GET", "/", 0, false)
                    .ok()?;
                // "server accepts handled requests\n N N N"
                let text = String::from_utf8_lossy(&reply.body).into_owned();
                let line = text.lines().nth(2)?;
                line.split_whitespace().next()?.parse().ok()
            }
            (Scenario::Fixed, None) => {
                Some(fake_connections(self.u1)? + fake_connections(self.u2)?)
            }
            (Scenario::Chunked, _) => fake_connections(self.fake),
        }
    }
}

/// A fake backend's `x-connections`: connections accepted, this query's included.
fn fake_connections(port: u16) -> Option<u64> {
    let reply = Conn::open(port)
        .ok()?
        .request("GET", "/count", 0, false)
        .ok()?;
    reply.header("x-connections")?.parse().ok()
}

const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("PCT %f %f %f\n", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

const BODY: &str =
    r#"{"ok":true,"from":"upstream","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

/// One wrk run: req/s, percentiles, and the number of requests.
fn wrk(
    url: &str,
    conns: u32,
    seconds: u32,
    script: &Path,
    pin: bool,
) -> Result<(Sample, u64), String> {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    let out = cmd
        .args(["-t1", &format!("-c{conns}"), &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| format!("could not run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx or 3xx responses") {
        return Err(format!("{url}: errors in the responses:\n{text}"));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let pct: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("PCT "))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ms = |i: usize| pct.get(i).copied().unwrap_or(f64::NAN) / 1000.0;
    let sample = Sample {
        rps,
        p50_ms: ms(0),
        p99_ms: ms(1),
        p999_ms: ms(2),
        upstream_conns: None,
        cpu_us: None,
    };
    Ok((sample, requests))
}

/// Runs the bench (see the module docs).
pub fn run(root: &Path, opts: &Options) -> Result<(), String> {
    if opts.install_peers {
        crate::run_command(Command::new("apt-get").arg("update"))?;
        crate::run_command(Command::new("apt-get").args([
            "install",
            "-y",
            "wrk",
            "nginx-light",
            "haproxy",
            "caddy",
        ]))?;
    }
    if which("wrk").is_none() {
        return Err(
            "wrk is not installed: `apt-get install wrk`, or `cargo xtask bench --install-peers`"
                .into(),
        );
    }
    crate::cargo(&[
        "build",
        "--release",
        "--bin",
        "gateway",
        "--bin",
        "fake-backend",
    ])?;
    let work = root.join("target").join("bench");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let script = work.join("percentiles.lua");
    std::fs::write(&script, WRK_SCRIPT).map_err(|e| e.to_string())?;
    memory::raise_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cores >= 2 && which("taskset").is_some();
    // Servers on core 0, wrk on core 1, when the machine has two.
    let on_core0 = |program: &Path| {
        if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    let write = |name: &str, template: &str, values: &[(&str, String)]| {
        let path = work.join(name);
        std::fs::write(&path, render(template, values)?).map_err(|e| e.to_string())?;
        Ok::<_, String>(path)
    };
    let mut procs = Processes::default();
    let fake_exe = root.join("target/release/fake-backend");

    // The upstreams: nginx with one worker if installed (it is the faster), else ours; and
    // the fake backend for chunked answers and streaming.
    let nginx = which("nginx");
    let (u1, u2, fake) = (free_port()?, free_port()?, free_port()?);
    let upstreams = if let Some(nginx) = &nginx {
        let status = free_port()?;
        let conf = write(
            "upstreams.nginx.conf",
            include_str!("../../templates/upstreams.nginx.conf"),
            &[
                ("pid", work.join("upstreams.pid").display().to_string()),
                (
                    "error_log",
                    work.join("upstreams.err").display().to_string(),
                ),
                ("u1", u1.to_string()),
                ("u2", u2.to_string()),
                ("status", status.to_string()),
                ("body", BODY.to_owned()),
            ],
        )?;
        procs.start("nginx upstreams", on_core0(nginx).arg("-c").arg(&conf))?;
        Upstreams {
            u1,
            u2,
            status: Some(status),
            fake,
            kind: "nginx 1 worker (return 200)",
        }
    } else {
        procs.start("fake-backend 1", on_core0(&fake_exe).arg(u1.to_string()))?;
        procs.start("fake-backend 2", on_core0(&fake_exe).arg(u2.to_string()))?;
        Upstreams {
            u1,
            u2,
            status: None,
            fake,
            kind: "fake-backend (nginx not installed)",
        }
    };
    procs.start(
        "fake-backend (chunked)",
        on_core0(&fake_exe).arg(fake.to_string()),
    )?;
    for (port, what) in [
        (u1, "upstream 1"),
        (u2, "upstream 2"),
        (fake, "the fake backend"),
    ] {
        wait_for(port, what, &mut procs)?;
    }

    // The contenders.
    let ours = free_port()?;
    let ports = |port: u16| {
        vec![
            ("port", port.to_string()),
            ("u1", u1.to_string()),
            ("u2", u2.to_string()),
            ("chunked", fake.to_string()),
        ]
    };
    let conf = write(
        "gateway.toml",
        include_str!("../../templates/gateway.bench.toml"),
        &ports(ours),
    )?;
    let gateway_pid = procs.start(
        "gateway",
        on_core0(&root.join("target/release/gateway"))
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "warn"),
    )?;
    wait_for(ours, "the gateway", &mut procs)?;
    let mut contenders = vec![
        Contender {
            name: "direct",
            port: 0,
            pid: None,
        },
        Contender {
            name: "gateway (ours)",
            port: ours,
            pid: Some(gateway_pid),
        },
    ];
    let mut skipped = Vec::new();
    if let Some(nginx) = &nginx {
        let port = free_port()?;
        let mut values = ports(port);
        values.push(("pid", work.join("nginx-proxy.pid").display().to_string()));
        values.push((
            "error_log",
            work.join("nginx-proxy.err").display().to_string(),
        ));
        let conf = write(
            "proxy.nginx.conf",
            include_str!("../../templates/proxy.nginx.conf"),
            &values,
        )?;
        let pid = procs.start("nginx proxy", on_core0(nginx).arg("-c").arg(&conf))?;
        wait_for(port, "nginx", &mut procs)?;
        contenders.push(Contender {
            name: "nginx (1 worker)",
            port,
            pid: Some(pid),
        });
    } else {
        skipped.push("nginx: `apt-get install nginx-light`");
    }
    if let Some(haproxy) = which("haproxy") {
        let port = free_port()?;
        let conf = write(
            "haproxy.cfg",
            include_str!("../../templates/haproxy.cfg"),
            &ports(port),
        )?;
        let pid = procs.start(
            "haproxy",
            on_core0(&haproxy).arg("-db").arg("-f").arg(&conf),
        )?;
        wait_for(port, "haproxy", &mut procs)?;
        contenders.push(Contender {
            name: "HAProxy (1 thread)",
            port,
            pid: Some(pid),
        });
    } else {
        skipped.push("HAProxy: `apt-get install haproxy`");
    }
    if let Some(caddy) = which("caddy") {
        let port = free_port()?;
        let conf = write(
            "Caddyfile",
            include_str!("../../templates/Caddyfile"),
            &ports(port),
        )?;
        let pid = procs.start(
            "caddy",
            on_core0(&caddy)
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf)
                .env("GOMAXPROCS", "1"),
        )?;
        wait_for(port, "caddy", &mut procs)?;
        contenders.push(Contender {
            name: "Caddy (GOMAXPROCS=1)",
            port,
            pid: Some(pid),
        });
    } else {
        skipped.push("Caddy: `apt-get install caddy`");
    }
    for s in &skipped {
        eprintln!("skipped {s}");
    }

    // Interleaved rounds.
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut samples: Vec<(Scenario, &str, u32, Sample)> = Vec::new();
    for round in 1..=opts.rounds {
        for &scenario in &opts.scenarios {
            for &conns in &opts.conns {
                for c in &contenders {
                    procs.check_alive()?;
                    let url = match (c.name, scenario) {
                        ("direct", Scenario::Fixed) => format!("http://127.0.0.1:{u1}/ping"),
                        ("direct", Scenario::Chunked) => {
                            format!("http://127.0.0.1:{fake}/ping?chunked=1")
                        }
                        (_, Scenario::Fixed) => format!("http://127.0.0.1:{}/api/ping", c.port),
                        (_, Scenario::Chunked) => {
                            format!("http://127.0.0.1:{}/chunked/ping?chunked=1", c.port)
                        }
                    };
                    let accepted_before = upstreams.accepted(scenario);
                    let cpu_before = c.pid.and_then(cpu_ticks_with_children);
                    let (mut s, requests) = wrk(&url, conns, opts.seconds, &script, pin)?;
                    let cpu_after = c.pid.and_then(cpu_ticks_with_children);
                    let accepted_after = upstreams.accepted(scenario);
                    // Less the one connection the count itself took.
                    s.upstream_conns = match (accepted_before, accepted_after) {
                        (Some(a), Some(b)) if c.name != "direct" => Some(b.saturating_sub(a + 1)),
                        _ => None,
                    };
                    s.cpu_us = match (cpu_before, cpu_after) {
                        (Some(a), Some(b)) if requests > 0 => {
                            Some((b - a) as f64 / ticks_per_second * 1e6 / requests as f64)
                        }
                        _ => None,
                    };
                    eprintln!(
                        "round {round} {} c{conns} {}: {:.0} req/s, p99 {:.2} ms, {} upstream connections, {} µs CPU/req",
                        scenario.name(),
                        c.name,
                        s.rps,
                        s.p99_ms,
                        s.upstream_conns.map_or("-".into(), |n| n.to_string()),
                        s.cpu_us.map_or("-".into(), |u| format!("{u:.1}")),
                    );
                    samples.push((scenario, c.name, conns, s));
                }
            }
        }
    }
    let peak_rss = crate::procs::proc_status(gateway_pid, "VmHWM:");
    let memory = memory::checks(gateway_pid, ours)?;
    let table = report::table(&samples, &contenders, opts);
    let header = report::header(opts, cores, pin, upstreams.kind, peak_rss, &memory);
    println!("\n{header}\n{table}");
    report::write_benchmarks(root, &format!("{header}\n{table}"))
}
