//! [`Proxy`]: the tower service that forwards a request to an [`Upstream`] and streams the
//! response back; the steps of one request are [`crate::exchange`]'s.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use balancer::Attempts;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use httpkit::{BoxError, TextOr, text_response};
use tower_service::Service;

use crate::exchange::{Exchange, prepare};
use crate::metrics::Retry;
use crate::outgoing::Outgoing;
use crate::pool::Pool;
use crate::response::ProxyBody;
use crate::target::TargetAddr;
use crate::upstream::Upstream;

/// A request body the proxy can forward.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// Forwards requests to an upstream (see the [crate docs](crate)).
pub struct Proxy<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Proxy {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> fmt::Debug for Proxy<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.upstream)
            .finish()
    }
}

pub(crate) struct Inner<B> {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) pool: Pool<Outgoing<B>>,
}

impl<B: RequestBody> Proxy<B> {
    /// A proxy to `upstream`, with a connection pool of its own.
    pub fn new(upstream: Upstream) -> Self {
        let pool = Pool::new(upstream.settings());
        Proxy {
            inner: Arc::new(Inner {
                upstream: Arc::new(upstream),
                pool,
            }),
        }
    }
}

impl<B> Proxy<B> {
    /// The upstream this proxy forwards to.
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// Takes over from `previous` (the same upstream before a configuration reload changed
    /// it) what still applies: the state of every target both have (health, active checks,
    /// in-flight count, counters), and their pooled connections when the connections would
    /// be made the same way (protocol and TLS unchanged).
    pub fn take_over(&self, previous: &Proxy<B>)
    where
        B: RequestBody,
    {
        let (new, old) = (&self.inner.upstream, &previous.inner.upstream);
        new.balancer().adopt(old.balancer());
        let (s, p) = (new.settings(), old.settings());
        let same_connections = s.protocol == p.protocol
            && format!("{:?}", s.tls) == format!("{:?}", p.tls)
            && s.max_response_header_bytes == p.max_response_header_bytes;
        if same_connections {
            let kept: Vec<TargetAddr> = new
                .balancer()
                .targets()
                .iter()
                .map(|t| t.value().clone())
                .collect();
            self.inner.pool.adopt(&previous.inner.pool, |key| {
                kept.iter().any(|t| &**t.key() == key)
            });
        }
    }

    /// Whether both are the same proxy (one pool, one balancer), not merely alike.
    pub fn ptr_eq(&self, other: &Proxy<B>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Idle upstream connections in the pool now, per target (named as the target displays).
    pub fn idle_connections_by_target(&self) -> Vec<(Arc<str>, usize)> {
        self.inner.pool.idle_by_target()
    }

    pub(crate) fn upstream_arc(&self) -> &Arc<Upstream> {
        &self.inner.upstream
    }

    pub(crate) fn pool(&self) -> &Pool<Outgoing<B>> {
        &self.inner.pool
    }
}

impl<B: RequestBody> Service<Request<B>> for Proxy<B> {
    type Response = Response<ProxyBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody<B>>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let response = self.forward(req);
        Box::pin(async move { Ok(response.await) })
    }
}

impl<B: RequestBody> Proxy<B> {
    /// The response to `req`: what [`Service::call`] answers, as a future of a type the caller
    /// can hold without boxing it (a router that erases its routes boxes it once, instead of
    /// once here and once more there).
    pub fn forward(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Response<ProxyBody<B>>> + Send + 'static + use<B> {
        forward(Arc::clone(&self.inner), prepare(&self.inner.upstream, req))
    }
}

// The future owns what it needs, so that it is the caller's future itself rather than one
// awaited inside another: a future is moved whole (into its box, into its caller's state),
// and a nested one is moved once more when its caller first polls it. The exchange is
// prepared before, and used in place: an `async fn` would keep its argument for its whole
// life and bind it to a local of its own too, holding it twice.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn forward<B: RequestBody>(
    inner: Arc<Inner<B>>,
    mut prepared: Option<Exchange<B>>,
) -> impl Future<Output = Response<ProxyBody<B>>> + Send + 'static {
    async move {
        let inner = &*inner;
        let Some(exchange) = prepared.as_mut() else {
            return text_response(StatusCode::BAD_REQUEST, "Bad Request\n");
        };
        let mut attempts = Attempts::new();
        while let Some(picked) = inner.upstream.balancer().next_attempt(&mut attempts) {
            if attempts.len() > 1 {
                inner.upstream.metrics().retried(Retry::NextTarget);
            }
            // `let`-`else`: the awaited answer is not kept beside `res` across the next await.
            let Some(mut res) = exchange.attempt(inner, picked).await else {
                continue;
            };
            if let TextOr::Inner { body } = res.body_mut() {
                body.prefetch().await;
            }
            return res;
        }
        // The last target answered with a status the route retries, and none is left.
        if let Some(held) = exchange.held.take() {
            return *held;
        }
        let upstream = inner.upstream.name();
        if attempts.is_empty() {
            inner.upstream.metrics().no_target();
            tracing::error!(
                request_id = %exchange.ids.request(),
                trace_id = %exchange.ids.trace(),
                upstream,
                "no target available: every target is marked down or failing its health checks"
            );
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
        }
        inner.upstream.metrics().all_failed();
        tracing::error!(
            request_id = %exchange.ids.request(),
            trace_id = %exchange.ids.trace(),
            upstream,
            tried = attempts.len(),
            "no upstream target answered"
        );
        text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
    }
}
