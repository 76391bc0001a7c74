//! [`TrustedProxies`]: the networks whose peers may set `X-Forwarded-*` and `Forwarded`.

use std::net::IpAddr;

use ipnet::IpNet;

/// Networks whose peers may set `X-Forwarded-*` and `Forwarded` (load balancers in front of
/// the gateway). Empty by default: nobody is trusted. An IPv4 peer seen through a dual-stack
/// socket (`::ffff:10.0.0.1`) is matched as the IPv4 address it is.
///
/// ```
/// use proxy::headers::TrustedProxies;
///
/// let t = TrustedProxies::parse(["10.0.0.0/8", "::1"]).unwrap();
/// assert!(t.contains("10.1.2.3".parse().unwrap()));
/// assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(!t.contains("192.0.2.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts nobody.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses networks like `10.0.0.0/8`, `127.0.0.1` or `::1/128`.
    pub fn parse<S: AsRef<str>>(
        networks: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidNetwork> {
        networks
            .into_iter()
            .map(|net| {
                let net = net.as_ref();
                net.parse::<IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidNetwork(net.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `peer` is inside one of the networks.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }
}

/// A trusted-proxy network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or network (like 10.0.0.0/8)")]
pub struct InvalidNetwork(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let t =
            TrustedProxies::parse(["10.0.0.0/8", "192.168.1.1", "fd00::/8", "0.0.0.0/0"]).unwrap();
        assert!(t.contains("10.255.0.1".parse().unwrap()));
        assert!(
            t.contains("::ffff:10.0.0.1".parse().unwrap()),
            "v4-mapped v6"
        );
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::1/129"] {
            assert!(TrustedProxies::parse([bad]).is_err(), "{bad}");
        }
    }
}
