//! One client connection: served by the inline HTTP/1.1 server (`h1`) until a request that is
//! hyper's arrives, or by hyper from the start (HTTP/2 by ALPN, `inline_http1 = false`); its
//! idle and hard-close timers, the bytes it moves, and the slot it holds under
//! `max_connections` (which its WebSocket tunnels keep).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::reload::LiveService;
use http::Request;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use telemetry::clock::OneReadPerPoll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::front::{Answer, Front, TlsInfo};
use super::h1::{self, Outcome, Prefixed, Start, Transport};
use super::park::Parked;
use super::stop::StopSignal;
use super::{Limits, ServedBody, Slot};
use crate::stats::{ConnStats, Protocol};
use httpkit::BoxError;

/// Serves one accepted connection (over TLS when `tls` is given) in a task of its own until
/// it ends.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    service: LiveService<ServedBody>,
    limits: &Arc<Limits>,
    slot: Slot,
    stop: watch::Receiver<bool>,
    stats: Arc<ConnStats>,
) {
    let _ = stream.set_nodelay(true);
    stats.opened();
    let state = Arc::new(ConnState {
        stats,
        _slot: Some(slot),
        ..ConnState::default()
    });
    let io = Tracked {
        inner: stream,
        count: 0,
        state: Arc::clone(&state),
    };
    let limits = Arc::clone(limits);
    let timeouts = Timeouts::of(&limits);
    let due = Instant::now() + timeouts.idle;
    match tls {
        // A plain connection's server is made before its task, which then holds only what
        // it runs for the connection's life, not also the parts it was made from.
        None => {
            let front = Front::new(peer, None, service, &limits, &state);
            let conn = serve_connection(io, front, &limits, limits.inline_http1);
            // The driver's own future is the task's: a block around it would keep room for
            // the parts it moved into the driver for the connection's life.
            tokio::spawn(OneReadPerPoll::new(drive(conn, state, timeouts, stop, due)));
        }
        Some(acceptor) => {
            tokio::spawn(OneReadPerPoll::new(async move {
                let Some(tls_io) = handshake(acceptor, io, &limits, &state).await else {
                    return count_end(&state, None);
                };
                let subject = tls_io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(crate::tls::subject_of);
                // HTTP/2 (by ALPN) is hyper's from the start.
                let inline = limits.inline_http1
                    && tls_io.get_ref().1.alpn_protocol() != Some(b"h2".as_slice());
                let tls = Some(TlsInfo { subject });
                let front = Front::new(peer, tls, service, &limits, &state);
                let conn = serve_connection(tls_io, front, &limits, inline);
                drive(conn, state, timeouts, stop, due).await
            }));
        }
    }
}

/// Picks up a parked connection (see `park`) in a new task, where its inline server waits for
/// its next request as it did before it was parked, within the deadlines it had.
pub(super) fn resume(parked: Parked, stop: watch::Receiver<bool>) {
    let Parked { stream, front, due } = parked;
    let state = Arc::clone(front.shared_state());
    state.park.store(false, Ordering::Relaxed);
    let inner = match TcpStream::from_std(stream) {
        Ok(inner) => inner,
        Err(error) => {
            tracing::debug!(%error, "a parked connection could not be picked up");
            return count_end(&state, None);
        }
    };
    let io = Tracked {
        inner,
        count: state.activity.load(Ordering::Relaxed),
        state: Arc::clone(&state),
    };
    let limits = front.limits();
    let timeouts = Timeouts::of(limits);
    let start = Start::Resumed {
        timed: state.head_deadline().is_some(),
    };
    let inline = h1::serve(io, Arc::clone(&front), h1_settings(limits), start);
    let conn = Served {
        at: At::Inline(Box::pin(inline)),
        front,
    };
    tokio::spawn(OneReadPerPoll::new(drive(conn, state, timeouts, stop, due)));
}

/// Counts a connection's end, and what hyper answered by itself (`431`, `408`) on it.
fn count_end(state: &ConnState, ended: Option<BoxError>) {
    if let Some(error) = ended
        && let Some(e) = error.downcast_ref::<hyper::Error>()
    {
        if e.is_parse_too_large() {
            state.stats.header_too_large.inc();
        } else if e.is_timeout() {
            state.stats.header_timeouts.inc();
        }
    }
    state.stats.closed(state.protocol());
}

/// What the connection's driver watches: bytes moving, and requests still waiting for their
/// response head; and what the connection counts.
#[derive(Default)]
pub(super) struct ConnState {
    /// Reads and writes so far (a plain store from the connection's own task).
    activity: AtomicU64,
    /// Requests whose response head is not made yet.
    waiting: AtomicUsize,
    /// The protocol, once the first request said it (`Protocol as u8`).
    protocol: AtomicU8,
    /// Asked to finish (shutdown, idle): the next response is the last.
    finishing: AtomicBool,
    /// When the request head the inline server awaits must be whole (nanoseconds after
    /// `EPOCH`; 0: no head awaited). The driver's timer cuts it: one timer per connection.
    head_deadline: AtomicU64,
    /// The driver found the head deadline passed: the inline server ends the connection.
    head_expired: AtomicBool,
    /// The driver asks the inline server for the connection, to park it, if it waits for a
    /// request with nothing read (cleared when the server starts waiting for the next one).
    park: AtomicBool,
    stats: Arc<ConnStats>,
    /// The connection's place under `max_connections`, given back when the last holder of
    /// this state lets go: the connection's task, or a tunnel the connection became (an
    /// upgraded request carries this state in its extensions as a `TunnelGuard`).
    _slot: Option<Slot>,
}

/// Where the head deadlines kept in a `ConnState` count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl ConnState {
    /// Sets (or, with `None`, clears) the deadline of the request head awaited now; a
    /// deadline the driver found passed is forgotten with it.
    fn set_head_deadline(&self, at: Option<Instant>) {
        self.head_expired.store(false, Ordering::Relaxed);
        self.park.store(false, Ordering::Relaxed);
        let nanos = at.map_or(0, |at| {
            u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.head_deadline.store(nanos, Ordering::Relaxed);
    }

    /// The deadline of the request head awaited now, if one is.
    fn head_deadline(&self) -> Option<Instant> {
        match self.head_deadline.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(*EPOCH + Duration::from_nanos(nanos)),
        }
    }

    /// The connections' counts.
    pub(super) fn stats(&self) -> &Arc<ConnStats> {
        &self.stats
    }

    fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Relaxed) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Pending,
        }
    }

    /// Counts the connection under the protocol its first request speaks.
    pub(super) fn first_request(&self, version: http::Version) {
        if self.protocol.load(Ordering::Relaxed) != Protocol::Pending as u8 {
            return;
        }
        let protocol = if version == http::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        self.protocol.store(protocol as u8, Ordering::Relaxed);
        self.stats.speaks(protocol);
    }
}

/// Counts a request as waiting for its response head until dropped (also when cancelled).
pub(super) struct Waiting(Arc<ConnState>);

impl Waiting {
    pub(super) fn new(state: &Arc<ConnState>) -> Self {
        state.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(Arc::clone(state))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest a connection asked to finish may stay silent before it is closed hard.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection that has not sent a request yet when the server stops is given to
/// send one.
const FIRST_REQUEST_WAIT: Duration = Duration::from_millis(250);

/// Runs one connection to its end. After `idle` without a byte read or written, or on
/// shutdown, it is asked to finish gracefully (HTTP/1.1: after its current response; HTTP/2:
/// `GOAWAY`). A connection asked to finish that has no request waiting for its response head
/// and moves no byte for `min(idle, 5 s)` is closed hard: a client that stopped reading, an
/// HTTP/2 client that never acknowledges the `GOAWAY`'s `PING`. A request still waiting for
/// its upstream keeps its connection (the upstream's timeouts bound it). A plain HTTP/1.1
/// connection on the inline server that has moved no byte for the parking wait and waits for
/// its next request is parked (see `park`), and this task ends; otherwise it counts the
/// connection's end. `due`: when the idle check runs first.
// A function returning an `async` block rather than an `async fn`, which would keep its
// arguments twice in its state (as received, and moved into its body) for the connection's life.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn drive<C: Connection + Unpin>(
    mut conn: C,
    state: Arc<ConnState>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    mut due: Instant,
) -> impl Future<Output = ()> {
    async move {
        let mut conn = Pin::new(&mut conn);
        let mut seen = state.activity.load(Ordering::Relaxed);
        // Parking: when the driver looks next whether the connection has been quiet since the
        // last look (the activity it saw then), if it may be parked at all.
        let mut park_seen = seen;
        let mut park_check = conn.park_after().map(|after| Instant::now() + after);
        // One timer for the connection's life, re-armed only when it fires: the connection
        // future is polled for every read and write, and a new timer per poll would cost a
        // timer-wheel insert each time. It also cuts the request head the inline server
        // awaits: armed never further than the header-read timeout ahead, it fires before any
        // head deadline set since (each is that timeout after it is set), and is then armed
        // for the deadline itself. (What `timeouts` gives is computed where used, not kept
        // across awaits: this state lives as long as the connection, and a few bytes less
        // keep the task in a 512-byte cell instead of a 640-byte one.)
        // `due`: when the idle and shutdown checks below run next.
        let timer = tokio::time::sleep(timeouts.period());
        let mut timer = std::pin::pin!(timer);
        timeouts.arm(timer.as_mut(), soonest(due, park_check), &state);
        let mut finishing = false;
        // Stopping, but this connection has not sent its first request yet: a client that just
        // connected (the old process of an upgrade accepted it a moment before handing over) is
        // given FIRST_REQUEST_WAIT to send it, and gets its answer, instead of a closed socket.
        let mut awaiting_first = false;
        if *stop.borrow_and_update() {
            (awaiting_first, due) = on_stop(conn.as_mut(), &state, &timeouts);
            finishing = !awaiting_first;
            timeouts.arm(timer.as_mut(), soonest(due, park_check), &state);
        }
        // The shutdown signal, looked at only when it woke the task (see `stop`).
        let changed = std::pin::pin!(async move {
            let _ = stop.changed().await;
        });
        let mut stopping = StopSignal::new(changed);
        let ended = loop {
            tokio::select! {
                biased;
                result = conn.as_mut() => break result.err(),
                _ = &mut stopping, if !finishing && !awaiting_first => {
                    seen = state.activity.load(Ordering::Relaxed);
                    (awaiting_first, due) = on_stop(conn.as_mut(), &state, &timeouts);
                    finishing = !awaiting_first;
                    timeouts.arm(timer.as_mut(), soonest(due, park_check), &state);
                }
                _ = timer.as_mut() => {
                    let now = Instant::now();
                    if state.head_deadline().is_some_and(|deadline| deadline <= now) {
                        // The inline server sees it when polled next, at the top of this loop.
                        state.head_expired.store(true, Ordering::Relaxed);
                    }
                    if park_check.is_some_and(|check| check <= now) {
                        park_check = None;
                        if !finishing
                            && !awaiting_first
                            && let Some(after) = conn.park_after()
                        {
                            let activity = state.activity.load(Ordering::Relaxed);
                            if activity == park_seen && state.waiting.load(Ordering::Relaxed) == 0 {
                                // The inline server gives the connection back when polled next,
                                // at the top of this loop, if it waits for a request.
                                state.park.store(true, Ordering::Relaxed);
                            }
                            park_seen = activity;
                            park_check = Some(now + after);
                        }
                    }
                    if now < due {
                        timeouts.arm(timer.as_mut(), soonest(due, park_check), &state);
                        continue;
                    }
                    if awaiting_first {
                        // Its first request (if it came) is answered before the connection closes.
                        awaiting_first = false;
                        finishing = true;
                        conn.as_mut().finish();
                        seen = state.activity.load(Ordering::Relaxed);
                        due = now + timeouts.close_grace();
                        timeouts.arm(timer.as_mut(), soonest(due, park_check), &state);
                        continue;
                    }
                    let activity = state.activity.load(Ordering::Relaxed);
                    let quiet = activity == seen;
                    seen = activity;
                    let next = if !finishing {
                        if quiet {
                            tracing::debug!(idle_ms = timeouts.idle.as_millis() as u64, "closing an idle connection");
                            finishing = true;
                            conn.as_mut().finish();
                            timeouts.close_grace()
                        } else {
                            timeouts.idle
                        }
                    } else {
                        if quiet && state.waiting.load(Ordering::Relaxed) == 0 {
                            tracing::debug!(
                                grace_ms = timeouts.close_grace().as_millis() as u64,
                                "closing a connection that did not finish gracefully"
                            );
                            break None;
                        }
                        timeouts.close_grace()
                    };
                    due = now + next;
                    timeouts.arm(timer.as_mut(), soonest(due, park_check), &state);
                }
            }
        };
        if ended.is_none() {
            // Quiet since the last idle check, or not: where that check would come next.
            let due = if state.activity.load(Ordering::Relaxed) == seen {
                due
            } else {
                due + timeouts.idle
            };
            if conn.as_mut().park(due) {
                return;
            }
        }
        count_end(&state, ended);
    }
}

/// The sooner of `due` and `check`.
fn soonest(due: Instant, check: Option<Instant>) -> Instant {
    check.map_or(due, |check| due.min(check))
}

/// The server is stopping: a connection that has not sent its first request yet is given
/// `FIRST_REQUEST_WAIT` for it, any other is asked to finish. Whether it awaits its first
/// request, and when the driver's checks run next.
fn on_stop<C: Connection>(
    conn: Pin<&mut C>,
    state: &ConnState,
    timeouts: &Timeouts,
) -> (bool, Instant) {
    if state.protocol() == Protocol::Pending {
        (true, Instant::now() + FIRST_REQUEST_WAIT)
    } else {
        conn.finish();
        (false, Instant::now() + timeouts.close_grace())
    }
}

/// The timeouts a connection's driver keeps.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// Without a byte read or written this long, the connection is asked to finish.
    idle: Duration,
    /// A request head the inline server awaits must be whole this long after it is awaited.
    head: Duration,
}

impl Timeouts {
    fn of(limits: &Limits) -> Timeouts {
        Timeouts {
            idle: limits.idle_timeout,
            head: limits.header_read_timeout,
        }
    }

    /// How long a connection asked to finish may stay silent.
    fn close_grace(&self) -> Duration {
        self.idle.min(CLOSE_GRACE)
    }

    /// The farthest ahead the timer is ever armed: no later than any head deadline set
    /// since it was armed (each is the header-read timeout after it is set).
    fn period(&self) -> Duration {
        self.idle.min(self.head)
    }

    /// Arms `timer` for `due`, or sooner: the period, the head deadline of `state`.
    fn arm(&self, timer: Pin<&mut tokio::time::Sleep>, due: Instant, state: &ConnState) {
        let now = Instant::now();
        let mut at = due.min(now + self.period());
        // A deadline already passed and told is not armed again (the server is ending); one
        // passed and not told yet (a parked connection resumed late) fires at once.
        if let Some(deadline) = state.head_deadline()
            && !state.head_expired.load(Ordering::Relaxed)
        {
            at = at.min(deadline);
        }
        timer.reset(at);
    }
}

/// A served connection that can be asked to finish gracefully, and perhaps parked.
trait Connection: Future<Output = Result<(), BoxError>> {
    fn finish(self: Pin<&mut Self>);

    /// How long it must wait for a request before it is parked; `None`: it is not parked.
    fn park_after(&self) -> Option<Duration> {
        None
    }

    /// Parks the connection, if it ended by giving itself back to be parked, until its
    /// client sends or closes, or its head deadline or `due` (when its idle check runs next)
    /// comes. Whether it did: the connection lives on without this task.
    fn park(self: Pin<&mut Self>, due: Instant) -> bool {
        let _ = due;
        false
    }
}

impl<I, S, E> Connection for hyper_util::server::conn::auto::UpgradeableConnection<'static, I, S, E>
where
    Self: Future<Output = Result<(), BoxError>>,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The client's socket, counting reads and writes so the idle timer can tell a quiet
/// connection from a busy one. Each count is a plain store to a line only this connection
/// uses.
struct Tracked {
    inner: TcpStream,
    count: u64,
    state: Arc<ConnState>,
}

impl Tracked {
    fn touch(&mut self) {
        self.count += 1;
        self.state.activity.store(self.count, Ordering::Relaxed);
    }

    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.touch();
            self.state.stats.sent_bytes.add(n as u64);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n != 0 {
            self.touch();
            self.state.stats.received_bytes.add(n as u64);
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.wrote(n);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.wrote(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a plain-HTTP request sent to the HTTPS port gets before the connection closes
/// (nginx answers the same way).
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 45\r\n\r\nBad Request: plain HTTP sent to an HTTPS port\n";

/// The TLS handshake, within the header-read timeout; `None` (counted) when it does not
/// complete: not TLS at all (a plain-HTTP request gets a `400` first), too slow, or failed.
async fn handshake(
    acceptor: TlsAcceptor,
    mut io: Tracked,
    limits: &Limits,
    state: &ConnState,
) -> Option<tokio_rustls::server::TlsStream<Tracked>> {
    let stats = &state.stats;
    let attempt = async {
        // A TLS connection starts with a handshake record (type 22); a plain-HTTP request
        // with a method's letter.
        let mut first = [0u8; 1];
        if matches!(io.inner.peek(&mut first).await, Ok(1)) && first[0] != 0x16 {
            stats.tls_plain_http.inc();
            use tokio::io::AsyncWriteExt;
            let _ = io.inner.write_all(PLAIN_ON_TLS).await;
            let _ = io.inner.shutdown().await;
            return None;
        }
        match acceptor.accept(io).await {
            Ok(tls) => Some(tls),
            Err(error) => {
                stats.tls_errors.inc();
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
        }
    };
    match tokio::time::timeout(limits.header_read_timeout, attempt).await {
        Ok(done) => done,
        Err(_) => {
            stats.tls_timeouts.inc();
            None
        }
    }
}

/// The inline server's settings under `limits`.
fn h1_settings(limits: &Limits) -> h1::Settings {
    h1::Settings {
        header_read_timeout: limits.header_read_timeout,
        max_head: limits.max_header_bytes,
        max_body: match limits.max_body_bytes {
            0 => u64::MAX,
            n => n,
        },
    }
}

/// Serves a connection: inline first (when `inline`), handed to hyper when a request needs it.
fn serve_connection<I: Transport + Parkable>(
    io: I,
    front: Front,
    limits: &Arc<Limits>,
    inline: bool,
) -> Served<I> {
    let front = Arc::new(front);
    let at = if inline {
        let inline = h1::serve(io, Arc::clone(&front), h1_settings(limits), Start::New);
        At::Inline(Box::pin(inline))
    } else {
        At::Hyper(hyper_connection(io, Arc::clone(&front), limits))
    };
    Served { at, front }
}

/// A connection being served, inline or by hyper.
pub(super) struct Served<I> {
    at: At<I>,
    front: Arc<Front>,
}

enum At<I> {
    Inline(Pin<Box<dyn Future<Output = Outcome<I>> + Send>>),
    Hyper(Pin<Box<dyn Connection + Send>>),
    /// Given back by the inline server, to be parked.
    Idle(I),
    /// Parked (or failed to be).
    Gone,
}

/// A transport a connection can be parked with: a plain socket.
trait Parkable: Sized {
    /// Whether it can.
    const PARKABLE: bool = false;

    /// The socket, out of the runtime's reactor.
    fn into_parked(self) -> std::io::Result<std::net::TcpStream> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl Parkable for Tracked {
    const PARKABLE: bool = true;

    fn into_parked(self) -> std::io::Result<std::net::TcpStream> {
        self.inner.into_std()
    }
}

impl Parkable for tokio_rustls::server::TlsStream<Tracked> {}

impl<I: Transport> Future for Served<I> {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.at {
                At::Hyper(conn) => return conn.as_mut().poll(cx),
                At::Inline(inline) => match std::task::ready!(inline.as_mut().poll(cx)) {
                    Outcome::Ended(result) => return Poll::Ready(result),
                    Outcome::Idle(io) => {
                        this.at = At::Idle(io);
                        return Poll::Ready(Ok(()));
                    }
                    Outcome::Handover(io, read) => {
                        let io = Prefixed { read, io };
                        let mut conn =
                            hyper_connection(io, Arc::clone(&this.front), this.front.limits());
                        if this.front.state().finishing.load(Ordering::Relaxed) {
                            // Asked to finish already: hyper reads the request it was handed
                            // (its first poll) before it is told, so that it answers it.
                            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                                return Poll::Ready(result);
                            }
                            conn.as_mut().finish();
                        }
                        this.at = At::Hyper(conn);
                    }
                },
                At::Idle(_) | At::Gone => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<I: Transport + Parkable> Connection for Served<I> {
    fn finish(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.front.state().finishing.store(true, Ordering::Relaxed);
        if let At::Hyper(conn) = &mut this.at {
            conn.as_mut().finish();
        }
    }

    fn park_after(&self) -> Option<Duration> {
        let limits = self.front.limits();
        match (&self.at, &limits.parking) {
            (At::Inline(_), Some(_)) if I::PARKABLE => limits.idle_park_after,
            _ => None,
        }
    }

    fn park(self: Pin<&mut Self>, due: Instant) -> bool {
        let this = self.get_mut();
        let At::Idle(io) = std::mem::replace(&mut this.at, At::Gone) else {
            return false;
        };
        let Some(parking) = this.front.limits().parking.as_ref().and_then(Weak::upgrade) else {
            return false;
        };
        let stream = match io.into_parked() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "a connection could not be parked");
                return false;
            }
        };
        let state = this.front.state();
        let deadline = state.head_deadline().map_or(due, |head| head.min(due));
        let front = Arc::clone(&this.front);
        parking.park(Parked { stream, front, due }, deadline);
        true
    }
}

impl h1::Host for Front {
    fn call(
        &self,
        req: Request<ServedBody>,
    ) -> impl Future<Output = http::Response<httpkit::Body>> + Send + Unpin + 'static {
        Front::call(self, req)
    }

    fn finishing(&self) -> bool {
        self.state().finishing.load(Ordering::Relaxed)
    }

    fn header_timeout(&self) {
        self.state().stats.header_timeouts.inc();
    }

    fn head_deadline(&self, at: Option<Instant>) {
        self.state().set_head_deadline(at);
    }

    fn head_expired(&self) -> bool {
        self.state().head_expired.load(Ordering::Relaxed)
    }

    fn park_asked(&self) -> bool {
        self.state().park.load(Ordering::Relaxed)
    }
}

impl Transport for Tracked {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl Transport for tokio_rustls::server::TlsStream<Tracked> {}

/// hyper serving `stream` (HTTP/1.1 or HTTP/2, told apart by its first bytes), every request
/// through `front`.
fn hyper_connection<I>(
    stream: I,
    front: Arc<Front>,
    limits: &Limits,
) -> Pin<Box<dyn Connection + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_body = if limits.max_body_bytes == 0 {
        usize::MAX
    } else {
        usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX)
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        // The answer mapped, not awaited in an `async` block: a stream's future (a task of
        // its own on HTTP/2) holds it once, and it is not moved again on its first poll.
        let answer = front.call(req.map(|b| ServedBody::Client(Limited::new(b, max_body))));
        HyperAnswer { answer }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(StreamExecutor);
    // No half-close (hyper's default): a client's end of stream ends the connection and
    // abandons its request, as nginx and Envoy do. A FIN before the response almost always
    // means a client that gave up, whose upstream exchange should not run on.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    Box::pin(
        builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned(),
    )
}

pin_project_lite::pin_project! {
    /// A request's [`Answer`] as a hyper service answers: a `Result` that is never an error.
    struct HyperAnswer {
        #[pin]
        answer: Answer,
    }
}

impl Future for HyperAnswer {
    type Output = Result<http::Response<httpkit::Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().answer.poll(cx).map(Ok)
    }
}

/// Runs what hyper's server spawns (an HTTP/2 stream's task) on tokio, each poll reading the
/// clock once, as a connection's own task does (see `telemetry::clock`).
#[derive(Clone, Copy, Debug)]
struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(OneReadPerPoll::new(task));
    }
}
