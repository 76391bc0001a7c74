//! Target addresses: `http://host:port`, parsed once at start-up.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderValue;
use http::uri::{Authority, Scheme};

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
