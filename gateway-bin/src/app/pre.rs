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
use router::{Body, IntoRoute, Mux, Route};
use telemetry::Counter;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, ServiceBuilder};

use super::GatewayBody;
use crate::config::Config;
use crate::stats::Stats;

/// Installs the `pre` stack on `mux`: one type-erased service for all of it.
///
/// The layers that wrap the response body (metrics, access log, panic recovery) are left out
/// of the stack's type when they are off, one instantiation per combination: a switched-off
/// layer behind an `Either` cost every request a move of its response into the other arm and
/// a level of `Either` around its body (1.8k instructions per request of 36.6k for the three,
/// counted). The others switch with [`Switch`], which costs a branch.
pub(super) fn install<B: GatewayBody>(mux: &mut Mux<B>, config: &Config, stats: &Stats) {
    let on = &config.pre;
    let metrics = || MetricsLayer::new(Arc::clone(&stats.unmatched));
    let access_log = || AccessLogLayer::new().upstream::<UpstreamTarget>();
    let recover = || RecoverLayer::new().count_panics(Arc::clone(&stats.panics));
    let off = Identity::new;
    match (on.metrics, on.access_log, on.recover) {
        (true, true, true) => stack(mux, config, stats, metrics(), access_log(), recover()),
        (true, true, false) => stack(mux, config, stats, metrics(), access_log(), off()),
        (true, false, true) => stack(mux, config, stats, metrics(), off(), recover()),
        (true, false, false) => stack(mux, config, stats, metrics(), off(), off()),
        (false, true, true) => stack(mux, config, stats, off(), access_log(), recover()),
        (false, true, false) => stack(mux, config, stats, off(), access_log(), off()),
        (false, false, true) => stack(mux, config, stats, off(), off(), recover()),
        (false, false, false) => stack(mux, config, stats, off(), off(), off()),
    }
}

/// The `pre` layers as `ServiceBuilder` nests them (innermost first: the body limit wraps
/// the routes, metrics wrap everything), with the metrics (`M`), access log (`A`) and panic
/// recovery (`R`) layers given (each either the layer or `Identity`).
type Layers<M, A, R> = Stack<
    Switch<BodyLimitLayer>,
    Stack<
        R,
        Stack<
            GrpcErrorLayer,
            Stack<
                FramingLayer,
                Stack<
                    A,
                    Stack<
                        Switch<TraceContextLayer>,
                        Stack<Switch<RequestIdLayer>, Stack<M, Identity>>,
                    >,
                >,
            >,
        >,
    >,
>;

/// Declares the stack, in the order a request meets it, and installs it.
fn stack<B: GatewayBody, M, A, R>(
    mux: &mut Mux<B>,
    config: &Config,
    stats: &Stats,
    metrics: M,
    access_log: A,
    recover: R,
) where
    Layers<M, A, R>: Layer<Route<B>> + Send + Sync + 'static,
    <Layers<M, A, R> as Layer<Route<B>>>::Service: IntoRoute<B>,
{
    let on = &config.pre;
    let max_body = config.server.max_body_bytes;
    let layers: Layers<M, A, R> = ServiceBuilder::new()
        .layer(metrics)
        // Every line the gateway logs about a request names its id itself: no span, whose
        // fields would be formatted for every request.
        .layer(Switch(
            on.request_id.then(|| RequestIdLayer::new().span(false)),
        ))
        .layer(Switch(on.trace_context.then(|| {
            TraceContextLayer::new().sample_ratio(on.trace_sample_ratio)
        })))
        .layer(access_log)
        .layer(FramingLayer::new())
        // Inside the access log and metrics: they see what the gRPC client gets (200 and a
        // grpc-status).
        .layer(GrpcErrorLayer::new())
        .layer(recover)
        .layer(Switch((max_body > 0).then(|| BodyLimitLayer {
            max: max_body,
            refused: Arc::clone(&stats.body_too_large),
        })))
        .into_inner();
    mux.pre(layers);
}

/// A layer that may be switched off and answers with the inner service's own response type:
/// either way the service has one type, with nothing mapped on the way out.
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
