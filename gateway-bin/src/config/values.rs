//! Values checked while the file is read (`deserialize_with`), so an out-of-range setting is
//! refused with its own position, never found later by searching the text.

use serde::de::{Deserialize, Deserializer, Error};

/// The longest duration any setting takes: 24 hours, in milliseconds. Beyond it a value is
/// a typo, and arithmetic on times stays far from overflowing.
pub const MAX_MS: u64 = 24 * 60 * 60 * 1000;

fn in_range<'de, D: Deserializer<'de>>(
    d: D,
    min: u64,
    max: u64,
    what: &str,
) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v < min || v > max {
        return Err(D::Error::custom(format!(
            "{v} is out of range: {what} must be between {min} and {max}"
        )));
    }
    Ok(v)
}

/// A timeout in milliseconds, 1 ms to 24 h.
pub fn timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 1, MAX_MS, "a timeout (ms)")
}

/// A duration in milliseconds where 0 means "none", up to 24 h.
pub fn duration_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 0, MAX_MS, "a duration (ms)")
}

/// An optional timeout in milliseconds, 1 ms to 24 h when given.
pub fn optional_timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    timeout_ms(d).map(Some)
}

/// A size in bytes of a request or response head: 8 KiB (hyper's smallest buffer) to 1 MiB.
pub fn head_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 8192, 1 << 20, "a head size (bytes)").map(|v| v as usize)
}

/// A count of at least one, at most `u32::MAX`.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 1, u64::from(u32::MAX), "a count").map(|v| v as usize)
}

/// A listening socket's backlog: 1 to 65 535.
pub fn backlog<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 1, 65_535, "a backlog").map(|v| v as u32)
}

/// A count that may be zero, at most `u32::MAX`.
pub fn count_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 0, u64::from(u32::MAX), "a count").map(|v| v as usize)
}

/// Listening addresses: `IP:port` each.
pub fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            text.parse().map_err(|_| {
                D::Error::custom(format!(
                    "`{text}` is not an address like 127.0.0.1:8080 or [::1]:8080"
                ))
            })
        })
        .collect()
}

/// One listening address, `IP:port`.
pub fn optional_listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        D::Error::custom(format!(
            "`{text}` is not an address like 127.0.0.1:9901 or [::1]:9901"
        ))
    })
}

/// A ratio from 0 to 1.
pub fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(D::Error::custom(format!(
            "{v} is out of range: a ratio must be between 0 and 1"
        )));
    }
    Ok(v)
}
