//! `[upstreams.NAME]`: targets, balancing, timeouts, pooling, health.

use balancer::{Algorithm, AllDown};
use serde::Deserialize;
use toml::Spanned;

use super::{defaults, values};

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
        /// 1 to 1 000 000.
        weight: u32,
    },
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Balancing algorithm: `round-robin` (default), `weighted-ticket`, `smooth-weighted`,
    /// `least-request`.
    #[serde(default)]
    pub strategy: Algorithm,
    /// The targets.
    pub targets: Vec<Spanned<TargetConfig>>,
    /// TCP connect timeout (default 5 000 ms).
    #[serde(
        default = "defaults::connect_timeout_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub connect_timeout_ms: u64,
    /// How long the upstream may stay silent: before its response head (then `504`), and
    /// between two reads of its body (then the response is cut) (default 60 000 ms).
    #[serde(
        default = "defaults::response_timeout_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub response_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this, or sooner when the upstream
    /// announces a shorter `Keep-Alive: timeout` (default 90 000 ms).
    #[serde(
        default = "defaults::pool_idle_timeout_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub pool_idle_timeout_ms: u64,
    /// Idle connections kept per target (default 64; 0 keeps none).
    #[serde(
        default = "defaults::pool_max_idle_per_target",
        deserialize_with = "values::count_or_zero"
    )]
    pub pool_max_idle_per_target: usize,
    /// The largest response head accepted from a target, 8 KiB to 1 MiB; larger gets `502`
    /// (default 65 536).
    #[serde(
        default = "defaults::max_response_header_bytes",
        deserialize_with = "values::head_bytes"
    )]
    pub max_response_header_bytes: usize,
    /// Send the client's `Host` upstream (default false: the target's).
    #[serde(default)]
    pub preserve_host: bool,
    /// Networks allowed to set `X-Forwarded-*` (default none).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Failures within `fail_timeout_ms` that take a target out (default 1; 0 disables). The
    /// only target of an upstream is never taken out this way.
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u32,
    /// The failure window and the time out (default 10 000 ms).
    #[serde(
        default = "defaults::fail_timeout_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub fail_timeout_ms: u64,
    /// When every target is out: `reset` (default: forget their passive failures and try
    /// them, as nginx), `panic` (try them all anyway, as Envoy), `fail-fast` (`503` at once,
    /// untried).
    #[serde(default)]
    pub all_down: AllDown,
    /// A target that comes back (its penalty over, its checks passing again, or added by
    /// DNS) ramps from a tenth of its share to all of it over this long (default 0: at once).
    #[serde(default, deserialize_with = "values::duration_ms")]
    pub slow_start_ms: u64,
    /// Targets named by a host name (`http://api.internal:8080`) are resolved to all their
    /// addresses, one target each, at start and again this often (default 10 000 ms; 0: only
    /// at start). A name that stops resolving keeps its last addresses.
    #[serde(
        default = "defaults::resolve_interval_ms",
        deserialize_with = "values::duration_ms"
    )]
    pub resolve_interval_ms: u64,
    /// Active health checks (default: none).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// For `https://` targets: a PEM bundle of the CAs to trust instead of the Mozilla roots
    /// (relative paths are from the configuration file's directory).
    #[serde(default)]
    pub tls_ca_file: Option<Spanned<String>>,
    /// For `https://` targets: the name sent as SNI and verified in their certificates,
    /// instead of each target's host.
    #[serde(default)]
    pub tls_server_name: Option<Spanned<String>>,
    /// For `https://` targets: accept any certificate. Anyone in the path can then read and
    /// change the traffic; a warning says so at start-up and in `--check`.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// `http1` (default), `h2` (HTTP/2: prior knowledge on `http://` targets, ALPN `h2` on
    /// `https://` ones; gRPC needs it) or `auto` (over TLS the server chooses by ALPN; plain
    /// targets get HTTP/1.1).
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// How often an HTTP/2 connection is pinged, to find one that went silent (default
    /// 30 000 ms; 0: never).
    #[serde(
        default = "defaults::h2_ping_interval_ms",
        deserialize_with = "values::duration_ms"
    )]
    pub h2_ping_interval_ms: u64,
    /// How long the answer to a ping may take before the connection is closed as dead
    /// (default 10 000 ms).
    #[serde(
        default = "defaults::h2_ping_timeout_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub h2_ping_timeout_ms: u64,
}

/// `protocol`: what the gateway speaks to the upstream's targets.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolConfig {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2.
    H2,
    /// Whichever TLS agrees on; HTTP/1.1 on plain targets.
    Auto,
}

/// `[upstreams.NAME.health_check]`: probe every target every `interval_ms`; `fall` failures
/// in a row take it out, `rise` successes in a row bring it back, whatever passive health
/// says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (default): `GET path`, passing on a status in `expect_status`; `tcp`: a connect;
    /// `grpc`: the standard `grpc.health.v1.Health/Check` over HTTP/2, passing on `SERVING`.
    #[serde(default)]
    pub kind: CheckKind,
    /// For `kind = "grpc"`: the service asked about (default `""`: the server as a whole).
    #[serde(default)]
    pub grpc_service: String,
    /// The path (and query) to ask for (default `/`).
    #[serde(default = "defaults::check_path")]
    pub path: Spanned<String>,
    /// `Host` to send (default: the target's `host:port`).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Statuses that pass, `"200"` or a range `"200-399"` (default `"200-399"`).
    #[serde(default = "defaults::expect_status")]
    pub expect_status: Spanned<String>,
    /// Time between two probes of a target (default 5 000 ms; 10 % jitter).
    #[serde(
        default = "defaults::check_interval_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub interval_ms: u64,
    /// A probe that takes longer has failed (default 1 000 ms).
    #[serde(
        default = "defaults::check_timeout_ms",
        deserialize_with = "values::timeout_ms"
    )]
    pub timeout_ms: u64,
    /// Passing probes in a row that bring a target back (default 2).
    #[serde(default = "defaults::rise", deserialize_with = "values::count")]
    pub rise: usize,
    /// Failing probes in a row that take a target out (default 3).
    #[serde(default = "defaults::fall", deserialize_with = "values::count")]
    pub fall: usize,
}

/// What an active check does.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// `GET path`.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// `grpc.health.v1.Health/Check`.
    Grpc,
}
