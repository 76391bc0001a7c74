//! The gateway's middleware, as tower layers usable in any tower stack (our `router::Mux`,
//! axum, tonic, hyper-util):
//!
//! - [`RequestIdLayer`]: a valid inbound `X-Request-Id` is kept, otherwise one is made; it goes
//!   upstream, back to the client, into the request's extensions for every log line, and (unless
//!   turned off) into a tracing span around the request.
//! - [`RecoverLayer`]: a panic becomes a `500` and one error log line; a panic mid-body aborts
//!   that response.
//! - [`TimeoutLayer`]: a deadline; the inner future is dropped and the client gets `503`.
//! - [`AuthLayer`]: a header or bearer token must equal a configured secret, compared in
//!   constant time; otherwise `403`.
//! - [`AccessLogLayer`]: one structured event per request, however it ends.
//! - [`FramingLayer`]: a `Transfer-Encoding` other than one `chunked` gets `400` and a close.
//! - [`TraceContextLayer`]: W3C Trace Context: a valid `traceparent` is continued, anything
//!   else replaced by a new trace; the request goes on with the gateway's own span id.
//! - [`GrpcErrorLayer`]: an error answered to a gRPC call becomes a gRPC status
//!   (`grpc-status`, `grpc-message`), not an HTTP error page.
//! - [`MetricsLayer`] and [`RouteMetricsLayer`]: requests counted by route, method and status
//!   class, and timed, in series made once (no lock, no allocation per request).
//!
//! tower-http has layers with similar names; these differ where the gateway needs it: inbound
//! ids are validated, panics are logged with the request they hit and also caught in the body,
//! a deadline answers `503`, and secrets are compared in constant time.
//!
//! A gateway's usual order, outermost first:
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use middleware::{AccessLogLayer, AuthLayer, RecoverLayer, RequestIdLayer, Secrets, TimeoutLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .layer(RecoverLayer::new())
//!     .layer(AccessLogLayer::new())
//!     .layer(AuthLayer::header("x-admin-token", Secrets::new(["letmein"])?)?)
//!     .layer(TimeoutLayer::new(Duration::from_secs(30)))
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
//!     }));
//!
//! let req = Request::builder().header("x-admin-token", "letmein").body(())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert!(res.headers().contains_key("x-request-id"));
//! # Ok(())
//! # }
//! ```

pub mod access_log;
mod answer;
pub mod auth;
pub mod framing;
pub mod grpc;
pub mod metrics;
pub mod rate_limit;
pub mod recover;
pub mod request_id;
mod text;
pub mod timeout;
pub mod trace_context;

pub use access_log::AccessLogLayer;
pub use answer::AnswerOr;
pub use auth::{AuthError, AuthLayer, Secrets};
pub use framing::FramingLayer;
pub use grpc::GrpcErrorLayer;
pub use metrics::{MetricsLayer, RequestMetrics, RouteMetricsLayer};
pub use rate_limit::{RateLimitLayer, RateLimiter};
pub use recover::RecoverLayer;
pub use request_id::{RequestId, RequestIdLayer};
pub use timeout::TimeoutLayer;
pub use trace_context::TraceContextLayer;
