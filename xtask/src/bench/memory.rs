//! Memory under the bench: the RSS growth over idle keep-alive connections (the gateway's,
//! and nginx's and HAProxy's measured the same way), over idle HTTPS connections, and while
//! 1 GiB streams down and up through the gateway.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::procs::{proc_status, which};

/// Raises this process's soft limit on open files to its hard limit (children inherit it):
/// the idle-connection check needs 10,000 on each side. Best effort, with `prlimit`.
pub(super) fn raise_fd_limit() {
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

/// The gateway's RSS while 1 GiB streams down and up through it; with `idle`, what its idle
/// keep-alive check found. Returns the sentence for the report.
pub(super) fn checks(pid: u32, port: u16, idle: Option<PlainIdle>) -> Result<String, String> {
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
        let result = Conn::open(port).and_then(|mut c| c.request(method, path, body, false));
        let seconds = start.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let max = watcher.join().unwrap_or(0);
        let reply = result?;
        if reply.status != 200 {
            return Err(format!(
                "streaming {method} {path}: status {}",
                reply.status
            ));
        }
        Ok((before, max, seconds))
    };
    let (down_before, down_max, down_s) = stream("GET", &format!("/stream/d?bytes={GIB}"), 0)?;
    let (up_before, up_max, up_s) = stream("POST", "/stream/u", GIB)?;
    eprintln!(
        "streaming 1 GiB: down {down_s:.1} s, RSS {down_before} -> max {down_max} KiB; up {up_s:.1} s, RSS {up_before} -> max {up_max} KiB"
    );

    let idle = idle.map_or_else(String::new, |i| {
        format!(
            "Before the load rounds, with {} more idle keep-alive connections on top of {}: {} KiB ({} KiB before, about {} bytes per connection){}. ",
            i.held,
            i.held_before,
            i.with,
            i.before,
            i.per,
            i.stopped.map(|s| format!(" ({s})")).unwrap_or_default(),
        )
    });
    Ok(format!(
        "{idle}Streaming 1 GiB through it: download {down_before} KiB before, at most {down_max} KiB during ({:.0} MiB/s); \
         upload {up_before} KiB before, at most {up_max} KiB during ({:.0} MiB/s).",
        1024.0 / down_s,
        1024.0 / up_s,
    ))
}

/// Memory per idle connection of the gateway, nginx and HAProxy among `contenders`, each on
/// its fresh process (see the comment inside); HTTPS ones too with `tls`, verified against
/// `chain`. The gateway's keep-alive result (its connections closed), and the report's
/// sentences on the peers and on HTTPS.
pub(super) fn idle_connections(
    contenders: &[super::Contender],
    chain: &std::path::Path,
    tls: bool,
) -> Result<(Option<PlainIdle>, String), String> {
    // Memory per idle connection, proxy by proxy, before the load rounds: after them, memory
    // they freed (thousands of TLS handshakes' worth) is reused by new connections without
    // the RSS growing (nginx and HAProxy read 0-30 bytes per connection then). Keep-alive
    // connections first (a first batch, a second measured), then, while they are still held
    // (so that nothing they held is freed and reused), the HTTPS ones.
    let mut ours_idle = None;
    let mut peers_idle = Vec::new();
    let mut tls_each = Vec::new();
    let mut tls_versions = Vec::new();
    let mut no_thp = String::new();
    for c in contenders.iter().filter(|c| {
        c.name == "gateway (ours)"
            || c.name == super::peers::GATEWAY_NO_THP
            || c.name.starts_with("nginx")
            || c.name.starts_with("HAProxy")
    }) {
        let Some(pid) = c.pid else { continue };
        let ours = c.name == "gateway (ours)";
        let variant = c.name == super::peers::GATEWAY_NO_THP;
        let batch = if ours || variant {
            OURS_IDLE
        } else {
            PEER_IDLE
        };
        let mut idle = plain_idle(pid, c.port, batch);
        eprintln!(
            "{}: {} idle connections on top of {}: RSS {} -> {} KiB, {} bytes each{}",
            c.name,
            idle.held,
            idle.held_before,
            idle.before,
            idle.with,
            idle.per,
            idle.stopped
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
        if variant {
            no_thp = format!(
                " The same gateway with mimalloc's transparent huge pages off (`MIMALLOC_ALLOW_THP=0`), its RSS exact to the page: {} bytes per idle keep-alive connection ({} on top of {}).",
                idle.per, idle.held, idle.held_before
            );
            continue;
        }
        if let (true, Some(port)) = (tls, c.tls_port) {
            let tls = tls_idle(pid, port, chain)?;
            eprintln!(
                "{}: {} idle TLS connections, {} bytes each, {}",
                c.name, tls.held, tls.per, tls.version
            );
            tls_each.push(format!("{} {} bytes", c.name, tls.per));
            tls_versions.push(format!("{} {}", c.name, tls.version));
        }
        drop(std::mem::take(&mut idle.conns));
        if ours {
            ours_idle = Some(idle);
        } else {
            peers_idle.push(match &idle.stopped {
                Some(s) if idle.held == 0 => format!("{} not measured ({s})", c.name),
                _ => format!("{} {} bytes", c.name, idle.per),
            });
        }
    }
    let tls_memory = if tls_each.is_empty() {
        String::new()
    } else {
        format!(
            " Idle HTTPS keep-alive connections (before the load rounds, 2,000 held after a full handshake and one request each, with the keep-alive ones still held; RSS with workers): {}. \
             Protocol chosen for a client offering TLS 1.2 and 1.3: {}.",
            tls_each.join(", "),
            tls_versions.join(", ")
        )
    };
    let peers_memory = if peers_idle.is_empty() {
        String::new()
    } else {
        format!(
            " The peers' idle keep-alive connections, measured the same way ({n} on top of {n}; RSS with workers): {}; \
             nginx also sets aside a connection structure and two events for each of its `worker_connections` at start, outside this growth.",
            peers_idle.join(", "),
            n = PEER_IDLE,
        )
    };
    Ok((ours_idle, no_thp + &peers_memory + &tls_memory))
}

/// Idle keep-alive connections the gateway's memory check holds, twice (its allocator's RSS
/// grows in steps of a few MiB: 8,000 read it to about 260 bytes). With the 2,000 HTTPS
/// connections held after them, within a file limit of 20,000.
const OURS_IDLE: usize = 8_000;

/// Idle keep-alive connections held, twice, for a peer (with the 2,000 HTTPS ones after them,
/// within HAProxy's `maxconn` and nginx's `worker_connections` in the bench's configurations;
/// their allocators grow the RSS page by page).
const PEER_IDLE: usize = 2_500;

/// What the idle keep-alive check found for one proxy.
pub(super) struct PlainIdle {
    /// Connections held in the measured batch.
    pub(super) held: usize,
    /// Connections held before it (the first batch).
    pub(super) held_before: usize,
    /// RSS (KiB, with workers) before and with the measured batch.
    pub(super) before: u64,
    pub(super) with: u64,
    /// Resident bytes per connection of the measured batch.
    pub(super) per: u64,
    /// Why the check held fewer than asked, if it did.
    pub(super) stopped: Option<String>,
    /// The connections, still open (closed when dropped).
    pub(super) conns: Vec<std::net::TcpStream>,
}

/// How long the idle keep-alive check leaves a batch of connections quiet before it reads the
/// RSS: past the gateway's parking wait (1 s by default; a connection is parked between one
/// and two of them after its last byte) and the half second after which it has its allocator
/// give back what the parked connections' tasks held, with room to spare.
const QUIET: Duration = Duration::from_millis(4_000);

/// A proxy's resident memory per idle keep-alive connection: `batch` connections opened to
/// `port` with one request each and left open, then `batch` more, measured after `QUIET`
/// (RSS of `pid` and its workers): the first batch takes up what earlier checks freed, which an allocator reuses
/// without the RSS growing. Holds fewer (and says why in `stopped`) when the file limit or
/// the proxy refuses more. The connections stay open in the result until it is dropped, so
/// that a check made meanwhile does not reuse what they hold.
pub(super) fn plain_idle(pid: u32, port: u16, batch: usize) -> PlainIdle {
    let rss = || crate::procs::rss_with_children(pid).unwrap_or(0);
    let mut idle = Vec::with_capacity(2 * batch);
    let mut stopped = None;
    let mut hold = |idle: &mut Vec<std::net::TcpStream>, count: usize| {
        for _ in 0..count {
            match Conn::open(port).and_then(|mut c| {
                let reply = c.request("GET", "/api/idle", 0, false)?;
                if reply.status != 200 {
                    return Err(format!("status {}", reply.status));
                }
                Ok(c.into_stream())
            }) {
                Ok(c) => idle.push(c),
                Err(e) => {
                    stopped = Some(format!(
                        "stopped at {} connections: {e} (raise `ulimit -n`)",
                        idle.len()
                    ));
                    return false;
                }
            }
        }
        true
    };
    let first = hold(&mut idle, batch);
    // Idle means quiet for a while: each batch is read after QUIET without a byte, when the
    // gateway has parked its connections (`idle_park_after_ms`, 1 s). The same wait for
    // every proxy.
    std::thread::sleep(QUIET);
    let before = rss();
    let held_before = idle.len();
    if first {
        hold(&mut idle, batch);
    }
    std::thread::sleep(QUIET);
    let with = rss();
    let held = idle.len() - held_before;
    PlainIdle {
        held,
        held_before,
        before,
        with,
        per: with.saturating_sub(before) * 1024 / held.max(1) as u64,
        stopped,
        conns: idle,
    }
}

/// Idle HTTPS keep-alive connections held at once by the TLS-memory check.
const TLS_IDLE: usize = 2_000;

/// What the TLS-memory check found for one proxy.
pub(super) struct TlsIdle {
    /// Connections held.
    pub(super) held: usize,
    /// Resident bytes per connection.
    pub(super) per: u64,
    /// The protocol version the proxy chose for a client offering TLS 1.2 and 1.3 (as wrk's
    /// OpenSSL does): the rows compare like with like only when every proxy says TLS 1.3.
    pub(super) version: String,
}

/// A proxy's resident memory per idle HTTPS keep-alive connection: `TLS_IDLE` connections
/// opened to `port` (a full handshake and one request each, then left open), the RSS of `pid`
/// and its workers before and with them. The client trusts the certificates in `chain`.
pub(super) fn tls_idle(pid: u32, port: u16, chain: &std::path::Path) -> Result<TlsIdle, String> {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(chain).map_err(|e| e.to_string())? {
        let cert = cert.map_err(|e| e.to_string())?;
        // The leaf is refused as an anchor; the CA after it is what verifies.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let rss = || crate::procs::rss_with_children(pid).unwrap_or(0);
    let before = rss();
    let mut held = Vec::with_capacity(TLS_IDLE);
    for i in 0..TLS_IDLE {
        let open = || -> Result<_, String> {
            let tcp =
                std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(Arc::clone(&config), name)
                .map_err(|e| e.to_string())?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(b"GET /api/idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .map_err(|e| e.to_string())?;
            // The answer: a head, then a body of the length it declares.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tls.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed before the answer ended".into());
                }
                got.extend_from_slice(&buf[..n]);
                if crate::client::whole_answer(&got)?.is_some() {
                    break;
                }
            }
            Ok(tls)
        };
        match open() {
            Ok(tls) => held.push(tls),
            Err(e) => return Err(format!("TLS connection {i} to port {port}: {e}")),
        }
    }
    let with = rss();
    let n = held.len();
    let version = held
        .first()
        .and_then(|t| t.conn.protocol_version())
        .map_or_else(|| "unknown".to_owned(), |v| format!("{v:?}"));
    drop(held);
    Ok(TlsIdle {
        held: n,
        per: with.saturating_sub(before) * 1024 / n.max(1) as u64,
        version,
    })
}
