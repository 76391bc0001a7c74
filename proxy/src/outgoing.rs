//! The request body as sent upstream, with how far it got: a failure the client causes (a
//! malformed or oversized body, a client that stops sending) is then told apart from the
//! upstream's.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use httpkit::BoxError;

use crate::tap::BodyTap;

/// How far the client's request body got, as the attempt that owns it last saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Progress {
    /// Not polled yet.
    NotStarted = 0,
    /// The last poll waited for the client.
    WaitingForClient = 1,
    /// The last poll returned data: any wait now is the upstream's.
    Flowing = 2,
    /// All of it was sent.
    Done = 3,
    /// The client sent more than the server's body limit.
    TooLarge = 4,
    /// The client's body failed (malformed chunked framing, the client went away).
    Failed = 5,
}

/// How far the client's body got, shared between the body as sent upstream and the proxy's
/// future.
#[derive(Debug, Default)]
pub(crate) struct BodyProgress(AtomicU8);

impl BodyProgress {
    fn set(&self, p: Progress) {
        self.0.store(p as u8, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Progress {
        match self.0.load(Ordering::Relaxed) {
            0 => Progress::NotStarted,
            1 => Progress::WaitingForClient,
            2 => Progress::Flowing,
            3 => Progress::Done,
            4 => Progress::TooLarge,
            _ => Progress::Failed,
        }
    }
}

/// The request body as sent upstream: empty, or the client's body with its progress recorded.
/// The request is built once; hyper hands it back whole when it could not be written, so the
/// body never needs to move between attempts.
pub(crate) struct Outgoing<B> {
    body: Option<(B, Arc<BodyProgress>)>,
    hint: SizeHint,
    /// A mirror's copy of what is sent.
    tap: Option<BodyTap>,
}

impl<B> Outgoing<B> {
    pub(crate) fn empty() -> Self {
        Outgoing {
            body: None,
            hint: SizeHint::with_exact(0),
            tap: None,
        }
    }

    pub(crate) fn tracked(
        body: B,
        progress: Arc<BodyProgress>,
        hint: SizeHint,
        tap: Option<BodyTap>,
    ) -> Self {
        Outgoing {
            body: Some((body, progress)),
            hint,
            tap,
        }
    }

    /// Whether there is no body at all (a request that can be sent again as it is).
    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_none()
    }
}

impl<B> http_body::Body for Outgoing<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some((body, progress)) = &mut this.body else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx).map_err(Into::into);
        if let Some(tap) = &this.tap {
            match &polled {
                Poll::Pending => {}
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        tap.data(data);
                    }
                    // hyper stops polling a body that says it has ended.
                    if body.is_end_stream() {
                        tap.end();
                    }
                }
                Poll::Ready(None) => tap.end(),
                Poll::Ready(Some(Err(_))) => tap.abandon(),
            }
        }
        progress.set(match &polled {
            Poll::Pending => Progress::WaitingForClient,
            Poll::Ready(Some(Ok(_))) => Progress::Flowing,
            Poll::Ready(None) => Progress::Done,
            Poll::Ready(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                Progress::TooLarge
            }
            Poll::Ready(Some(Err(_))) => Progress::Failed,
        });
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|(b, _)| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
