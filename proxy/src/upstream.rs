//! Upstreams: a named set of targets, a balancing strategy, and the forwarding settings.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use balancer::{Balancer, BuildError, HealthPolicy, Kind};
use http::HeaderValue;
use http::uri::{Authority, Scheme};

use crate::headers::TrustedProxies;

/// A target address, `http://host:port`, parsed once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAddr {
    authority: Authority,
    /// `Host` for requests to this target, made once here rather than per request.
    host: HeaderValue,
    text: Arc<str>,
}

impl TargetAddr {
    /// `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header value for this target (its authority).
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }

    /// The target as written (`http://host:port`), shared: the connection pool's key.
    pub(crate) fn key(&self) -> &Arc<str> {
        &self.text
    }

    /// The scheme used to reach the target (plain HTTP).
    pub fn scheme(&self) -> Scheme {
        Scheme::HTTP
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a target address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not of the form `http://host:port`.
    #[error("`{0}` is not a target URL of the form http://host:port")]
    Malformed(String),
    /// A scheme other than `http` (TLS to upstreams is not supported yet).
    #[error("`{0}`: only http:// targets are supported")]
    Scheme(String),
    /// A path, query or user info after the authority.
    #[error("`{0}`: a target is scheme and authority only, without path or query")]
    Extra(String),
}

impl FromStr for TargetAddr {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        let uri: http::Uri = s
            .parse()
            .map_err(|_| TargetError::Malformed(s.to_owned()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(TargetError::Scheme(s.to_owned())),
            None => return Err(TargetError::Malformed(s.to_owned())),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| TargetError::Malformed(s.to_owned()))?;
        if authority.as_str().contains('@') || uri.path_and_query().is_some_and(|pq| pq != "/") {
            return Err(TargetError::Extra(s.to_owned()));
        }
        if authority.port_u16().is_none() {
            return Err(TargetError::Malformed(s.to_owned()));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| TargetError::Malformed(s.to_owned()))?;
        Ok(TargetAddr {
            text: format!("http://{authority}").into(),
            host,
            authority,
        })
    }
}

/// Forwarding settings of one upstream. Defaults: connect timeout 5 s, response-head timeout
/// 60 s (then `504`), idle pooled connections kept 90 s, at most 64 idle per target, `Host`
/// set to the target, nobody trusted to set `X-Forwarded-*`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a TCP connect may take before the target counts as failed and the next is tried.
    pub connect_timeout: Duration,
    /// How long the upstream may take to send its response head (`504` after that).
    pub response_timeout: Duration,
    /// How long an idle keep-alive connection stays in the pool.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per target.
    pub pool_max_idle_per_target: usize,
    /// Send the client's `Host` upstream instead of the target's authority.
    pub preserve_host: bool,
    /// Peers allowed to set `X-Forwarded-*` and `Forwarded`.
    pub trusted_proxies: TrustedProxies,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_target: 64,
            preserve_host: false,
            trusted_proxies: TrustedProxies::none(),
        }
    }
}

/// A named upstream: targets behind a balancing strategy, with forwarding settings.
///
/// ```
/// use balancer::{HealthPolicy, Kind};
/// use proxy::{Settings, Upstream};
///
/// let api = Upstream::new(
///     "api",
///     Kind::RoundRobin,
///     [("http://127.0.0.1:9001", 1), ("http://127.0.0.1:9002", 1)],
///     HealthPolicy::default(),
///     Settings::default(),
/// )?;
/// assert_eq!(api.name(), "api");
/// # Ok::<_, proxy::UpstreamError>(())
/// ```
pub struct Upstream {
    name: Arc<str>,
    balancer: Balancer<TargetAddr>,
    settings: Settings,
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
        kind: Kind,
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
            Balancer::new(kind, targets, health).map_err(|error| UpstreamError::Balancer {
                upstream: name.to_owned(),
                error,
            })?;
        Ok(Upstream {
            name: name.into(),
            balancer,
            settings,
        })
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

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_strictly() {
        let t: TargetAddr = "http://127.0.0.1:9001".parse().unwrap();
        assert_eq!(t.authority().as_str(), "127.0.0.1:9001");
        assert_eq!(t.to_string(), "http://127.0.0.1:9001");
        assert!("http://127.0.0.1:9001/".parse::<TargetAddr>().is_ok());
        assert!(matches!(
            "https://x:1".parse::<TargetAddr>(),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            "http://x:1/api".parse::<TargetAddr>(),
            Err(TargetError::Extra(_))
        ));
        assert!(matches!(
            "http://u@x:1".parse::<TargetAddr>(),
            Err(TargetError::Extra(_))
        ));
        for bad in ["127.0.0.1:9001", "http://", "http://host", "nope nope"] {
            assert!(bad.parse::<TargetAddr>().is_err(), "{bad}");
        }
    }
}
