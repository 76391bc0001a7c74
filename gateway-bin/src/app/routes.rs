//! `[[routes]]` into the router: methods and pattern checked, the route's stack (auth gate,
//! deadline, path rewrite, proxy) assembled once, and a row for the route table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use middleware::{AuthLayer, RequestMetrics, RouteMetricsLayer, Secrets, TimeoutLayer};
use proxy::Proxy;
use router::{IntoRoute, Mux, PathParams, Route};
use tower::Layer;
use tower::util::MapRequestLayer;

use super::GatewayBody;
use crate::config::{AuthConfig, Config, ConfigError, RouteConfig, Source};
use crate::stats::Stats;
use telemetry::Counter;

/// One row of the route table (`gateway --check`, the index page).
#[derive(Debug, Clone)]
pub struct RouteRow {
    /// Methods, comma-separated (`*` for any).
    pub methods: String,
    /// The pattern.
    pub path: String,
    /// The upstream's name.
    pub upstream: String,
    /// What the route adds: `auth`, `timeout 5000 ms`, `full path`.
    pub notes: String,
    /// Whether an auth gate guards it.
    pub gated: bool,
}

impl RouteRow {
    /// Whether this route takes `GET /`.
    pub fn answers_get_root(&self) -> bool {
        let takes_get = self.methods == "*" || self.methods.split(',').any(|m| m == "GET");
        let mut tree = router::Router::new();
        takes_get && tree.insert(&self.path, ()).is_ok() && tree.at("/").is_ok()
    }
}

/// The methods RFC 9110 defines, plus `PATCH` (RFC 5789).
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Registers every route of `routes` in `mux`; returns the route table.
pub(super) fn build<B: GatewayBody>(
    config: &Config,
    proxies: &BTreeMap<String, Proxy<B>>,
    mux: &mut Mux<B>,
    stats: &mut Stats,
    source: &Source,
) -> Result<Vec<RouteRow>, ConfigError> {
    let mut rows = Vec::new();
    for route in &config.routes {
        let series = config
            .pre
            .metrics
            .then(|| stats.route(route.path.get_ref()));
        let counters = Counters {
            series,
            auth_denied: Arc::clone(&stats.auth_denied),
            deadlines: Arc::clone(&stats.deadlines),
        };
        rows.push(one(route, proxies, mux, &counters, source)?);
    }
    Ok(rows)
}

/// Where a route's stack counts.
struct Counters {
    /// The route's request series (`None` with metrics off).
    series: Option<Arc<RequestMetrics>>,
    auth_denied: Arc<Counter>,
    deadlines: Arc<Counter>,
}

fn one<B: GatewayBody>(
    route: &RouteConfig,
    proxies: &BTreeMap<String, Proxy<B>>,
    mux: &mut Mux<B>,
    counters: &Counters,
    source: &Source,
) -> Result<RouteRow, ConfigError> {
    let pattern = route.path.get_ref();
    check_pattern(pattern)
        .map_err(|message| source.error(route.path.span(), Some("path"), message))?;
    let upstream_name = route.upstream.get_ref();
    let Some(proxy) = proxies.get(upstream_name) else {
        return Err(source.error(
            route.upstream.span(),
            Some("upstream"),
            format!(
                "no upstream named `{upstream_name}` (known: {})",
                proxies.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let methods = methods(route, source)?;
    let auth = route
        .auth
        .as_ref()
        .map(|a| auth_layer(a, source))
        .transpose()?
        .map(|a| a.count_denials(Arc::clone(&counters.auth_denied)));

    // The stack, in the order a request meets it: the route's metrics series named (so that
    // every request of the route counts in it, refused ones included), the gate (which
    // refuses before anything else runs), the deadline, the path the upstream sees, the
    // proxy. Built inside out.
    let mut service: Route<B> = forward_path(route, pattern)
        .layer(proxy.clone())
        .into_route();
    if let Some(ms) = route.timeout_ms {
        service = TimeoutLayer::new(Duration::from_millis(ms))
            .count_expired(Arc::clone(&counters.deadlines))
            .layer(service)
            .into_route();
    }
    if let Some(auth) = auth {
        service = auth.layer(service).into_route();
    }
    if let Some(series) = &counters.series {
        service = RouteMetricsLayer::new(Arc::clone(series))
            .layer(service)
            .into_route();
    }
    let registered = match &methods {
        None => mux.any(pattern, service).map(|_| ()),
        Some(list) => mux.route(list.clone(), pattern, service).map(|_| ()),
    };
    registered.map_err(|e| source.error(route.path.span(), Some("path"), e.to_string()))?;

    let mut notes = Vec::new();
    if route.auth.is_some() {
        notes.push("auth".to_owned());
    }
    if let Some(ms) = route.timeout_ms {
        notes.push(format!("timeout {ms} ms"));
    }
    if !route.strip_prefix && catch_all_name(pattern).is_some() {
        notes.push("full path".to_owned());
    }
    Ok(RouteRow {
        methods: match &methods {
            None => "*".to_owned(),
            Some(list) => list
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
        },
        path: pattern.clone(),
        upstream: upstream_name.clone(),
        notes: notes.join(", "),
        gated: route.auth.is_some(),
    })
}

/// A pattern must be in the form requests are normalized to, or it could never match.
fn check_pattern(pattern: &str) -> Result<(), String> {
    match router::normalize_path(pattern) {
        Ok(normal) if normal == pattern => Ok(()),
        Ok(normal) => Err(format!(
            "`{pattern}` can never match: request paths are normalized before routing, so this one arrives as `{normal}`; write that instead"
        )),
        Err(why) => Err(format!(
            "`{pattern}` can never match: a request with this path is refused ({why})"
        )),
    }
}

/// The route's methods: `None` for any (`"*"`). Standard methods in any case; others only
/// when also listed in `extension_methods`.
fn methods(route: &RouteConfig, source: &Source) -> Result<Option<Vec<Method>>, ConfigError> {
    let listed = route.methods.get_ref();
    if listed.is_empty() {
        return Err(source.error(
            route.methods.span(),
            Some("methods"),
            "an empty list routes nothing: give at least one method, or \"*\" for any",
        ));
    }
    let mut methods = Vec::new();
    for m in listed {
        let text = m.get_ref().trim();
        if text == "*" {
            if listed.len() > 1 {
                return Err(source.error(
                    m.span(),
                    Some("methods"),
                    "\"*\" means every method: list it alone",
                ));
            }
            return Ok(None);
        }
        let upper = text.to_ascii_uppercase();
        let name = if STANDARD_METHODS.contains(&upper.as_str()) {
            upper
        } else if route.extension_methods.iter().any(|e| e == text) {
            text.to_owned()
        } else {
            return Err(source.error(
                m.span(),
                Some("methods"),
                format!(
                    "`{text}` is not a standard HTTP method; if this route really takes it, list it in `extension_methods` too"
                ),
            ));
        };
        let method = Method::from_bytes(name.as_bytes()).map_err(|_| {
            source.error(
                m.span(),
                Some("methods"),
                format!("`{text}` is not an HTTP method token"),
            )
        })?;
        methods.push(method);
    }
    Ok(Some(methods))
}

/// The name of a pattern's catch-all, if it ends in one.
pub(super) fn catch_all_name(pattern: &str) -> Option<&str> {
    pattern.rsplit('/').next()?.strip_prefix('*')
}

/// With `strip_prefix` and a catch-all, the upstream sees only the catch-all's suffix as its
/// path (`/static/*path` forwards `/static/css/app.css` as `/css/app.css`); the query stays.
fn forward_path<B>(
    route: &RouteConfig,
    pattern: &str,
) -> MapRequestLayer<impl Fn(Request<B>) -> Request<B> + Clone + use<B>> {
    let name: Option<Arc<str>> = route
        .strip_prefix
        .then(|| catch_all_name(pattern))
        .flatten()
        .map(Arc::from);
    MapRequestLayer::new(move |mut req: Request<B>| {
        if let Some(name) = &name {
            let suffix = req
                .extensions()
                .get::<PathParams>()
                .and_then(|p| p.get(name))
                .map(str::to_owned);
            if let Some(suffix) = suffix {
                // The suffix is a tail of a valid path: it is valid too.
                let _ = router::set_path(&mut req, &suffix);
            }
        }
        req
    })
}

fn auth_layer(a: &toml::Spanned<AuthConfig>, source: &Source) -> Result<AuthLayer, ConfigError> {
    let span = a.span();
    let a = a.get_ref();
    let secrets = match (&a.secrets_env, a.secrets.is_empty()) {
        (Some(var), true) => Secrets::from_env(var),
        (None, false) => Secrets::new(&a.secrets),
        (Some(_), false) => {
            return Err(source.error(
                span,
                Some("auth"),
                "give `secrets` or `secrets_env`, not both",
            ));
        }
        (None, true) => {
            return Err(source.error(
                span,
                Some("auth"),
                "an auth gate needs `secrets` or `secrets_env`",
            ));
        }
    }
    .map_err(|e| source.error(span.clone(), Some("auth"), e.to_string()))?;
    match (&a.header, a.bearer) {
        (Some(h), false) => AuthLayer::header(h, secrets)
            .map_err(|e| source.error(span, Some("auth.header"), e.to_string())),
        (None, true) => Ok(AuthLayer::bearer(secrets)),
        _ => Err(source.error(
            span,
            Some("auth"),
            "give exactly one of `header = \"...\"` or `bearer = true`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_cannot_match_a_normalized_path_are_refused() {
        for ok in ["/api/*path", "/users/:id", "/", "/a%2Fb", "/files/x.tar.gz"] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/%7Euser", "/a%2fb", "/a/./b", "/a/../b", "/x/%2e", "/../up", "/a%00",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
