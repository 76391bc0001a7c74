//! Panic recovery: a panic in the inner service becomes a `500`, logged once with the
//! request's method, path and id; a panic while the body streams aborts that response.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use middleware::RecoverLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RecoverLayer::new())
//!     .service(service_fn(|_: Request<()>| async {
//!         if true {
//!             panic!("handler bug");
//!         }
//!         Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! # }
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use httpkit::{BoxError, LogIds, TextOr, text_response};
use telemetry::Counter;

use crate::text::escape_controls;

/// Turns panics into `500` responses (see the [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct RecoverLayer {
    panics: Option<Arc<Counter>>,
}

impl RecoverLayer {
    /// The layer.
    pub fn new() -> Self {
        RecoverLayer { panics: None }
    }

    /// Counts every panic caught in `panics`.
    pub fn count_panics(mut self, panics: Arc<Counter>) -> Self {
        self.panics = Some(panics);
        self
    }
}

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;
    fn layer(&self, inner: S) -> Recover<S> {
        Recover {
            inner,
            panics: self.panics.clone(),
        }
    }
}

/// The service made by [`RecoverLayer`].
#[derive(Debug, Clone)]
pub struct Recover<S> {
    inner: S,
    panics: Option<Arc<Counter>>,
}

/// What the log line says about the request that panicked.
#[derive(Debug, Clone)]
struct PanicContext {
    method: Method,
    /// The request's URI (a reference-counted copy); escaped only if a panic is logged.
    uri: http::Uri,
    ids: LogIds,
    panics: Option<Arc<Counter>>,
}

impl PanicContext {
    fn log(&self, panic: &(dyn Any + Send), during: &str) {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic without a message)");
        if let Some(panics) = &self.panics {
            panics.inc();
        }
        tracing::error!(
            panic = %escape_controls(message),
            method = %self.method,
            path = %escape_controls(self.uri.path()),
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
            "panic {during}"
        );
    }
}

impl<S, B, ResBody> Service<Request<B>> for Recover<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TextOr<RecoverBody<ResBody>>>;
    type Error = S::Error;
    type Future = RecoverFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let context = Box::new(PanicContext {
            method: req.method().clone(),
            uri: req.uri().clone(),
            ids: LogIds::of(req.extensions()),
            panics: self.panics.clone(),
        });
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => RecoverFuture {
                state: State::Running { future },
                context: Some(context),
            },
            Err(panic) => {
                context.log(&*panic, "in the service");
                RecoverFuture {
                    state: State::Panicked,
                    context: None,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`Recover`].
    pub struct RecoverFuture<F> {
        #[pin]
        state: State<F>,
        // Boxed: the future and then the response body carry it, and both are moved by
        // value through every layer outside this one; a pointer moves for less than its
        // 180-odd bytes.
        context: Option<Box<PanicContext>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        Panicked,
    }
}

fn internal_error<B>() -> Response<TextOr<RecoverBody<B>>> {
    text_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

impl<F, ResBody, E> Future for RecoverFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TextOr<RecoverBody<ResBody>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let future = match this.state.project() {
            StateProj::Running { future } => future,
            StateProj::Panicked => return Poll::Ready(Ok(internal_error())),
        };
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            Ok(Poll::Ready(Ok(res))) => {
                let context = this.context.take();
                Poll::Ready(Ok(res.map(|body| {
                    TextOr::inner(RecoverBody {
                        inner: body,
                        context,
                        done: false,
                    })
                })))
            }
            Err(panic) => {
                if let Some(context) = this.context.take() {
                    context.log(&*panic, "in the service");
                }
                Poll::Ready(Ok(internal_error()))
            }
        }
    }
}

pin_project! {
    /// A response body that turns a panic while streaming into an error, which makes the
    /// server abort the response: the status line is already sent, so a second one cannot be.
    pub struct RecoverBody<B> {
        #[pin]
        inner: B,
        context: Option<Box<PanicContext>>,
        done: bool,
    }
}

/// The error a [`RecoverBody`] yields after its body panicked.
#[derive(Debug, thiserror::Error)]
#[error("the response body panicked; the response was aborted")]
pub struct BodyPanicked;

impl<B> http_body::Body for RecoverBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let inner = this.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(Poll::Ready(Some(Err(e)))) => Poll::Ready(Some(Err(e.into()))),
            Ok(Poll::Ready(Some(Ok(frame)))) => Poll::Ready(Some(Ok(frame))),
            Ok(Poll::Ready(None)) => Poll::Ready(None),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => {
                *this.done = true;
                if let Some(context) = this.context.take() {
                    context.log(&*panic, "while streaming the response body");
                }
                Poll::Ready(Some(Err(Box::new(BodyPanicked))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
