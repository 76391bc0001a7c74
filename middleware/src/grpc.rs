//! [`GrpcErrorLayer`]: a gRPC client gets gRPC errors. An answer of `400` and above to a gRPC
//! request (`content-type: application/grpc*`) that is not itself gRPC (a `404` of the router,
//! a `429` of a rate limit, a `503` or `504` of the proxy, an upstream's HTML error page)
//! becomes HTTP `200` with `grpc-status` and `grpc-message` and no body, the trailers-only form
//! every gRPC client reads: gRPC clients otherwise see `UNKNOWN` or a protocol error for a
//! plain `502`. The code follows [`Code::for_status`], or a [`Code`] the answering layer put in
//! the response's extensions (a route timeout's `503` is `DEADLINE_EXCEEDED`). Other requests,
//! and gRPC responses, pass untouched.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use middleware::GrpcErrorLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new().layer(GrpcErrorLayer::new()).service(service_fn(
//!     |_: Request<()>| async {
//!         let mut res = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
//!         *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
//!         Ok::<_, Infallible>(res)
//!     },
//! ));
//! let call = Request::builder()
//!     .uri("/echo.Echo/Unary")
//!     .header("content-type", "application/grpc")
//!     .body(())?;
//! let res = svc.oneshot(call).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use httpkit::TextOr;
use httpkit::grpc::{self, Code};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// Makes the errors a gRPC client gets gRPC errors (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcErrorLayer(());

impl GrpcErrorLayer {
    /// The layer.
    pub fn new() -> Self {
        GrpcErrorLayer(())
    }
}

impl<S> Layer<S> for GrpcErrorLayer {
    type Service = GrpcErrors<S>;
    fn layer(&self, inner: S) -> GrpcErrors<S> {
        GrpcErrors { inner }
    }
}

/// The service made by [`GrpcErrorLayer`].
#[derive(Debug, Clone)]
pub struct GrpcErrors<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for GrpcErrors<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TextOr<ResBody>>;
    type Error = S::Error;
    type Future = GrpcErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        GrpcErrorsFuture {
            grpc: grpc::is_grpc(req.headers()),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcErrors`].
    pub struct GrpcErrorsFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, ResBody, E> Future for GrpcErrorsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TextOr<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(res)) => res,
        };
        if !*this.grpc || !needs_conversion(&res) {
            return Poll::Ready(Ok(res.map(TextOr::inner)));
        }
        let (mut head, _body) = res.into_parts();
        let status = head.status;
        let code = head
            .extensions
            .get::<Code>()
            .copied()
            .unwrap_or_else(|| Code::for_status(status));
        let message = format!(
            "HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        head.status = StatusCode::OK;
        grpc::set_error(&mut head.headers, code, message.trim_end());
        Poll::Ready(Ok(Response::from_parts(head, TextOr::Text { text: None })))
    }
}

/// An error that is not already a gRPC response.
fn needs_conversion<T>(res: &Response<T>) -> bool {
    (res.status().as_u16() >= 400 || res.extensions().get::<Code>().is_some())
        && !grpc::is_grpc(res.headers())
        && !res.headers().contains_key(grpc::STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    async fn answer(
        status: u16,
        content_type: &'static str,
        hint: Option<Code>,
        request_type: &'static str,
    ) -> Response<TextOr<http_body_util::Full<bytes::Bytes>>> {
        let svc = ServiceBuilder::new()
            .layer(GrpcErrorLayer::new())
            .service(service_fn(move |_: Request<()>| async move {
                let mut res = Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    "<html>bad gateway</html>",
                )));
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                res.headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
                if let Some(code) = hint {
                    res.extensions_mut().insert(code);
                }
                Ok::<_, Infallible>(res)
            }));
        let req = Request::builder()
            .header("content-type", request_type)
            .body(())
            .unwrap();
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn gateway_errors_become_grpc_statuses() {
        for (status, code) in [
            (502, "14"),
            (503, "14"),
            (504, "4"),
            (429, "8"),
            (404, "12"),
            (401, "16"),
            (403, "7"),
            (500, "13"),
        ] {
            let res = answer(status, "text/html", None, "application/grpc").await;
            assert_eq!(res.status(), 200, "{status}");
            assert_eq!(res.headers()["grpc-status"], code, "{status}");
            assert_eq!(res.headers()["content-type"], "application/grpc");
            assert!(http_body::Body::is_end_stream(res.body()), "{status}");
        }
        let res = answer(
            503,
            "text/plain",
            Some(Code::DeadlineExceeded),
            "application/grpc",
        )
        .await;
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(
            res.headers()["grpc-message"],
            "HTTP 503 Service Unavailable"
        );
    }

    #[tokio::test]
    async fn grpc_answers_and_other_requests_pass_untouched() {
        let res = answer(502, "text/html", None, "application/json").await;
        assert_eq!(res.status(), 502);
        assert!(!res.headers().contains_key("grpc-status"));
        let res = answer(200, "application/grpc", None, "application/grpc").await;
        assert_eq!(res.status(), 200);
        assert!(!res.headers().contains_key("grpc-status"));
        let res = answer(503, "application/grpc", None, "application/grpc").await;
        assert_eq!(res.status(), 503);
    }
}
