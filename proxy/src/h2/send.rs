//! One request on an HTTP/2 connection: the head as a new stream, the body piped by a task
//! of its own under the stream's flow control (a bidirectional stream keeps sending while
//! the response comes back), and the response head awaited.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;

use tokio::sync::oneshot;

use super::{H2Conn, Reserved, StreamSlot};
use crate::forward::RequestBody;
use crate::outgoing::Outgoing;
use crate::target::TargetAddr;

/// Why a request on an HTTP/2 connection got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing went out: the connection takes no new stream (a GOAWAY came, it closed).
    NotSent(h2::Error),
    /// The upstream refused the stream without processing it (above a GOAWAY's last stream
    /// id, or reset with `REFUSED_STREAM`): safe to send again, whatever the method.
    Refused(h2::Error),
    /// The stream broke after the request went out.
    Broken(h2::Error),
}

impl SendError {
    pub(crate) fn error(&self) -> &h2::Error {
        match self {
            SendError::NotSent(e) | SendError::Refused(e) | SendError::Broken(e) => e,
        }
    }

    pub(crate) fn into_error(self) -> h2::Error {
        match self {
            SendError::NotSent(e) | SendError::Refused(e) | SendError::Broken(e) => e,
        }
    }
}

/// A response head, the stream it came on, and how long its body says it is.
pub(crate) struct Sent {
    pub(crate) response: Response<h2::RecvStream>,
    pub(crate) slot: Arc<StreamSlot>,
}

/// A request that got no response head: why, and the part of its body not yet read from the
/// client when the upstream refused the stream (what was read is in the body's recording).
pub(crate) struct Failed<B> {
    pub(crate) error: SendError,
    pub(crate) rest: Option<oneshot::Receiver<Outgoing<B>>>,
}

/// Sends `req` on `conn`, in the stream `reserved` there (its `Host` as `:authority`, the
/// target's scheme) and waits for the response head.
pub(crate) async fn send<B: RequestBody>(
    conn: &H2Conn,
    reserved: Reserved,
    target: &TargetAddr,
    req: Request<Outgoing<B>>,
) -> Result<Sent, Failed<B>> {
    let not_sent = |e| Failed {
        error: SendError::NotSent(e),
        rest: None,
    };
    let slot = Arc::new(reserved.slot);
    let mut handle = reserved.send.ready().await.map_err(not_sent)?;
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .headers
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| target.authority().clone());
    let scheme = if target.is_tls() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(scheme);
    uri.authority = Some(authority);
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| parts.uri.clone());
    parts.version = Version::HTTP_2;
    // What HTTP/2 forbids (RFC 9113 8.2.2); the rest of the hop-by-hop set is already gone.
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.remove(CONNECTION);
    parts.headers.remove(UPGRADE);
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    if parts.headers.get(TE).is_some_and(|v| v != "trailers") {
        parts.headers.remove(TE);
    }
    let end = body.is_end_stream();
    let (response, stream) = handle
        .send_request(Request::from_parts(parts, ()), end)
        .map_err(not_sent)?;
    let mut rest = None;
    if !end {
        let (give_back, taken_back) = oneshot::channel();
        rest = Some(taken_back);
        tokio::spawn(Pipe {
            body: Some(body),
            stream,
            pending: None,
            end_after: false,
            give_back: Some(give_back),
            _slot: Arc::clone(&slot),
        });
    }
    match response.await {
        Ok(response) => Ok(Sent { response, slot }),
        Err(e) if refused(&e) => {
            if e.is_go_away() {
                conn.close();
            }
            Err(Failed {
                error: SendError::Refused(e),
                rest,
            })
        }
        Err(e) => Err(Failed {
            error: SendError::Broken(e),
            rest: None,
        }),
    }
}

/// The upstream said it did not process the stream.
fn refused(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// The request body on its way: frames from the client as the stream's window allows, then
/// the trailers or the end of the stream. Ends when the body does, or the stream is reset.
struct Pipe<B> {
    /// `None` once ended or given back.
    body: Option<Outgoing<B>>,
    stream: h2::SendStream<Bytes>,
    /// Data waiting for window.
    pending: Option<Bytes>,
    /// The body ended with the pending data.
    end_after: bool,
    /// Where the rest of the body goes when the upstream resets the stream before it ended:
    /// the request may go again, and the client's body must not be lost.
    give_back: Option<oneshot::Sender<Outgoing<B>>>,
    _slot: Arc<StreamSlot>,
}

impl<B: RequestBody> Future for Pipe<B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(data) = &mut this.pending {
                this.stream.reserve_capacity(data.len());
                match this.stream.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) if n > 0 => {
                        let chunk = data.split_to(n.min(data.len()));
                        let last = data.is_empty();
                        let end = last && this.end_after;
                        if this.stream.send_data(chunk, end).is_err() {
                            this.hand_back();
                            return Poll::Ready(());
                        }
                        if end {
                            return Poll::Ready(());
                        }
                        if last {
                            this.pending = None;
                        }
                        continue;
                    }
                    // No window after all: the next poll waits for some.
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => {
                        this.hand_back();
                        return Poll::Ready(());
                    }
                    Poll::Pending => return this.pending_unless_reset(cx),
                }
            }
            let Some(body) = &mut this.body else {
                return Poll::Ready(());
            };
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return this.pending_unless_reset(cx),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.end_after = body.is_end_stream();
                        if data.is_empty() {
                            if this.end_after {
                                let _ = this.stream.send_data(Bytes::new(), true);
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        this.pending = Some(data);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.stream.send_trailers(trailers);
                        }
                        return Poll::Ready(());
                    }
                },
                Poll::Ready(None) => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Err(_))) => {
                    // The client's body failed: the upstream must not take what came as whole.
                    this.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<B> Pipe<B> {
    /// Waiting (for the client or for window): done instead if the upstream reset the stream,
    /// with the rest of the body given back.
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.stream.poll_reset(cx) {
            Poll::Ready(_) => {
                self.hand_back();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The stream is gone before the body ended: the rest of the body goes back.
    fn hand_back(&mut self) {
        if let (Some(body), Some(give_back)) = (self.body.take(), self.give_back.take()) {
            let _ = give_back.send(body);
        }
    }
}
