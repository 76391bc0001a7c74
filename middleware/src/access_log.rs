//! The access log: one structured `tracing` event per request, when its response is complete
//! (the body's end, or its drop when the client goes away first).
//!
//! Every request the layer sees gets exactly one event, however it ends. Fields: `method`,
//! `path`, `status`, `bytes` (response body bytes sent), `duration_ms`, `request_id` (from
//! [`RequestIdLayer`](crate::RequestIdLayer), `-` without it), `upstream` (a value of the type
//! chosen with [`AccessLogLayer::upstream`] that the proxy puts in the response's extensions,
//! `-` without it), `complete` (whether the whole response was sent) and `ended`, how it
//! ended:
//! - `complete`: the body was sent to its end;
//! - `client_gone`: the client went away before the response head (status `499`, as nginx
//!   logs it);
//! - `body_dropped`: the body was dropped unfinished (the client went away mid-response);
//! - `body_error`: the body failed (an upstream that cut it short);
//! - `service_error`: the inner service failed without a response (status `0`).
//!
//! The event's target is `access_log`, so a subscriber can route it apart.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use middleware::AccessLogLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! /// What our proxy records about the target it used.
//! #[derive(Clone, Debug)]
//! struct Upstream(&'static str);
//! impl std::fmt::Display for Upstream {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.0) }
//! }
//!
//! let svc = ServiceBuilder::new()
//!     .layer(AccessLogLayer::new().upstream::<Upstream>())
//!     .service(service_fn(|_: Request<()>| async {
//!         let mut res = Response::new(http_body_util::Full::new(bytes::Bytes::from("hi")));
//!         res.extensions_mut().insert(Upstream("127.0.0.1:9001"));
//!         Ok::<_, Infallible>(res)
//!     }));
//! # let _ = svc;
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::{Method, Request, Response};
use http_body::Frame;
use pin_project_lite::pin_project;
use telemetry::clock;
use tower_layer::Layer;
use tower_service::Service;

use crate::request_id::RequestId;
use crate::text::escape_controls;
use httpkit::{TraceContext, TraceId};

/// The default upstream type: never present, logged as `-`.
#[derive(Debug, Clone, Copy)]
pub struct NoUpstream;

impl fmt::Display for NoUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("-")
    }
}

/// Logs one event per request (see the [module docs](self)).
pub struct AccessLogLayer<U = NoUpstream> {
    upstream: PhantomData<fn() -> U>,
}

impl<U> Clone for AccessLogLayer<U> {
    fn clone(&self) -> Self {
        AccessLogLayer {
            upstream: PhantomData,
        }
    }
}

impl<U> fmt::Debug for AccessLogLayer<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessLogLayer")
    }
}

impl Default for AccessLogLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLogLayer {
    /// The layer, with no upstream field.
    pub fn new() -> Self {
        AccessLogLayer {
            upstream: PhantomData,
        }
    }
}

impl<U> AccessLogLayer<U> {
    /// Logs as `upstream` the value of type `V` found in the response's extensions.
    pub fn upstream<V: fmt::Display + Send + Sync + 'static>(self) -> AccessLogLayer<V> {
        AccessLogLayer {
            upstream: PhantomData,
        }
    }
}

impl<S, U> Layer<S> for AccessLogLayer<U> {
    type Service = AccessLog<S, U>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            upstream: PhantomData,
        }
    }
}

/// The service made by [`AccessLogLayer`].
pub struct AccessLog<S, U> {
    inner: S,
    upstream: PhantomData<fn() -> U>,
}

impl<S: Clone, U> Clone for AccessLog<S, U> {
    fn clone(&self) -> Self {
        AccessLog {
            inner: self.inner.clone(),
            upstream: PhantomData,
        }
    }
}

impl<S: fmt::Debug, U> fmt::Debug for AccessLog<S, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("inner", &self.inner)
            .finish()
    }
}

/// What the event will say, gathered along the way.
#[derive(Debug)]
struct Record {
    method: Method,
    path: String,
    request_id: Option<RequestId>,
    trace_id: TraceId,
    start: Instant,
    status: u16,
    upstream: Option<String>,
    bytes: u64,
}

/// How a request ended, as the `ended` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Complete,
    ClientGone,
    BodyDropped,
    BodyError,
    ServiceError,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Complete => "complete",
            Ended::ClientGone => "client_gone",
            Ended::BodyDropped => "body_dropped",
            Ended::BodyError => "body_error",
            Ended::ServiceError => "service_error",
        }
    }
}

/// nginx's status for a request whose client closed the connection before the response.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Record {
    fn emit(&self, ended: Ended) {
        let complete = ended == Ended::Complete;
        tracing::info!(
            target: "access_log",
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = clock::now().saturating_duration_since(self.start).as_secs_f64() * 1000.0,
            request_id = %self.request_id.as_ref().map_or("-", RequestId::as_str),
            trace_id = %self.trace_id,
            upstream = %self.upstream.as_deref().unwrap_or("-"),
            complete,
            ended = ended.as_str(),
            "request"
        );
    }
}

impl<S, U, B, ResBody> Service<Request<B>> for AccessLog<S, U>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    U: fmt::Display + Send + Sync + 'static,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future, U>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = Record {
            method: req.method().clone(),
            path: escape_controls(req.uri().path()),
            request_id: req.extensions().get::<RequestId>().cloned(),
            trace_id: TraceContext::logged(req.extensions()),
            start: clock::now(),
            status: 0,
            upstream: None,
            bytes: 0,
        };
        AccessLogFuture {
            inner: self.inner.call(req),
            record: Some(record),
            upstream: PhantomData,
        }
    }
}

pin_project! {
    /// The response future of [`AccessLog`]; dropped before it finishes (the client went
    /// away), it logs the request as `client_gone`.
    pub struct AccessLogFuture<F, U> {
        #[pin]
        inner: F,
        record: Option<Record>,
        upstream: PhantomData<fn() -> U>,
    }

    impl<F, U> PinnedDrop for AccessLogFuture<F, U> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(mut record) = this.project().record.take() {
                record.status = CLIENT_CLOSED_REQUEST;
                record.emit(Ended::ClientGone);
            }
        }
    }
}

impl<F, U, ResBody, E> Future for AccessLogFuture<F, U>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body,
    U: fmt::Display + Send + Sync + 'static,
{
    type Output = Result<Response<LoggedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        let mut record = this.record.take();
        match out {
            Ok(res) => {
                if let Some(r) = record.as_mut() {
                    r.status = res.status().as_u16();
                    r.upstream = res.extensions().get::<U>().map(ToString::to_string);
                }
                // A server does not poll a body it knows is empty: log that one now.
                if res.body().is_end_stream()
                    && let Some(r) = record.take()
                {
                    r.emit(Ended::Complete);
                }
                Poll::Ready(Ok(res.map(|inner| LoggedBody { inner, record })))
            }
            Err(e) => {
                // The service failed without a response: log it now, status 0.
                if let Some(r) = record {
                    r.emit(Ended::ServiceError);
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

pin_project! {
    /// A response body that counts its bytes and logs the request when it ends or is dropped.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(record) = this.project().record.take() {
                record.emit(Ended::BodyDropped);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                    r.bytes += data.remaining() as u64;
                }
                // The last frame of a body of known length: servers stop polling here.
                if inner.is_end_stream()
                    && let Some(record) = this.record.take()
                {
                    record.emit(Ended::Complete);
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = this.record.take() {
                    record.emit(Ended::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = this.record.take() {
                    record.emit(Ended::BodyError);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
