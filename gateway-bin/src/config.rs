//! The configuration file: TOML, every setting with a documented default, and errors that name
//! the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The embedded default configuration: the demo topology.
pub const DEFAULT: &str = include_str!("default.toml");

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    #[serde(default)]
    pub server: Server,
    /// Middleware that runs for every request, before routing.
    #[serde(default)]
    pub pre: Pre,
    /// The index page at `GET /`.
    #[serde(default)]
    pub index: Index,
    /// Upstreams by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    /// Routes, in order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Addresses to listen on (default `["127.0.0.1:8080"]`).
    pub listen: Vec<Spanned<String>>,
    /// Time a client has to send a request head (default 10 000 ms). On HTTP/1.1 the clock
    /// also runs while a keep-alive connection waits for its next request.
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes in either direction for this long is closed gracefully: an
    /// HTTP/1.1 connection after its current response, HTTP/2 with `GOAWAY` once its streams
    /// end (default 60 000 ms).
    pub idle_timeout_ms: u64,
    /// Largest request head, in bytes; larger gets `431` (default 65 536).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes; larger gets `413` (default 10 MiB; 0 means no limit).
    pub max_body_bytes: u64,
    /// Connections served at once; more wait to be accepted (default 10 000).
    pub max_connections: usize,
    /// How long in-flight requests may take to finish on shutdown (default 30 000 ms).
    pub shutdown_grace_ms: u64,
    /// Threads serving requests (default 0: one per CPU core).
    pub worker_threads: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec![Spanned::new(0..0, "127.0.0.1:8080".to_owned())],
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            shutdown_grace_ms: 30_000,
            worker_threads: 0,
        }
    }
}

/// `[pre]`: each on by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pre {
    /// Accept or assign `X-Request-Id`.
    pub request_id: bool,
    /// Turn panics into `500`s.
    pub recover: bool,
    /// One log event per request.
    pub access_log: bool,
}

impl Default for Pre {
    fn default() -> Self {
        Pre {
            request_id: true,
            recover: true,
            access_log: true,
        }
    }
}

/// `[index]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Index {
    /// Serve the index page at `GET /` (default true).
    pub enabled: bool,
}

impl Default for Index {
    fn default() -> Self {
        Index { enabled: true }
    }
}

/// A balancing strategy's name in the file.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// `round-robin` (default).
    #[default]
    RoundRobin,
    /// `weighted-ticket`.
    WeightedTicket,
    /// `smooth-weighted`.
    SmoothWeighted,
    /// `least-request`.
    LeastRequest,
}

/// What to do when every target is down.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// `fail-fast` (default): `502` at once.
    #[default]
    FailFast,
    /// `panic`: use every target anyway.
    Panic,
}

/// A target: `"http://host:port"` or `{ url = "...", weight = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetConfig {
    /// Weight 1.
    Url(String),
    /// With a weight.
    Weighted {
        /// `http://host:port`.
        url: String,
        /// At least 1.
        weight: u32,
    },
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Balancing strategy (default `round-robin`).
    #[serde(default)]
    pub strategy: Strategy,
    /// The targets.
    pub targets: Vec<Spanned<TargetConfig>>,
    /// TCP connect timeout (default 5 000 ms).
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time for the upstream's response head, then `504` (default 60 000 ms).
    #[serde(default = "defaults::response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this (default 90 000 ms).
    #[serde(default = "defaults::pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Idle connections kept per target (default 64).
    #[serde(default = "defaults::pool_max_idle_per_target")]
    pub pool_max_idle_per_target: usize,
    /// Send the client's `Host` upstream (default false: the target's).
    #[serde(default)]
    pub preserve_host: bool,
    /// Networks allowed to set `X-Forwarded-*` (default none).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Failures within `fail_timeout_ms` that take a target out (default 1; 0 disables).
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u32,
    /// The failure window and the time out (default 10 000 ms).
    #[serde(default = "defaults::fail_timeout_ms")]
    pub fail_timeout_ms: u64,
    /// When every target is down (default `fail-fast`).
    #[serde(default)]
    pub all_down: AllDown,
}

mod defaults {
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn response_timeout_ms() -> u64 {
        60_000
    }
    pub fn pool_idle_timeout_ms() -> u64 {
        90_000
    }
    pub fn pool_max_idle_per_target() -> usize {
        64
    }
    pub fn max_fails() -> u32 {
        1
    }
    pub fn fail_timeout_ms() -> u64 {
        10_000
    }
    pub fn methods() -> Vec<toml::Spanned<String>> {
        vec![toml::Spanned::new(0..0, "GET".to_owned())]
    }
    pub fn yes() -> bool {
        true
    }
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The pattern: static text, `:name`, a final `*name`.
    pub path: Spanned<String>,
    /// Methods (default `["GET"]`; `"*"` for any).
    #[serde(default = "defaults::methods")]
    pub methods: Vec<Spanned<String>>,
    /// The upstream's name.
    pub upstream: Spanned<String>,
    /// Forward only the catch-all suffix (`/static/x.png` -> `/x.png`) when the route has one
    /// (default true); false forwards the full path.
    #[serde(default = "defaults::yes")]
    pub strip_prefix: bool,
    /// A deadline for the whole exchange, then `503` (default none: only the upstream's
    /// own timeouts).
    #[serde(default)]
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

impl Server {
    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// A configuration error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key concerned, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration's text and where it came from, for error positions.
#[derive(Debug, Clone)]
pub struct Source {
    /// File name shown in errors.
    pub name: String,
    /// The TOML text.
    pub text: String,
}

impl Source {
    /// An error at byte range `span` (line and key taken from the text there).
    pub fn error(
        &self,
        span: Range<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        let at = span.start.min(self.text.len());
        let line = Some(self.text[..at].matches('\n').count() + 1);
        let key = key.map(str::to_owned).or_else(|| {
            let start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_text = self.text[start..].lines().next().unwrap_or_default();
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim().to_owned())
                .filter(|k| !k.is_empty() && !k.starts_with('['))
        });
        ConfigError {
            file: self.name.clone(),
            line,
            key,
            message: message.into(),
        }
    }

    /// Parses the text.
    pub fn parse(&self) -> Result<Config, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let key = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            let span = e.span().unwrap_or(0..0);
            self.error(span, key.as_deref(), message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source {
            name: "gw.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn the_default_parses() {
        let c = src(DEFAULT).parse().unwrap();
        assert_eq!(c.routes.len(), 3);
        assert_eq!(c.upstreams.len(), 3);
        assert_eq!(c.server.listen[0].get_ref(), "127.0.0.1:8080");
        assert_eq!(c.server.max_connections, 10_000);
        assert!(c.pre.request_id && c.pre.recover && c.pre.access_log);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = src("[server]\nlisten = [\"127.0.0.1:1\"]\nmax_connections = \"many\"\n")
            .parse()
            .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_deref()),
            ("gw.toml", Some(3), Some("max_connections")),
            "{e}"
        );
        let e = src("[server]\nlisten = []\n\n[pre]\nrequest_idd = true\n")
            .parse()
            .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(5), Some("request_idd")),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("gw.toml:5: `request_idd`: unknown field"),
            "{e}"
        );
        let e = src("[[routes]]\npath = \"/x\"\n").parse().unwrap_err();
        assert!(e.message.contains("upstream"), "{e}");
        let e = src("this is not toml").parse().unwrap_err();
        assert_eq!(e.line, Some(1));
    }
}
