//! An HTTP/2 response body as an [`http_body::Body`]: data as it arrives, the window given
//! back to the upstream as each frame is handed on (so the client's pace is the upstream's),
//! then the trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::StreamSlot;

/// The upstream's response body on an HTTP/2 stream.
pub(crate) struct H2Body {
    recv: h2::RecvStream,
    /// All the data came; the trailers (if any) are next.
    data_done: bool,
    /// From the response's `content-length`, when it had one.
    length: Option<u64>,
    /// The stream counts against its connection's limit until the body is gone.
    _slot: Arc<StreamSlot>,
}

impl H2Body {
    pub(crate) fn new(recv: h2::RecvStream, length: Option<u64>, slot: Arc<StreamSlot>) -> Self {
        H2Body {
            recv,
            data_done: false,
            length,
            _slot: slot,
        }
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // Handed on: the upstream may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
