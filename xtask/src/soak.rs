//! `cargo xtask soak [--minutes N] [--clients C]`: N minutes (default 2) of mixed traffic
//! through the release gateway, then the checks that matter for a long-running edge process.
//!
//! Traffic, from C client threads (default 12), each op on loopback with 10 s socket
//! timeouts: small keep-alive GETs, 1 MiB downloads, 1 MiB uploads, server-sent events,
//! WebSocket echoes, and slow clients (a head in pieces, a body read in small sips).
//!
//! Checks:
//! - after the first minute and at the end, with every client gone and the upstream pools
//!   drained, the gateway's RSS, open file descriptors, threads and live tokio tasks: no
//!   growth between the two beyond a small allowance;
//! - no request failed;
//! - SIGTERM under load: every response that started completes, the process exits 0.
//!
//! Every process is started here and killed by PID on the way out; all traffic is on
//! 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bench::{Processes, free_port, proc_status, wait_for};

/// Options of `cargo xtask soak`.
pub struct Options {
    minutes: u64,
    clients: usize,
}

impl Options {
    /// Parses `--minutes N --clients C`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            minutes: 2,
            clients: 12,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let value = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            match a.as_str() {
                "--minutes" => {
                    o.minutes = value
                        .parse()
                        .ok()
                        .filter(|&m| (1..=240).contains(&m))
                        .ok_or("--minutes takes 1 to 240")?
                }
                "--clients" => {
                    o.clients = value
                        .parse()
                        .ok()
                        .filter(|&c| (1..=512).contains(&c))
                        .ok_or("--clients takes 1 to 512")?
                }
                other => {
                    return Err(format!(
                        "unknown option `{other}` (--minutes N, --clients C)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

const MIB: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What one gateway process looks like from outside.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
}

fn sample(pid: u32, port: u16) -> Result<Sample, String> {
    let field = |name: &str| {
        proc_status(pid, name).ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("reading /proc/{pid}/fd: {e}"))?
        .count() as u64;
    let mut conn = Conn::open(port)?;
    let (status_code, page) = conn.request("GET", "/", 0, None, false)?;
    if status_code != 200 {
        return Err(format!("index page answered {status_code}"));
    }
    let page = String::from_utf8_lossy(&page);
    let tasks = page
        .lines()
        .find_map(|l| l.trim().strip_prefix("tasks alive "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or("the index page shows no task count")?;
    Ok(Sample {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
        tasks,
    })
}

/// Samples until two readings a moment apart agree on tasks and descriptors (connections the
/// clients closed take a moment to end on the gateway's side), at most 10 s.
fn settled_sample(pid: u32, port: u16) -> Result<Sample, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = sample(pid, port)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = sample(pid, port)?;
        if (now.tasks == last.tasks && now.fds == last.fds) || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// A client connection speaking just enough HTTP/1.1.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub(crate) fn open(port: u16) -> Result<Conn, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// The socket alone (one descriptor instead of two), for holding a connection open.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    /// Sends a request (a body of `body_len` bytes; `slow` sends the head in pieces and reads
    /// the body in sips) and reads the response. Returns the status and, for small bodies,
    /// the body (large ones are counted, not kept).
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        body_len: usize,
        upgrade: Option<&str>,
        slow: bool,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: soak\r\n");
        if body_len > 0 {
            head.push_str(&format!("Content-Length: {body_len}\r\n"));
        }
        if let Some(key) = upgrade {
            head.push_str(&format!(
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            ));
        }
        head.push_str("\r\n");
        let w = |e: std::io::Error| format!("write: {e}");
        if slow {
            for piece in head.as_bytes().chunks(head.len() / 5 + 1) {
                self.writer.write_all(piece).map_err(w)?;
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            self.writer.write_all(head.as_bytes()).map_err(w)?;
        }
        let block = vec![b'u'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(block.len());
            self.writer.write_all(&block[..n]).map_err(w)?;
            left -= n;
        }
        self.response(slow, upgrade.is_some())
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("closed before a response".to_owned()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    fn response(&mut self, slow: bool, upgrade: bool) -> Result<(u16, Vec<u8>), String> {
        let status_line = self.line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line `{status_line}`"))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if let Some(v) = lower.strip_prefix("transfer-encoding:") {
                chunked = v.contains("chunked");
            }
        }
        if upgrade && status == 101 {
            return Ok((status, Vec::new()));
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size `{size_line}`"))?;
                self.read_body(size, slow, &mut body)?;
                let mut crlf = [0u8; 2];
                self.reader
                    .read_exact(&mut crlf)
                    .map_err(|e| format!("chunk end: {e}"))?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            self.read_body(n, slow, &mut body)?;
        }
        Ok((status, body))
    }

    fn read_body(&mut self, mut n: usize, slow: bool, keep: &mut Vec<u8>) -> Result<(), String> {
        let mut buf = vec![0u8; if slow { 4096 } else { 64 * 1024 }];
        while n > 0 {
            let want = n.min(buf.len());
            self.reader
                .read_exact(&mut buf[..want])
                .map_err(|e| format!("body cut with {n} bytes to go: {e}"))?;
            if keep.len() < 64 * 1024 {
                keep.extend_from_slice(&buf[..want]);
            }
            n -= want;
            if slow {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    /// One masked WebSocket frame out, one unmasked frame back.
    fn ws_roundtrip(&mut self, opcode: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer
            .write_all(&frame)
            .map_err(|e| format!("ws write: {e}"))?;
        let mut head = [0u8; 2];
        self.reader
            .read_exact(&mut head)
            .map_err(|e| format!("ws read: {e}"))?;
        let len = usize::from(head[1] & 0x7f);
        let mut back = vec![0u8; len];
        self.reader
            .read_exact(&mut back)
            .map_err(|e| format!("ws read: {e}"))?;
        Ok(back)
    }
}

/// The kinds of traffic, in the order a client cycles through them.
const MIX: [&str; 8] = [
    "small",
    "small",
    "download",
    "small",
    "upload",
    "events",
    "websocket",
    "slow",
];

/// One operation of `kind`; Ok when the exchange was complete and correct.
fn op(port: u16, kind: &str, keep: &mut Option<Conn>) -> Result<(), String> {
    let expect = |status: u16, want: u16| {
        if status == want {
            Ok(())
        } else {
            Err(format!("{kind}: status {status}"))
        }
    };
    match kind {
        "small" => {
            // Reuses the client's keep-alive connection.
            let conn = match keep {
                Some(c) => c,
                None => keep.insert(Conn::open(port)?),
            };
            let result = conn.request("GET", "/api/small", 0, None, false);
            if result.is_err() {
                *keep = None;
            }
            expect(result?.0, 200)
        }
        "download" => {
            let (s, _) =
                Conn::open(port)?.request("GET", &format!("/api/d?bytes={MIB}"), 0, None, false)?;
            expect(s, 200)
        }
        "upload" => {
            let (s, body) = Conn::open(port)?.request("POST", "/api/u", MIB, None, false)?;
            expect(s, 200)?;
            let text = String::from_utf8_lossy(&body);
            if !text.contains(&format!("\"body_bytes\":{MIB}")) {
                return Err(format!("upload: the upstream did not get it all: {text}"));
            }
            Ok(())
        }
        "events" => {
            let (s, body) =
                Conn::open(port)?.request("GET", "/api/e?sse=5&interval_ms=20", 0, None, false)?;
            expect(s, 200)?;
            let n = String::from_utf8_lossy(&body).matches("data: ").count();
            if n != 5 {
                return Err(format!("events: {n} of 5"));
            }
            Ok(())
        }
        "websocket" => {
            let mut c = Conn::open(port)?;
            let (s, _) = c.request("GET", "/api/ws", 0, Some("dGhlIHNhbXBsZSBub25jZQ=="), false)?;
            expect(s, 101)?;
            for i in 0..3 {
                let msg = format!("soak message {i}");
                let back = c.ws_roundtrip(0x1, msg.as_bytes())?;
                if back != msg.as_bytes() {
                    return Err("websocket: echo differs".to_owned());
                }
            }
            c.ws_roundtrip(0x8, &[0x03, 0xe8])?;
            Ok(())
        }
        "slow" => {
            let (s, _) = Conn::open(port)?.request("GET", "/api/s?bytes=65536", 0, None, true)?;
            expect(s, 200)
        }
        other => Err(format!("unknown traffic kind {other}")),
    }
}

/// Counts of one load phase.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// `clients` threads cycling through [`MIX`] until `until` or `stop`.
fn load(
    port: u16,
    clients: usize,
    until: Instant,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            std::thread::spawn(move || {
                let mut keep = None;
                let mut i = c;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let kind = MIX[i % MIX.len()];
                    i += 1;
                    match op(port, kind, &mut keep) {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut errors = tally.errors.lock().unwrap_or_else(|p| p.into_inner());
                            if errors.len() < 20 {
                                errors.push(e);
                            }
                            tally.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect()
}

fn config(port: u16, b1: u16, b2: u16) -> String {
    format!(
        r#"# Written by cargo xtask soak.
[server]
listen = ["127.0.0.1:{port}"]
max_body_bytes = 4194304
header_read_timeout_ms = 5000
idle_timeout_ms = 5000
shutdown_grace_ms = 10000

[pre]
access_log = false

[upstreams.api]
targets = ["http://127.0.0.1:{b1}", "http://127.0.0.1:{b2}"]
pool_max_idle_per_target = 16
pool_idle_timeout_ms = 1000

[[routes]]
path = "/api/*path"
methods = ["GET", "POST"]
upstream = "api"
"#
    )
}

/// Runs the soak.
pub fn run(root: &Path, opts: &Options) -> Result<(), String> {
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "gateway-bin",
        "-p",
        "fake-backend",
    ])?;
    let bin = root.join("target/release");
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut procs = Processes::default();
    let (b1, b2, port) = (free_port()?, free_port()?, free_port()?);
    for (b, name) in [(b1, "one"), (b2, "two")] {
        procs.start(
            name,
            Command::new(bin.join("fake-backend")).args(["--port", &b.to_string(), "--name", name]),
        )?;
        wait_for(b, name, &mut procs)?;
    }
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config(port, b1, b2))
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    let pid = procs.start(
        "gateway",
        Command::new(bin.join("gateway")).arg("--config").arg(&file),
    )?;
    wait_for(port, "gateway", &mut procs)?;

    let start = sample(pid, port)?;
    println!(
        "soak: {} minute(s), {} clients; gateway pid {pid}",
        opts.minutes, opts.clients
    );
    println!("  at start:        {}", show(&start));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // Phase 1: the first minute, then everyone leaves and the checkpoint is taken.
    let phase = |seconds: u64| {
        for t in load(
            port,
            opts.clients,
            Instant::now() + Duration::from_secs(seconds),
            &stop,
            &tally,
        ) {
            let _ = t.join();
        }
    };
    phase(60);
    procs.check_alive()?;
    let first = settled_sample(pid, port)?;
    println!(
        "  after minute 1:  {}  ({} ops)",
        show(&first),
        tally.ok.load(Ordering::Relaxed)
    );
    if opts.minutes > 1 {
        phase(60 * (opts.minutes - 1));
    }
    procs.check_alive()?;
    let last = settled_sample(pid, port)?;
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    println!(
        "  at the end:      {}  ({ok} ops, {failed} failed)",
        show(&last)
    );

    let mut problems = Vec::new();
    if failed > 0 {
        let errors = tally.errors.lock().unwrap_or_else(|p| p.into_inner());
        problems.push(format!(
            "{failed} operations failed, e.g. {:?}",
            &errors[..errors.len().min(5)]
        ));
    }
    // Allowances: allocator caches may settle a little higher; descriptors and tasks must
    // come back to where they were.
    let rss_allow = (first.rss_kib / 10).max(8 * 1024);
    if last.rss_kib > first.rss_kib + rss_allow {
        problems.push(format!(
            "RSS grew from {} to {} KiB (allowed {rss_allow} KiB)",
            first.rss_kib, last.rss_kib
        ));
    }
    if last.fds > first.fds + 2 {
        problems.push(format!(
            "open descriptors grew from {} to {}",
            first.fds, last.fds
        ));
    }
    if last.tasks > first.tasks + 2 {
        problems.push(format!(
            "live tasks grew from {} to {}",
            first.tasks, last.tasks
        ));
    }
    if last.threads > first.threads {
        problems.push(format!(
            "threads grew from {} to {}",
            first.threads, last.threads
        ));
    }

    // SIGTERM under load: responses that started must complete; the exit code is 0.
    let term = Arc::new(Tally::default());
    let stop_term = Arc::new(AtomicBool::new(false));
    let threads = load(
        port,
        opts.clients,
        Instant::now() + Duration::from_secs(30),
        &stop_term,
        &term,
    );
    std::thread::sleep(Duration::from_secs(2));
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !killed.success() {
        problems.push("could not send SIGTERM".to_owned());
    }
    let exit = procs.wait("gateway", Duration::from_secs(20))?;
    stop_term.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let cut: Vec<String> = term
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        // Refused or closed before a response began is how a stopping server says no.
        .filter(|e| {
            !(e.starts_with("connect")
                || e.contains("closed before a response")
                || e.starts_with("write"))
        })
        .cloned()
        .collect();
    println!(
        "  SIGTERM under load: exit {exit:?}, {} ops completed, {} refused or closed before a response, {} cut",
        term.ok.load(Ordering::Relaxed),
        term.failed.load(Ordering::Relaxed) as usize - cut.len(),
        cut.len()
    );
    if exit != Some(0) {
        problems.push(format!("the gateway exited with {exit:?} on SIGTERM"));
    }
    if !cut.is_empty() {
        problems.push(format!("responses cut by the shutdown: {cut:?}"));
    }
    if problems.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        Err(format!("soak failed:\n  - {}", problems.join("\n  - ")))
    }
}

fn show(s: &Sample) -> String {
    format!(
        "RSS {:>7} KiB, {:>3} fds, {:>2} threads, {:>3} tasks",
        s.rss_kib, s.fds, s.threads, s.tasks
    )
}
