//! The configuration file: TOML, every setting with a documented default, every value checked
//! as it is read, and errors that name the file, the line and the key.
//!
//! Durations are in milliseconds and at most 24 hours; timeouts are at least 1 ms.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod actions;
mod matching;
mod policies;
mod route;
mod source;
mod tls;
mod upstream;
pub mod values;

pub use actions::{
    HeadersConfig, RedirectConfig, RespondConfig, RewriteConfig, SplitConfig, StickyConfig,
};
pub use matching::MatchConfig;
pub use policies::{CompressConfig, CorsConfig, MirrorConfig, RateLimitConfig, RetryConfig};
pub use route::{AuthConfig, RouteConfig};
pub use source::{ConfigError, Source};
pub use tls::{CertificateConfig, Tls};
pub use upstream::{CheckKind, HealthCheckConfig, ProtocolConfig, TargetConfig, UpstreamConfig};

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
    /// The admin listener: metrics, health endpoints, dashboard.
    #[serde(default)]
    pub admin: Admin,
    /// HTTPS listeners (default none).
    #[serde(default)]
    pub tls: Option<Tls>,
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
    #[serde(deserialize_with = "values::listen")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Time a client has to send a request head (default 10 000 ms). On HTTP/1.1 the clock
    /// also runs while a keep-alive connection waits for its next request.
    #[serde(deserialize_with = "values::timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes in either direction for this long is closed gracefully: an
    /// HTTP/1.1 connection after its current response, HTTP/2 with `GOAWAY` once its streams
    /// end (default 60 000 ms). A connection that still moves no byte for a further
    /// `min(idle_timeout_ms, 5 s)` after that (a client that stopped reading, an HTTP/2
    /// client that never answers) is closed hard. A response whose upstream is silent for
    /// longer than this also counts as idle.
    #[serde(deserialize_with = "values::timeout_ms")]
    pub idle_timeout_ms: u64,
    /// An HTTP/1.1 keep-alive connection (plain, served by the gateway's own HTTP/1.1 server)
    /// that waits this long for its next request is parked: its task, its buffers and its
    /// registration with the runtime are let go, and it waits as a socket in one table until
    /// the client sends or closes, or its timeouts end it (default 1 000 ms; 0: never).
    #[serde(deserialize_with = "values::duration_ms")]
    pub idle_park_after_ms: u64,
    /// Largest request head, in bytes, 8 KiB to 1 MiB; larger gets `431` (default 65 536).
    #[serde(deserialize_with = "values::head_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body, in bytes; larger gets `413` (default 10 MiB; 0 means no limit).
    pub max_body_bytes: u64,
    /// Connections served at once, WebSocket tunnels included; more wait to be accepted
    /// (default 10 000).
    #[serde(deserialize_with = "values::count")]
    pub max_connections: usize,
    /// Connections the kernel holds completed for each listener until the gateway accepts
    /// them (default 4 096; Linux caps it at `net.core.somaxconn`). A burst larger than this
    /// while the threads are busy (TLS handshakes) has its extra SYNs dropped, and those
    /// clients try again a second later.
    #[serde(deserialize_with = "values::backlog")]
    pub listen_backlog: u32,
    /// How long in-flight requests may take to finish on shutdown (default 30 000 ms). If any
    /// are still running then, they are cut and the gateway exits with status 3.
    #[serde(deserialize_with = "values::duration_ms")]
    pub shutdown_grace_ms: u64,
    /// Threads serving requests (default 0: one per CPU core).
    #[serde(deserialize_with = "values::count_or_zero")]
    pub worker_threads: usize,
    /// HTTP/1.1 requests without a body (or with one of up to 16 KiB that came whole with the
    /// head) are served by the gateway's own HTTP/1.1 server, and a connection is handed to
    /// hyper at its first request that is anything else (default true). `false`: hyper serves
    /// every connection.
    pub inline_http1: bool,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 8080))],
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            idle_park_after_ms: 1_000,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            listen_backlog: 4_096,
            shutdown_grace_ms: 30_000,
            worker_threads: 0,
            inline_http1: true,
        }
    }
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
    /// `idle_park_after_ms` as a duration (`None`: never).
    pub fn idle_park_after(&self) -> Option<Duration> {
        (self.idle_park_after_ms > 0).then(|| Duration::from_millis(self.idle_park_after_ms))
    }
    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
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
    /// Count and time every request by route, method and status class, for `/metrics` and
    /// the dashboard.
    pub metrics: bool,
    /// W3C Trace Context: continue a valid inbound `traceparent` or start a trace, send the
    /// gateway's own span id upstream, and log the trace id.
    pub trace_context: bool,
    /// The share (0 to 1) of traces started at the gateway marked sampled (default 1); a
    /// continued trace keeps its caller's decision.
    #[serde(deserialize_with = "values::ratio")]
    pub trace_sample_ratio: f64,
}

impl Default for Pre {
    fn default() -> Self {
        Pre {
            request_id: true,
            recover: true,
            access_log: true,
            metrics: true,
            trace_context: true,
            trace_sample_ratio: 1.0,
        }
    }
}

/// `[admin]`: a listener of its own for operators, never for proxied traffic.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Where it listens (default: nowhere, no admin listener; the embedded demo configuration
    /// uses `127.0.0.1:9901`). Loopback unless you mean it: it shows internal addresses.
    #[serde(deserialize_with = "values::optional_listen")]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[index]`: a page at `GET /` listing the routes and the targets' health.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Index {
    /// Serve the index page on the traffic port (default false: it shows internal target
    /// addresses; the embedded demo configuration turns it on). A route of yours that
    /// matches `GET /` always wins over it.
    pub enabled: bool,
}

pub(crate) mod defaults {
    use toml::Spanned;

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
    pub fn max_response_header_bytes() -> usize {
        64 * 1024
    }
    pub fn max_fails() -> u32 {
        1
    }
    pub fn fail_timeout_ms() -> u64 {
        10_000
    }
    pub fn h2_ping_interval_ms() -> u64 {
        30_000
    }
    pub fn h2_ping_timeout_ms() -> u64 {
        10_000
    }
    pub fn resolve_interval_ms() -> u64 {
        10_000
    }
    pub fn check_path() -> Spanned<String> {
        Spanned::new(0..0, "/".to_owned())
    }
    pub fn expect_status() -> Spanned<String> {
        Spanned::new(0..0, "200-399".to_owned())
    }
    pub fn check_interval_ms() -> u64 {
        5_000
    }
    pub fn check_timeout_ms() -> u64 {
        1_000
    }
    pub fn rise() -> usize {
        2
    }
    pub fn fall() -> usize {
        3
    }
    pub fn methods() -> Spanned<Vec<Spanned<String>>> {
        Spanned::new(0..0, vec![Spanned::new(0..0, "GET".to_owned())])
    }
    pub fn yes() -> bool {
        true
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
        assert_eq!(c.routes.len(), 4);
        assert_eq!(c.upstreams.len(), 4);
        assert_eq!(c.server.listen[0].to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_connections, 10_000);
        assert!(c.pre.request_id && c.pre.recover && c.pre.access_log);
        assert!(c.index.enabled, "the demo shows its index page");
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
        let e = src("[[routes]]\npath = \"/x\"\nupstreams = \"a\"\n")
            .parse()
            .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("upstreams")),
            "{e}"
        );
        let e = src("this is not toml").parse().unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn values_out_of_range_are_refused_where_they_stand() {
        for (text, line, key) in [
            ("[server]\nidle_timeout_ms = 0\n", 2, "idle_timeout_ms"),
            (
                "[server]\nlisten = [\"127.0.0.1:1\", \"localhost\"]\n",
                2,
                "listen",
            ),
            (
                "[server]\n\nmax_header_bytes = 100\n",
                3,
                "max_header_bytes",
            ),
            (
                "[server]\nshutdown_grace_ms = 86400001\n",
                2,
                "shutdown_grace_ms",
            ),
            (
                "[upstreams.a]\ntargets = []\nfail_timeout_ms = 9223372036854775807\n",
                3,
                "fail_timeout_ms",
            ),
            (
                "[[routes]]\npath = \"/\"\nupstream = \"a\"\ntimeout_ms = 0\n",
                4,
                "timeout_ms",
            ),
        ] {
            let e = src(text).parse().unwrap_err();
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(line), Some(key)),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn windows_line_endings_and_non_ascii_text_keep_positions_right() {
        let text = "# caf\u{e9} \u{2603} config\r\n[server]\r\nlisten = [\"127.0.0.1:1\"]\r\n# \u{fc}ber\r\nmax_connections = \"many\"\r\n";
        let e = src(text).parse().unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(5), Some("max_connections")),
            "{e}"
        );
        // A position inside a multi-byte character never panics.
        let s = src("# \u{2603}\u{2603}\r\nx = 1\r\n");
        for at in 0..s.text.len() + 3 {
            let e = s.error(at..at, None, "m");
            assert!(e.line.is_some());
        }
    }
}
