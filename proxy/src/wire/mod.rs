//! The HTTP/1.1 client the proxy drives inline, in the task of the request it carries: for a
//! request without a body and not asking for an upgrade (most of what a gateway forwards),
//! the head is written in one pass from the outbound request, the response head is parsed
//! with `httparse` from the connection's own buffer, and the body is decoded as the client's
//! side reads it. No task per connection, no channel between the request and its connection,
//! no wake-up of another task per request; an idle connection holds no buffer.
//!
//! hyper's client (in [`crate::pool`]) carries everything else: request bodies, upgrades. Its
//! rules are this client's oracle: `tests/wire_vs_hyper.rs` feeds the same generated and
//! mutated response bytes to both and requires the same status, headers, body bytes,
//! trailers, and the same verdict on what is malformed; and the same request head bytes.
//!
//! - [`head`]: the request head written, the response head parsed, the body's framing.
//! - [`decode`]: the body decoded (length, chunked with trailers, until close).
//! - [`body`]: the body as an `http_body::Body` that reads the connection as it is polled.

pub(crate) mod body;
pub(crate) mod decode;
pub(crate) mod head;

#[cfg(test)]
mod differential;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::Method;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::pool::OpenConnection;

pub(crate) use body::WireBody;
pub(crate) use head::Head;

/// The first read buffer of a connection: most answers a gateway relays (head and body) fit
/// in it, and an allocation this small comes from the allocator's per-thread cache.
const READ_FIRST: usize = 1024;
/// The largest read buffer: a read that fills the buffer doubles the next one up to this.
const READ_MAX: usize = 64 * 1024;

/// An open HTTP/1.1 connection to a target, with no exchange on it or one in progress.
pub(crate) struct Wire {
    io: Io,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The upstream has closed its side.
    closed: bool,
    /// How much room a read gets: doubled after a read that filled it (as hyper's adaptive
    /// read strategy), kept for the connection's next exchanges.
    read_size: usize,
    /// Counts the connection as open to its target while it lives.
    open: OpenConnection,
    /// The response-head timer, kept from one exchange to the next and moved to each one's
    /// deadline: a later deadline on a timer still in the runtime's wheel is one atomic store,
    /// where a new timer per exchange was a wheel insert and a removal under the timer
    /// driver's lock.
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The socket, plain or TLS.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why an exchange on a wire failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a response head")]
    Closed,
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("response head too large")]
    HeadTooLarge,
    #[error("invalid response status code")]
    Status,
    #[error("invalid response header name")]
    HeaderName,
    #[error("invalid response header value")]
    HeaderValue,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("end of file before message length reached")]
    IncompleteBody,
    #[error("{0}")]
    Chunk(&'static str),
}

/// How a failed exchange ended, for what the proxy may do next.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The head could not be written: the upstream cannot have acted on it.
    NotSent(WireError),
    /// Written, and no response byte came before the connection closed or reset.
    NoAnswer(WireError),
    /// A response started and broke, or was malformed.
    Broken(WireError),
}

impl Failed {
    pub(crate) fn into_error(self) -> WireError {
        match self {
            Failed::NotSent(e) | Failed::NoAnswer(e) | Failed::Broken(e) => e,
        }
    }
}

impl Wire {
    pub(crate) fn new(io: Io, open: OpenConnection) -> Wire {
        Wire {
            io,
            buf: BytesMut::new(),
            closed: false,
            read_size: READ_FIRST,
            open,
            head_timer: None,
        }
    }

    /// [`exchange`](Self::exchange) within `limit`: `None` when no response head came in
    /// time.
    pub(crate) async fn exchange_within(
        &mut self,
        limit: std::time::Duration,
        head: &[u8],
        method: &Method,
        max_head_bytes: usize,
    ) -> Option<Result<Head, Failed>> {
        let deadline = crate::now() + limit;
        let mut timer = match self.head_timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let outcome = {
            let mut exchange = std::pin::pin!(self.exchange(head, method, max_head_bytes));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(Some(done));
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        self.head_timer = Some(timer);
        outcome
    }

    /// Writes a request head (`head`: the encoded bytes) and reads the response head (the
    /// proxy calls it through [`exchange_within`](Self::exchange_within)).
    async fn exchange(
        &mut self,
        head: &[u8],
        method: &Method,
        max_head_bytes: usize,
    ) -> Result<Head, Failed> {
        if let Err(e) = self.write_all(head).await {
            return Err(Failed::NotSent(e.into()));
        }
        let mut got_any = false;
        loop {
            match head::parse_response(&mut self.buf, method, max_head_bytes) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Failed::Broken(e)),
            }
            if self.closed {
                return Err(if got_any {
                    Failed::Broken(WireError::Closed)
                } else {
                    Failed::NoAnswer(WireError::Closed)
                });
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(_) => got_any |= !self.buf.is_empty(),
                Err(e) if got_any => return Err(Failed::Broken(e.into())),
                Err(e) => return Err(Failed::NoAnswer(e.into())),
            }
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.write_all(bytes).await,
            Io::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Reads more into the buffer: the number of bytes read (0: the upstream closed).
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = match &mut self.io {
            Io::Plain(s) => std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(s),
                cx,
                &mut self.buf
            ))?,
            Io::Tls(s) => std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut **s),
                cx,
                &mut self.buf
            ))?,
        };
        if n == 0 {
            self.closed = true;
        } else if n == room && self.read_size < READ_MAX {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Whether the connection can carry the next request: nothing unread, not closed.
    pub(crate) fn is_clean(&self) -> bool {
        self.buf.is_empty() && !self.closed
    }

    /// Called when the connection goes idle: its buffer is released (an idle connection
    /// costs its socket, this struct and its head timer, nothing more).
    pub(crate) fn park(&mut self) {
        self.buf = BytesMut::new();
    }

    /// Whether an idle connection is still open with nothing to read: the upstream has not
    /// closed it or sent anything unasked. No system call unless the reactor saw it readable.
    pub(crate) fn is_idle_open(&mut self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut probe = [0u8; 1];
        let mut read = ReadBuf::new(&mut probe);
        let polled = match &mut self.io {
            Io::Plain(s) => {
                if s.poll_read_ready(&mut cx).is_pending() {
                    return true;
                }
                Pin::new(s).poll_read(&mut cx, &mut read)
            }
            // TLS: records may come unasked (a session ticket) and leave no data.
            Io::Tls(s) => Pin::new(&mut **s).poll_read(&mut cx, &mut read),
        };
        matches!(polled, Poll::Pending)
    }

    /// The socket, for hyper's client to take over (a request with a body on a connection
    /// made for bodiless ones). Only clean connections are handed over.
    pub(crate) fn into_io(self) -> (Io, OpenConnection) {
        (self.io, self.open)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use http::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{Failed, Io, Wire};
    use crate::pool::OpenConnection;

    /// A wire to a loopback peer, and the peer's end.
    async fn pair() -> (Wire, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        let target = format!("http://{addr}").parse().unwrap();
        (Wire::new(Io::Plain(client), OpenConnection(target)), peer)
    }

    /// Polls `check` on every scheduler turn until it holds, for at most five seconds.
    async fn eventually(mut check: impl FnMut() -> bool) -> bool {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !check() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn an_idle_wire_is_open_until_its_peer_closes_it() {
        let (mut wire, peer) = pair().await;
        assert!(wire.is_idle_open(), "a quiet peer's wire counts as open");
        drop(peer);
        assert!(
            eventually(|| !wire.is_idle_open()).await,
            "a closed peer's wire still counted as open"
        );
    }

    #[tokio::test]
    async fn an_idle_wire_whose_peer_sent_bytes_unasked_is_not_reused() {
        let (mut wire, mut peer) = pair().await;
        peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(
            eventually(|| !wire.is_idle_open()).await,
            "a wire with unread bytes counted as open"
        );
    }

    /// The head the peer reads, and then what it does.
    async fn exchange_with(script: &'static [u8], close_after: bool) -> Result<u16, Failed> {
        let (mut wire, mut peer) = pair().await;
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            while !seen.ends_with(b"\r\n\r\n") {
                if peer.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                seen.push(byte[0]);
            }
            peer.write_all(script).await.unwrap();
            if !close_after {
                // Held open until the test is done with it.
                let _ = peer.read(&mut byte).await;
            }
        });
        let got = wire
            .exchange(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", &Method::GET, 8192)
            .await
            .map(|head| head.parts.status.as_u16());
        drop(wire);
        server.await.unwrap();
        got
    }

    #[tokio::test]
    async fn exchanges_tell_no_answer_from_a_broken_one() {
        assert_eq!(
            exchange_with(b"HTTP/1.1 204 No Content\r\n\r\n", false)
                .await
                .unwrap(),
            204
        );
        assert!(
            matches!(exchange_with(b"", true).await, Err(Failed::NoAnswer(_))),
            "a peer that closes without a byte is no answer (a stale connection)"
        );
        assert!(
            matches!(
                exchange_with(b"HTTP/1.1 200 OK\r\ncontent-le", true).await,
                Err(Failed::Broken(_))
            ),
            "half a head, then a close, is a broken exchange"
        );
        assert!(
            matches!(
                exchange_with(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).await,
                Err(Failed::Broken(_))
            ),
            "a malformed head is a broken exchange"
        );
    }
}
