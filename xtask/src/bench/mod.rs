//! `cargo xtask bench`: the gateway next to nginx, HAProxy and Caddy as reverse proxies, in
//! the same run, over the same upstreams, under the same wrk load, in interleaved rounds.
//!
//! Seven scenarios: `fixed` (two nginx upstreams answering with a length), `chunked` (a
//! fake backend answering without one, as most dynamic applications do), `h2c` (the
//! fixed upstreams, the clients speaking cleartext HTTP/2 to the proxy: h2load, 16
//! connections of 16 streams each, for every contender that speaks h2c), and `routes` (the
//! gateway only: the fixed upstreams through a route with a virtual host, two header
//! matchers, a prefix rewrite and a rate limit, next to the plain route of `fixed`), `grpc`
//! (unary gRPC calls, h2load as for `h2c`, to the fake backend's gRPC echo over h2c, through
//! the gateway, nginx's `grpc_pass` and HAProxy's `proto h2` servers), and `upstream-h1` /
//! `upstream-h2c` (the gateway only: HTTP/1.1 clients, the fake backend's JSON over an
//! HTTP/1.1 upstream and over an h2c one). For every run it
//! records req/s, latency percentiles, the contender's CPU time per request, and how many
//! upstream connections the contender opened: a proxy that does not pool chunked responses
//! shows up there. Everything listens on 127.0.0.1; every process started here is stopped
//! when the run ends, fails or is interrupted; every load run lasts `--duration` seconds.
//!
//! `--instructions` runs no load rounds: it counts the user-space instructions per proxied
//! request of the gateway, nginx and HAProxy under valgrind's callgrind
//! ([`instructions`]), a figure that repeats to about 1 % where CPU times move by 5 %.

pub mod handshakes;
mod instructions;
mod memory;
mod peers;
mod report;

use std::path::{Path, PathBuf};
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
    /// Scenarios, comma-separated: fixed (upstreams answer with a length), chunked, h2c
    /// (skipped without h2load), routes (the gateway's rich route next to its plain one),
    /// grpc (unary calls over h2c to the fake backend's gRPC echo, through the gateway, nginx
    /// grpc_pass and HAProxy; skipped without h2load), upstream-h1 and upstream-h2c (the
    /// gateway to the fake backend over HTTP/1.1 and over h2c, HTTP/1.1 clients).
    #[arg(
        long,
        value_delimiter = ',',
        default_values = ["fixed", "chunked", "h2c", "routes", "grpc", "upstream-h1", "upstream-h2c"]
    )]
    pub scenarios: Vec<Scenario>,
    /// Add the HTTPS scenarios (tls: keep-alive; tls-handshake: a new connection, so a full
    /// handshake, per request), for the gateway, nginx and HAProxy on one ECDSA P-256
    /// certificate.
    #[arg(long)]
    pub tls: bool,
    /// Instead of the load rounds: the user-space instructions per proxied request of the
    /// gateway, nginx and HAProxy, counted by valgrind's callgrind (20,000 requests from
    /// h2load over HTTP/1.1, 64 connections, the `fixed` upstreams). Repeatable to about 1 %
    /// whatever else the machine does; the load rounds' CPU figures move more than that.
    #[arg(long)]
    pub instructions: bool,
}

/// Requests counted per contender by `--instructions`.
const COUNTED_REQUESTS: u32 = 20_000;

impl Options {
    /// The scenarios to run: those asked for, and the HTTPS ones with `--tls`.
    pub(super) fn all_scenarios(&self) -> Vec<Scenario> {
        let mut all = self.scenarios.clone();
        if self.tls {
            for s in [Scenario::Tls, Scenario::TlsHandshake] {
                if !all.contains(&s) {
                    all.push(s);
                }
            }
        }
        all
    }
}

/// What the upstream answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A fixed-length JSON answer from nginx.
    Fixed,
    /// A JSON answer without a length (chunked), from the fake backend.
    Chunked,
    /// The fixed answers, asked for over cleartext HTTP/2 (h2load, 16 connections x 16
    /// streams); `--conns` does not apply.
    H2c,
    /// The fixed answers through the gateway's rich route (host, matchers, rewrite, rate
    /// limit); the gateway only.
    Routes,
    /// The fixed answers over HTTPS, keep-alive (the gateway, nginx, HAProxy).
    Tls,
    /// The fixed answers over HTTPS with `Connection: close`: a full handshake per request.
    TlsHandshake,
    /// gRPC unary calls (h2load, 16 connections x 16 streams, h2c to the proxy) to the fake
    /// backend's echo over h2c: the gateway, nginx (`grpc_pass`) and HAProxy (`proto h2`).
    Grpc,
    /// The fake backend's JSON (with a length) through the gateway over HTTP/1.1.
    UpstreamH1,
    /// The same through the gateway over h2c (`protocol = "h2"`): HTTP/1.1 clients, one
    /// multiplexed upstream connection.
    UpstreamH2c,
}

/// h2load's shape: connections, and concurrent streams on each.
const H2_CLIENTS: u32 = 16;
const H2_STREAMS: u32 = 16;

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fixed => "fixed",
            Scenario::Chunked => "chunked",
            Scenario::H2c => "fixed, h2c 16x16",
            Scenario::Routes => "fixed, rich route",
            Scenario::Tls => "fixed, https",
            Scenario::TlsHandshake => "fixed, https, new connection each",
            Scenario::Grpc => "grpc unary, h2c 16x16",
            Scenario::UpstreamH1 => "fake backend, HTTP/1.1 upstream",
            Scenario::UpstreamH2c => "fake backend, h2c upstream",
        }
    }

    /// The connection counts a scenario runs at.
    fn conns(self, opts: &Options) -> Vec<u32> {
        match self {
            Scenario::H2c | Scenario::Grpc => vec![H2_CLIENTS],
            _ => opts.conns.clone(),
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
    /// Where it speaks cleartext HTTP/2, if it does.
    pub h2_port: Option<u16>,
    /// Where it serves HTTPS, if it does here.
    pub tls_port: Option<u16>,
    /// The process whose CPU time counts (with its children).
    pub pid: Option<u32>,
}

/// Where the upstreams listen, and how their accepted connections are counted.
pub(crate) struct Upstreams {
    pub(crate) u1: u16,
    pub(crate) u2: u16,
    /// nginx's stub_status, when nginx is the fixed upstream.
    status: Option<u16>,
    /// The fake backend: chunked answers and the streaming checks.
    pub(crate) fake: u16,
    kind: &'static str,
}

impl Upstreams {
    /// Connections the upstreams of `scenario` have accepted so far (our own query included).
    fn accepted(&self, scenario: Scenario) -> Option<u64> {
        match (scenario, self.status) {
            (
                Scenario::Fixed
                | Scenario::H2c
                | Scenario::Routes
                | Scenario::Tls
                | Scenario::TlsHandshake,
                Some(status),
            ) => {
                let reply = Conn::open(status)
                    .ok()?
                    .request("GET", "/", 0, false)
                    .ok()?;
                // "server accepts handled requests\n N N N"
                let text = String::from_utf8_lossy(&reply.body).into_owned();
                let line = text.lines().nth(2)?;
                line.split_whitespace().next()?.parse().ok()
            }
            (
                Scenario::Fixed
                | Scenario::H2c
                | Scenario::Routes
                | Scenario::Tls
                | Scenario::TlsHandshake,
                None,
            ) => Some(fake_connections(self.u1)? + fake_connections(self.u2)?),
            (
                Scenario::Chunked | Scenario::Grpc | Scenario::UpstreamH1 | Scenario::UpstreamH2c,
                _,
            ) => fake_connections(self.fake),
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

/// The virtual host of the gateway's rich route (`templates/gateway.bench.toml`).
const RICH_HOST: &str = "api.bench.test";

/// One wrk run (with `header` added if given): req/s, percentiles, and the number of
/// requests.
fn wrk(
    url: &str,
    header: Option<&str>,
    conns: u32,
    seconds: u32,
    script: &Path,
    pin: bool,
) -> Result<(Sample, u64), String> {
    let out = on_core1("wrk", pin)
        .args(["-t1", &format!("-c{conns}"), &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .args(header.map(|h| format!("-H{h}")))
        .arg(url)
        .output()
        .map_err(|e| format!("could not run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx or 3xx responses") {
        return Err(format!("{url}: errors in the responses:\n{text}"));
    }
    wrk_results(&text)
}

/// The `tls-handshake` scenario's load (`handshakes.rs`): the release build of this program's
/// `handshakes` task on the client's core, against the HTTPS `port`.
fn handshake_load(
    root: &Path,
    port: u16,
    conns: u32,
    seconds: u32,
    pin: bool,
) -> Result<(Sample, u64), String> {
    let client = root.join("target").join("release").join("xtask");
    let out = on_core1(&client.display().to_string(), pin)
        .args(["handshakes", "--port", &port.to_string()])
        .args([
            "--conns",
            &conns.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()
        .map_err(|e| format!("could not run the handshake load: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "handshakes against port {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    wrk_results(&String::from_utf8_lossy(&out.stdout))
}

/// What a wrk run (or the handshake load, which reports in its words) printed: req/s,
/// percentiles, and the number of requests.
fn wrk_results(text: &str) -> Result<(Sample, u64), String> {
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

/// The gRPC scenario's call: `echo.v1.EchoMessage { message: "hello" }` in its frame.
const GRPC_CALL: &[u8] = b"\0\0\0\0\x07\x0a\x05hello";

/// `program` on core 1 when `pin` (the servers have core 0).
pub(super) fn on_core1(program: &str, pin: bool) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", program]);
        c
    } else {
        Command::new(program)
    }
}

/// One h2load run (cleartext HTTP/2 with prior knowledge; a gRPC call with `grpc` given its
/// body file): req/s and the number of requests. h2load reports no percentiles: they stay
/// empty.
fn h2load(
    url: &str,
    seconds: u32,
    pin: bool,
    grpc: Option<&Path>,
) -> Result<(Sample, u64), String> {
    let out = on_core1("h2load", pin)
        .args([
            &format!("-c{H2_CLIENTS}"),
            &format!("-m{H2_STREAMS}"),
            &format!("-D{seconds}"),
            "--warm-up-time=1",
        ])
        .args(grpc.map_or_else(Vec::new, |body| {
            vec![
                "-d".into(),
                body.display().to_string(),
                "-Hcontent-type: application/grpc".into(),
                "-Hte: trailers".into(),
            ]
        }))
        .arg(url)
        .output()
        .map_err(|e| format!("could not run h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 10.00s, 41234.50 req/s, 4.23MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .ok_or_else(|| format!("no req/s in h2load's output:\n{text}"))?;
    // "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout"
    let counts: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .map(|l| {
            l.split(", ")
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (succeeded, failed) = (
        counts.get(3).copied().unwrap_or(0),
        counts.get(4).copied().unwrap_or(0),
    );
    if failed > 0 || succeeded == 0 {
        return Err(format!("{url}: h2load saw failures:\n{text}"));
    }
    // "status codes: N 2xx, 0 3xx, 0 4xx, 0 5xx" (warm-up answers not counted there).
    let status_ok = text
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .is_some_and(|l| l.contains(" 0 3xx, 0 4xx, 0 5xx"));
    if !status_ok {
        return Err(format!("{url}: answers other than 2xx:\n{text}"));
    }
    let sample = Sample {
        rps,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        p999_ms: f64::NAN,
        upstream_conns: None,
        cpu_us: None,
    };
    Ok((sample, succeeded))
}

/// Where the run happens: the work directory, pinning, and the processes it started.
pub(crate) struct Rig {
    work: PathBuf,
    root: PathBuf,
    pin: bool,
    cores: usize,
    procs: Processes,
    /// valgrind, when the contenders run under callgrind (`--instructions`).
    counting: Option<PathBuf>,
}

impl Rig {
    /// `program` on core 0 when the machine has two (wrk gets core 1), under callgrind when
    /// counting (its dumps in the work directory).
    fn on_core0(&self, program: &Path) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if self.pin {
            argv.extend(["taskset".into(), "-c".into(), "0".into()]);
        }
        if let Some(valgrind) = &self.counting {
            argv.push(valgrind.into());
            argv.push("--tool=callgrind".into());
            let dumps = self.work.join("callgrind");
            argv.push(
                format!(
                    "--callgrind-out-file={}",
                    dumps.join("callgrind.%p").display()
                )
                .into(),
            );
        }
        argv.push(program.into());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// Writes a config from `template` into the work directory; returns its path.
    fn write(
        &self,
        name: &str,
        template: &str,
        values: &[(&str, String)],
    ) -> Result<PathBuf, String> {
        let path = self.work.join(name);
        std::fs::write(&path, render(template, values)?).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// A path in the work directory, as text for a config.
    fn file(&self, name: &str) -> String {
        self.work.join(name).display().to_string()
    }
}

/// Runs the bench (see the module docs).
pub fn run(root: &Path, opts: &Options) -> Result<(), String> {
    let mut rig = prepare(root, opts)?;
    let upstreams = start_upstreams(&mut rig)?;
    if opts.instructions {
        let dumps = rig.work.join("callgrind");
        let _ = std::fs::remove_dir_all(&dumps);
        std::fs::create_dir_all(&dumps).map_err(|e| e.to_string())?;
        rig.counting =
            Some(which("valgrind").ok_or(
                "valgrind is not installed: `apt-get install valgrind`, or --install-peers",
            )?);
    }
    let contenders = peers::start(&mut rig, &upstreams)?;
    if opts.instructions {
        let report = instructions::count(&rig, &contenders, COUNTED_REQUESTS)?;
        println!("\n{report}");
        return Ok(());
    }
    // Memory per idle connection first: after the load rounds, what they freed is reused
    // by new connections without the RSS growing.
    let (ours_idle, peers_memory) =
        memory::idle_connections(&contenders, &rig.work.join("bench.pem"), opts.tls)?;
    let samples = rounds(&mut rig, opts, &upstreams, &contenders)?;
    let ours = &contenders[1];
    let gateway_pid = ours.pid.unwrap_or(0);
    let peak_rss = crate::procs::proc_status(gateway_pid, "VmHWM:");
    let memory = memory::checks(gateway_pid, ours.port, ours_idle)? + &peers_memory;
    let table = report::table(&samples, &contenders, opts);
    let header = report::header(opts, rig.cores, rig.pin, upstreams.kind, peak_rss, &memory);
    println!("\n{header}\n{table}");
    report::write_benchmarks(root, &format!("{header}\n{table}"))
}

/// Installs the peers if asked, checks wrk, builds the release binaries, makes the work
/// directory.
fn prepare(root: &Path, opts: &Options) -> Result<Rig, String> {
    if opts.install_peers {
        crate::run_command(Command::new("apt-get").arg("update"))?;
        crate::run_command(Command::new("apt-get").args([
            "install",
            "-y",
            "wrk",
            "nginx-light",
            "haproxy",
            "caddy",
            "nghttp2-client",
            "valgrind",
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
        // The handshake load's client (`handshakes.rs`), optimised as the servers are.
        "--bin",
        "xtask",
    ])?;
    let work = root.join("target").join("bench");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    std::fs::write(work.join("percentiles.lua"), WRK_SCRIPT).map_err(|e| e.to_string())?;
    std::fs::write(work.join("grpc-call.bin"), GRPC_CALL).map_err(|e| e.to_string())?;
    memory::raise_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Rig {
        work,
        root: root.to_path_buf(),
        pin: cores >= 2 && which("taskset").is_some(),
        cores,
        procs: Processes::default(),
        counting: None,
    })
}

/// The upstreams: nginx with one worker if installed (it is the faster), else two fake
/// backends; and the fake backend for chunked answers and streaming.
fn start_upstreams(rig: &mut Rig) -> Result<Upstreams, String> {
    let fake_exe = rig.root.join("target/release/fake-backend");
    let (u1, u2, fake) = (free_port()?, free_port()?, free_port()?);
    let upstreams = if let Some(nginx) = which("nginx") {
        let status = free_port()?;
        let conf = rig.write(
            "upstreams.nginx.conf",
            include_str!("../../templates/upstreams.nginx.conf"),
            &[
                ("pid", rig.file("upstreams.pid")),
                ("error_log", rig.file("upstreams.err")),
                ("u1", u1.to_string()),
                ("u2", u2.to_string()),
                ("status", status.to_string()),
                ("body", BODY.to_owned()),
            ],
        )?;
        let mut cmd = rig.on_core0(&nginx);
        rig.procs
            .start("nginx upstreams", cmd.arg("-c").arg(&conf))?;
        Upstreams {
            u1,
            u2,
            status: Some(status),
            fake,
            kind: "nginx 1 worker (return 200)",
        }
    } else {
        for (name, port) in [("fake-backend 1", u1), ("fake-backend 2", u2)] {
            let mut cmd = rig.on_core0(&fake_exe);
            rig.procs.start(name, cmd.arg(port.to_string()))?;
        }
        Upstreams {
            u1,
            u2,
            status: None,
            fake,
            kind: "fake-backend (nginx not installed)",
        }
    };
    let mut cmd = rig.on_core0(&fake_exe);
    rig.procs
        .start("fake-backend (chunked)", cmd.arg(fake.to_string()))?;
    for (port, what) in [
        (u1, "upstream 1"),
        (u2, "upstream 2"),
        (fake, "the fake backend"),
    ] {
        wait_for(port, what, &mut rig.procs)?;
    }
    Ok(upstreams)
}

/// Interleaved rounds: every scenario, connection count and contender once per round.
fn rounds<'c>(
    rig: &mut Rig,
    opts: &Options,
    upstreams: &Upstreams,
    contenders: &'c [Contender],
) -> Result<Vec<(Scenario, &'c str, u32, Sample)>, String> {
    let script = rig.work.join("percentiles.lua");
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut samples = Vec::new();
    for round in 1..=opts.rounds {
        for scenario in opts.all_scenarios() {
            let h2 = matches!(scenario, Scenario::H2c | Scenario::Grpc);
            if h2 && which("h2load").is_none() {
                if round == 1 {
                    eprintln!(
                        "skipped {}: `apt-get install nghttp2-client` for h2load",
                        scenario.name()
                    );
                }
                continue;
            }
            for conns in scenario.conns(opts) {
                for c in contenders {
                    rig.procs.check_alive()?;
                    let Some(url) = url(c, scenario, upstreams) else {
                        continue;
                    };
                    let accepted_before = upstreams.accepted(scenario);
                    let cpu_before = c.pid.and_then(cpu_ticks_with_children);
                    let grpc_call = rig.work.join("grpc-call.bin");
                    let (mut s, requests) = if h2 {
                        let body = (scenario == Scenario::Grpc).then_some(grpc_call.as_path());
                        h2load(&url, opts.seconds, rig.pin, body)?
                    } else if scenario == Scenario::TlsHandshake {
                        let port = c.tls_port.ok_or("no HTTPS port")?;
                        handshake_load(&rig.root, port, conns, opts.seconds, rig.pin)?
                    } else {
                        let header = match scenario {
                            Scenario::Routes => Some(format!("Host: {RICH_HOST}")),
                            _ => None,
                        };
                        wrk(
                            &url,
                            header.as_deref(),
                            conns,
                            opts.seconds,
                            &script,
                            rig.pin,
                        )?
                    };
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
    Ok(samples)
}

/// What a contender is asked for in a scenario (`direct` goes to the upstream itself);
/// `None` when it does not take part (h2c for a contender without it).
fn url(c: &Contender, scenario: Scenario, upstreams: &Upstreams) -> Option<String> {
    Some(match (c.name, scenario) {
        ("gateway (ours)" | peers::GATEWAY_1000_HOSTS, Scenario::Routes) => {
            format!("http://127.0.0.1:{}/rich/ping", c.port)
        }
        ("gateway (ours)", Scenario::UpstreamH1) => {
            format!("http://127.0.0.1:{}/chunked/ping", c.port)
        }
        ("gateway (ours)", Scenario::UpstreamH2c) => {
            format!("http://127.0.0.1:{}/h2up/ping", c.port)
        }
        (_, Scenario::Routes | Scenario::UpstreamH1 | Scenario::UpstreamH2c)
        | (peers::GATEWAY_1000_HOSTS | peers::GATEWAY_NO_THP, _) => return None,
        ("direct", Scenario::Grpc) => {
            format!("http://127.0.0.1:{}/echo.v1.Echo/Unary", upstreams.fake)
        }
        (name, Scenario::Grpc) if name.starts_with("Caddy") => return None,
        (_, Scenario::Grpc) => format!("http://127.0.0.1:{}/echo.v1.Echo/Unary", c.h2_port?),
        ("direct", Scenario::Fixed) => format!("http://127.0.0.1:{}/ping", upstreams.u1),
        ("direct", Scenario::Chunked) => {
            format!("http://127.0.0.1:{}/ping?chunked=1", upstreams.fake)
        }
        (_, Scenario::Fixed) => format!("http://127.0.0.1:{}/api/ping", c.port),
        (_, Scenario::Chunked) => format!("http://127.0.0.1:{}/chunked/ping?chunked=1", c.port),
        (_, Scenario::H2c) => format!("http://127.0.0.1:{}/api/ping", c.h2_port?),
        (_, Scenario::Tls | Scenario::TlsHandshake) => {
            format!("https://127.0.0.1:{}/api/ping", c.tls_port?)
        }
    })
}
