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
use httpkit::{BoxError, RequestId, TextOr};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::outgoing::Outgoing;
use crate::pool::{Link, Pool};
use crate::target::TargetAddr;
use crate::upstream::Upstream;

/// The response body: the upstream's, streamed as it arrives, or a short text the proxy
/// answered itself. `B` is the request body type.
pub type ProxyBody<B> = TextOr<UpstreamBody<B>>;

/// An upstream's response body on its way to the client: its connection goes back to the
/// pool once it ends, a failure is logged and counted against the target, and an upstream
/// silent for the response timeout mid-body cuts it.
pub struct UpstreamBody<B> {
    body: Incoming,
    _in_flight: InFlight,
    /// Taken when the body fails or ends, so it is reported at most once.
    health: Option<(Arc<Upstream>, Picked<TargetAddr>)>,
    /// The connection, back to the pool once the body has ended (if reusable), closed if the
    /// body fails or is dropped.
    back: Option<Back<B>>,
    /// The request's id, for the lines logged once the request's future is gone.
    request_id: Option<RequestId>,
    /// The longest the upstream may stay silent mid-body.
    timeout: Duration,
    /// Armed while waiting for the upstream; re-armed only when it fires after progress.
    timer: Option<Pin<Box<Sleep>>>,
    frames: u64,
    frames_at_arm: u64,
}

/// The connection a body arrives on, on its way back to the pool, with how long the upstream
/// said it keeps it idle, and whether it may carry another request at all.
pub(crate) struct Back<B> {
    pub(crate) pool: Pool<Outgoing<B>>,
    pub(crate) link: Link<Outgoing<B>>,
    pub(crate) keep_for: Option<Duration>,
    pub(crate) reusable: bool,
}

/// The upstream sent no body bytes for longer than the response timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0} ms in the middle of its body")]
pub struct BodyStalled(pub u64);

impl<B: Send + 'static> UpstreamBody<B> {
    /// The upstream's body, arriving on `back`'s connection, which goes back to the pool when
    /// the body ends (if reusable).
    pub(crate) fn new(
        body: Incoming,
        in_flight: InFlight,
        health: (Arc<Upstream>, Picked<TargetAddr>),
        back: Back<B>,
        request_id: Option<RequestId>,
    ) -> Self {
        let timeout = health.0.settings().response_timeout;
        let mut streamed = UpstreamBody {
            body,
            _in_flight: in_flight,
            health: Some(health),
            back: Some(back),
            request_id,
            timeout,
            timer: None,
            frames: 0,
            frames_at_arm: 0,
        };
        // A response without a body (204, 304, HEAD, length 0) ends here.
        if http_body::Body::is_end_stream(&streamed.body) {
            streamed.ended();
        }
        streamed
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
            back.pool.checkin(picked.value(), back.link, back.keep_for);
        }
        self.timer = None;
    }

    /// The body broke off: logged and counted, the connection dropped.
    fn failed(&mut self, error: &dyn std::error::Error) {
        self.back = None;
        self.timer = None;
        if let Some((upstream, picked)) = self.health.take() {
            upstream.balancer().report(&picked, Outcome::BodyFailure);
            tracing::warn!(
                request_id = %self.request_id.as_ref().map_or("-", RequestId::as_str),
                upstream = %upstream.name(),
                target = %picked.value(),
                error = %crate::error_chain(error),
                "upstream response body failed"
            );
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
            let deadline = tokio::time::Instant::now() + self.timeout;
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
        let s = self.get_mut();
        match Pin::new(&mut s.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                s.frames += 1;
                // Trailers are the last frame; a data frame can be, when the length is known.
                // A chunked body without trailers ends with `None`, below.
                if frame.is_trailers() || http_body::Body::is_end_stream(&s.body) {
                    s.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                s.failed(&error);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => {
                if s.health.is_some() && s.stalled(cx) {
                    let ms = u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX);
                    let error = BodyStalled(ms);
                    s.failed(&error);
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
