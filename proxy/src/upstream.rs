//! Upstreams: a named set of targets, a balancing algorithm, and the forwarding settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use balancer::{Algorithm, Balancer, BuildError, HealthPolicy};

use crate::headers::TrustedProxies;
use crate::metrics::UpstreamMetrics;
use crate::target::{TargetAddr, TargetError};

/// Forwarding settings of one upstream. Defaults: connect timeout 5 s, response timeout 60 s,
/// idle pooled connections kept 90 s (or less when the upstream announces a shorter
/// keep-alive), at most 64 idle per target, response heads up to 64 KiB, `Host` set to the
/// target, nobody trusted to set `X-Forwarded-*`, HTTP/1.1 (HTTP/2 connections pinged every
/// 30 s, dead after 10 s without an answer).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a TCP connect may take before the target counts as failed and the next is tried.
    pub connect_timeout: Duration,
    /// How long the upstream may stay silent: before its response head (then `504`), and
    /// between two reads of its response body (then the response is cut), as nginx's
    /// `proxy_read_timeout`.
    pub response_timeout: Duration,
    /// How long an idle keep-alive connection stays in the pool.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per target.
    pub pool_max_idle_per_target: usize,
    /// The largest response head accepted from the upstream (at least 8 KiB); a larger one is
    /// answered `502`.
    pub max_response_header_bytes: usize,
    /// Send the client's `Host` upstream instead of the target's authority.
    pub preserve_host: bool,
    /// Peers allowed to set `X-Forwarded-*` and `Forwarded`.
    pub trusted_proxies: TrustedProxies,
    /// How often targets named by a host name are resolved again (zero: only at start).
    pub resolve_interval: Duration,
    /// Active health checks, off unless set.
    pub health_check: Option<ActiveCheck>,
    /// How `https://` targets are reached (`None`: verified against the Mozilla roots, the
    /// target's name as SNI).
    pub tls: Option<Arc<crate::UpstreamTls>>,
    /// HTTP/1.1, HTTP/2, or whichever TLS agrees on.
    pub protocol: Protocol,
    /// How often an HTTP/2 connection is pinged (zero: never).
    pub h2_ping_interval: Duration,
    /// How long a ping's answer may take before the connection counts as dead and is closed.
    pub h2_ping_timeout: Duration,
    /// Whether each response carries an [`UpstreamTarget`](crate::UpstreamTarget) in its
    /// extensions, naming the target that answered (what an access log reads). On by
    /// default; off saves an allocation and a table per response where nothing reads it.
    pub tag_responses: bool,
}

/// The protocol spoken to an upstream's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1: a connection per request in flight, kept alive in the pool.
    #[default]
    Http1,
    /// HTTP/2: on `http://` targets with prior knowledge (h2c), on `https://` targets by ALPN
    /// `h2` (a server that does not agree fails the connect). Requests share connections,
    /// up to the server's stream limit each. WebSocket upgrades still go over HTTP/1.1.
    H2,
    /// Over TLS, ALPN offers `h2` and `http/1.1` and the server chooses; on `http://`
    /// targets, HTTP/1.1.
    Auto,
}

/// Active health checks: every `interval` (with 10 % jitter, so that many gateways do not
/// probe in step), each target is probed; `fall` failures in a row take it out and `rise`
/// successes in a row bring it back (HAProxy's semantics), whatever passive health says.
/// Probes run in their own task, never on the request path, at most 16 at a time.
#[derive(Debug, Clone)]
pub struct ActiveCheck {
    /// What a probe does.
    pub probe: Probe,
    /// Time between two rounds of probes.
    pub interval: Duration,
    /// A probe that takes longer has failed.
    pub timeout: Duration,
    /// Successes in a row that bring a target back.
    pub rise: u32,
    /// Failures in a row that take a target out.
    pub fall: u32,
}

/// What an active check does to a target.
#[derive(Debug, Clone)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// `GET path` on a new connection; a status in `expect` passes.
    Http {
        /// Path and query to ask for.
        path: http::uri::PathAndQuery,
        /// `Host` to send (default: the target's).
        host: Option<http::HeaderValue>,
        /// Statuses that pass (default `200..=399`).
        expect: std::ops::RangeInclusive<u16>,
    },
    /// The standard gRPC health check, `grpc.health.v1.Health/Check` over HTTP/2 on a new
    /// connection: passes when the answer is `SERVING`.
    Grpc {
        /// The service asked about (empty: the server as a whole).
        service: String,
    },
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_target: 64,
            max_response_header_bytes: 64 * 1024,
            preserve_host: false,
            trusted_proxies: TrustedProxies::none(),
            resolve_interval: Duration::from_secs(10),
            health_check: None,
            tls: None,
            protocol: Protocol::Http1,
            h2_ping_interval: Duration::from_secs(30),
            h2_ping_timeout: Duration::from_secs(10),
            tag_responses: true,
        }
    }
}

/// A named upstream: targets behind a balancing algorithm, with forwarding settings.
///
/// ```
/// use balancer::{Algorithm, HealthPolicy};
/// use proxy::{Settings, Upstream};
///
/// let api = Upstream::new(
///     "api",
///     Algorithm::RoundRobin,
///     [("http://127.0.0.1:9001", 1), ("http://127.0.0.1:9002", 1)],
///     HealthPolicy::default(),
///     Settings::default(),
/// )?;
/// assert_eq!(api.name(), "api");
/// # Ok::<_, proxy::UpstreamError>(())
/// ```
pub struct Upstream {
    name: Arc<str>,
    algorithm: Algorithm,
    balancer: Balancer<TargetAddr>,
    settings: Settings,
    /// The targets as configured, before any name was resolved.
    configured: Vec<(TargetAddr, u32)>,
    metrics: UpstreamMetrics,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("balancer", &self.balancer)
            .finish()
    }
}

/// Why an upstream could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// A target address is invalid.
    #[error("upstream `{upstream}`: {error}")]
    Target {
        /// The upstream's name.
        upstream: String,
        /// What is wrong with the target.
        error: TargetError,
    },
    /// The balancer refused the targets.
    #[error("upstream `{upstream}`: {error}")]
    Balancer {
        /// The upstream's name.
        upstream: String,
        /// What the balancer said.
        error: BuildError,
    },
    /// No targets.
    #[error("upstream `{0}` has no targets")]
    NoTargets(String),
}

impl Upstream {
    /// An upstream over `(url, weight)` targets.
    pub fn new<S: AsRef<str>>(
        name: &str,
        algorithm: Algorithm,
        targets: impl IntoIterator<Item = (S, u32)>,
        health: HealthPolicy,
        settings: Settings,
    ) -> Result<Self, UpstreamError> {
        let targets: Vec<(TargetAddr, u32)> = targets
            .into_iter()
            .map(|(url, w)| {
                url.as_ref()
                    .parse()
                    .map(|t| (t, w))
                    .map_err(|error| UpstreamError::Target {
                        upstream: name.to_owned(),
                        error,
                    })
            })
            .collect::<Result<_, _>>()?;
        if targets.is_empty() {
            return Err(UpstreamError::NoTargets(name.to_owned()));
        }
        let balancer =
            Balancer::new(algorithm, targets.iter().cloned(), health).map_err(|error| {
                UpstreamError::Balancer {
                    upstream: name.to_owned(),
                    error,
                }
            })?;
        Ok(Upstream {
            name: name.into(),
            algorithm,
            balancer,
            settings,
            configured: targets,
            metrics: UpstreamMetrics::default(),
        })
    }

    /// Whether `other` is defined the same way: name, targets and weights as configured,
    /// algorithm, health policy and forwarding settings (a CA bundle by its content). A
    /// configuration reload keeps an upstream that is (its pool, health and balancer
    /// position), and starts a changed one afresh.
    pub fn same_definition(&self, other: &Upstream) -> bool {
        self.name == other.name
            && self.configured == other.configured
            && self.algorithm == other.algorithm
            && format!("{:?}", self.balancer.policy()) == format!("{:?}", other.balancer.policy())
            && format!("{:?}", self.settings) == format!("{:?}", other.settings)
    }

    /// The upstream's name, as logs show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The balancer over the targets (for health pages, manual marks, replacing targets).
    pub fn balancer(&self) -> &Balancer<TargetAddr> {
        &self.balancer
    }

    /// The forwarding settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the proxy counted for this upstream (each target counts its own:
    /// [`TargetAddr::metrics`]).
    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The targets as configured, with their weights (names not resolved).
    pub fn configured_targets(&self) -> &[(TargetAddr, u32)] {
        &self.configured
    }
}
