//! The request body as sent upstream, with how far it got: a failure the client causes (a
//! malformed or oversized body, a client that stops sending) is then told apart from the
//! upstream's. Over HTTP/2 a copy of a small body is kept ([`Recording`]), so that a stream
//! the upstream refused unprocessed can go again.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// The request body as sent upstream: empty, the client's body with its progress recorded,
/// or a copy of a body sent before ([`Recording`]). The request is built once; hyper hands it
/// back whole when it could not be written, so the body never needs to move between attempts
/// on HTTP/1.1.
pub(crate) struct Outgoing<B> {
    body: Option<Source<B>>,
    hint: SizeHint,
    /// A mirror's copy of what is sent.
    tap: Option<BodyTap>,
    /// A copy kept to send the body again (HTTP/2: a stream the upstream refused).
    record: Option<Arc<Recording>>,
}

enum Source<B> {
    Client(B, Arc<BodyProgress>),
    Replay(VecDeque<Kept>),
    /// What was sent before, then the rest of the body as it was left.
    Resumed(VecDeque<Kept>, Box<Outgoing<B>>),
}

/// A frame of a body, as kept.
#[derive(Clone)]
enum Kept {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl Kept {
    fn into_frame(self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data),
            Kept::Trailers(trailers) => Frame::trailers(trailers),
        }
    }
}

/// A copy of a request body as it is sent, up to a limit, so that a request an upstream
/// refused without processing it can go again whole.
#[derive(Default)]
pub(crate) struct Recording(Mutex<Recorded>);

#[derive(Default)]
struct Recorded {
    frames: Vec<Kept>,
    bytes: usize,
    limit: usize,
    complete: bool,
    overflowed: bool,
}

impl Recording {
    fn keep(&self, frame: &Frame<Bytes>) {
        let mut r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if r.overflowed {
            return;
        }
        if let Some(data) = frame.data_ref() {
            r.bytes += data.len();
            if r.bytes > r.limit {
                r.overflowed = true;
                r.frames = Vec::new();
                return;
            }
            r.frames.push(Kept::Data(data.clone()));
        } else if let Some(trailers) = frame.trailers_ref() {
            r.frames.push(Kept::Trailers(trailers.clone()));
        }
    }

    fn complete(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .complete = true;
    }

    /// The body again: what was kept, then `rest` (the part not yet read when the stream
    /// was refused); `None` if what was read was too large to keep.
    pub(crate) fn resume<B>(&self, rest: Outgoing<B>, hint: SizeHint) -> Option<Outgoing<B>> {
        let r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!r.overflowed).then(|| Outgoing {
            body: Some(Source::Resumed(
                r.frames.iter().cloned().collect(),
                Box::new(rest),
            )),
            hint,
            tap: None,
            record: None,
        })
    }

    /// The body again, if all of it was sent and kept.
    pub(crate) fn replay<B>(&self, hint: SizeHint) -> Option<Outgoing<B>> {
        let r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (r.complete && !r.overflowed).then(|| Outgoing {
            body: Some(Source::Replay(r.frames.iter().cloned().collect())),
            hint,
            tap: None,
            record: None,
        })
    }
}

impl<B> Outgoing<B> {
    pub(crate) fn empty() -> Self {
        Outgoing {
            body: None,
            hint: SizeHint::with_exact(0),
            tap: None,
            record: None,
        }
    }

    pub(crate) fn tracked(
        body: B,
        progress: Arc<BodyProgress>,
        hint: SizeHint,
        tap: Option<BodyTap>,
    ) -> Self {
        Outgoing {
            body: Some(Source::Client(body, progress)),
            hint,
            tap,
            record: None,
        }
    }

    /// Keeps a copy of the body as it is sent, up to `limit` bytes.
    pub(crate) fn record(&mut self, limit: usize) -> Arc<Recording> {
        let recording = Arc::new(Recording(Mutex::new(Recorded {
            limit,
            ..Recorded::default()
        })));
        self.record = Some(Arc::clone(&recording));
        recording
    }

    /// Whether there is no body at all (a request that can be sent again as it is).
    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_none()
    }

    /// What it says of its length.
    pub(crate) fn hint(&self) -> SizeHint {
        self.hint
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
        let polled = match &mut this.body {
            None => return Poll::Ready(None),
            Some(Source::Replay(frames)) => {
                Poll::Ready(frames.pop_front().map(|kept| Ok(kept.into_frame())))
            }
            Some(Source::Resumed(frames, rest)) => match frames.pop_front() {
                Some(kept) => Poll::Ready(Some(Ok(kept.into_frame()))),
                None => Pin::new(&mut **rest).poll_frame(cx),
            },
            Some(Source::Client(body, progress)) => {
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
        };
        // Whatever the source, a copy for sending again (kept whole only if it ended).
        if let Some(record) = &this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    record.keep(frame);
                    if this.is_end_stream() {
                        record.complete();
                    }
                }
                Poll::Ready(None) => record.complete(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            None => true,
            Some(Source::Replay(frames)) => frames.is_empty(),
            Some(Source::Resumed(frames, rest)) => frames.is_empty() && rest.is_end_stream(),
            Some(Source::Client(b, _)) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
