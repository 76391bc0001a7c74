//! The HTTP pieces every crate of the gateway shares, so that each exists once: the response
//! [`Body`] (empty, one buffer, or a boxed stream), [`TextOr`] (a layer's own short answer or
//! the inner body, unboxed), [`text_response`] for every plain-text answer, [`BoxError`], the
//! [`RequestId`] and [`TraceContext`] every log line of a request names, and the [`hop_by_hop`]
//! header rules (RFC 9110 §7.6.1), and the [`h1`] rules both HTTP/1.1 codecs read heads by (values, lengths, header places).
//! No I/O.
//!
//! ```
//! use http::StatusCode;
//! use httpkit::{Body, TextOr, text_response};
//!
//! let not_found: http::Response<Body> = text_response(StatusCode::NOT_FOUND, "Not Found\n");
//! assert_eq!(not_found.headers()["content-type"], "text/plain; charset=utf-8");
//!
//! // A layer that answers by itself or passes the inner body on, without boxing either.
//! let refused: http::Response<TextOr<Body>> = text_response(StatusCode::FORBIDDEN, "Forbidden\n");
//! assert_eq!(refused.status(), 403);
//! ```

mod body;
pub mod grpc;
pub mod h1;
pub mod hop_by_hop;
mod random;
mod request_id;
mod text;
pub mod trace;

pub use body::Body;
pub use request_id::{LogIds, RequestId};
pub use text::{TextOr, text_response};
pub use trace::{TraceContext, TraceId};

/// A boxed error, as bodies and services carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
