//! A response body read from its connection as the client's side polls it: no task between
//! the two. Once it has ended, the connection can be taken back for the pool.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::decode::{Decoder, Step};
use super::{Wire, WireError};

/// The body of a response that came on a [`Wire`].
pub(crate) struct WireBody {
    /// `None` once the body failed: the connection is gone.
    wire: Option<Wire>,
    decoder: Decoder,
    /// The length the head declared (a body without one has no exact size, ended or not).
    sized: bool,
}

impl WireBody {
    pub(crate) fn new(wire: Wire, decoder: Decoder) -> WireBody {
        WireBody {
            wire: Some(wire),
            sized: decoder.remaining().is_some(),
            decoder,
        }
    }

    /// The connection, once the body has ended with nothing unread after it.
    pub(crate) fn take_wire(&mut self) -> Option<Wire> {
        if !self.decoder.is_done() {
            return None;
        }
        self.wire.take().filter(Wire::is_clean)
    }
}

impl http_body::Body for WireBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let s = self.get_mut();
        loop {
            let Some(wire) = s.wire.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match s.decoder.step(&mut wire.buf, wire.closed) {
                Ok(step) => step,
                Err(e) => {
                    s.wire = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match step {
                Step::Data(d) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Step::Trailers(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Step::End => return Poll::Ready(None),
                Step::More => {
                    if let Err(e) = std::task::ready!(wire.poll_fill(cx)) {
                        s.wire = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) if self.sized => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
