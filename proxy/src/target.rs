//! Target addresses: `http://host:port` or `https://host:port`, parsed once at start-up.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderValue;
use http::uri::{Authority, Scheme};

use crate::metrics::TargetMetrics;

/// A target address, `http://host:port`, parsed once at start-up. A target named by a host
/// name is resolved by its upstream into one target per address ([`resolved`](Self::resolved)),
/// which connects to the address and still sends the name in `Host`.
///
/// A target carries its [`TargetMetrics`]: a request finds the series of the target it was
/// sent to without looking them up. Two targets are equal when they are the same address
/// (whatever their counts).
///
/// Shared: a pick, a pooled connection and a response body each hold the target, and a
/// clone is one count.
#[derive(Debug, Clone)]
pub struct TargetAddr(Arc<Addr>);

/// What a [`TargetAddr`] shares.
#[derive(Debug)]
struct Addr {
    /// What to connect to: `ip:port`, or `name:port` until the name is resolved.
    connect: Authority,
    /// `Host` for requests to this target (the configured `host:port`), made once here rather
    /// than per request.
    host: HeaderValue,
    /// `http://host:port`, or `http://name:port (ip)` for a resolved one: the display and the
    /// connection pool's key.
    text: Arc<str>,
    /// Whether the configured host is a name (not an IP literal).
    named: bool,
    /// Reached over TLS (`https://`).
    tls: bool,
    metrics: TargetMetrics,
}

impl PartialEq for TargetAddr {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        a.text == b.text && a.connect == b.connect && a.host == b.host
    }
}

impl Eq for TargetAddr {}

impl TargetAddr {
    /// What the target connects to: `host:port`, or `ip:port` once resolved.
    pub fn authority(&self) -> &Authority {
        &self.0.connect
    }

    /// The `Host` header value for this target (its configured authority).
    pub fn host_header(&self) -> &HeaderValue {
        &self.0.host
    }

    /// The target as shown and as the pool knows it.
    pub(crate) fn key(&self) -> &Arc<str> {
        &self.0.text
    }

    /// What the proxy counted for this target.
    pub fn metrics(&self) -> &TargetMetrics {
        &self.0.metrics
    }

    /// The scheme used to reach the target.
    pub fn scheme(&self) -> Scheme {
        if self.0.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// Whether the target is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.0.tls
    }

    /// The configured host, without port or brackets: the name TLS asks for and verifies.
    pub fn host_name(&self) -> &str {
        let host = self.0.host.to_str().unwrap_or_default();
        let host = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The host name to resolve, when the target was configured by name and not resolved yet.
    pub fn name_to_resolve(&self) -> Option<(&str, u16)> {
        let a = &*self.0;
        if !a.named || a.connect.as_str() != a.host.to_str().unwrap_or_default() {
            return None;
        }
        Some((a.connect.host(), a.connect.port_u16()?))
    }

    /// The same target reached at `ip`: it connects there and keeps its name in `Host`.
    pub fn resolved(&self, ip: IpAddr) -> TargetAddr {
        let a = &*self.0;
        let port = a.connect.port_u16().unwrap_or(80);
        let addr = SocketAddr::new(ip, port);
        let connect =
            Authority::try_from(addr.to_string().as_str()).unwrap_or_else(|_| a.connect.clone());
        TargetAddr(Arc::new(Addr {
            text: format!(
                "{}://{} ({})",
                self.scheme(),
                a.host.to_str().unwrap_or_default(),
                ip
            )
            .into(),
            connect,
            host: a.host.clone(),
            named: a.named,
            tls: a.tls,
            metrics: TargetMetrics::default(),
        }))
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

/// Why a target address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not of the form `http://host:port` or `https://host:port`.
    #[error("`{0}` is not a target URL of the form http://host:port or https://host:port")]
    Malformed(String),
    /// A scheme other than `http` or `https`.
    #[error("`{0}`: a target is http:// or https://")]
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
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(TargetError::Scheme(s.to_owned())),
            None => return Err(TargetError::Malformed(s.to_owned())),
        };
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
        let bare = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(TargetAddr(Arc::new(Addr {
            text: format!("{}://{authority}", if tls { "https" } else { "http" }).into(),
            host,
            named: bare.parse::<IpAddr>().is_err(),
            connect: authority,
            tls,
            metrics: TargetMetrics::default(),
        })))
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
        let s: TargetAddr = "https://api.example.com:8443".parse().unwrap();
        assert!(s.is_tls());
        assert_eq!(s.host_name(), "api.example.com");
        assert_eq!(s.to_string(), "https://api.example.com:8443");
        let at = s.resolved("10.0.0.9".parse().unwrap());
        assert!(at.is_tls());
        assert_eq!(at.to_string(), "https://api.example.com:8443 (10.0.0.9)");
        let v6: TargetAddr = "https://[::1]:8443".parse().unwrap();
        assert_eq!(v6.host_name(), "::1");
        assert!(matches!(
            "ftp://x:1".parse::<TargetAddr>(),
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

    #[test]
    fn named_targets_resolve_to_addresses_and_keep_their_host() {
        let ip: TargetAddr = "http://127.0.0.1:9001".parse().unwrap();
        assert_eq!(ip.name_to_resolve(), None);
        let v6: TargetAddr = "http://[::1]:9001".parse().unwrap();
        assert_eq!(v6.name_to_resolve(), None);
        let named: TargetAddr = "http://api.internal:8080".parse().unwrap();
        assert_eq!(named.name_to_resolve(), Some(("api.internal", 8080)));
        let at = named.resolved("10.0.0.7".parse().unwrap());
        assert_eq!(at.authority().as_str(), "10.0.0.7:8080");
        assert_eq!(at.host_header(), "api.internal:8080");
        assert_eq!(at.to_string(), "http://api.internal:8080 (10.0.0.7)");
        assert_eq!(at.name_to_resolve(), None, "resolved already");
        let at6 = named.resolved("fd00::7".parse().unwrap());
        assert_eq!(at6.authority().as_str(), "[fd00::7]:8080");
    }
}
