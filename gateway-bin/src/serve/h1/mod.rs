//! The inline HTTP/1.1 server: the connection's own task reads each request head with
//! `httparse`, calls the routes, and writes the response (head in one pass, body framed as
//! hyper frames it) — for the requests most traffic is made of: HTTP/1.1 without an upgrade or
//! an expectation, and without a body or with a small one that came whole with its head (up to
//! 16 KiB: a JSON `POST`). The first request that is anything else (a larger, later or chunked
//! body, a WebSocket, `Expect`, HTTP/1.0, the HTTP/2 preface, a head hyper refuses with
//! `400`/`414`/`431`) hands the connection, with the bytes read so far, to hyper, which serves
//! it from there on:
//! hyper stays the server for everything but the common case, and the oracle the
//! differential test (`differential.rs`) holds this one to.
//!
//! What it does as hyper does: pipelined requests answered in order; the client's end of
//! stream while a request waits abandons it; the header-read timeout runs from the first
//! byte of the first request, then from the end of each response (an idle keep-alive
//! connection waits within it), and closes the connection without an answer; `Connection: close` (asked by the client, or by the server finishing) is said
//! in the response and honoured. What it does better: a connection it closes lingers (its FIN
//! first, then what the client still sends is read and dropped, up to 2 s), so a request that
//! crossed the close meets an end of stream and not a reset; an idle connection holds no buffer
//! (hyper keeps its 8 KiB+ read buffer and write buffer per connection), and no task or
//! timer is created per request.

mod request;
mod response;

#[cfg(test)]
mod differential;

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use http_body::Body as _;
use httpkit::{Body, BoxError};
use telemetry::clock;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use self::request::Parsed;
use self::response::{Declared, Framing};
use super::ServedBody;

/// What the inline server needs of its connection: bytes both ways, and a way to wait for
/// the next request's bytes without holding a buffer.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read may find bytes (or the end).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

/// What the inline server is given of its connection's setting.
pub(super) trait Host: Send + Sync + 'static {
    /// The response to `req` (the routes, with everything the connection adds).
    /// `Unpin`: the server polls it where it lies, in place of moving it into a pinned slot
    /// of its own.
    fn call(
        &self,
        req: http::Request<ServedBody>,
    ) -> impl Future<Output = http::Response<Body>> + Send + Unpin + 'static;
    /// Whether the connection has been asked to finish (its next response is its last).
    fn finishing(&self) -> bool;
    /// A client kept the header-read timeout waiting.
    fn header_timeout(&self);
    /// The request head awaited now must be whole by `at` (`None`: no head is awaited). The
    /// host's timer keeps the deadline (one timer per connection, not one here too), and
    /// [`head_expired`](Self::head_expired) says when it passed, after which the host polls
    /// the server again.
    fn head_deadline(&self, at: Option<Instant>);
    /// The head deadline has passed.
    fn head_expired(&self) -> bool;
    /// The host asks for the connection back while it waits for a request with nothing
    /// read ([`Outcome::Idle`]), to park it.
    fn park_asked(&self) -> bool;
}

/// Where the inline server starts on a connection.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    /// A new connection: the header-read clock starts at its first byte.
    New,
    /// A connection given back idle ([`Outcome::Idle`]) and picked up again, waiting for a
    /// request with nothing read: within the head deadline the host kept (when `timed`; not
    /// for a first request, whose clock starts at its first byte).
    Resumed {
        /// The host keeps a head deadline for the request awaited.
        timed: bool,
    },
}

/// How a connection's time on the inline server ended.
pub(super) enum Outcome<I> {
    /// The connection is done (closed, or to be dropped).
    Ended(Result<(), BoxError>),
    /// hyper serves the rest of the connection, starting with these bytes.
    Handover(I, Bytes),
    /// Given back as the host asked ([`Host::park_asked`]) while waiting for a request with
    /// nothing read; [`Start::Resumed`] picks it up.
    Idle(I),
}

/// The inline server's limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// From the moment a request head is awaited until it is whole.
    pub(super) header_read_timeout: Duration,
    /// The largest request head.
    pub(super) max_head: usize,
    /// The largest request body (`max_body_bytes`; `u64::MAX`: none).
    pub(super) max_body: u64,
}

/// How many bytes one read takes at most (on the stack, then copied to a buffer that fits).
const READ_CHUNK: usize = 8 * 1024;

/// Body data up to this size is copied behind the head or the chunk before it, so that a
/// small response goes in one write.
const COALESCE: usize = 16 * 1024;

/// Serves `io` until it ends, or until a request that is hyper's arrives.
// A function returning an `async` block rather than an `async fn`: an `async fn` keeps its
// arguments twice in its state (as received, and moved into its body), and this state lives
// as long as the connection, idle or not.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
pub(super) fn serve<I: Transport, H: Host>(
    mut io: I,
    host: Arc<H>,
    settings: Settings,
    start: Start,
) -> impl Future<Output = Outcome<I>> {
    async move {
        let mut buf = BytesMut::new();
        let timeout = settings.header_read_timeout;
        // The header-read timeout runs from the first byte of a connection's first request (as
        // behind hyper-util's protocol detection), and from the end of each response after.
        let mut first = true;
        let mut resumed = match start {
            Start::New => None,
            Start::Resumed { timed } => Some(timed),
        };
        loop {
            let mut timed = !first;
            first = false;
            match resumed.take() {
                // The host kept the deadline while the connection was parked.
                Some(kept) => timed = kept,
                None => {
                    host.head_deadline(timed.then(|| Instant::from_std(clock::now()) + timeout))
                }
            }
            let (req, keep_alive) = loop {
                if !timed && !buf.is_empty() {
                    timed = true;
                    host.head_deadline(Some(Instant::from_std(clock::now()) + timeout));
                }
                if buf.is_empty() {
                    if host.finishing() {
                        Box::pin(close_lingering(&mut io)).await;
                        return Outcome::Ended(Ok(()));
                    }
                    // Nothing is held while the connection waits.
                    buf = BytesMut::new();
                } else {
                    match request::parse(&mut buf, settings.max_head, settings.max_body) {
                        Parsed::Head(req, keep_alive) => break (req, keep_alive),
                        Parsed::Partial if buf.len() < settings.max_head => {}
                        // hyper's request, or a head longer than ours may be: hyper serves the
                        // rest, with its own header-read timer.
                        Parsed::Elsewhere | Parsed::Partial => {
                            host.head_deadline(None);
                            return Outcome::Handover(io, buf.freeze());
                        }
                    }
                }
                let idle = buf.is_empty();
                tokio::select! {
                    biased;
                    read = read_some(&mut io, &mut buf, usize::MAX) => match read {
                        Ok(0) if idle => {
                            let _ = io.shutdown().await;
                            return Outcome::Ended(Ok(()));
                        }
                        Ok(0) => return Outcome::Ended(Err("the client closed in a request head".into())),
                        Ok(_) => {}
                        Err(e) => return Outcome::Ended(Err(e.into())),
                    },
                    () = Told(&*host, H::head_expired), if timed => {
                        host.header_timeout();
                        return Outcome::Ended(Ok(()));
                    }
                    () = Told(&*host, H::finishing), if idle => {
                        Box::pin(close_lingering(&mut io)).await;
                        return Outcome::Ended(Ok(()));
                    }
                    () = Told(&*host, H::park_asked), if idle => return Outcome::Idle(io),
                }
            };
            host.head_deadline(None);
            // The request's own work is boxed: an idle connection keeps none of its room.
            match Box::pin(exchange(
                &mut io, &mut buf, &*host, req, keep_alive, settings,
            ))
            .await
            {
                Ok(true) if !host.finishing() => {}
                Ok(_) => {
                    Box::pin(close_lingering(&mut io)).await;
                    return Outcome::Ended(Ok(()));
                }
                Err(Cut::Abandoned) => return Outcome::Ended(Ok(())),
                Err(Cut::Failed(e)) => return Outcome::Ended(Err(e)),
            }
        }
    }
}

/// Why a request's exchange ended the connection.
enum Cut {
    /// The client closed its side before its response was made.
    Abandoned,
    /// A read, a write or the response's body failed.
    Failed(BoxError),
}

/// Answers one request; `Ok(true)` when the connection may carry another.
///
/// The call starts before the future is made, and the future is an `async` block: it holds
/// the call and not the request as well (an `async fn` would keep the request twice, as
/// passed and as bound, for the whole exchange; this future is boxed per request).
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn exchange<'a, I: Transport, H: Host>(
    io: &'a mut I,
    buf: &'a mut BytesMut,
    host: &'a H,
    req: http::Request<Option<Bytes>>,
    keep_alive: bool,
    settings: Settings,
) -> impl Future<Output = Result<bool, Cut>> + 'a {
    let head_request = req.method() == Method::HEAD;
    let mut call = host.call(req.map(|body| match body {
        None => ServedBody::Empty,
        Some(bytes) => ServedBody::Full(Some(bytes)),
    }));
    async move {
        // While the response is made, the client's end of stream abandons the request;
        // bytes it sends meanwhile (a pipelined request) wait in `buf`.
        let res = loop {
            tokio::select! {
                biased;
                res = &mut call => break res,
                read = read_some(io, buf, settings.max_head) => match read {
                    Ok(0) => return Err(Cut::Abandoned),
                    Ok(_) => {}
                    Err(e) => return Err(Cut::Failed(e.into())),
                },
            }
        };
        // What made the response is let go before it is written.
        drop(call);
        let keep_alive = keep_alive && !host.finishing();
        respond(io, buf, res, head_request, keep_alive, settings.max_head)
            .await
            .map_err(Cut::Failed)
    }
}

/// Writes `res`; `Ok(true)` when the connection may carry another request.
///
/// The head is encoded before the future is made, and the future is an `async` block: it
/// holds the encoded head and the body, not the response's parts as well.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn respond<'a, I: Transport>(
    io: &'a mut I,
    buf: &'a mut BytesMut,
    res: http::Response<Body>,
    head_request: bool,
    keep_alive: bool,
    max_head: usize,
) -> impl Future<Output = Result<bool, BoxError>> + 'a {
    let (mut parts, mut body) = res.into_parts();
    let declared = if body.is_end_stream() {
        Declared::Nothing
    } else {
        body.size_hint()
            .exact()
            .map_or(Declared::Unknown, Declared::Exactly)
    };
    // Room for the head and, when the body is short and its length known, the body behind
    // it: the response is gathered without growing its buffer.
    let body_room = match declared {
        Declared::Exactly(n) if !head_request => {
            usize::try_from(n).map_or(COALESCE, |n| n.min(COALESCE))
        }
        _ => 0,
    };
    let mut out = Vec::with_capacity(response::head_size(&parts) + body_room);
    let written = response::encode(&mut parts, declared, head_request, keep_alive, &mut out);
    drop(parts);
    async move {
        let Ok(written) = written else {
            return Err("a response head with conflicting lengths".into());
        };
        let framing = written.framing;
        if framing == Framing::Length(0) {
            // No body goes out (or it was declared empty): it is not read.
            drop(body);
            io.write_all(&out).await?;
            io.flush().await?;
            return Ok(!written.last);
        }
        let mut body = Pin::new(&mut body);
        let mut owed = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        loop {
            // The next frame if it is there now; if not, what is gathered goes out first.
            let ready = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            let frame = match ready {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !out.is_empty() {
                        io.write_all(&out).await?;
                        io.flush().await?;
                        out.clear();
                    }
                    // While the body is awaited, the client's end of stream abandons it.
                    loop {
                        tokio::select! {
                            biased;
                            frame = poll_fn(|cx| body.as_mut().poll_frame(cx)) => break frame,
                            read = read_some(io, buf, max_head) => match read {
                                Ok(0) => return Err("the client closed during the response".into()),
                                Ok(_) => {}
                                Err(e) => return Err(e.into()),
                            },
                        }
                    }
                }
            };
            let data = match frame {
                None => break,
                // What is gathered and not sent is dropped with the connection, as hyper does.
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers go only to a client that asked with `TE: trailers` (hyper's).
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            match framing {
                Framing::Length(_) => {
                    let take = usize::try_from(owed).map_or(data.len(), |o| o.min(data.len()));
                    owed -= take as u64;
                    put(io, &mut out, data.slice(..take)).await?;
                    if owed == 0 {
                        // All that was declared is written: the rest of the body is not read.
                        break;
                    }
                }
                Framing::Chunked => {
                    chunk_size(data.len(), &mut out);
                    put(io, &mut out, data).await?;
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Close => put(io, &mut out, data).await?,
            }
        }
        match framing {
            Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(_) if owed > 0 => {
                return Err("the body ended before its declared length".into());
            }
            _ => {}
        }
        io.write_all(&out).await?;
        io.flush().await?;
        Ok(!written.last && framing != Framing::Close)
    }
}

/// A chunk's size line: the size in upper-case hex (as hyper writes it), then CRLF.
fn chunk_size(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Adds `data` to what goes out: copied behind it when small, else written after it.
async fn put<I: Transport>(io: &mut I, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if data.len() <= COALESCE && out.len() < 4 * COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    let mut data = data;
    while data.has_remaining() {
        let n = io.write(data.chunk()).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data.advance(n);
    }
    Ok(())
}

/// Reads what the client sends into `buf` (which is allowed to grow to `cap`): `Ok(0)` at
/// its end.
async fn read_some<I: Transport>(io: &mut I, buf: &mut BytesMut, cap: usize) -> io::Result<usize> {
    if buf.len() >= cap {
        return std::future::pending().await;
    }
    poll_fn(|cx| poll_read_chunk(io, cx, |bytes| buf.extend_from_slice(bytes))).await
}

/// Reads what the client sent into a chunk on the stack (nothing is allocated until bytes are
/// there, and only what came is kept) and hands it to `take`: `Ok(0)` at the client's end.
fn poll_read_chunk<I: Transport>(
    io: &mut I,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    ready!(io.poll_readable(cx))?;
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut chunk = ReadBuf::uninit(&mut chunk);
    ready!(Pin::new(&mut *io).poll_read(cx, &mut chunk))?;
    take(chunk.filled());
    Poll::Ready(Ok(chunk.filled().len()))
}

/// A connection handed to hyper: the bytes already read from it, then the rest.
pub(super) struct Prefixed<I> {
    /// What was read and not consumed.
    pub(super) read: Bytes,
    /// The connection.
    pub(super) io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long a connection the server closes keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// How much it reads, at most, in that time.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes a connection the server chose to end (shutdown, idle, `Connection: close`) as nginx
/// does: the end of stream (FIN) first, then what the client still sends is read and dropped
/// until it closes too, for at most [`LINGER`] and [`LINGER_BYTES`]. A request that crossed
/// the close on the wire then meets an end of stream, which clients take as a connection to
/// retry on; closing with its bytes unread would answer them with a reset.
async fn close_lingering<I: Transport>(io: &mut I) {
    if io.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut dropped = 0;
    while dropped <= LINGER_BYTES {
        let read = poll_fn(|cx| poll_read_chunk(io, cx, |_| {}));
        match tokio::time::timeout_at(until, read).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => return,
        }
    }
}

/// Ready once the host says so (`finishing`, `head_expired`): the host's driver polls the
/// connection right after either comes true, so no waker needs to be kept.
struct Told<'a, H>(&'a H, fn(&H) -> bool);

impl<H: Host> Future for Told<'_, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if (self.1)(self.0) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
