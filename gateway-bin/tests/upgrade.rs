//! Zero-downtime binary upgrade (Linux): SIGUSR2 to the real binary starts a new process on
//! the same listening sockets; the old one drains and exits once the new one serves. No
//! connection attempt is refused on the way; a new process that cannot start changes nothing.
#![cfg(target_os = "linux")]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{start_binary, tempdir};
use testkit::process::address_in;
use tokio::time::Instant;

/// Kills a process this test did not start itself (the upgrade's new one) when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn config(backend: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shutdown_grace_ms = 5000

[admin]
listen = "127.0.0.1:0"

[upstreams.b]
targets = ["http://{backend}"]

[[routes]]
path = "/api/*rest"
methods = ["GET"]
upstream = "b"
"#
    )
}

/// Clients that each make a new connection per request (every request a connection
/// attempt), until stopped: how many succeeded, and what failed.
struct Attempts {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Attempts {
    fn start(addr: SocketAddr, workers: usize) -> Attempts {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = testkit::client::fetch(addr, "/api/x").await;
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("{} {}", r.status, r.text()));
                        }
                    }
                    failures
                })
            })
            .collect();
        Attempts { stop, ok, tasks }
    }

    async fn until(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ok.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "{n} answers within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_sockets_to_a_new_process_without_refusing_a_connection() {
    let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("b"))
        .await
        .unwrap();
    let dir = tempdir("upgrade");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config(backend.addr())).unwrap();
    let (mut old, addr) = start_binary(&file);
    let admin_line = old
        .wait_line("admin listening", Duration::from_secs(20))
        .expect("admin line");
    let admin = address_in(&admin_line).expect("admin address");
    let old_pid = old.id();

    let attempts = Attempts::start(addr, 4);
    attempts.until(50).await;
    assert!(old.signal("USR2"));
    let line = old
        .wait_line("the new process serves", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no upgrade: {}", old.output()));
    let new_pid: u32 = line
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"));
    let _new = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    // The old process drains and exits cleanly; the load goes on meanwhile.
    let status = old
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the old process did not exit: {}", old.output()));
    assert!(status.success(), "{status}: {}", old.output());
    let served = attempts.ok.load(Ordering::Relaxed);
    attempts.until(served + 50).await;
    let failures = attempts.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..1]
    );

    // The new process serves the same addresses: traffic and admin.
    assert!(alive(new_pid));
    let stats = testkit::client::fetch(admin, "/stats.json").await;
    assert_eq!(stats.status, 200);
    assert!(
        stats.text().contains(&format!("\"pid\":{new_pid}")),
        "{}",
        stats.text()
    );
    assert_eq!(testkit::client::fetch(addr, "/api/y").await.status, 200);
}

#[tokio::test]
async fn a_new_process_that_cannot_start_changes_nothing() {
    let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("b"))
        .await
        .unwrap();
    let dir = tempdir("upgrade-fails");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config(backend.addr())).unwrap();
    let (mut old, addr) = start_binary(&file);
    // The new process reads the file again: a broken one stops it at start-up.
    std::fs::write(&file, "[server]\nlisten = 7\n").unwrap();
    assert!(old.signal("USR2"));
    old.wait_line("upgrade called off", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no refusal: {}", old.output()));
    assert!(
        old.wait_exit(Duration::from_millis(100)).is_none(),
        "still running"
    );
    assert_eq!(testkit::client::fetch(addr, "/api/x").await.status, 200);
}
