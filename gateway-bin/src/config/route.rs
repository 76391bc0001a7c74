//! `[[routes]]`: what is matched, where it goes, and the gate in front.

use serde::Deserialize;
use toml::Spanned;

use super::{defaults, values};

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The pattern: static text, `:name`, a final `*name`. It must be in normalized form
    /// (requests are normalized before routing: no `.` or `..` segments, no escaped unreserved
    /// characters, upper-case escapes), or it could never match.
    pub path: Spanned<String>,
    /// Methods (default `["GET"]`; `"*"` for any). Standard methods only, unless also listed
    /// in `extension_methods`.
    #[serde(default = "defaults::methods")]
    pub methods: Spanned<Vec<Spanned<String>>>,
    /// Methods outside RFC 9110 that this route accepts (`PURGE`, `PROPFIND`...), listed in
    /// `methods` too. Guards against typos such as `GETT` being taken as a method.
    #[serde(default)]
    pub extension_methods: Vec<String>,
    /// The upstream's name.
    pub upstream: Spanned<String>,
    /// Forward only the catch-all suffix (`/static/x.png` -> `/x.png`) when the route has one
    /// (default true); false forwards the full path.
    #[serde(default = "defaults::yes")]
    pub strip_prefix: bool,
    /// A deadline for the whole exchange, then `503` (default none: only the upstream's
    /// own timeouts).
    #[serde(default, deserialize_with = "values::optional_timeout_ms")]
    pub timeout_ms: Option<u64>,
    /// An auth gate (default none).
    #[serde(default)]
    pub auth: Option<Spanned<AuthConfig>>,
}

/// A route's `auth = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The header that must carry a secret (e.g. `X-Admin-Token`).
    #[serde(default)]
    pub header: Option<String>,
    /// Require `Authorization: Bearer <secret>` instead.
    #[serde(default)]
    pub bearer: bool,
    /// The secrets, inline (keep them out of files in production).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// An environment variable holding the secrets, comma-separated.
    #[serde(default)]
    pub secrets_env: Option<String>,
}
