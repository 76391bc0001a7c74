//! Child processes that never outlive their test: killed when the guard drops (also when the
//! test fails), with their output read line by line so a test can wait for what they print
//! (a listening address on port 0, instead of a port reserved and released).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running child; killed and reaped on drop.
#[derive(Debug)]
pub struct Guarded {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Guarded {
    /// Starts `cmd` with stdout and stderr captured (both merged into one line stream).
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Guarded> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Guarded {
            child: Some(child),
            lines,
            seen: Vec::new(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits (blocking, at most `bound`) for a line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str, bound: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    /// Every line read so far (after draining what is ready).
    pub fn output(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// Sends `signal` (e.g. `TERM`) with `kill`.
    pub fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits (blocking, at most `bound`) for the process to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first `127.0.0.1:PORT` (or `[::1]:PORT`) address in `line`.
pub fn address_in(line: &str) -> Option<std::net::SocketAddr> {
    line.split(|c: char| c.is_whitespace() || c == '=' || c == '"' || c == ',')
        .find_map(|w| w.parse().ok())
}
