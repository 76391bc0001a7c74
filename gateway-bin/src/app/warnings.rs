//! What `--check` and start-up warn about: configurations that are valid but probably not
//! what was meant.

use std::collections::{BTreeMap, BTreeSet};

use proxy::Proxy;

use super::routes::RouteRow;

/// A gated route whose targets an ungated route also reaches: the gate can be walked around
/// (`/admin/*` gated to `:9002`, `/api/*` open over `:9001` and `:9002`, and a prefix strip
/// that makes `/api/admin/x` arrive as `/admin/x`). One warning per pair, naming both routes.
pub(super) fn gate_bypasses<B>(
    routes: &[RouteRow],
    proxies: &BTreeMap<String, Proxy<B>>,
) -> Vec<String> {
    // Every target the route's upstreams (one, or a split's) reach.
    let targets = |upstreams: &[String]| -> BTreeSet<String> {
        upstreams
            .iter()
            .filter_map(|u| proxies.get(u))
            .flat_map(|p| {
                p.upstream()
                    .balancer()
                    .targets()
                    .iter()
                    .map(|t| t.value().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut warnings = Vec::new();
    for gated in routes.iter().filter(|r| r.gated) {
        let guarded = targets(&gated.upstreams);
        for open in routes.iter().filter(|r| !r.gated) {
            let shared: Vec<String> = guarded
                .intersection(&targets(&open.upstreams))
                .cloned()
                .collect();
            if shared.is_empty() {
                continue;
            }
            warnings.push(format!(
                "route `{}` is behind an auth gate, but its target{} {} {} also reachable without it through route `{}` (upstream `{}`): the gate can be walked around",
                gated.path,
                if shared.len() == 1 { "" } else { "s" },
                shared.join(", "),
                if shared.len() == 1 { "is" } else { "are" },
                open.path,
                open.upstreams.join("`, `")
            ));
        }
    }
    warnings
}

/// Upstreams whose `https://` targets go unverified.
pub(super) fn insecure_upstreams(config: &crate::config::Config) -> Vec<String> {
    config
        .upstreams
        .iter()
        .filter(|(_, up)| up.get_ref().tls_insecure_skip_verify)
        .map(|(name, _)| {
            format!(
                "upstream `{name}` has tls_insecure_skip_verify = true: its certificates are not verified, so anyone in the path can read and change its traffic"
            )
        })
        .collect()
}
