//! Zero-downtime binary upgrade, and listening sockets handed in from outside (Linux).
//!
//! On SIGUSR2 (as nginx's binary upgrade) the running gateway starts the binary now at its
//! own path with the same arguments, handing it its listening sockets (the plain, HTTPS and
//! admin ones) by inheritance, with the systemd socket-activation protocol (`LISTEN_FDS`,
//! descriptors from 3 on). The new process adopts them instead of binding (the same sockets,
//! so the same accept queues: no connection attempt is refused or reset on the way), builds
//! its configuration, starts serving, and says so on a pipe. Only then does the old process
//! stop accepting and drain its connections within `shutdown_grace_ms`, and exit. A new
//! process that fails (a bad configuration, a crash, no word within 30 s) changes nothing:
//! the old one keeps serving and logs why.
//!
//! The same adoption serves systemd socket activation: a `gateway.socket` unit that listens
//! on the configured addresses passes them in `LISTEN_FDS`, and `systemctl restart` then
//! refuses no connection either (the socket stays open in systemd meanwhile).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

/// The environment variable that names the descriptor a new process says "ready" on.
const READY_FD: &str = "GATEWAY_UPGRADE_READY_FD";

/// How long a new process may take to be ready before the upgrade is called off.
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// Listening sockets this process was given (an upgrade's, or systemd's), to be adopted by
/// address instead of binding.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl Inherited {
    /// What `LISTEN_FDS` hands this process (nothing when unset). TCP listeners only; any
    /// other descriptor is left alone and logged.
    pub fn from_env() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for i in 0..fds.len() {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => match l.local_addr() {
                    Ok(at) => sockets.push((at, l)),
                    Err(error) => tracing::warn!(%error, "an inherited socket has no address"),
                },
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "an inherited descriptor is not a TCP listener")
                }
            }
        }
        if !sockets.is_empty() {
            tracing::info!(count = sockets.len(), "listening sockets inherited");
        }
        Inherited { sockets }
    }

    /// The inherited socket for `at`: the one bound there, or, when `at`'s port is 0, the
    /// first one on its address.
    pub fn take(&mut self, at: SocketAddr) -> Option<std::io::Result<tokio::net::TcpListener>> {
        let i = self
            .sockets
            .iter()
            .position(|(a, _)| *a == at)
            .or_else(|| {
                (at.port() == 0)
                    .then(|| self.sockets.iter().position(|(a, _)| a.ip() == at.ip()))
                    .flatten()
            })?;
        let (_, socket) = self.sockets.remove(i);
        Some(
            socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(socket)),
        )
    }

    /// Inherited sockets no listener of the configuration took (closed as they drop).
    pub fn unused(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }
}

/// This process's listening sockets, to hand to a new binary.
#[derive(Debug, Default)]
pub struct Handover {
    sockets: Vec<(SocketAddr, OwnedFd)>,
}

impl Handover {
    /// Keeps a duplicate of `listener` to hand over.
    pub fn add(&mut self, listener: &tokio::net::TcpListener) -> std::io::Result<()> {
        let at = listener.local_addr()?;
        self.sockets
            .push((at, listener.as_fd().try_clone_to_owned()?));
        Ok(())
    }

    /// Starts this binary again with the same arguments and the sockets, and waits until it
    /// says it serves (at most `wait`): its process id, or why the upgrade did not happen.
    pub async fn start_successor(&self, wait: Duration) -> Result<u32, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let (reader, writer) =
            std::io::pipe().map_err(|e| format!("cannot make the ready pipe: {e}"))?;
        let mut mappings = Vec::with_capacity(self.sockets.len() + 1);
        for (i, (_, fd)) in self.sockets.iter().enumerate() {
            let fd = fd
                .try_clone()
                .map_err(|e| format!("cannot duplicate a listening socket: {e}"))?;
            mappings.push(FdMapping {
                parent_fd: fd,
                child_fd: 3 + i32::try_from(i).unwrap_or(i32::MAX - 4),
            });
        }
        let ready_fd = 3 + i32::try_from(self.sockets.len()).unwrap_or(i32::MAX - 4);
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(writer),
            child_fd: ready_fd,
        });
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env("LISTEN_FDS", self.sockets.len().to_string())
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env(READY_FD, ready_fd.to_string());
        cmd.fd_mappings(mappings)
            .map_err(|e| format!("cannot hand the sockets over: {e}"))?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        // The parent's copy of the pipe's write end goes with the command: the read below
        // ends when the new process writes, or exits without writing.
        drop(cmd);
        let pid = child.id();
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(reader).read_line(&mut line);
            line
        });
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(line)) if line.trim() == "ready" => {
                // Reaped by whoever outlives it; it runs on after this process exits.
                std::thread::spawn(move || child.wait());
                Ok(pid)
            }
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "the new process (pid {pid}) exited before it served: {status}"
                ))
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "the new process (pid {pid}) did not serve within {} s; stopped it",
                    wait.as_secs()
                ))
            }
        }
    }
}

/// Tells the process that started this one (an upgrade) that it serves now; nothing when
/// this process was not started by an upgrade.
pub fn announce_ready() {
    let Ok(fd) = std::env::var(READY_FD) else {
        return;
    };
    // The descriptor by its /proc name: no raw descriptor is taken over by hand.
    let path = format!("/proc/self/fd/{fd}");
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(mut pipe) => {
            if let Err(error) = pipe.write_all(b"ready\n") {
                tracing::warn!(%error, "could not tell the old process that this one serves");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "could not tell the old process that this one serves")
        }
    }
}

/// Starts a successor on every signal `usr2` receives (SIGUSR2, made at start-up so that an
/// early one does not kill the process) until one serves; then `done` fires (this process
/// stops accepting and drains).
pub async fn on_usr2(
    handover: Handover,
    done: tokio::sync::oneshot::Sender<u32>,
    usr2: Option<tokio::signal::unix::Signal>,
) {
    let Some(mut usr2) = usr2 else {
        tracing::warn!("cannot listen for SIGUSR2: binary upgrades are off");
        return;
    };
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: starting the new binary with the listening sockets");
        match handover.start_successor(READY_WAIT).await {
            Ok(pid) => {
                tracing::info!(
                    pid,
                    "the new process serves; this one stops accepting and drains"
                );
                let _ = done.send(pid);
                return;
            }
            Err(error) => {
                tracing::error!(%error, "upgrade called off; this process keeps serving");
            }
        }
    }
}
