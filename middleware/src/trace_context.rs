//! W3C Trace Context at the edge: a valid inbound `traceparent` is continued, anything else is
//! replaced by a new trace; the request goes on with a `traceparent` naming the gateway's own
//! span, and the [`TraceContext`] in its extensions for every log line to name.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use httpkit::TraceContext;
//! use middleware::TraceContextLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = TraceContextLayer::new().layer(service_fn(|req: Request<()>| async move {
//!     let ctx = *req.extensions().get::<TraceContext>().unwrap();
//!     assert_eq!(req.headers()["traceparent"], ctx.traceparent());
//!     Ok::<_, Infallible>(Response::new(ctx.trace_id().to_string()))
//! }));
//! let req = Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(())
//!     .unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.body(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.body().len(), 32); // a new trace
//! # }
//! ```

use std::task::{Context, Poll};

use http::Request;
use http::header::Entry;
use httpkit::TraceContext;
use httpkit::trace::{TRACEPARENT, TRACESTATE, tracestate};
use tower_layer::Layer;
use tower_service::Service;

/// Continues or starts a trace for every request (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct TraceContextLayer {
    sample_ratio: f64,
}

impl Default for TraceContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceContextLayer {
    /// Traces started here are all sampled.
    pub fn new() -> Self {
        TraceContextLayer { sample_ratio: 1.0 }
    }

    /// The share (0 to 1) of the traces started here that are marked sampled; a continued
    /// trace keeps its caller's decision.
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = if ratio.is_nan() {
            1.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService {
            inner,
            sample_ratio: self.sample_ratio,
        }
    }
}

/// The service made by [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
    sample_ratio: f64,
}

impl<S, B> Service<Request<B>> for TraceContextService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let headers = req.headers_mut();
        // One lookup for reading the inbound `traceparent` and writing ours in its place.
        let (ctx, parent) = match headers.entry(TRACEPARENT) {
            Entry::Occupied(mut lines) => {
                let mut values = lines.iter();
                // Exactly one valid `traceparent`; two are as good as none.
                let parent = match (values.next(), values.next()) {
                    (Some(one), None) => TraceContext::parse(one.as_bytes()),
                    _ => None,
                };
                let ctx = match &parent {
                    Some(parent) => TraceContext::child_of(parent),
                    None => TraceContext::start_sampled(self.sample_ratio),
                };
                lines.insert(ctx.traceparent());
                (ctx, parent)
            }
            Entry::Vacant(slot) => {
                let ctx = TraceContext::start_sampled(self.sample_ratio);
                slot.insert(ctx.traceparent());
                (ctx, None)
            }
        };
        // `tracestate` only travels with the `traceparent` it belongs to.
        let state = parent.and_then(|_| {
            let lines: Vec<&[u8]> = headers
                .get_all(TRACESTATE)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            tracestate(&lines)
        });
        match state {
            Some(state) => {
                headers.insert(TRACESTATE, state);
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
        req.extensions_mut().insert(ctx);
        self.inner.call(req)
    }
}
