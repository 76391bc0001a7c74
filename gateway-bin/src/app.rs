//! Wiring: a parsed configuration becomes one `Mux` with its upstreams, routes, middleware and
//! index page. Everything that can be decided once is decided here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use balancer::{HealthPolicy, Kind};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use middleware::{AccessLogLayer, AuthLayer, RecoverLayer, RequestIdLayer, Secrets, TimeoutLayer};
use proxy::headers::TrustedProxies;
use proxy::{Proxy, Settings, Upstream, UpstreamTarget};
use router::{Body, IntoRoute, Mux, MuxService, PathParams};
use tower::util::MapRequestLayer;
use tower::{Layer, ServiceBuilder};

use crate::config::{self, Config, ConfigError, Source};

/// The request body type the gateway's routes take.
pub trait GatewayBody:
    http_body::Body<Data = Bytes, Error: Into<proxy::BoxError>> + Send + Unpin + 'static
{
}

impl<B> GatewayBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<proxy::BoxError>> + Send + Unpin + 'static
{
}

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
}

/// The built gateway: the service to serve, and what the index page shows.
pub struct App<B> {
    /// The router with everything wired in.
    pub service: MuxService<B>,
    /// The route table.
    pub routes: Vec<RouteRow>,
    /// The upstreams, for health display.
    pub upstreams: Vec<(String, Proxy<B>)>,
}

fn kind(s: config::Strategy) -> Kind {
    match s {
        config::Strategy::RoundRobin => Kind::RoundRobin,
        config::Strategy::WeightedTicket => Kind::WeightedTicket,
        config::Strategy::SmoothWeighted => Kind::SmoothWeighted,
        config::Strategy::LeastRequest => Kind::LeastRequest,
    }
}

/// The name of a pattern's catch-all, if it ends in one.
fn catch_all_name(pattern: &str) -> Option<&str> {
    pattern.rsplit('/').next()?.strip_prefix('*')
}

/// Replaces the request's path with its last `suffix_len` bytes (`/` when empty), keeping
/// the query, scheme and authority.
fn strip_to_suffix<B>(req: &mut Request<B>, suffix_len: usize) {
    let path_len = req.uri().path().len();
    let Some(full) = req.uri().path_and_query().map(|pq| pq.as_str()) else {
        return;
    };
    let Some(tail) = path_len
        .checked_sub(suffix_len)
        .and_then(|start| full.get(start..))
    else {
        return;
    };
    let pq = if suffix_len == 0 {
        PathAndQuery::try_from(format!("/{tail}"))
    } else {
        PathAndQuery::try_from(tail)
    };
    let Ok(pq) = pq else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Builds the gateway from `config` (positions in errors refer to `source`).
pub fn build<B: GatewayBody>(config: &Config, source: &Source) -> Result<App<B>, ConfigError> {
    // hyper needs room for at least 8 KiB of request head.
    if config.server.max_header_bytes < 8192 {
        return Err(source.error(
            key_span(source, "max_header_bytes"),
            Some("max_header_bytes"),
            "must be at least 8192",
        ));
    }
    for (key, value) in [
        (
            "header_read_timeout_ms",
            config.server.header_read_timeout_ms,
        ),
        ("idle_timeout_ms", config.server.idle_timeout_ms),
        ("max_connections", config.server.max_connections as u64),
    ] {
        if value == 0 {
            return Err(source.error(key_span(source, key), Some(key), "must be at least 1"));
        }
    }
    // Upstreams.
    let mut proxies: BTreeMap<String, Proxy<B>> = BTreeMap::new();
    for (name, up) in &config.upstreams {
        let span = up.span();
        let up = up.get_ref();
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
                config::TargetConfig::Url(u) => (u.clone(), 1),
                config::TargetConfig::Weighted { url, weight } => (url.clone(), *weight),
            };
            if weight == 0 {
                return Err(source.error(t.span(), Some("weight"), "weights start at 1"));
            }
            if let Err(e) = url.parse::<proxy::TargetAddr>() {
                return Err(source.error(t.span(), Some("targets"), e.to_string()));
            }
            targets.push((url, weight));
        }
        let health = HealthPolicy::default()
            .with_max_fails(up.max_fails)
            .with_fail_timeout(Duration::from_millis(up.fail_timeout_ms))
            .with_all_down(match up.all_down {
                config::AllDown::FailFast => balancer::AllDown::FailFast,
                config::AllDown::Panic => balancer::AllDown::Panic,
            });
        let settings = Settings {
            connect_timeout: Duration::from_millis(up.connect_timeout_ms),
            response_timeout: Duration::from_millis(up.response_timeout_ms),
            pool_idle_timeout: Duration::from_millis(up.pool_idle_timeout_ms),
            pool_max_idle_per_target: up.pool_max_idle_per_target,
            preserve_host: up.preserve_host,
            trusted_proxies: trusted,
        };
        let upstream = Upstream::new(name, kind(up.strategy), targets, health, settings)
            .map_err(|e| source.error(span.clone(), Some("targets"), e.to_string()))?;
        proxies.insert(name.clone(), Proxy::new(upstream));
    }

    let mut mux: Mux<B> = Mux::new();
    let mut rows = Vec::new();
    for route in &config.routes {
        let pattern = route.path.get_ref();
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
        let mut methods = Vec::new();
        let mut any = false;
        for m in &route.methods {
            let text = m.get_ref().trim().to_ascii_uppercase();
            if text == "*" {
                any = true;
                continue;
            }
            let method = Method::from_bytes(text.as_bytes()).map_err(|_| {
                source.error(
                    m.span(),
                    Some("methods"),
                    format!("`{}` is not an HTTP method", m.get_ref()),
                )
            })?;
            methods.push(method);
        }
        let auth = match &route.auth {
            None => None,
            Some(a) => Some(auth_layer(a, source)?),
        };
        let forward_name: Option<Arc<str>> = route
            .strip_prefix
            .then(|| catch_all_name(pattern))
            .flatten()
            .map(Arc::from);
        // The catch-all suffix becomes the request's path (query kept): it is the tail of
        // the path, so the new path-and-query is a tail of the old one, one copy.
        let forward_path = MapRequestLayer::new(move |mut req: Request<B>| {
            if let Some(name) = &forward_name {
                let suffix_len = req
                    .extensions()
                    .get::<PathParams>()
                    .and_then(|p| p.get(name))
                    .map(str::len);
                if let Some(suffix_len) = suffix_len {
                    strip_to_suffix(&mut req, suffix_len);
                }
            }
            req
        });
        // Innermost first: the proxy, the path it forwards, the deadline, the gate (which
        // refuses before anything else runs). Each stage is a Route, whatever its body type.
        let mut service = ServiceBuilder::new()
            .layer(forward_path)
            .service(proxy.clone())
            .into_route();
        if let Some(ms) = route.timeout_ms {
            service = TimeoutLayer::new(Duration::from_millis(ms))
                .layer(service)
                .into_route();
        }
        if let Some(auth) = auth {
            service = auth.layer(service).into_route();
        }
        let result = if any {
            mux.any(pattern, service).map(|_| ())
        } else {
            mux.route(methods.clone(), pattern, service).map(|_| ())
        };
        result.map_err(|e| source.error(route.path.span(), Some("path"), e.to_string()))?;

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
        rows.push(RouteRow {
            methods: if any {
                "*".to_owned()
            } else {
                methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            path: pattern.clone(),
            upstream: upstream_name.clone(),
            notes: notes.join(", "),
        });
    }

    let upstreams: Vec<(String, Proxy<B>)> = proxies.into_iter().collect();
    if config.index.enabled {
        let page = Arc::new(IndexPage {
            routes: rows.clone(),
            upstreams: upstreams.clone(),
        });
        let index = tower::service_fn(move |req: Request<B>| {
            let page = Arc::clone(&page);
            async move { Ok::<_, Infallible>(page.render(&req)) }
        });
        mux.get("/", index).map_err(|e| {
            source.error(0..0, Some("routes"), format!("{e}; the index page uses GET /: set `index.enabled = false` to route it yourself"))
        })?;
    }

    // The pre stack is one service, outermost first, with the switched-off layers passing
    // straight through: one type-erased route for all of it instead of one per layer.
    let server = &config.server;
    let max_body = server.max_body_bytes;
    let pre = ServiceBuilder::new()
        .layer(Optional::<_, B>::new(
            config.pre.request_id.then(RequestIdLayer::new),
        ))
        .layer(Optional::<_, B>::new(
            config.pre.recover.then(RecoverLayer::new),
        ))
        .layer(Optional::<_, B>::new(
            config
                .pre
                .access_log
                .then(|| AccessLogLayer::new().upstream::<UpstreamTarget>()),
        ))
        .layer(Optional::<_, B>::new(
            (max_body > 0).then_some(BodyLimitLayer(max_body)),
        ));
    mux.pre(pre);
    Ok(App {
        service: mux.into_service(),
        routes: rows,
        upstreams,
    })
}

/// Where `key = ...` first appears in the file (for settings read as plain values).
fn key_span(source: &Source, key: &str) -> std::ops::Range<usize> {
    let at = source
        .text
        .lines()
        .scan(0, |offset, line| {
            let start = *offset;
            *offset += line.len() + 1;
            Some((start, line))
        })
        .find(|(_, line)| line.trim_start().starts_with(key))
        .map_or(0, |(start, _)| start);
    at..at
}

fn auth_layer(
    a: &toml::Spanned<config::AuthConfig>,
    source: &Source,
) -> Result<AuthLayer, ConfigError> {
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

/// A layer that may be switched off: either way the service has one type, and so does its
/// response body (`http_body_util::Either` of the layer's and the inner one's).
struct Optional<L, B>(Option<L>, std::marker::PhantomData<fn(B)>);

impl<L, B> Optional<L, B> {
    fn new(layer: Option<L>) -> Self {
        Optional(layer, std::marker::PhantomData)
    }
}

type ToEither<A, B, X> = fn(Response<X>) -> Response<http_body_util::Either<A, B>>;

/// The service an [`Optional`] layer makes.
type OptionalService<On, Off, OnBody, OffBody> = tower::util::Either<
    tower::util::MapResponse<On, ToEither<OnBody, OffBody, OnBody>>,
    tower::util::MapResponse<Off, ToEither<OnBody, OffBody, OffBody>>,
>;

impl<S, L, B, OnBody, OffBody> Layer<S> for Optional<L, B>
where
    L: Layer<S>,
    L::Service: tower::Service<Request<B>, Response = Response<OnBody>>,
    S: tower::Service<Request<B>, Response = Response<OffBody>>,
{
    type Service = OptionalService<L::Service, S, OnBody, OffBody>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => tower::util::Either::Left(tower::util::MapResponse::new(
                layer.layer(inner),
                (|res: Response<OnBody>| res.map(http_body_util::Either::Left))
                    as ToEither<_, _, _>,
            )),
            None => tower::util::Either::Right(tower::util::MapResponse::new(
                inner,
                (|res: Response<OffBody>| res.map(http_body_util::Either::Right))
                    as ToEither<_, _, _>,
            )),
        }
    }
}

/// Refuses a declared body over the limit with `413` before anything else runs; the server
/// also caps the body as it streams, for bodies without a length.
#[derive(Debug, Clone, Copy)]
struct BodyLimitLayer(u64);

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit { inner, max: self.0 }
    }
}

#[derive(Debug, Clone)]
struct BodyLimit<S> {
    inner: S,
    max: u64,
}

impl<S, B> tower::Service<Request<B>> for BodyLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + Unpin + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max) {
            let mut res = Response::new(Body::from("Payload Too Large\n"));
            *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return LimitFuture::Refused(Some(res));
        }
        LimitFuture::Inner(self.inner.call(req))
    }
}

/// The response future of [`BodyLimit`]: the refusal, or the inner service's (a boxed route
/// future, so `Unpin`).
enum LimitFuture<F> {
    Refused(Option<Response<Body>>),
    Inner(F),
}

impl<F> std::future::Future for LimitFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            LimitFuture::Refused(res) => {
                std::task::Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                    r
                })))
            }
            LimitFuture::Inner(f) => std::pin::Pin::new(f).poll(cx),
        }
    }
}

/// The page at `GET /`.
struct IndexPage<B> {
    routes: Vec<RouteRow>,
    upstreams: Vec<(String, Proxy<B>)>,
}

impl<B: GatewayBody> IndexPage<B> {
    fn render(&self, req: &Request<B>) -> Response<Body> {
        let html = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let text = if html { self.html() } else { self.text() };
        let mut res = Response::new(Body::from(text));
        let ct = if html {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        res
    }

    fn target_rows(&self) -> Vec<(String, String, String, usize, u64, u64)> {
        let mut rows = Vec::new();
        for (name, proxy) in &self.upstreams {
            let balancer = proxy.upstream().balancer();
            for t in balancer.targets() {
                let s = t.state();
                let health = if s.is_marked_down() {
                    "marked down"
                } else if s.is_available(balancer.policy()) {
                    "up"
                } else {
                    "down (failing)"
                };
                rows.push((
                    name.clone(),
                    t.value().to_string(),
                    health.to_owned(),
                    s.in_flight(),
                    s.successes(),
                    s.failures(),
                ));
            }
        }
        rows
    }

    fn text(&self) -> String {
        let mut out = String::from("gateway\n\nroutes\n");
        for r in &self.routes {
            let _ = writeln!(
                out,
                "  {:<24} {:<28} -> {}{}",
                r.methods,
                r.path,
                r.upstream,
                if r.notes.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", r.notes)
                }
            );
        }
        out.push_str("\nupstreams\n");
        for (name, target, health, in_flight, ok, failed) in self.target_rows() {
            let _ = writeln!(
                out,
                "  {name:<10} {target:<26} {health:<15} in flight {in_flight}, ok {ok}, failed {failed}"
            );
        }
        // For operators and the soak check: tasks that never end are leaks.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "\nruntime\n  tasks alive {}",
                rt.metrics().num_alive_tasks()
            );
        }
        out.push_str(EXAMPLES);
        out
    }

    fn html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut out = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>gateway</title><style>body{font-family:system-ui,sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}code,pre{background:#f4f4f4}</style></head><body><h1>gateway</h1><h2>Routes</h2><table><tr><th>methods</th><th>path</th><th>upstream</th><th>notes</th></tr>",
        );
        for r in &self.routes {
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&r.methods),
                esc(&r.path),
                esc(&r.upstream),
                esc(&r.notes)
            );
        }
        out.push_str("</table><h2>Upstreams</h2><table><tr><th>upstream</th><th>target</th><th>health</th><th>in flight</th><th>ok</th><th>failed</th></tr>");
        for (name, target, health, in_flight, ok, failed) in self.target_rows() {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{in_flight}</td><td>{ok}</td><td>{failed}</td></tr>",
                esc(&name),
                esc(&target),
                esc(&health)
            );
        }
        let _ = write!(
            out,
            "</table><h2>Try it</h2><pre>{}</pre></body></html>",
            esc(EXAMPLES.trim())
        );
        out
    }
}

/// The demo's example commands.
pub const EXAMPLES: &str = "
try
  curl http://localhost:8080/api/users                                    # alternates :9001 / :9002
  curl http://localhost:8080/static/x.png                                 # :9001, path /x.png
  curl -H 'X-Admin-Token: letmein' http://localhost:8080/admin/dashboard  # :9002
";
