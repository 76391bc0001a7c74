//! A deadline on the inner service: when it passes, the inner future is dropped (which
//! cancels whatever it was doing, an upstream call included) and the client gets `503`.
//!
//! The deadline covers the response head; a body that is already streaming is not cut.
//! Apply one layer per route for per-route durations.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use middleware::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let slow = service_fn(|_: Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(60)).await;
//!     Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! });
//! let svc = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_secs(5))).service(slow);
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use httpkit::{LogIds, TextOr, text_response};
use telemetry::Counter;

/// Answers `503 Service Unavailable` when the inner service takes longer than a duration.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    duration: Duration,
    expired: Option<Arc<Counter>>,
}

impl TimeoutLayer {
    /// A deadline of `duration` from the call.
    pub fn new(duration: Duration) -> Self {
        TimeoutLayer {
            duration,
            expired: None,
        }
    }

    /// Counts every request cut by the deadline in `expired`.
    pub fn count_expired(mut self, expired: Arc<Counter>) -> Self {
        self.expired = Some(expired);
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            duration: self.duration,
            expired: self.expired.clone(),
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    duration: Duration,
    expired: Option<Arc<Counter>>,
}

impl<S, B, ResBody> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TextOr<ResBody>>;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ids = LogIds::of(req.extensions());
        TimeoutFuture {
            ids,
            inner: Some(self.inner.call(req)),
            sleep: tokio::time::sleep(self.duration),
            duration: self.duration,
            expired: self.expired.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    pub struct TimeoutFuture<F> {
        // `Option` so the inner future can be dropped the moment the deadline passes.
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Sleep,
        duration: Duration,
        ids: LogIds,
        expired: Option<Arc<Counter>>,
    }
}

impl<F, ResBody, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TextOr<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(inner) = this.inner.as_mut().as_pin_mut()
            && let Poll::Ready(out) = inner.poll(cx)
        {
            this.inner.set(None);
            return Poll::Ready(out.map(|res| res.map(TextOr::inner)));
        }
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.inner.set(None);
        if let Some(expired) = this.expired.as_ref() {
            expired.inc();
        }
        tracing::warn!(
            request_id = %this.ids.request(),
            trace_id = %this.ids.trace(),
            timeout_ms = this.duration.as_millis() as u64,
            "deadline passed; request cancelled"
        );
        let mut res = text_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
        // A gRPC client is told its call ran out of time, not that the service is down.
        res.extensions_mut()
            .insert(httpkit::grpc::Code::DeadlineExceeded);
        Poll::Ready(Ok(res))
    }
}
