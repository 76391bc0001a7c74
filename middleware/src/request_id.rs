//! Request ids: accept a well-formed inbound `X-Request-Id`, or make one; put it on the request
//! going upstream, on the response, in the request's extensions (where every layer's log line
//! finds it), and, unless turned off, in a tracing span around the request.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use middleware::{RequestId, RequestIdLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service(service_fn(|req: Request<()>| async move {
//!         // Handlers (and the upstream) see the id as a header and as an extension.
//!         let id = req.extensions().get::<RequestId>().unwrap().as_str().to_owned();
//!         assert_eq!(req.headers()["x-request-id"], id.as_str());
//!         Ok::<_, Infallible>(Response::new(()))
//!     }));
//!
//! let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"].len(), 32); // generated: 128 bits, hex
//!
//! let req = Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123"); // a valid inbound id is kept
//! # }
//! ```

use std::task::{Context, Poll};

use http::header::Entry;
use http::{HeaderName, HeaderValue, Request, Response};
pub use httpkit::RequestId;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

/// The default header: `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds a request id to every request (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RequestIdLayer {
    header: HeaderName,
    trust_inbound: bool,
    span: bool,
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIdLayer {
    /// Uses `x-request-id` and keeps valid inbound ids.
    pub fn new() -> Self {
        RequestIdLayer {
            header: X_REQUEST_ID,
            trust_inbound: true,
            span: true,
        }
    }

    /// Uses another header name.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Whether a valid inbound id is kept (default) or always replaced, e.g. at an edge that
    /// does not want clients to choose ids.
    pub fn trust_inbound(mut self, trust: bool) -> Self {
        self.trust_inbound = trust;
        self
    }

    /// Whether the request runs in an `info` span named `request` with its id, method and path
    /// (default), so that every line logged inside names them. A server whose own lines all
    /// name the id (the gateway's do) turns it off: formatting the span's fields costs a few
    /// allocations per request.
    pub fn span(mut self, on: bool) -> Self {
        self.span = on;
        self
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    layer: RequestIdLayer,
}

impl<S, B, ResBody> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let header = &self.layer.header;
        let trust = self.layer.trust_inbound;
        // One lookup for reading an inbound id and writing the request's in its place.
        let (id, value) = match req.headers_mut().entry(header.clone()) {
            Entry::Occupied(mut lines) => {
                let mut values = lines.iter();
                // Exactly one valid inbound id is kept; two are as good as none.
                let kept = match (values.next(), values.next()) {
                    (Some(one), None) if trust => RequestId::parse(one),
                    _ => None,
                };
                let id = kept.unwrap_or_else(RequestId::generate);
                let value = never_indexed(&id);
                lines.insert(value.clone());
                (id, value)
            }
            Entry::Vacant(slot) => {
                let id = RequestId::generate();
                let value = never_indexed(&id);
                slot.insert(value.clone());
                (id, value)
            }
        };
        let span = if self.layer.span {
            tracing::info_span!(
                "request",
                request_id = %id,
                method = %req.method(),
                path = %req.uri().path(),
            )
        } else {
            tracing::Span::none()
        };
        req.extensions_mut().insert(id);
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        RequestIdFuture {
            inner: future.instrument(span),
            header: header.clone(),
            id: value,
        }
    }
}

/// `id` as a header value marked sensitive: one request's alone, it would only push entries
/// that repeat out of an HTTP/2 encoder's table. Marked so, it goes as a literal that is never
/// indexed (RFC 7541 §6.2.3); nothing changes over HTTP/1.1.
fn never_indexed(id: &RequestId) -> HeaderValue {
    let mut value = id.header_value().clone();
    value.set_sensitive(true);
    value
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestIdService`].
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        header: HeaderName,
        id: HeaderValue,
    }
}

impl<F, ResBody, E> std::future::Future for RequestIdFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            other => return other,
        };
        // The client sees the id the gateway logged, whatever the upstream answered.
        res.headers_mut()
            .insert(this.header.clone(), this.id.clone());
        Poll::Ready(Ok(res))
    }
}
