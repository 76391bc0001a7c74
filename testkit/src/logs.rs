//! Log capture: installs (once per test binary) a `tracing` subscriber that keeps every line
//! in memory, so a test can look for the lines of its own request id.

use std::sync::{Mutex, OnceLock, PoisonError};

fn buffer() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Writer;

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        buffer()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing at `info` (idempotent; the first call in a binary wins).
pub fn capture() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(|| Writer)
            .try_init();
    });
}

/// Every captured line that contains `needle`.
pub fn lines_with(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&buffer().lock().unwrap_or_else(PoisonError::into_inner))
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}
