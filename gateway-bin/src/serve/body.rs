//! [`ServedBody`]: a request body as the gateway's routes see it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;

use httpkit::BoxError;

/// The body the gateway's routes see: the client's, capped at `max_body_bytes`, as hyper reads
/// it, or as the inline HTTP/1.1 server read it whole with its head (none, or a small one).
#[derive(Debug)]
pub enum ServedBody {
    /// A body hyper reads from the client, capped at `max_body_bytes`.
    Client(Limited<Incoming>),
    /// A request that declared no body.
    Empty,
    /// A small body that came whole with its head (until it is read).
    Full(Option<Bytes>),
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
            ServedBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServedBody::Client(body) => body.is_end_stream(),
            ServedBody::Empty => true,
            ServedBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServedBody::Client(body) => body.size_hint(),
            ServedBody::Empty => SizeHint::with_exact(0),
            ServedBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
