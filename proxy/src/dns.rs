//! Targets named by a host name: a task per upstream resolves each name to all its addresses,
//! at start and every `resolve_interval`, and swaps the target set atomically when the
//! addresses change. Addresses that stay keep their state; new ones join (ramping up under
//! slow start); removed ones finish their requests and keep no connections. A name that stops
//! resolving keeps its last addresses, with a warning. Until the first resolution, a named
//! target connects by name.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::outgoing::Outgoing;
use crate::pool::Pool;
use crate::target::TargetAddr;
use crate::upstream::Upstream;

/// The addresses of a host name, as a boxed future.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Looks up the addresses of a host name: the system's resolver by default, or anything else
/// (a test's table, a service registry).
pub trait Resolve: Send + Sync + 'static {
    /// Every address of `host` (`port` is for resolvers that want it).
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Keeps `upstream`'s named targets resolved until the upstream is gone (after the first
/// resolution only, when `interval` is zero).
pub(crate) async fn run<B: Send + 'static>(
    upstream: Weak<Upstream>,
    pool: Pool<Outgoing<B>>,
    resolver: Arc<dyn Resolve>,
    interval: Duration,
) {
    loop {
        let Some(up) = upstream.upgrade() else {
            return;
        };
        refresh(&up, &pool, &*resolver).await;
        drop(up);
        if interval.is_zero() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

async fn refresh<B: Send + 'static>(
    up: &Upstream,
    pool: &Pool<Outgoing<B>>,
    resolver: &dyn Resolve,
) {
    let current: Vec<(TargetAddr, u32)> = up
        .balancer()
        .targets()
        .iter()
        .map(|t| (t.value().clone(), t.weight()))
        .collect();
    let mut next: Vec<(TargetAddr, u32)> = Vec::new();
    for (target, weight) in up.configured_targets() {
        let Some((name, port)) = target.name_to_resolve() else {
            next.push((target.clone(), *weight));
            continue;
        };
        match resolver.resolve(name, port).await {
            Ok(mut ips) if !ips.is_empty() => {
                ips.sort();
                ips.dedup();
                // An address already in the set stays as it is, its counts with it.
                next.extend(ips.into_iter().map(|ip| {
                    let at = target.resolved(ip);
                    let kept = current
                        .iter()
                        .find(|(c, _)| *c == at)
                        .map(|(c, _)| c.clone());
                    (kept.unwrap_or(at), *weight)
                }));
            }
            outcome => {
                let why = match outcome {
                    Err(e) => e.to_string(),
                    Ok(_) => "no addresses".to_owned(),
                };
                tracing::warn!(
                    upstream = %up.name(),
                    name,
                    error = %why,
                    "target name does not resolve; keeping its last addresses"
                );
                next.extend(
                    current
                        .iter()
                        .filter(|(t, _)| t.host_header() == target.host_header())
                        .cloned(),
                );
            }
        }
    }
    let same = next.len() == current.len() && next.iter().all(|n| current.contains(n));
    if same || next.is_empty() {
        return;
    }
    let added: Vec<String> = next
        .iter()
        .filter(|n| !current.contains(n))
        .map(|(t, _)| t.to_string())
        .collect();
    let removed: Vec<String> = current
        .iter()
        .filter(|c| !next.contains(c))
        .map(|(t, _)| t.to_string())
        .collect();
    if let Err(error) = up.balancer().replace(next.iter().cloned()) {
        tracing::warn!(upstream = %up.name(), %error, "resolved targets refused");
        return;
    }
    pool.retain_targets(|key| next.iter().any(|(t, _)| &**t.key() == key));
    tracing::info!(
        upstream = %up.name(),
        added = ?added,
        removed = ?removed,
        "target addresses changed"
    );
}
