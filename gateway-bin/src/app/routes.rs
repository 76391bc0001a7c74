//! `[[routes]]` into the router: methods, pattern, hosts and conditions checked, the route's
//! stack assembled once, and a row for the route table. What goes into the stack is built in
//! `actions.rs` (the target), `edits.rs` (path and headers), `policies.rs` (rate limit,
//! compression, CORS) and `forwarding.rs` (retries, mirroring); this file puts it in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use middleware::{AuthLayer, RequestMetrics, RouteMetricsLayer, Secrets, TimeoutLayer};
use proxy::Proxy;
use router::{IntoRoute, Mux, Route};
use tower::Layer;

use super::{GatewayBody, actions, edits, forwarding, matching, policies};
use crate::config::{AuthConfig, Config, ConfigError, RouteConfig, Source};
use crate::stats::Stats;
use telemetry::Counter;

/// One row of the route table (`gateway --check`, the index page).
#[derive(Debug, Clone)]
pub struct RouteRow {
    /// Host names, comma-separated (`*` for the default: any host no route names).
    pub hosts: String,
    /// Methods, comma-separated (`*` for any).
    pub methods: String,
    /// The pattern, and its conditions if any (as shown).
    pub path: String,
    /// The pattern alone.
    pub pattern: String,
    /// Whether it answers only some requests at its path: for named hosts, or when its
    /// `matches` hold.
    pub conditional: bool,
    /// Where it goes: an upstream's name, a split, a redirect, a fixed answer.
    pub upstream: String,
    /// The upstreams it forwards to (for the gate-bypass warning).
    pub upstreams: Vec<String>,
    /// What the route adds: `auth`, `timeout 5000 ms`, `full path`, `rate limit ...`.
    pub notes: String,
    /// Whether an auth gate guards it.
    pub gated: bool,
    /// The name of its request series (the metrics' `route` label).
    pub series: String,
}

impl RouteRow {
    /// Whether this route takes `GET /` on the default host, whatever the headers.
    pub fn answers_get_root(&self) -> bool {
        let takes_get = self.methods == "*" || self.methods.split(',').any(|m| m == "GET");
        let mut tree = router::Router::new();
        !self.conditional
            && takes_get
            && tree.insert(&self.pattern, ()).is_ok()
            && tree.at("/").is_ok()
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
    let mut shadows = forwarding::Shadows::new();
    for route in &config.routes {
        let series = config.pre.metrics.then(|| stats.route(&series_name(route)));
        let counters = Counters {
            series,
            auth_denied: Arc::clone(&stats.auth_denied),
            deadlines: Arc::clone(&stats.deadlines),
            rate_limited: Arc::clone(&stats.rate_limited),
            mirror: Arc::clone(&stats.mirror),
        };
        rows.push(one(
            route,
            config,
            proxies,
            &mut shadows,
            mux,
            &counters,
            source,
        )?);
    }
    Ok(rows)
}

/// The name of a route's request series (its `route` label): the pattern, after its hosts
/// when it has some (`api.example.com /*rest`). Routes with the same name share a series.
fn series_name(route: &RouteConfig) -> String {
    let pattern = route.path.get_ref();
    if route.hosts.is_empty() {
        return pattern.clone();
    }
    let hosts: Vec<&str> = route.hosts.iter().map(|h| h.get_ref().as_str()).collect();
    format!("{} {pattern}", hosts.join(","))
}

/// Where a route's stack counts.
struct Counters {
    /// The route's request series (`None` with metrics off).
    series: Option<Arc<RequestMetrics>>,
    auth_denied: Arc<Counter>,
    deadlines: Arc<Counter>,
    rate_limited: Arc<Counter>,
    mirror: Arc<forwarding::MirrorStats>,
}

fn one<B: GatewayBody>(
    route: &RouteConfig,
    config: &Config,
    proxies: &BTreeMap<String, Proxy<B>>,
    shadows: &mut forwarding::Shadows,
    mux: &mut Mux<B>,
    counters: &Counters,
    source: &Source,
) -> Result<RouteRow, ConfigError> {
    let pattern = route.path.get_ref();
    check_pattern(pattern)
        .map_err(|message| source.error(route.path.span(), Some("path"), message))?;
    let methods = methods(route, source)?;
    let hosts = matching::hosts(route, source)?;
    let guard = matching::guard(route, source)?;
    let target = actions::build(route, proxies, source)?;
    let mut notes = Vec::new();
    if !target.forwards {
        for (present, key) in [
            (route.rewrite.is_some(), "rewrite"),
            (route.retry.is_some(), "retry"),
            (route.mirror.is_some(), "mirror"),
            (route.request_headers.is_some(), "request_headers"),
        ] {
            if present {
                return Err(source.error(
                    route.path.span(),
                    Some(key),
                    format!("`{key}` changes what is forwarded; this route answers by itself (`redirect` or `respond`)"),
                ));
            }
        }
    }
    let auth = route
        .auth
        .as_ref()
        .map(|a| auth_layer(a, source))
        .transpose()?
        .map(|a| a.count_denials(Arc::clone(&counters.auth_denied)));

    // The stack, in the order a request meets it: the route's metrics series named (so that
    // every request of the route counts in it, refused ones included); CORS (a preflight is
    // answered before anything else, as browsers send it without credentials); the rate
    // limit (before the gate, so guessing secrets is limited too); the gate; compression and
    // the response header edits (on whatever answer comes back); the deadline; the request
    // header edits; the path the upstream sees; the mirror (a copy of what goes upstream);
    // the retry policy; the target. Built inside out.
    let mut service: Route<B> = target.service;
    if let Some((retry, note)) = forwarding::retry(route, source)? {
        service = retry.wrap(service);
        notes.push(note);
    }
    if let Some((mirror, note)) =
        forwarding::mirror(route, config, shadows, &counters.mirror, source)?
    {
        service = mirror.wrap(service);
        notes.push(note);
    }
    if target.forwards {
        if let Some((layer, note)) = edits::path_rule(route, source)? {
            service = layer.wrap(service);
            if !note.is_empty() {
                notes.push(note);
            }
        }
        if !route.strip_prefix && route.rewrite.is_none() && catch_all_name(pattern).is_some() {
            notes.push("full path".to_owned());
        }
    }
    let header_edits = edits::header_edits(route, source)?;
    if let Some((edits, _)) = &header_edits {
        service = edits.wrap(service);
    }
    if let Some(ms) = route.timeout_ms {
        service = TimeoutLayer::new(Duration::from_millis(ms))
            .count_expired(Arc::clone(&counters.deadlines))
            .layer(service)
            .into_route();
    }
    if let Some((compress, note)) = policies::compress(route, source)? {
        service = compress.wrap(service);
        notes.push(note);
    }
    if let Some(auth) = auth {
        service = auth.layer(service).into_route();
    }
    if let Some((layer, note)) = policies::rate_limit(route, &counters.rate_limited, source)? {
        service = layer.layer(service).into_route();
        notes.push(note);
    }
    let cors = policies::cors(route, methods.as_deref(), source)?;
    if let Some((layer, note)) = &cors {
        service = layer.clone().layer(service).into_route();
        notes.push(note.clone());
    }
    if let Some(series) = &counters.series {
        // A change in front of the route rather than a service of its own: no boxed future.
        let metrics = RouteMetricsLayer::new(Arc::clone(series));
        service = service.edit_request(move |_: &mut Request<B>| metrics.name_request());
    }

    // A CORS preflight is an OPTIONS request: the route takes it so that its CORS layer
    // answers.
    let mut registered_methods = methods.clone();
    if let (Some(list), Some(_)) = (&mut registered_methods, &cors)
        && !list.contains(&Method::OPTIONS)
    {
        list.push(Method::OPTIONS);
    }
    register(
        mux,
        &hosts,
        registered_methods.as_deref(),
        pattern,
        guard,
        service,
    )
    .map_err(|e| source.error(route.path.span(), Some("path"), e))?;

    if let Some(ms) = route.timeout_ms {
        notes.insert(0, format!("timeout {ms} ms"));
    }
    if route.auth.is_some() {
        notes.insert(0, "auth".to_owned());
    }
    if let Some((_, edit_notes)) = header_edits {
        notes.extend(edit_notes);
    }
    let conditions = matching::describe(route);
    let upstreams = match (&route.upstream, &route.split) {
        (Some(u), _) => vec![u.get_ref().clone()],
        (_, Some(split)) => split
            .get_ref()
            .iter()
            .map(|e| e.get_ref().upstream.clone())
            .collect(),
        _ => Vec::new(),
    };
    Ok(RouteRow {
        hosts: if hosts.is_empty() {
            "*".to_owned()
        } else {
            hosts.join(",")
        },
        methods: match &methods {
            None => "*".to_owned(),
            Some(list) => list
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
        },
        path: if conditions.is_empty() {
            pattern.clone()
        } else {
            format!("{pattern} when {}", conditions.join(" and "))
        },
        pattern: pattern.clone(),
        conditional: !hosts.is_empty() || !conditions.is_empty(),
        upstream: target.describe,
        upstreams,
        notes: notes.join(", "),
        gated: route.auth.is_some(),
        series: series_name(route),
    })
}

/// Registers the route's stack on each of its hosts (or the default one), behind its guard.
fn register<B: Send + 'static>(
    mux: &mut Mux<B>,
    hosts: &[String],
    methods: Option<&[Method]>,
    pattern: &str,
    guard: Option<router::SharedGuard>,
    service: Route<B>,
) -> Result<(), String> {
    if hosts.is_empty() {
        return match (&guard, methods) {
            (Some(g), m) => mux.route_if(m, pattern, Arc::clone(g), service).map(drop),
            (None, Some(m)) => mux.route(m.iter().cloned(), pattern, service).map(drop),
            (None, None) => mux.any(pattern, service).map(drop),
        }
        .map_err(|e| e.to_string());
    }
    for host in hosts {
        let mut site = mux.host(host).map_err(|e| e.to_string())?;
        let service = service.clone();
        match (&guard, methods) {
            (Some(g), m) => site.route_if(m, pattern, Arc::clone(g), service).map(drop),
            (None, Some(m)) => site.route(m.iter().cloned(), pattern, service).map(drop),
            (None, None) => site.any(pattern, service).map(drop),
        }
        .map_err(|e| format!("on host `{host}`: {e}"))?;
    }
    Ok(())
}

/// A pattern must be in the form requests are normalized to, or it could never match.
fn check_pattern(pattern: &str) -> Result<(), String> {
    // `\:` and `\*` are literal `:` and `*` (the router takes them so).
    let literal = pattern.replace("\\:", ":").replace("\\*", "*");
    match router::normalize_path(&literal) {
        Ok(normal) if normal == literal => Ok(()),
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
        for ok in [
            "/api/*path",
            "/users/:id",
            "/",
            "/a%2Fb",
            "/files/x.tar.gz",
            r"/v1/p\:run",
        ] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/%7Euser", "/a%2fb", "/a/./b", "/a/../b", "/x/%2e", "/../up", "/a%00",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
