//! Child processes and what the tasks look at from outside: start them (killed when the
//! task ends, fails or is interrupted), wait until they answer, read `/proc`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes killed when dropped: SIGTERM first, so that a master process (nginx) takes its
/// workers down with it, then SIGKILL for whatever still runs after two seconds.
#[derive(Default)]
pub struct Processes(Vec<(String, Child)>);

impl Processes {
    /// Starts `cmd` as `name` (output discarded); returns its pid.
    pub fn start(&mut self, name: &str, cmd: &mut Command) -> Result<u32, String> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start {name}: {e}"))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Starts `cmd` as `name` with its output shown.
    pub fn start_visible(&mut self, name: &str, cmd: &mut Command) -> Result<u32, String> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {name}: {e}"))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Waits up to `bound` for the process `name` to exit; its exit code (None: by a signal).
    pub fn wait(&mut self, name: &str, bound: Duration) -> Result<Option<i32>, String> {
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

    /// An error naming the first process that has exited, if any.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (name, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status})"));
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
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

/// A port free on 127.0.0.1 now, for a program that cannot listen on port 0 and say where
/// (nginx, HAProxy, Caddy). Only the tasks use this; tests listen on port 0.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A program on the PATH (or in the sbin directories).
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Waits until something answers HTTP on 127.0.0.1:`port` (15 s at most), failing early if
/// one of `procs` exits.
pub fn wait_for(port: u16, what: &str, procs: &mut Processes) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !crate::client::answers(port) {
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

/// A numeric field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`, `Threads:`), without its unit.
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of a process and its direct children (nginx's workers), in KiB.
pub fn rss_with_children(pid: u32) -> Option<u64> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: u64 = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter_map(|c| proc_status(c, "VmRSS:"))
        .sum();
    Some(proc_status(pid, "VmRSS:")? + kids)
}

/// User and system CPU time of a process so far, in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of a process and its direct children (nginx's workers), in clock ticks.
pub fn cpu_ticks_with_children(pid: u32) -> Option<u64> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: u64 = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter_map(cpu_ticks)
        .sum();
    Some(cpu_ticks(pid)? + kids)
}

/// Fills `{{key}}` placeholders of a config template; every placeholder must be given.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = template.to_owned();
    for (key, value) in values {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    match out.find("{{") {
        Some(at) => Err(format!(
            "template placeholder left unfilled: {}",
            &out[at..out.len().min(at + 30)]
        )),
        None => Ok(out),
    }
}
