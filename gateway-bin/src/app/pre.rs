//! The `pre` stack: what runs for every request before routing, 404s and 405s included.
//! Declared in the order a request meets it: metrics (outermost, so they count and time what
//! the client gets), request id, trace context, access log, framing checks (their `400`
//! logged), gRPC errors (a gRPC call's error answers as `grpc-status`), panic recovery (inside the access log, so the log sees the `500` it makes),
//! declared-length body limit.

use std::convert::Infallible;

use http::header::CONTENT_LENGTH;
use http::{Request, Response, StatusCode};
use std::sync::Arc;

use middleware::{
    AccessLogLayer, FramingLayer, GrpcErrorLayer, MetricsLayer, RecoverLayer, RequestIdLayer,
    TraceContextLayer,
};
use proxy::UpstreamTarget;
use router::{Body, Mux};
use telemetry::Counter;
use tower::{Layer, ServiceBuilder};

use super::GatewayBody;
use crate::config::Config;
use crate::stats::Stats;

/// Installs the `pre` stack on `mux`: one type-erased service for all of it, with the
/// switched-off layers passing straight through.
pub(super) fn install<B: GatewayBody>(mux: &mut Mux<B>, config: &Config, stats: &Stats) {
    let on = &config.pre;
    let max_body = config.server.max_body_bytes;
    let stack = ServiceBuilder::new()
        .layer(Optional::<_, B>::new(
            on.metrics
                .then(|| MetricsLayer::new(Arc::clone(&stats.unmatched))),
        ))
        .layer(Switch(
            // Every line the gateway logs about a request names its id itself: no span,
            // whose fields would be formatted for every request.
            on.request_id.then(|| RequestIdLayer::new().span(false)),
        ))
        .layer(Switch(on.trace_context.then(|| {
            TraceContextLayer::new().sample_ratio(on.trace_sample_ratio)
        })))
        .layer(Optional::<_, B>::new(
            on.access_log
                .then(|| AccessLogLayer::new().upstream::<UpstreamTarget>()),
        ))
        .layer(FramingLayer::new())
        // Inside the access log and metrics: they see what the gRPC client gets (200 and a
        // grpc-status).
        .layer(GrpcErrorLayer::new())
        .layer(Optional::<_, B>::new(on.recover.then(|| {
            RecoverLayer::new().count_panics(Arc::clone(&stats.panics))
        })))
        .layer(Switch((max_body > 0).then(|| BodyLimitLayer {
            max: max_body,
            refused: Arc::clone(&stats.body_too_large),
        })));
    mux.pre(stack);
}

/// A layer that may be switched off and wraps the response body: either way the service has
/// one type, and so does its response body (`http_body_util::Either` of the layer's and the
/// inner one's).
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

/// A layer that may be switched off and answers with the inner service's own response type:
/// either way the service has one type, with nothing mapped on the way out (what
/// [`Optional`] needs for a layer that wraps the body).
struct Switch<L>(Option<L>);

impl<S, L> Layer<S> for Switch<L>
where
    L: Layer<S>,
{
    type Service = tower::util::Either<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => tower::util::Either::Left(layer.layer(inner)),
            None => tower::util::Either::Right(inner),
        }
    }
}

/// Refuses a declared body over the limit with `413` before anything else runs; the server
/// also caps the body as it streams, for bodies without a length.
#[derive(Debug, Clone)]
struct BodyLimitLayer {
    max: u64,
    refused: Arc<Counter>,
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            max: self.max,
            refused: Arc::clone(&self.refused),
        }
    }
}

#[derive(Debug, Clone)]
struct BodyLimit<S> {
    inner: S,
    max: u64,
    refused: Arc<Counter>,
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
            self.refused.inc();
            let res = httpkit::text_response(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n");
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
                    httpkit::text_response(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n")
                })))
            }
            LimitFuture::Inner(f) => std::pin::Pin::new(f).poll(cx),
        }
    }
}
