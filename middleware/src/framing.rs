//! Request framing a gateway refuses before anything else reads the request: a
//! `Transfer-Encoding` other than one `chunked` (`identity, chunked`, `gzip, chunked`, two
//! lines), which hyper lets through and a smuggling attempt relies on, and an HTTP/1.1 request
//! without exactly one `Host` (RFC 9112 section 3.2: which virtual host it meant cannot be
//! known). The answer is `400`
//! with `Connection: close`: after a framing error nothing else on the connection can be
//! trusted. nginx refuses the same set.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use middleware::FramingLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(FramingLayer::new())
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! let req = Request::post("/").header("transfer-encoding", "gzip, chunked").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::BAD_REQUEST);
//! assert_eq!(res.headers()["connection"], "close");
//! # }
//! ```

use std::task::{Context, Poll};

use http::header::{CONNECTION, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use httpkit::hop_by_hop::odd_transfer_encoding;
use httpkit::{TextOr, text_response};
use tower_layer::Layer;
use tower_service::Service;

use crate::answer::{AnswerOr, answer_with, pass};

/// Refuses requests with odd framing (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct FramingLayer(());

impl FramingLayer {
    /// The layer.
    pub fn new() -> Self {
        FramingLayer(())
    }
}

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;
    fn layer(&self, inner: S) -> Framing<S> {
        Framing { inner }
    }
}

/// The service made by [`FramingLayer`].
#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for Framing<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TextOr<ResBody>>;
    type Error = S::Error;
    type Future = AnswerOr<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (odd, text) = if odd_transfer_encoding(req.headers()) {
            ("Transfer-Encoding", "Bad Request: Transfer-Encoding\n")
        } else if req.version() == Version::HTTP_11 && !one_host(req.headers()) {
            ("Host", "Bad Request: Host\n")
        } else {
            return pass(self.inner.call(req));
        };
        tracing::info!(
            request_id = %httpkit::RequestId::logged(req.extensions()),
            trace_id = %httpkit::TraceContext::logged(req.extensions()),
            "request refused: odd {odd}"
        );
        let mut res = text_response(StatusCode::BAD_REQUEST, text);
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        answer_with(res)
    }
}

/// RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one `Host`, or it gets `400`
/// (which virtual host it meant cannot be known).
fn one_host(headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    hosts.next().is_some() && hosts.next().is_none()
}
