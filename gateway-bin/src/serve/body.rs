//! [`ServedBody`]: a request body as the gateway's routes see it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;

use httpkit::BoxError;

/// The body the gateway's routes see: the client's, capped at `max_body_bytes` (read by
/// hyper), or none at all (a request the inline HTTP/1.1 server read whole with its head).
#[derive(Debug)]
pub enum ServedBody {
    /// A body hyper reads from the client, capped at `max_body_bytes`.
    Client(Limited<Incoming>),
    /// A request that declared no body.
    Empty,
}

impl http_body::Body for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ServedBody::Client(body) => Pin::new(body).poll_frame(cx),
            ServedBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServedBody::Client(body) => body.is_end_stream(),
            ServedBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServedBody::Client(body) => body.size_hint(),
            ServedBody::Empty => SizeHint::with_exact(0),
        }
    }
}
