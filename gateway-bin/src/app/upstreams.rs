//! `[upstreams.*]` into proxies: targets parsed, health policy and forwarding settings set.

use std::collections::BTreeMap;
use std::time::Duration;

use balancer::HealthPolicy;
use proxy::headers::TrustedProxies;
use proxy::{Proxy, Settings, TargetAddr, Upstream};

use super::GatewayBody;
use crate::config::{Config, ConfigError, Source, TargetConfig, UpstreamConfig};

/// Every upstream of `config`, by name.
pub(super) fn build<B: GatewayBody>(
    config: &Config,
    source: &Source,
) -> Result<BTreeMap<String, Proxy<B>>, ConfigError> {
    let mut proxies = BTreeMap::new();
    for (name, up) in &config.upstreams {
        let proxy = one(name, up, source)?;
        proxies.insert(name.clone(), proxy);
    }
    Ok(proxies)
}

fn one<B: GatewayBody>(
    name: &str,
    spanned: &toml::Spanned<UpstreamConfig>,
    source: &Source,
) -> Result<Proxy<B>, ConfigError> {
    let span = spanned.span();
    let up = spanned.get_ref();
    let trusted = TrustedProxies::parse(&up.trusted_proxies)
        .map_err(|e| source.error(span.clone(), Some("trusted_proxies"), e.to_string()))?;
    if up.targets.is_empty() {
        return Err(source.error(
            span,
            Some("targets"),
            format!("upstream `{name}` has no targets"),
        ));
    }
    let mut targets = Vec::new();
    for t in &up.targets {
        let (url, weight) = match t.get_ref() {
            TargetConfig::Url(u) => (u.clone(), 1),
            TargetConfig::Weighted { url, weight } => (url.clone(), *weight),
        };
        if !(1..=1_000_000).contains(&weight) {
            return Err(source.error(
                t.span(),
                Some("weight"),
                format!("{weight} is out of range: a weight must be between 1 and 1000000"),
            ));
        }
        if let Err(e) = url.parse::<TargetAddr>() {
            return Err(source.error(t.span(), Some("targets"), e.to_string()));
        }
        targets.push((url, weight));
    }
    let health = HealthPolicy::default()
        .with_max_fails(up.max_fails)
        .with_fail_timeout(Duration::from_millis(up.fail_timeout_ms))
        .with_all_down(up.all_down)
        .with_slow_start(Duration::from_millis(up.slow_start_ms));
    let settings = Settings {
        connect_timeout: Duration::from_millis(up.connect_timeout_ms),
        response_timeout: Duration::from_millis(up.response_timeout_ms),
        pool_idle_timeout: Duration::from_millis(up.pool_idle_timeout_ms),
        pool_max_idle_per_target: up.pool_max_idle_per_target,
        max_response_header_bytes: up.max_response_header_bytes,
        preserve_host: up.preserve_host,
        trusted_proxies: trusted,
    };
    let upstream = Upstream::new(name, up.strategy, targets, health, settings)
        .map_err(|e| source.error(span, Some("targets"), e.to_string()))?;
    Ok(Proxy::new(upstream))
}
