//! A route's `matches = [...]`: conditions on headers and query parameters.

use serde::Deserialize;

/// One condition: on `header` or `query` (exactly one), tested with `exact`, `prefix` or
/// `regex` (at most one; none: the header or parameter must be present), optionally
/// inverted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// A request header's name.
    #[serde(default)]
    pub header: Option<String>,
    /// A query parameter's name (its value is percent-decoded before the test).
    #[serde(default)]
    pub query: Option<String>,
    /// The value equals this, byte for byte.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The value matches this regex somewhere (anchor with `^...$`; `regex` crate syntax).
    #[serde(default)]
    pub regex: Option<String>,
    /// Holds when the test fails (or the header is absent).
    #[serde(default)]
    pub invert: bool,
}
