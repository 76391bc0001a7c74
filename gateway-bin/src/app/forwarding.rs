//! A route's forwarding policies: the retry policy (put in each request's extensions for the
//! proxy) and the mirror (a copy of each request, or a sampled share, sent to a shadow
//! upstream, its answer discarded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use balancer::RetryBudget;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use httpkit::Body;
use proxy::{BodyTap, ClientAddr, Proxy, RetryPolicy};
use router::{IntoRoute, Route, RouteFuture};
use telemetry::Counter;
use tower::{Service, ServiceExt};

use crate::config::{Config, ConfigError, MirrorConfig, RetryConfig, RouteConfig, Source};

/// The route's retry policy as a wrapper for its stack, and its note; `None` without one.
pub(super) fn retry(
    route: &RouteConfig,
    source: &Source,
) -> Result<Option<(RetryWrap, String)>, ConfigError> {
    let Some(c) = &route.retry else {
        return Ok(None);
    };
    let span = c.span();
    let err = |key: &str, message: String| source.error(span.clone(), Some(key), message);
    let c: &RetryConfig = c.get_ref();
    if !(1..=10).contains(&c.tries) {
        return Err(err("retry.tries", format!("{}: 1 to 10", c.tries)));
    }
    if c.budget_percent > 100 {
        return Err(err(
            "retry.budget_percent",
            format!("{}: 0 to 100", c.budget_percent),
        ));
    }
    let mut policy = RetryPolicy::new(c.tries).on_reset(false);
    if let Some(methods) = &c.methods {
        let parsed = methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err("retry.methods", format!("`{m}` is not a method")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        policy = policy.methods(parsed);
    }
    for on in &c.on {
        policy = match on.as_str() {
            "connect" => policy,
            "reset" => policy.on_reset(true),
            "timeout" => policy.on_timeout(true),
            other => {
                let status = other
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok());
                match status.map(|s| policy.clone().on_status(s)) {
                    Some(Ok(p)) => p,
                    _ => {
                        return Err(err(
                            "retry.on",
                            format!(
                                "`{other}`: `connect`, `reset`, `timeout`, `502`, `503` or `504`"
                            ),
                        ));
                    }
                }
            }
        };
    }
    let budget = Arc::new(RetryBudget::new(c.budget_percent, c.min_per_s));
    let policy = Arc::new(policy.budget(budget));
    let note = format!(
        "retry {} tries on {} (budget {}% + {}/s)",
        c.tries,
        c.on.join(","),
        c.budget_percent,
        c.min_per_s
    );
    Ok(Some((RetryWrap(policy), note)))
}

/// Puts the route's retry policy in each request.
#[derive(Clone)]
pub(super) struct RetryWrap(Arc<RetryPolicy>);

impl RetryWrap {
    /// `route` with the policy in its requests.
    pub(super) fn wrap<B: Send + 'static>(&self, route: Route<B>) -> Route<B> {
        let policy = Arc::clone(&self.0);
        route.edit_request(move |req: &mut Request<B>| {
            req.extensions_mut().insert(Arc::clone(&policy));
        })
    }
}

/// What the mirrors count, over every route.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Copies sent.
    pub sent: Counter,
    /// Copies the shadow upstream failed (a gateway error or a 5xx).
    pub failed: Counter,
    /// Copies not made: too many in flight.
    pub dropped: Counter,
    /// Copies not made: the body was over the limit, or never arrived in full.
    pub skipped: Counter,
}

/// The shadow upstreams' proxies: each mirror target, built from its upstream's settings
/// with a body type of its own (the copy is sent whole, from memory).
pub(super) type Shadows = BTreeMap<String, Proxy<Full<Bytes>>>;

/// The route's mirror as a wrapper for its stack, and its note; `None` without one.
pub(super) fn mirror(
    route: &RouteConfig,
    config: &Config,
    shadows: &mut Shadows,
    stats: &Arc<MirrorStats>,
    source: &Source,
) -> Result<Option<(Mirror, String)>, ConfigError> {
    let Some(c) = &route.mirror else {
        return Ok(None);
    };
    let span = c.span();
    let err = |key: &str, message: String| source.error(span.clone(), Some(key), message);
    let c: &MirrorConfig = c.get_ref();
    if !(c.percent > 0.0 && c.percent <= 100.0) {
        return Err(err(
            "mirror.percent",
            format!("{}: above 0, at most 100", c.percent),
        ));
    }
    if c.max_in_flight == 0 || c.max_in_flight > 100_000 {
        return Err(err(
            "mirror.max_in_flight",
            format!("{}: 1 to 100000", c.max_in_flight),
        ));
    }
    if c.max_body_bytes > 64 << 20 {
        return Err(err(
            "mirror.max_body_bytes",
            format!("{}: at most 64 MiB", c.max_body_bytes),
        ));
    }
    let shadow = match shadows.get(&c.upstream) {
        Some(p) => p.clone(),
        None => {
            let Some(up) = config.upstreams.get(&c.upstream) else {
                return Err(err(
                    "mirror.upstream",
                    format!(
                        "no upstream named `{}` (known: {})",
                        c.upstream,
                        config
                            .upstreams
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let p = super::upstreams::one::<Full<Bytes>>(&c.upstream, up, source, false)?;
            shadows.insert(c.upstream.clone(), p.clone());
            p
        }
    };
    let note = format!("mirror {}% to {}", c.percent, c.upstream);
    Ok(Some((
        Mirror(Arc::new(MirrorInner {
            shadow,
            share: c.percent / 100.0,
            max_body: c.max_body_bytes,
            max_in_flight: c.max_in_flight,
            in_flight: Arc::new(AtomicUsize::new(0)),
            stats: Arc::clone(stats),
        })),
        note,
    )))
}

struct MirrorInner {
    shadow: Proxy<Full<Bytes>>,
    share: f64,
    max_body: usize,
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
    stats: Arc<MirrorStats>,
}

/// A route's mirror.
#[derive(Clone)]
pub(super) struct Mirror(Arc<MirrorInner>);

impl Mirror {
    /// `route` with its requests copied to the shadow.
    pub(super) fn wrap<B: http_body::Body + Send + 'static>(&self, route: Route<B>) -> Route<B> {
        MirrorService {
            mirror: self.clone(),
            inner: route,
        }
        .into_route()
    }
}

struct MirrorService<B> {
    mirror: Mirror,
    inner: Route<B>,
}

impl<B> Clone for MirrorService<B> {
    fn clone(&self) -> Self {
        MirrorService {
            mirror: self.mirror.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// Frees a mirror's slot when the copy is done, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B: http_body::Body + Send + 'static> Service<Request<B>> for MirrorService<B> {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> RouteFuture {
        let m = &*self.mirror.0;
        if m.share < 1.0 && fastrand::f64() >= m.share {
            return self.inner.call(req);
        }
        let declared = req.body().size_hint().exact();
        if declared.is_some_and(|n| n > m.max_body as u64) {
            m.stats.skipped.inc();
            return self.inner.call(req);
        }
        if m.in_flight.fetch_add(1, Ordering::Relaxed) >= m.max_in_flight {
            m.in_flight.fetch_sub(1, Ordering::Relaxed);
            m.stats.dropped.inc();
            return self.inner.call(req);
        }
        let slot = Slot(Arc::clone(&m.in_flight));
        // The head as it goes upstream (this layer sits after the rewrites), marked.
        let mut copy = Request::new(());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        copy.headers_mut().insert(
            http::HeaderName::from_static("x-gateway-mirror"),
            http::HeaderValue::from_static("1"),
        );
        if let Some(addr) = req.extensions().get::<ClientAddr>() {
            copy.extensions_mut().insert(*addr);
        }
        if let Some(id) = req.extensions().get::<httpkit::RequestId>() {
            copy.extensions_mut().insert(id.clone());
        }
        let body = if req.body().is_end_stream() {
            None
        } else {
            let (tap, rx) = BodyTap::new(m.max_body);
            req.extensions_mut().insert(tap);
            Some(rx)
        };
        let shadow = m.shadow.clone();
        let stats = Arc::clone(&m.stats);
        tokio::spawn(async move {
            let _slot = slot;
            let bytes = match body {
                None => Bytes::new(),
                Some(rx) => match rx.await {
                    Some(bytes) => bytes,
                    None => {
                        stats.skipped.inc();
                        return;
                    }
                },
            };
            let req = copy.map(|()| Full::new(bytes));
            stats.sent.inc();
            let Ok(res) = shadow.oneshot(req).await;
            let status = res.status();
            // Read the answer to its end so the connection can be reused; discard it.
            let whole = res.into_body().collect().await;
            if status.is_server_error() || whole.is_err() {
                stats.failed.inc();
            }
        });
        self.inner.call(req)
    }
}
