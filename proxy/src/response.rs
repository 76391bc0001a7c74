//! [`ProxyBody`]: the response body the client gets, either the upstream's ([`UpstreamBody`]:
//! streamed, its connection back to the pool once it ends, cut when the upstream stalls) or a
//! short text the proxy answered itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use balancer::{InFlight, Outcome, Picked};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use httpkit::{BoxError, LogIds, TextOr};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::outgoing::Outgoing;
use crate::pool::{Link, Parked, Pool};
use crate::target::TargetAddr;
use crate::upstream::Upstream;

/// The response body: the upstream's, streamed as it arrives, or a short text the proxy
/// answered itself. `B` is the request body type.
pub type ProxyBody<B> = TextOr<UpstreamBody<B>>;

/// An upstream's response body on its way to the client: its connection goes back to the
/// pool once it ends, a failure is logged and counted against the target, and an upstream
/// silent for the response timeout mid-body cuts it. Its state is boxed: the response is
/// moved by value through the proxy's and the layers' futures several times per request,
/// and a pointer moves for less than the state's 300-odd bytes.
pub struct UpstreamBody<B>(Box<BodyState<B>>);

/// What an [`UpstreamBody`] holds.
struct BodyState<B> {
    body: Received,
    _in_flight: InFlight,
    /// Taken when the body fails or ends, so it is reported at most once.
    health: Option<(Arc<Upstream>, Picked<TargetAddr>)>,
    /// The connection, back to the pool once the body has ended (if reusable), closed if the
    /// body fails or is dropped.
    back: Option<Back<B>>,
    /// The request's ids, for the lines logged once the request's future is gone.
    ids: LogIds,
    /// The longest the upstream may stay silent mid-body.
    timeout: Duration,
    /// Armed while waiting for the upstream; re-armed only when it fires after progress.
    timer: Option<Pin<Box<Sleep>>>,
    frames: u64,
    frames_at_arm: u64,
    /// See [`Coalesce`]; `None` when the body is not coalesced. Boxed: most bodies have a
    /// length and do without, and the response moves around by value.
    coalesce: Option<Box<Coalesce>>,
    /// A gRPC call's deadline (`grpc-timeout`): when it passes, the upstream's stream is
    /// dropped and the body ends with `grpc-status: 4` (`DEADLINE_EXCEEDED`).
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The body as it arrives: on an HTTP/1.1 connection, on an HTTP/2 stream, or no longer
/// (cut at a gRPC deadline).
pub(crate) enum Received {
    H1(Incoming),
    /// On a connection the request's task reads itself.
    Wire(crate::wire::WireBody),
    H2(crate::h2::H2Body),
    Cut,
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Received::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::Wire(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::Cut => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::H1(b) => b.is_end_stream(),
            Received::Wire(b) => b.is_end_stream(),
            Received::H2(b) => b.is_end_stream(),
            Received::Cut => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::H1(b) => b.size_hint(),
            Received::Wire(b) => b.size_hint(),
            Received::H2(b) => b.size_hint(),
            Received::Cut => SizeHint::with_exact(0),
        }
    }
}

/// Small data frames of a body without a length are held back for a moment, so that the
/// last one leaves together with the end of the body (hyper then writes the data and the
/// chunked terminator in one `writev`): an upstream that writes its last chunk and its
/// terminator in two segments otherwise costs the client a third write per response. As
/// nginx's `postpone_output`, but bounded: a frame waits [`HOLD`] at most, and event streams
/// are never held.
#[derive(Default)]
struct Coalesce {
    /// The frame held back.
    held: Option<Frame<Bytes>>,
    /// The frame [`UpstreamBody::prefetch`] took: it goes out first.
    first: Option<Result<Frame<Bytes>, BoxError>>,
    /// A frame that came while another was held: it goes right after that one.
    queued: Option<Result<Frame<Bytes>, BoxError>>,
    /// The end came while a frame was held: the body is over once that frame is out.
    done: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The longest a small frame is held back.
const HOLD: Duration = Duration::from_millis(1);
/// Frames up to this size are held back.
const SMALL: usize = 16 * 1024;

/// The connection a body arrives on, on its way back to the pool, with how long the upstream
/// said it keeps it idle, and whether it may carry another request at all.
pub(crate) struct Back<B> {
    pub(crate) pool: Pool<Outgoing<B>>,
    /// hyper's connection; `None` for a [`Received::Wire`], whose body holds its connection.
    pub(crate) link: Option<Link<Outgoing<B>>>,
    pub(crate) keep_for: Option<Duration>,
    pub(crate) reusable: bool,
}

/// The upstream sent no body bytes for longer than the response timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0} ms in the middle of its body")]
pub struct BodyStalled(pub u64);

impl<B: Send + 'static> UpstreamBody<B> {
    /// The upstream's body, arriving on `back`'s connection (HTTP/1.1), which goes back to
    /// the pool when the body ends (if reusable), or on an HTTP/2 stream (`back` is `None`).
    pub(crate) fn new(
        body: Received,
        in_flight: InFlight,
        health: (Arc<Upstream>, Picked<TargetAddr>),
        back: Option<Back<B>>,
        ids: LogIds,
        coalesce: bool,
    ) -> Self {
        let timeout = health.0.settings().response_timeout;
        // Boxed first and changed in place: the state is not moved once more into its box.
        let mut streamed = Box::new(BodyState {
            body,
            _in_flight: in_flight,
            health: Some(health),
            back,
            ids,
            timeout,
            timer: None,
            frames: 0,
            frames_at_arm: 0,
            coalesce: None,
            deadline: None,
        });
        if coalesce && http_body::Body::size_hint(&streamed.body).exact().is_none() {
            streamed.coalesce = Some(Box::default());
        }
        // A response without a body (204, 304, HEAD, length 0) ends here.
        if http_body::Body::is_end_stream(&streamed.body) {
            streamed.ended();
        }
        UpstreamBody(streamed)
    }

    /// Ends the body at `deadline` (a gRPC call's), with `grpc-status: 4` as trailers.
    pub(crate) fn with_deadline(mut self, deadline: tokio::time::Instant) -> Self {
        if self.0.health.is_some() {
            self.0.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        self
    }

    /// Takes the first frame of a body without a length before its head goes to the client,
    /// when it is there within one turn of the scheduler: the upstream connection's task
    /// decodes the body only once asked, and a head sent before the body costs the client a
    /// write of its own (as with an upstream that sent head, chunk and terminator at once).
    /// A body that has not started by then (a stream) is left as it is.
    pub(crate) async fn prefetch(&mut self) {
        if self.0.coalesce.is_none() {
            return;
        }
        // The first poll asks the connection's task for the body; after one yield, it has
        // decoded what it had.
        if std::future::poll_fn(|cx| Poll::Ready(self.stash(cx))).await {
            return;
        }
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| Poll::Ready(self.stash(cx))).await;
    }

    /// Polls for the next frame; keeps it to be sent first. Whether anything came.
    fn stash(&mut self, cx: &mut Context<'_>) -> bool {
        match http_body::Body::poll_frame(Pin::new(&mut *self), cx) {
            Poll::Pending => false,
            Poll::Ready(frame) => {
                if let Some(c) = &mut self.0.coalesce {
                    match frame {
                        Some(frame) => c.first = Some(frame),
                        None => c.done = true,
                    }
                }
                true
            }
        }
    }
}

impl<B: Send + 'static> BodyState<B> {
    /// The gRPC deadline passed mid-body: the upstream's stream goes, and the client gets
    /// `DEADLINE_EXCEEDED` in the trailers. Not the target's failure.
    fn cut_at_deadline(&mut self) -> Frame<Bytes> {
        self.deadline = None;
        self.body = Received::Cut;
        self.back = None;
        self.timer = None;
        if let Some((upstream, picked)) = self.health.take() {
            tracing::info!(
                request_id = %self.ids.request(),
                trace_id = %self.ids.trace(),
                upstream = %upstream.name(),
                target = %picked.value(),
                "the gRPC call's deadline passed mid-response; stream cancelled"
            );
        }
        Frame::trailers(httpkit::grpc::error_trailers(
            httpkit::grpc::Code::DeadlineExceeded,
            "deadline exceeded (grpc-timeout)",
        ))
    }

    /// The body ended whole: the connection can carry the next request.
    fn ended(&mut self) {
        let Some((_, picked)) = self.health.take() else {
            return;
        };
        picked.state().body_completed();
        // A target that left the set (DNS no longer lists it) keeps no connections.
        let keep = !picked.state().is_retired();
        if let Some(back) = self.back.take().filter(|b| b.reusable && keep) {
            let conn = match (back.link, &mut self.body) {
                (Some(link), _) => Some(Parked::Hyper(link)),
                (None, Received::Wire(body)) => body.take_wire().map(Parked::Wire),
                (None, _) => None,
            };
            if let Some(conn) = conn {
                back.pool.checkin(picked.value(), conn, back.keep_for);
            }
        }
        self.timer = None;
        self.deadline = None;
    }

    /// The body broke off: logged and counted, the connection dropped.
    fn failed(&mut self, error: &dyn std::error::Error) {
        self.back = None;
        self.timer = None;
        if let Some((upstream, picked)) = self.health.take() {
            upstream.balancer().report(&picked, Outcome::BodyFailure);
            picked.value().metrics().body_failed();
            tracing::warn!(
                request_id = %self.ids.request(),
                trace_id = %self.ids.trace(),
                upstream = %upstream.name(),
                target = %picked.value(),
                error = %crate::error_chain(error),
                "upstream response body failed"
            );
        }
    }

    /// The upstream body's next frame, with the body's end, failure and stall accounted for.
    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Ok(self.cut_at_deadline())));
        }
        match http_body::Body::poll_frame(Pin::new(&mut self.body), cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.frames += 1;
                // Trailers are the last frame; a data frame can be, when the length is known.
                // A chunked body without trailers ends with `None`, below.
                if frame.is_trailers() || http_body::Body::is_end_stream(&self.body) {
                    self.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                self.failed(&*error);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => {
                if self.health.is_some() && self.stalled(cx) {
                    let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
                    let error = BodyStalled(ms);
                    self.failed(&error);
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Pending
            }
        }
    }

    /// Whether the upstream has been silent for the whole timeout (arming the timer first).
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let timer = match &mut self.timer {
                Some(t) => t,
                None => {
                    self.frames_at_arm = self.frames;
                    self.timer
                        .insert(Box::pin(tokio::time::sleep(self.timeout)))
                }
            };
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.frames == self.frames_at_arm {
                return true;
            }
            // Data came since it was armed: wait a whole timeout from now.
            self.frames_at_arm = self.frames;
            let deadline = crate::now() + self.timeout;
            timer.as_mut().reset(deadline);
        }
    }
}

impl<B> fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamBody")
    }
}

impl<B: Send + 'static> http_body::Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let s = &mut *self.get_mut().0;
        if let Some(c) = &mut s.coalesce {
            if let Some(first) = c.first.take() {
                return Poll::Ready(Some(first));
            }
            if let Some(queued) = c.queued.take() {
                return Poll::Ready(Some(queued));
            }
            if c.done {
                return Poll::Ready(c.held.take().map(Ok));
            }
        }
        loop {
            let polled = s.poll_upstream(cx);
            let Some(c) = &mut s.coalesce else {
                return polled;
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let small = frame.data_ref().is_some_and(|d| d.len() <= SMALL);
                    match c.held.take() {
                        Some(held) => {
                            c.queued = Some(Ok(frame));
                            return Poll::Ready(Some(Ok(held)));
                        }
                        None if small && s.health.is_some() => {
                            // Held: the end may be right behind it.
                            c.held = Some(frame);
                        }
                        None => return Poll::Ready(Some(Ok(frame))),
                    }
                }
                Poll::Ready(None) => {
                    return match c.held.take() {
                        Some(held) => {
                            // Out with the end of the body: `is_end_stream` says so now.
                            c.done = true;
                            Poll::Ready(Some(Ok(held)))
                        }
                        None => Poll::Ready(None),
                    };
                }
                Poll::Pending if c.held.is_some() => {
                    let timer = c
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(HOLD)));
                    if timer.as_mut().poll(cx).is_ready() {
                        c.timer = None;
                        return Poll::Ready(c.held.take().map(Ok));
                    }
                    return Poll::Pending;
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = &*self.0;
        match &s.coalesce {
            Some(c) if c.first.is_some() || c.queued.is_some() => false,
            Some(c) if c.done => c.held.is_none(),
            Some(c) if c.held.is_some() => false,
            _ => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.0.body.size_hint()
    }
}
