//! `[upstreams.*]` into proxies: targets parsed, health policy and forwarding settings set.

use std::collections::BTreeMap;
use std::time::Duration;

use balancer::HealthPolicy;
use http::HeaderValue;
use http::uri::PathAndQuery;
use proxy::headers::TrustedProxies;
use proxy::{ActiveCheck, Probe, Protocol, Proxy, Settings, TargetAddr, Upstream, UpstreamTls};

use super::GatewayBody;
use crate::config::{
    CheckKind, Config, ConfigError, HealthCheckConfig, ProtocolConfig, Source, TargetConfig,
    UpstreamConfig,
};

/// Every upstream of `config`, by name; one defined as in `previous` (a reload) is the same
/// running upstream, its pool, health and balancer position kept; a changed one takes over
/// the state and connections of the targets that stay.
pub(super) fn build<B: GatewayBody>(
    config: &Config,
    source: &Source,
    previous: &[(String, Proxy<B>)],
) -> Result<BTreeMap<String, Proxy<B>>, ConfigError> {
    let mut proxies = BTreeMap::new();
    for (name, up) in &config.upstreams {
        // Responses name their target only for the access log, the one reader.
        let mut proxy = one(name, up, source, config.pre.access_log)?;
        if let Some((_, running)) = previous.iter().find(|(n, _)| n == name) {
            if running.upstream().same_definition(proxy.upstream()) {
                proxy = running.clone();
            } else {
                // Changed: what still applies to the targets that stay is carried over.
                proxy.take_over(running);
            }
        }
        proxies.insert(name.clone(), proxy);
    }
    Ok(proxies)
}

/// The upstream `name` as `spanned` defines it; its responses name the target that answered
/// when `tag_responses`.
pub(super) fn one<B: GatewayBody>(
    name: &str,
    spanned: &toml::Spanned<UpstreamConfig>,
    source: &Source,
    tag_responses: bool,
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
    let health_check = up
        .health_check
        .as_ref()
        .map(|c| active_check(c, source))
        .transpose()?;
    let tls = upstream_tls(up, source)?;
    let settings = Settings {
        tls,
        resolve_interval: Duration::from_millis(up.resolve_interval_ms),
        health_check,
        connect_timeout: Duration::from_millis(up.connect_timeout_ms),
        response_timeout: Duration::from_millis(up.response_timeout_ms),
        pool_idle_timeout: Duration::from_millis(up.pool_idle_timeout_ms),
        pool_max_idle_per_target: up.pool_max_idle_per_target,
        max_response_header_bytes: up.max_response_header_bytes,
        preserve_host: up.preserve_host,
        trusted_proxies: trusted,
        protocol: match up.protocol {
            ProtocolConfig::Http1 => Protocol::Http1,
            ProtocolConfig::H2 => Protocol::H2,
            ProtocolConfig::Auto => Protocol::Auto,
        },
        h2_ping_interval: Duration::from_millis(up.h2_ping_interval_ms),
        h2_ping_timeout: Duration::from_millis(up.h2_ping_timeout_ms),
        tag_responses,
    };
    let upstream = Upstream::new(name, up.strategy, targets, health, settings)
        .map_err(|e| source.error(span, Some("targets"), e.to_string()))?;
    Ok(Proxy::new(upstream))
}

/// TLS to the upstream's `https://` targets, when its settings differ from the default (the
/// Mozilla roots and each target's own name).
fn upstream_tls(
    up: &UpstreamConfig,
    source: &Source,
) -> Result<Option<std::sync::Arc<UpstreamTls>>, ConfigError> {
    if up.tls_ca_file.is_none() && up.tls_server_name.is_none() && !up.tls_insecure_skip_verify {
        return Ok(None);
    }
    let ca = match &up.tls_ca_file {
        None => None,
        Some(file) => {
            let path = source.resolve(file.get_ref());
            let pem = std::fs::read(&path).map_err(|e| {
                source.error(
                    file.span(),
                    Some("tls_ca_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some((file, pem))
        }
    };
    if let Some(n) = &up.tls_server_name {
        rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).map_err(|_| {
            source.error(
                n.span(),
                Some("tls_server_name"),
                format!("`{}` is not a DNS name or an IP address", n.get_ref()),
            )
        })?;
    }
    let name = up.tls_server_name.as_ref().map(|n| n.get_ref().as_str());
    UpstreamTls::new(
        ca.as_ref().map(|(_, pem)| pem.as_slice()),
        name,
        up.tls_insecure_skip_verify,
    )
    .map(|t| Some(std::sync::Arc::new(t)))
    .map_err(|message| {
        let span = ca.as_ref().map_or(0..0, |(file, _)| file.span());
        source.error(span, Some("tls_ca_file"), message)
    })
}

fn active_check(c: &HealthCheckConfig, source: &Source) -> Result<ActiveCheck, ConfigError> {
    let probe = match c.kind {
        CheckKind::Tcp => Probe::Tcp,
        CheckKind::Grpc => Probe::Grpc {
            service: c.grpc_service.clone(),
        },
        CheckKind::Http => {
            let path_text = c.path.get_ref();
            let path = path_text
                .starts_with('/')
                .then(|| path_text.parse::<PathAndQuery>().ok())
                .flatten()
                .ok_or_else(|| {
                    source.error(
                        c.path.span(),
                        Some("path"),
                        format!("`{path_text}` is not a path like /healthz"),
                    )
                })?;
            let host = c
                .host
                .as_ref()
                .map(|h| {
                    HeaderValue::from_str(h.get_ref()).map_err(|_| {
                        source.error(h.span(), Some("host"), "not a valid Host header value")
                    })
                })
                .transpose()?;
            let expect = parse_status_range(c.expect_status.get_ref()).ok_or_else(|| {
                source.error(
                    c.expect_status.span(),
                    Some("expect_status"),
                    format!(
                        "`{}` is not a status or a range like \"200-399\" (100-599)",
                        c.expect_status.get_ref()
                    ),
                )
            })?;
            Probe::Http { path, host, expect }
        }
    };
    Ok(ActiveCheck {
        probe,
        interval: Duration::from_millis(c.interval_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        rise: u32::try_from(c.rise).unwrap_or(u32::MAX),
        fall: u32::try_from(c.fall).unwrap_or(u32::MAX),
    })
}

/// `"200"` or `"200-399"`, within 100-599.
fn parse_status_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
        None => {
            let one = text.trim().parse().ok()?;
            (one, one)
        }
    };
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200"), Some(200..=200));
        assert_eq!(parse_status_range("200-399"), Some(200..=399));
        assert_eq!(parse_status_range(" 204 - 204 "), Some(204..=204));
        for bad in ["", "2xx", "399-200", "0-700", "200-", "abc"] {
            assert_eq!(parse_status_range(bad), None, "{bad}");
        }
    }
}
