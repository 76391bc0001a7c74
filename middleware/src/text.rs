//! Text for log lines.

use std::fmt::Write as _;

/// Control characters (a log-injection vector) written as `\n`, `\u{1b}`, ...
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
