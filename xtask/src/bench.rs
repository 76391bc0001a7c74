//! `cargo xtask bench`: the gateway next to nginx, HAProxy and Caddy as reverse proxies, in the
//! same run, over the same two upstreams, under the same wrk load.
//!
//! Everything listens on 127.0.0.1 on ports picked free at start; every process started here
//! is killed by PID when the run ends, fails, or is interrupted (Ctrl-C reaches the process
//! group); every load run lasts `--duration` seconds.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes killed when dropped.
#[derive(Default)]
pub(crate) struct Processes(Vec<(String, Child)>);

impl Processes {
    pub(crate) fn start(&mut self, name: &str, cmd: &mut Command) -> Result<u32, String> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start {name}: {e}"))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Waits up to `bound` for the process `name` to exit; its exit code (None: by a signal).
    pub(crate) fn wait(&mut self, name: &str, bound: Duration) -> Result<Option<i32>, String> {
        let deadline = Instant::now() + bound;
        let Some((_, child)) = self.0.iter_mut().find(|(n, _)| n == name) else {
            return Err(format!("no process named {name}"));
        };
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not exit within {bound:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        for (name, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status})"));
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    /// SIGTERM first, so that a master process (nginx) takes its workers down with it, then
    /// SIGKILL for whatever is still running after two seconds.
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (_, child) in &mut self.0 {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

pub(crate) fn wait_for(port: u16, what: &str, procs: &mut Processes) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !crate::answers(port) {
        procs.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not answer on 127.0.0.1:{port} within 15 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One wrk run's results.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("PCT %f %f %f\n", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

fn wrk(url: &str, conns: u32, seconds: u32, script: &Path, pin: bool) -> Result<Sample, String> {
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
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let pct: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("PCT "))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if text.contains("Non-2xx or 3xx responses") {
        return Err(format!("{url}: errors in the responses:\n{text}"));
    }
    let ms = |i: usize| pct.get(i).copied().unwrap_or(f64::NAN) / 1000.0;
    Ok(Sample {
        rps,
        p50_ms: ms(0),
        p99_ms: ms(1),
        p999_ms: ms(2),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A numeric field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`, `Threads:`), without its unit.
pub(crate) fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

const BODY: &str =
    r#"{"ok":true,"from":"upstream","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

/// Options of `cargo xtask bench`.
pub struct Options {
    pub install_peers: bool,
    pub seconds: u32,
    pub rounds: u32,
    pub conns: Vec<u32>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            install_peers: false,
            seconds: 10,
            rounds: 3,
            conns: vec![64, 256],
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--install-peers" => o.install_peers = true,
                "--duration" => {
                    o.seconds = value("--duration")?
                        .parse()
                        .map_err(|_| "--duration takes seconds")?
                }
                "--rounds" => {
                    o.rounds = value("--rounds")?
                        .parse()
                        .map_err(|_| "--rounds takes a number")?
                }
                "--conns" => {
                    o.conns = value("--conns")?
                        .split(',')
                        .map(|c| c.trim().parse().map_err(|_| format!("bad --conns `{c}`")))
                        .collect::<Result<_, _>>()?
                }
                other => {
                    return Err(format!(
                        "unknown option `{other}` (try --install-peers, --duration S, --rounds N, --conns 64,256)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

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
    raise_fd_limit();
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
    let mut procs = Processes::default();

    // The upstreams: nginx with one worker if installed (it is the faster), else ours.
    let (u1, u2) = (free_port()?, free_port()?);
    let nginx = which("nginx");
    let upstream_kind = if let Some(nginx) = &nginx {
        let conf = work.join("upstreams.conf");
        std::fs::write(&conf, format!(
            "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err};\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  server {{ listen 127.0.0.1:{u1}; location / {{ default_type application/json; return 200 '{BODY}'; }} }}\n  server {{ listen 127.0.0.1:{u2}; location / {{ default_type application/json; return 200 '{BODY}'; }} }}\n}}\n",
            pid = work.join("upstreams.pid").display(),
            err = work.join("upstreams.err").display(),
        )).map_err(|e| e.to_string())?;
        procs.start("nginx upstreams", on_core0(nginx).arg("-c").arg(&conf))?;
        "nginx 1 worker (return 200)"
    } else {
        let exe = root.join("target/release/fake-backend");
        procs.start("fake-backend", on_core0(&exe).arg(u1.to_string()))?;
        procs.start("fake-backend", on_core0(&exe).arg(u2.to_string()))?;
        "fake-backend (nginx not installed)"
    };
    wait_for(u1, "upstream 1", &mut procs)?;
    wait_for(u2, "upstream 2", &mut procs)?;

    // The contenders.
    let mut contenders: Vec<(&str, u16, Option<u32>)> = vec![("direct", u1, None)];
    let ours = free_port()?;
    // A fake backend for the streaming measurements (it streams and counts big bodies).
    let streamer = free_port()?;
    procs.start(
        "fake-backend (streaming)",
        Command::new(root.join("target/release/fake-backend")).arg(streamer.to_string()),
    )?;
    wait_for(streamer, "the streaming backend", &mut procs)?;
    let conf = work.join("gateway.toml");
    std::fs::write(&conf, format!(
        "[server]\nlisten = [\"127.0.0.1:{ours}\"]\nworker_threads = 1\nmax_body_bytes = 0\n\
         # Room for the 10,000 idle connections of the memory check, kept open for it.\n\
         max_connections = 20000\nheader_read_timeout_ms = 120000\nidle_timeout_ms = 120000\n\n\
         [pre]\naccess_log = false\n\n[upstreams.api]\ntargets = [\"http://127.0.0.1:{u1}\", \"http://127.0.0.1:{u2}\"]\n\
         # As nginx's keepalive 512: enough idle connections for 256 clients.\npool_max_idle_per_target = 512\n\n\
         [upstreams.stream]\ntargets = [\"http://127.0.0.1:{streamer}\"]\n\n\
         [[routes]]\npath = \"/api/*path\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"api\"\n\n\
         [[routes]]\npath = \"/stream/*path\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"stream\"\n"
    )).map_err(|e| e.to_string())?;
    let gateway_pid = procs.start(
        "gateway",
        on_core0(&root.join("target/release/gateway"))
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "warn"),
    )?;
    wait_for(ours, "the gateway", &mut procs)?;
    contenders.push(("gateway (ours)", ours, Some(gateway_pid)));
    let mut skipped = Vec::new();

    if let Some(nginx) = &nginx {
        let port = free_port()?;
        let conf = work.join("nginx-proxy.conf");
        std::fs::write(&conf, format!(
            "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err};\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  upstream api {{ server 127.0.0.1:{u1}; server 127.0.0.1:{u2}; keepalive 512; }}\n  server {{ listen 127.0.0.1:{port}; location /api/ {{ proxy_pass http://api/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
            pid = work.join("nginx-proxy.pid").display(),
            err = work.join("nginx-proxy.err").display(),
        )).map_err(|e| e.to_string())?;
        procs.start("nginx proxy", on_core0(nginx).arg("-c").arg(&conf))?;
        wait_for(port, "nginx", &mut procs)?;
        contenders.push(("nginx (1 worker)", port, None));
    } else {
        skipped.push("nginx: `apt-get install nginx-light`");
    }
    if let Some(haproxy) = which("haproxy") {
        let port = free_port()?;
        let conf = work.join("haproxy.cfg");
        std::fs::write(&conf, format!(
            "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend api\nbackend api\n  balance roundrobin\n  http-request replace-path /api(/.*) \\1\n  server u1 127.0.0.1:{u1}\n  server u2 127.0.0.1:{u2}\n"
        )).map_err(|e| e.to_string())?;
        procs.start(
            "haproxy",
            on_core0(&haproxy).arg("-db").arg("-f").arg(&conf),
        )?;
        wait_for(port, "haproxy", &mut procs)?;
        contenders.push(("HAProxy (1 thread)", port, None));
    } else {
        skipped.push("HAProxy: `apt-get install haproxy`");
    }
    if let Some(caddy) = which("caddy") {
        let port = free_port()?;
        let conf = work.join("Caddyfile");
        std::fs::write(&conf, format!(
            "{{\n  admin off\n  auto_https off\n}}\nhttp://127.0.0.1:{port} {{\n  handle_path /api/* {{\n    reverse_proxy 127.0.0.1:{u1} 127.0.0.1:{u2} {{\n      lb_policy round_robin\n    }}\n  }}\n}}\n"
        )).map_err(|e| e.to_string())?;
        procs.start(
            "caddy",
            on_core0(&caddy)
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf)
                .env("GOMAXPROCS", "1"),
        )?;
        wait_for(port, "caddy", &mut procs)?;
        contenders.push(("Caddy (GOMAXPROCS=1)", port, None));
    } else {
        skipped.push("Caddy: `apt-get install caddy`");
    }
    for s in &skipped {
        eprintln!("skipped {s}");
    }

    // Interleaved rounds.
    let mut samples: Vec<(&str, u32, Sample)> = Vec::new();
    for round in 1..=opts.rounds {
        for &conns in &opts.conns {
            for &(name, port, _) in &contenders {
                procs.check_alive()?;
                let path = if name == "direct" {
                    "/ping"
                } else {
                    "/api/ping"
                };
                let s = wrk(
                    &format!("http://127.0.0.1:{port}{path}"),
                    conns,
                    opts.seconds,
                    &script,
                    pin,
                )?;
                eprintln!(
                    "round {round} c{conns} {name}: {:.0} req/s, p99 {:.2} ms",
                    s.rps, s.p99_ms
                );
                samples.push((name, conns, s));
            }
        }
    }
    let peak_rss = proc_status(gateway_pid, "VmHWM:");
    let memory = memory_checks(gateway_pid, ours)?;

    // The table.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| conns | contender | req/s (median) | min - max | p50 ms | p99 ms | p99.9 ms | ours / it (req/s) |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|");
    for &conns in &opts.conns {
        let of = |name: &str| -> Vec<Sample> {
            samples
                .iter()
                .filter(|(n, c, _)| *n == name && *c == conns)
                .map(|(_, _, s)| *s)
                .collect()
        };
        let ours_rps = median(of("gateway (ours)").iter().map(|s| s.rps).collect());
        for &(name, _, _) in &contenders {
            let v = of(name);
            let rps: Vec<f64> = v.iter().map(|s| s.rps).collect();
            let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rps.iter().copied().fold(0.0, f64::max);
            let m = median(rps);
            let _ = writeln!(
                table,
                "| {conns} | {name} | {m:.0} | {min:.0} - {max:.0} | {:.2} | {:.2} | {:.2} | {:.2}x |",
                median(v.iter().map(|s| s.p50_ms).collect()),
                median(v.iter().map(|s| s.p99_ms).collect()),
                median(v.iter().map(|s| s.p999_ms).collect()),
                ours_rps / m,
            );
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let version = |program: &str, arg: &str| -> String {
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
    };
    let header = format!(
        "Run of `cargo xtask bench --duration {} --rounds {}`: {cores} cores ({cpu}){}, wrk -t1 with a percentile script; upstreams: {upstream_kind}. Versions: {}; {}; {}.\n\nGateway memory: peak RSS over the load runs {} KiB. {memory}\n",
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
    );
    println!("\n{header}\n{table}");
    write_benchmarks(root, &format!("{header}\n{table}"))?;
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit (children inherit it):
/// the idle-connection check needs 10,000 on each side. Best effort, with `prlimit`.
fn raise_fd_limit() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        });
    if let (Some(hard), Some(prlimit)) = (hard, which("prlimit")) {
        let _ = Command::new(prlimit)
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
}

/// The gateway's RSS with 10,000 idle keep-alive connections, and while 1 GiB streams down
/// and up through it. Returns the sentence for the report.
fn memory_checks(pid: u32, port: u16) -> Result<String, String> {
    use crate::soak::Conn;
    const GIB: usize = 1 << 30;
    let rss = || proc_status(pid, "VmRSS:").unwrap_or(0);

    // Streaming: the highest RSS seen, sampled every 50 ms, against the RSS before.
    let stream = |method: &str, path: &str, body: usize| -> Result<(u64, u64, f64), String> {
        let before = rss();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let mut max = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    max = max.max(proc_status(pid, "VmRSS:").unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(50));
                }
                max
            })
        };
        let start = Instant::now();
        let result = Conn::open(port).and_then(|mut c| c.request(method, path, body, None, false));
        let seconds = start.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let max = watcher.join().unwrap_or(0);
        let (status, _) = result?;
        if status != 200 {
            return Err(format!("streaming {method} {path}: status {status}"));
        }
        Ok((before, max, seconds))
    };
    let (down_before, down_max, down_s) = stream("GET", &format!("/stream/d?bytes={GIB}"), 0)?;
    let (up_before, up_max, up_s) = stream("POST", "/stream/u", GIB)?;
    eprintln!(
        "streaming 1 GiB: down {down_s:.1} s, RSS {down_before} -> max {down_max} KiB; up {up_s:.1} s, RSS {up_before} -> max {up_max} KiB"
    );

    // 10,000 idle keep-alive connections, each after one request.
    let target = 10_000;
    let before = rss();
    let mut idle = Vec::with_capacity(target);
    let mut stopped = None;
    for i in 0..target {
        match Conn::open(port).and_then(|mut c| {
            c.request("GET", "/api/idle", 0, None, false)
                .map(|_| c.into_stream())
        }) {
            Ok(c) => idle.push(c),
            Err(e) => {
                stopped = Some(format!(
                    "stopped at {i} connections: {e} (raise `ulimit -n`)"
                ));
                break;
            }
        }
    }
    let with = rss();
    let n = idle.len();
    drop(idle);
    let per = if n > 0 {
        (with.saturating_sub(before)) * 1024 / n as u64
    } else {
        0
    };
    eprintln!("{n} idle connections: RSS {before} -> {with} KiB ({per} bytes each)");
    if let Some(s) = &stopped {
        eprintln!("{s}");
    }
    Ok(format!(
        "With {n} idle keep-alive connections: {with} KiB ({before} KiB before, about {per} bytes per connection){}. \
         Streaming 1 GiB through it: download {down_before} KiB before, at most {down_max} KiB during ({:.0} MiB/s); \
         upload {up_before} KiB before, at most {up_max} KiB during ({:.0} MiB/s).",
        stopped.map(|s| format!(" ({s})")).unwrap_or_default(),
        1024.0 / down_s,
        1024.0 / up_s,
    ))
}

/// Replaces the generated section of BENCHMARKS.md (between markers) with `body`.
fn write_benchmarks(root: &Path, body: &str) -> Result<(), String> {
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
