//! Helpers shared by the gateway's integration tests: the gateway in-process on port 0 with
//! its upstreams at hand, the demo topology on fake backends, and raw-bytes exchanges. The
//! generic pieces (scripted upstreams, recorder, clients, log capture, child processes) are
//! the `testkit` crate's.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway_bin::app;
use gateway_bin::config::Source;
use gateway_bin::serve::{self, Limits, ServedBody};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub use testkit::client::{Reply, call, fetch, get};
pub use testkit::process::{Guarded, address_in};
pub use testkit::recorder::{Recorder, Seen};

/// The default topology, on the given backend addresses, plus a slow-timeout upstream.
pub fn config(b1: SocketAddr, b2: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shutdown_grace_ms = 5000
max_body_bytes = 1000

[index]
enabled = true

[upstreams.static]
targets = ["http://{b1}"]

[upstreams.admin]
targets = ["http://{b2}"]

[upstreams.api]
strategy = "round-robin"
targets = ["http://{b1}", "http://{b2}"]
response_timeout_ms = 300

[[routes]]
path = "/api/*path"
methods = ["GET", "POST", "PUT", "DELETE"]
upstream = "api"

[[routes]]
path = "/static/*path"
methods = ["GET", "HEAD"]
upstream = "static"

[[routes]]
path = "/admin/*path"
methods = ["GET"]
upstream = "admin"
auth = {{ header = "X-Admin-Token", secrets = ["letmein"] }}
"#
    )
}

/// A gateway serving in this process.
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Send to shut it down.
    pub stop: Option<oneshot::Sender<()>>,
    /// `serve`'s result: whether every connection finished within the grace period.
    pub done: tokio::task::JoinHandle<bool>,
    /// The upstreams, to look at their targets' health.
    pub upstreams: Vec<(String, proxy::Proxy<ServedBody>)>,
    /// The upstreams' background tasks (DNS, active checks), running while this lives.
    pub background: Vec<proxy::Background>,
    /// The admin listener's address (metrics, health, dashboard), on a port of its own.
    pub admin_addr: SocketAddr,
    /// What it serves from (tests take history samples with `tick` instead of waiting a
    /// second for the sampler).
    pub admin: std::sync::Arc<gateway_bin::admin::Admin<ServedBody>>,
    _admin_task: AbortOnDrop,
    /// The HTTPS listener's address, when the configuration has `[tls]` (its `listen` is
    /// replaced by one port of this process's choosing).
    pub tls_addr: Option<SocketAddr>,
    /// The certificates, when there is TLS (tests reload them directly).
    pub tls: Option<gateway_bin::tls::TlsServer>,
}

/// A task that stops when this is dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One target's health as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    /// `http://host:port`.
    pub target: String,
    /// Whether it may be picked now.
    pub available: bool,
    /// Failures reported so far.
    pub failures: u64,
    /// Successes reported so far.
    pub successes: u64,
    /// Out because of its active checks.
    pub check_down: bool,
}

impl Gateway {
    /// The targets of upstream `name`, with their health.
    pub fn health(&self, name: &str) -> Vec<TargetHealth> {
        let (_, proxy) = self
            .upstreams
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no upstream {name}"));
        let balancer = proxy.upstream().balancer();
        balancer
            .targets()
            .iter()
            .map(|t| TargetHealth {
                target: t.value().to_string(),
                available: t.state().is_available(balancer.policy()),
                failures: t.state().failures(),
                successes: t.state().successes(),
                check_down: t.state().is_check_down(),
            })
            .collect()
    }

    /// Waits until `done` holds for upstream `name`'s targets, at most `bound` (then panics
    /// naming `what`). Health lives in atomics with nothing to wake on, so this looks every
    /// 5 ms.
    pub async fn wait_health(
        &self,
        name: &str,
        what: &str,
        bound: Duration,
        done: impl Fn(&[TargetHealth]) -> bool,
    ) {
        let deadline = Instant::now() + bound;
        loop {
            let now = self.health(name);
            if done(&now) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {bound:?}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Shuts it down and returns whether every connection finished within the grace.
    pub async fn shutdown(mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.done).await.unwrap_or(false)
    }
}

/// Builds `text` as a configuration and serves it on a free loopback port.
pub async fn start_gateway(text: String) -> Gateway {
    start_gateway_with(text, std::sync::Arc::new(proxy::dns::SystemResolver)).await
}

/// [`start_gateway`] with `resolver` for targets named by a host name.
pub async fn start_gateway_with(
    text: String,
    resolver: std::sync::Arc<dyn proxy::dns::Resolve>,
) -> Gateway {
    let source = Source {
        name: "test.toml".into(),
        text,
    };
    let config = source.parse().unwrap_or_else(|e| panic!("{e}"));
    let app = app::build::<ServedBody>(&config, &source).unwrap_or_else(|e| panic!("{e}"));
    let tls = gateway_bin::tls::build(&config, &source).unwrap_or_else(|e| panic!("{e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listeners = vec![serve::Listener::from(listener)];
    let mut tls_addr = None;
    if let Some(t) = &tls {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tls_addr = Some(tcp.local_addr().unwrap());
        listeners.push(serve::Listener {
            tcp,
            tls: Some(t.acceptor.clone()),
        });
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let mut limits = Limits::from(&config.server);
    if let (Some(c), Some(t)) = (&config.tls, &tls) {
        limits = limits.with_tls(c, t, tls_addr.map(|a| a.port()));
    }
    let upstreams = app.upstreams.clone();
    let admin = std::sync::Arc::new(gateway_bin::admin::Admin::new(&app));
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let admin_task = tokio::spawn(gateway_bin::admin::serve(
        admin_listener,
        std::sync::Arc::clone(&admin),
    ));
    admin.set_ready();
    let background = app.start_with(resolver);
    let done = tokio::spawn(serve::serve(
        gateway_bin::reload::LiveService::new(app.service),
        listeners,
        limits,
        std::sync::Arc::clone(&app.stats.connections),
        async {
            let _ = stopped.await;
        },
    ));
    Gateway {
        addr,
        stop: Some(stop),
        done,
        upstreams,
        background,
        admin_addr,
        admin,
        _admin_task: AbortOnDrop(admin_task),
        tls_addr,
        tls,
    }
}

pub struct Demo {
    pub gateway: Gateway,
    pub b1: fake_backend::Backend,
    pub b2: fake_backend::Backend,
}

pub async fn demo() -> Demo {
    let b1 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let b2 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let gateway = start_gateway(config(b1.addr(), b2.addr())).await;
    Demo { gateway, b1, b2 }
}

/// The fake backend's JSON answer.
pub fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.text()))
}

/// Sends `bytes` on a fresh connection followed by a `Connection: close` sentinel request,
/// and reads until the gateway closes (at most 10 s). Returns the status of every response
/// in order and the whole text.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes.to_vec();
    out.extend_from_slice(b"GET /sentinel HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n");
    // The gateway may answer and close before it has read it all.
    let _ = stream.write_all(&out).await;
    let (text, _) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

/// Reads until the peer closes (failing after `bound`); returns what came and when the close
/// came.
pub async fn read_to_close(stream: &mut TcpStream, bound: Duration) -> (String, Instant) {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after {bound:?}");
    (String::from_utf8_lossy(&text).into_owned(), Instant::now())
}

/// Starts the real `gateway` binary on `file` and returns it with the address it logged
/// (it listens on port 0: no port is reserved and released).
pub fn start_binary(file: &std::path::Path) -> (Guarded, SocketAddr) {
    let mut child = Guarded::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(file),
    )
    .unwrap();
    let line = child
        .wait_line("gateway listening", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no listening line: {}", child.output()));
    let addr = address_in(&line).unwrap_or_else(|| panic!("no address in {line}"));
    (child, addr)
}

/// A fresh directory under the system's temp dir for this test.
pub fn tempdir(name: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gateway-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Clients sending `GET path` over and over on keep-alive connections (a new one after a
/// failure), counting the answers by body, for at most 30 s or until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tally: std::sync::Arc<std::sync::Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Tally {
    ok: usize,
    bodies: std::collections::HashMap<String, usize>,
    failures: Vec<String>,
}

impl Load {
    /// Starts `workers` clients on `addr`.
    pub fn start(addr: SocketAddr, path: &'static str, workers: usize) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
        let workers = (0..workers)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut sender = testkit::client::h1(addr).await;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let req = get(path)
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap();
                        let result = testkit::client::send_h1(&mut sender, req).await;
                        let failed = {
                            let mut t = tally.lock().unwrap();
                            match result {
                                Ok(r) if r.status == http::StatusCode::OK => {
                                    t.ok += 1;
                                    *t.bodies.entry(r.text()).or_default() += 1;
                                    false
                                }
                                other => {
                                    t.failures.push(format!("{:?}", other.map(|r| r.status)));
                                    true
                                }
                            }
                        };
                        if failed {
                            sender = testkit::client::h1(addr).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            workers,
        }
    }

    /// Answers so far.
    pub fn ok(&self) -> usize {
        self.tally.lock().unwrap().ok
    }

    /// Answers so far whose body was `body`.
    pub fn count(&self, body: &str) -> usize {
        self.tally
            .lock()
            .unwrap()
            .bodies
            .get(body)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `done` holds (10 s at most; checked every 5 ms), failing with `what`.
    pub async fn until(&self, what: &str, done: impl Fn(&Load) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients; returns what failed.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        std::mem::take(&mut self.tally.lock().unwrap().failures)
    }
}
