//! The upstream connection pool: HTTP/1.1 connections per target, made with hyper's
//! connection API and kept idle, most recently used first; and HTTP/2 connections per
//! target, shared by the requests in flight ([`crate::h2`]), a new one made (by one request
//! at a time, the others waiting for it) only when every open one is full.
//!
//! Idle HTTP/1.1 connections are of two kinds ([`Parked`]): hyper's (a task per connection,
//! made for requests with a body) and [`Wire`]s, which the proxy drives inline for requests
//! without one (see [`crate::wire`]). A bodiless request takes an idle wire, or makes one; a
//! request with a body takes an idle hyper connection, or hands an idle wire's socket to
//! hyper (no round trip: HTTP/1.1 has no handshake of its own), or connects.
//!
//! It replaces hyper-util's general-purpose client, which per request builds and boxes a large
//! future, hashes a pool key, and spawns a task to return the connection once it is ready
//! again. Here a connection goes back to the pool when its response body ends (the
//! [`ProxyBody`](crate::ProxyBody) does it, whatever the framing: length, chunked or none),
//! and connecting is a separate step, so a connect failure never touches the request. An
//! idle connection is closed after `pool_idle_timeout`, or earlier when the upstream said in
//! `Keep-Alive: timeout=N` that it closes idle connections sooner.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use tokio::sync::watch;

use crate::h2::conn::Pings;
use crate::h2::{H2Conn, Reserved};
use crate::target::TargetAddr;
use crate::tls::Alpn;
use crate::upstream::Protocol;
use crate::wire::{Io, Wire};

/// How many open idle connections a checkout looks at for a ready one.
const SCAN: usize = 8;

/// How long a pooled connection whose previous response just ended may take to be ready for
/// the next request before a new connection is made instead. It is ready as soon as its task
/// runs once more, which is far less than a connect costs.
const READY_WAIT: Duration = Duration::from_millis(50);

/// A target's idle connections, oldest first.
type IdleList<B> = (Arc<str>, Vec<Idle<B>>);

/// A target's HTTP/2 connections.
struct H2Target {
    key: Arc<str>,
    conns: Vec<H2Conn>,
    /// A request is making a connection; others wait for it.
    connecting: bool,
    /// Bumped (and sent) whenever a connect ends.
    generation: watch::Sender<u64>,
    /// Why the last connect failed, for those that waited for it.
    failure: Option<Arc<str>>,
}

/// Idle connections by target.
struct Shared<B> {
    idle: Mutex<Vec<IdleList<B>>>,
    max_idle_per_target: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// How `https://` targets are reached (`None`: the default, made once).
    tls: Option<Arc<crate::UpstreamTls>>,
    max_head_bytes: usize,
    reaper: AtomicBool,
    /// Wakes the reaper when the pool goes, so that it ends then and not a period later (a
    /// configuration reload replaces pools).
    gone: Arc<tokio::sync::Notify>,
    protocol: Protocol,
    pings: Option<Pings>,
    h2: Mutex<Vec<H2Target>>,
}

struct Idle<B> {
    conn: Parked<B>,
    /// Not to be used from then on.
    expires: Instant,
}

/// An idle HTTP/1.1 connection: hyper's, or one the proxy drives itself.
pub(crate) enum Parked<B> {
    Hyper(Link<B>),
    Wire(Wire),
}

impl<B> Parked<B> {
    /// Whether the upstream may still take a request on it.
    fn is_open(&mut self) -> bool {
        match self {
            Parked::Hyper(link) => !link.sender.is_closed(),
            Parked::Wire(wire) => wire.is_idle_open(),
        }
    }
}

/// An open upstream connection: the handle requests are sent on, and the task that drives
/// it. Dropping it closes the connection, whatever state it is in (an exchange abandoned
/// mid-way must not leave a connection waiting for an answer nobody reads).
pub(crate) struct Link<B> {
    pub(crate) sender: SendRequest<B>,
    task: Option<tokio::task::AbortHandle>,
}

impl<B> Link<B> {
    /// Lets the connection's task run on its own (an upgrade hands its socket over).
    pub(crate) fn detach(mut self) {
        self.task = None;
    }
}

impl<B> Drop for Link<B> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A pool of HTTP/1.1 connections to the targets of one upstream.
pub(crate) struct Pool<B>(Arc<Shared<B>>);

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool(Arc::clone(&self.0))
    }
}

/// What one request goes on: an HTTP/1.1 connection of its own, or a stream of a shared
/// HTTP/2 connection.
pub(crate) enum Carrier<B> {
    H1(Conn<B>),
    /// An HTTP/1.1 connection the request's own task drives (a request without a body).
    Wire {
        wire: Wire,
        reused: bool,
    },
    H2 {
        conn: H2Conn,
        /// The stream's place on it, taken.
        stream: Reserved,
        /// It carried requests before: the upstream may have sent a GOAWAY meanwhile.
        reused: bool,
    },
}

/// A connection taken from the pool (or just made) for one request.
pub(crate) struct Conn<B> {
    pub(crate) link: Link<B>,
    /// Came from the pool: the upstream may have closed it meanwhile.
    pub(crate) reused: bool,
}

impl<B: Send + 'static> Conn<B> {
    /// Whether the connection is (or becomes, within a moment) ready for a request.
    pub(crate) async fn wait_ready(&mut self) -> bool {
        if self.link.sender.is_ready() {
            return true;
        }
        matches!(
            tokio::time::timeout(READY_WAIT, self.link.sender.ready()).await,
            Ok(Ok(()))
        )
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The TCP connect did not finish in time.
    Timeout(Duration),
    /// The TCP connect failed.
    Io(std::io::Error),
    /// The HTTP/1.1 handshake failed.
    Handshake(hyper::Error),
    /// The TLS handshake failed (unknown CA, wrong name, expired certificate, ...).
    Tls(std::io::Error),
    /// The HTTP/2 handshake failed.
    H2(h2::Error),
    /// The server did not agree on HTTP/2 in the TLS handshake (ALPN).
    NoH2,
    /// The connect another request made, which this one waited for, failed.
    Shared(Arc<str>),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Timeout(d) => write!(f, "connect timed out after {} ms", d.as_millis()),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::H2(e) => write!(f, "HTTP/2 handshake failed: {e}"),
            ConnectError::NoH2 => f.write_str("the server did not agree on h2 (ALPN)"),
            ConnectError::Shared(e) => write!(f, "{e} (a connect this request waited for)"),
        }
    }
}

impl<B> Pool<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(settings: &crate::Settings) -> Self {
        Pool(Arc::new(Shared {
            idle: Mutex::new(Vec::new()),
            max_idle_per_target: settings.pool_max_idle_per_target,
            idle_timeout: settings.pool_idle_timeout,
            connect_timeout: settings.connect_timeout,
            tls: settings.tls.clone(),
            // hyper's read buffer cannot be smaller than 8 KiB.
            max_head_bytes: settings.max_response_header_bytes.max(8192),
            reaper: AtomicBool::new(false),
            gone: Arc::new(tokio::sync::Notify::new()),
            protocol: settings.protocol,
            pings: (!settings.h2_ping_interval.is_zero()).then_some(Pings {
                interval: settings.h2_ping_interval,
                timeout: settings.h2_ping_timeout,
            }),
            h2: Mutex::new(Vec::new()),
        }))
    }

    /// What a request to `target` goes on: an HTTP/2 stream when the upstream speaks HTTP/2
    /// (never for an upgrade), else an HTTP/1.1 connection: a [`Wire`] when `bodiless` (a
    /// request without a body, not an upgrade), else hyper's.
    pub(crate) async fn carrier(
        &self,
        target: &TargetAddr,
        upgrade: bool,
        bodiless: bool,
    ) -> Result<Carrier<B>, ConnectError> {
        let alpn = match self.0.protocol {
            _ if upgrade => None,
            Protocol::Http1 => None,
            Protocol::H2 => Some(Alpn::H2),
            Protocol::Auto if target.is_tls() => Some(Alpn::Both),
            Protocol::Auto => None,
        };
        let Some(alpn) = alpn else {
            if bodiless && !upgrade {
                return self.wire(target).await;
            }
            return Box::pin(self.get(target)).await.map(Carrier::H1);
        };
        if alpn == Alpn::Both && !self.speaks_h2(target) {
            // Not known to speak HTTP/2 (yet): an idle HTTP/1.1 connection, else a new
            // connection of whichever protocol the server chooses.
            if let Some(conn) = Box::pin(self.idle_hyper(target)).await {
                return Ok(Carrier::H1(conn));
            }
            let made = Box::pin(self.connect_with(target, alpn)).await?;
            if let Carrier::H2 { conn, .. } = &made {
                self.h2_entry_with(target, |e| e.conns.push(conn.clone()));
                self.start_reaper_any();
            }
            return Ok(made);
        }
        // Boxed: its state would otherwise set the size of every request's future.
        Box::pin(self.h2_stream(target, alpn)).await
    }

    /// Whether `target` has an HTTP/2 connection (it chose `h2` before).
    fn speaks_h2(&self, target: &TargetAddr) -> bool {
        let lists = self.0.h2.lock().unwrap_or_else(PoisonError::into_inner);
        lists
            .iter()
            .any(|e| same(&e.key, target.key()) && !e.conns.is_empty())
    }

    /// Runs `f` on `target`'s HTTP/2 entry (made if missing).
    fn h2_entry_with<T>(&self, target: &TargetAddr, f: impl FnOnce(&mut H2Target) -> T) -> T {
        let mut lists = self.0.h2.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match lists.iter().position(|e| same(&e.key, target.key())) {
            Some(at) => at,
            None => {
                lists.push(H2Target {
                    key: Arc::clone(target.key()),
                    conns: Vec::new(),
                    connecting: false,
                    generation: watch::Sender::new(0),
                    failure: None,
                });
                lists.len() - 1
            }
        };
        f(&mut lists[at])
    }

    /// A stream on an HTTP/2 connection to `target` with room, or on a new one: made by this
    /// request, or by another that this one waits for (and whose failure it shares).
    async fn h2_stream(&self, target: &TargetAddr, alpn: Alpn) -> Result<Carrier<B>, ConnectError> {
        enum Turn {
            Use(H2Conn, Reserved),
            Wait(watch::Receiver<u64>, u64),
            Connect,
        }
        for _ in 0..3 {
            let turn = self.h2_entry_with(target, |entry| {
                entry.conns.retain(|c| !c.is_closed());
                if let Some((conn, stream)) =
                    entry.conns.iter().find_map(|c| c.reserve().map(|r| (c, r)))
                {
                    return Turn::Use(conn.clone(), stream);
                }
                if entry.connecting {
                    let rx = entry.generation.subscribe();
                    let seen = *rx.borrow();
                    return Turn::Wait(rx, seen);
                }
                entry.connecting = true;
                Turn::Connect
            });
            match turn {
                Turn::Use(conn, stream) => {
                    return Ok(Carrier::H2 {
                        conn,
                        stream,
                        reused: true,
                    });
                }
                Turn::Wait(mut rx, seen) => {
                    let _ = tokio::time::timeout(self.0.connect_timeout, rx.changed()).await;
                    let failed = self.h2_entry_with(target, |e| {
                        (*e.generation.borrow() != seen)
                            .then(|| e.failure.clone())
                            .flatten()
                    });
                    if let Some(why) = failed {
                        return Err(ConnectError::Shared(why));
                    }
                }
                Turn::Connect => {
                    let mut turn = ConnectTurn {
                        pool: self,
                        target,
                        failure: None,
                        made: None,
                    };
                    let made = self.connect_with(target, alpn).await;
                    match &made {
                        Ok(Carrier::H2 { conn, .. }) => turn.made = Some(conn.clone()),
                        Ok(Carrier::H1(_) | Carrier::Wire { .. }) => {}
                        Err(e) => turn.failure = Some(e.to_string().into()),
                    }
                    drop(turn);
                    return made;
                }
            }
        }
        // Waited in vain three times: a connection of its own.
        self.connect_with(target, alpn).await
    }

    /// An idle connection to `target`, taken out of the pool. `wire`: the most recently used
    /// open [`Wire`]. Else: the most recently used hyper connection that is ready, else the
    /// newest open one (its response just ended and its task has not run since: see
    /// [`Conn::wait_ready`]), else the newest open wire, for hyper to take over.
    fn checkout(&self, target: &TargetAddr, wire: bool) -> Option<Parked<B>> {
        let mut idle = self.0.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle
            .iter_mut()
            .find(|(key, _)| same(key, target.key()))
            .map(|(_, list)| list)?;
        let now = crate::now();
        // Newest first, closed and expired ones dropped on the way. The reaper clears the
        // rest of the list.
        let mut i = list.len();
        let mut looked = 0;
        let mut pick: Option<usize> = None;
        let mut fallback: Option<usize> = None;
        while i > 0 && looked < SCAN {
            i -= 1;
            let entry = &mut list[i];
            if now >= entry.expires || !entry.conn.is_open() {
                list.remove(i);
                pick = pick.map(|n| n - 1);
                fallback = fallback.map(|n| n - 1);
                continue;
            }
            looked += 1;
            match (&entry.conn, wire) {
                (Parked::Wire(_), true) => {
                    pick = Some(i);
                    break;
                }
                (Parked::Hyper(_), true) => {}
                (Parked::Hyper(link), false) => {
                    if link.sender.is_ready() {
                        pick = Some(i);
                        break;
                    }
                    pick = pick.or(Some(i));
                }
                (Parked::Wire(_), false) => fallback = fallback.or(Some(i)),
            }
        }
        Some(list.remove(pick.or(fallback)?).conn)
    }

    /// An idle connection to `target` for hyper's client, ready (or ready within a moment):
    /// one of its own, or a wire's socket it takes over.
    async fn idle_hyper(&self, target: &TargetAddr) -> Option<Conn<B>> {
        match self.checkout(target, false)? {
            Parked::Hyper(link) => {
                let mut conn = Conn { link, reused: true };
                conn.wait_ready().await.then_some(conn)
            }
            Parked::Wire(wire) => {
                let (io, open) = wire.into_io();
                match self.handshake(io, open).await {
                    Ok(Carrier::H1(mut conn)) => {
                        conn.reused = true;
                        Some(conn)
                    }
                    _ => None,
                }
            }
        }
    }

    /// A connection to `target` for one request: a pooled one that is ready (or becomes
    /// ready within a moment), else a new one.
    pub(crate) async fn get(&self, target: &TargetAddr) -> Result<Conn<B>, ConnectError> {
        if let Some(conn) = self.idle_hyper(target).await {
            return Ok(conn);
        }
        self.connect(target).await
    }

    /// A [`Wire`] to `target`: the most recently used idle one that is still open, else a new
    /// one.
    pub(crate) async fn wire(&self, target: &TargetAddr) -> Result<Carrier<B>, ConnectError> {
        if let Some(Parked::Wire(wire)) = self.checkout(target, true) {
            return Ok(Carrier::Wire { wire, reused: true });
        }
        // Boxed: a connect's state would otherwise be part of every request's future, which
        // is moved whole, and most requests find a pooled connection.
        Box::pin(self.connect_wire(target)).await
    }

    /// A new [`Wire`] to `target` (TLS offering `http/1.1` alone on `https://` targets).
    pub(crate) async fn connect_wire(
        &self,
        target: &TargetAddr,
    ) -> Result<Carrier<B>, ConnectError> {
        let io = self.open(target, Alpn::Http1).await?;
        target.metrics().connection_opened();
        let wire = Wire::new(io, OpenConnection(target.clone()));
        Ok(Carrier::Wire {
            wire,
            reused: false,
        })
    }

    /// A new HTTP/1.1 connection to `target`; its connection task runs on its own.
    pub(crate) async fn connect(&self, target: &TargetAddr) -> Result<Conn<B>, ConnectError> {
        match self.connect_with(target, Alpn::Http1).await? {
            Carrier::H1(conn) => Ok(conn),
            // Only ever asked for by ALPN, and not offered; wires are made by `connect_wire`.
            Carrier::H2 { .. } | Carrier::Wire { .. } => Err(ConnectError::NoH2),
        }
    }

    /// A new connection to `target`: HTTP/2 when `alpn` asks only for it (prior knowledge
    /// on `http://` targets) or TLS agrees on it, else HTTP/1.1.
    async fn connect_with(
        &self,
        target: &TargetAddr,
        alpn: Alpn,
    ) -> Result<Carrier<B>, ConnectError> {
        let io = self.open(target, alpn).await?;
        let h2 = match &io {
            Io::Plain(_) => alpn == Alpn::H2,
            Io::Tls(s) => crate::tls::agreed_h2(s),
        };
        if h2 {
            return match io {
                Io::Plain(s) => self.h2_handshake(s, target).await,
                Io::Tls(s) => self.h2_handshake(s, target).await,
            };
        }
        if alpn == Alpn::H2 {
            return Err(ConnectError::NoH2);
        }
        target.metrics().connection_opened();
        self.handshake(io, OpenConnection(target.clone())).await
    }

    /// A connected socket to `target`, through the TLS handshake on `https://` targets
    /// (offering `alpn`), under the connect timeout.
    async fn open(&self, target: &TargetAddr, alpn: Alpn) -> Result<Io, ConnectError> {
        let timeout = self.0.connect_timeout;
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect(target.authority().as_str()))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(ConnectError::Io(e)),
                Err(_) => return Err(ConnectError::Timeout(timeout)),
            };
        let _ = stream.set_nodelay(true);
        tracing::debug!(target = %target, "new upstream connection");
        if !target.is_tls() {
            return Ok(Io::Plain(stream));
        }
        let Some(tls) = self.0.tls.clone().or_else(crate::tls::default_upstream_tls) else {
            return Err(ConnectError::Tls(std::io::Error::other(
                "no TLS client configuration",
            )));
        };
        // The TLS handshake is part of connecting: under the same timeout.
        // Boxed: a handshake's state is large, and most requests find a pooled connection.
        match tokio::time::timeout(timeout, Box::pin(tls.connect(target, stream, alpn))).await {
            Ok(Ok(stream)) => Ok(Io::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(ConnectError::Tls(e)),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    /// The HTTP/2 handshake on a connected stream, under the connect timeout.
    async fn h2_handshake<I>(&self, io: I, target: &TargetAddr) -> Result<Carrier<B>, ConnectError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = H2Conn::handshake(io, target, self.0.max_head_bytes, self.0.pings);
        match tokio::time::timeout(self.0.connect_timeout, handshake).await {
            Ok(Ok(conn)) => Ok(Carrier::H2 {
                stream: conn.open(),
                conn,
                reused: false,
            }),
            Ok(Err(e)) => Err(ConnectError::H2(e)),
            Err(_) => Err(ConnectError::Timeout(self.0.connect_timeout)),
        }
    }

    /// The HTTP/1.1 handshake on a connected socket (counted open by `open`); its
    /// connection task runs on its own.
    async fn handshake(&self, io: Io, open: OpenConnection) -> Result<Carrier<B>, ConnectError> {
        // The read buffer's cap is also the largest response head hyper accepts.
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.0.max_head_bytes)
            .handshake(TokioIo::new(io))
            .await
            .map_err(ConnectError::Handshake)?;
        let task = tokio::spawn(async move {
            let _open = open;
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(Carrier::H1(Conn {
            link: Link {
                sender,
                task: Some(task.abort_handle()),
            },
            reused: false,
        }))
    }
}

/// The request making a target's HTTP/2 connection: when it is done (or dropped, its request
/// gone), the others waiting are told, and get the connection or the failure.
struct ConnectTurn<'a, B: Send + 'static> {
    pool: &'a Pool<B>,
    target: &'a TargetAddr,
    made: Option<H2Conn>,
    failure: Option<Arc<str>>,
}

impl<B: Send + 'static> Drop for ConnectTurn<'_, B> {
    fn drop(&mut self) {
        let mut lists = self
            .pool
            .0
            .h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = lists.iter_mut().find(|e| same(&e.key, self.target.key())) else {
            return;
        };
        entry.connecting = false;
        entry.failure = self.failure.take();
        if let Some(conn) = self.made.take() {
            entry.conns.push(conn);
        }
        entry.generation.send_modify(|g| *g += 1);
        drop(lists);
        self.pool.start_reaper_any();
    }
}

/// Counts a connection as open to its target until its task ends (or is aborted).
pub(crate) struct OpenConnection(pub(crate) TargetAddr);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics().connection_closed();
    }
}

impl<B: Send + 'static> Pool<B> {
    /// Starts the task that closes idle connections, once.
    fn start_reaper_any(&self) {
        if !self.0.reaper.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.0), Arc::clone(&self.0.gone)));
        }
    }

    /// Puts a connection whose exchange is over back, unless it is closed or the target has
    /// enough idle ones; `keep_for` is how long the upstream said it keeps it open idle.
    pub(crate) fn checkin(
        &self,
        target: &TargetAddr,
        mut conn: Parked<B>,
        keep_for: Option<Duration>,
    ) {
        if !conn.is_open() || self.0.max_idle_per_target == 0 {
            tracing::debug!(target = %target, "upstream connection not kept");
            return;
        }
        let mut idle = self.0.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match idle.iter().position(|(key, _)| same(key, target.key())) {
            Some(at) => at,
            None => {
                idle.push((Arc::clone(target.key()), Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[at].1;
        if list.len() >= self.0.max_idle_per_target {
            // The oldest goes; its connection closes as it is dropped.
            list.remove(0);
        }
        let keep = keep_for.map_or(self.0.idle_timeout, |k| k.min(self.0.idle_timeout));
        if let Parked::Wire(wire) = &mut conn {
            wire.park();
        }
        list.push(Idle {
            conn,
            expires: crate::now() + keep,
        });
        drop(idle);
        self.start_reaper_any();
    }
}

impl<B> Pool<B> {
    /// Moves `previous`'s idle HTTP/1.1 connections and open HTTP/2 connections of the
    /// targets `keep` says yes to into this pool (a reload's new upstream takes over the old
    /// one's); the rest stay with `previous` and close with it.
    pub(crate) fn adopt(&self, previous: &Pool<B>, keep: impl Fn(&str) -> bool)
    where
        B: Send + 'static,
    {
        let moved: Vec<IdleList<B>> = {
            let mut old = previous
                .0
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (kept, rest): (Vec<_>, Vec<_>) = old.drain(..).partition(|(key, _)| keep(key));
            *old = rest;
            kept
        };
        let moved_h2: Vec<H2Target> = {
            let mut old = previous.0.h2.lock().unwrap_or_else(PoisonError::into_inner);
            let (kept, rest): (Vec<_>, Vec<_>) = old.drain(..).partition(|e| keep(&e.key));
            *old = rest;
            kept
        };
        let had = !moved.is_empty() || !moved_h2.is_empty();
        self.0
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(moved);
        self.0
            .h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(moved_h2.into_iter().map(|mut e| {
                // A connect in progress belonged to the old pool's requests.
                e.connecting = false;
                e
            }));
        if had {
            self.start_reaper_any();
        }
    }

    /// Closes the idle connections of targets for which `keep` says no (targets that left the
    /// set).
    pub(crate) fn retain_targets(&self, keep: impl Fn(&str) -> bool) {
        let mut idle = self.0.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|(key, _)| keep(key));
        drop(idle);
        let mut h2 = self.0.h2.lock().unwrap_or_else(PoisonError::into_inner);
        h2.retain(|e| keep(&e.key));
    }

    /// Connections kept now, per target (by [`TargetAddr`]'s display): idle HTTP/1.1 ones,
    /// and open HTTP/2 ones (which may be carrying streams).
    pub(crate) fn idle_by_target(&self) -> Vec<(Arc<str>, usize)> {
        let idle = self.0.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept: Vec<(Arc<str>, usize)> = idle
            .iter()
            .map(|(key, list)| (Arc::clone(key), list.len()))
            .collect();
        drop(idle);
        let h2 = self.0.h2.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in h2.iter() {
            let open = entry.conns.iter().filter(|c| !c.is_closed()).count();
            match kept.iter_mut().find(|(key, _)| same(key, &entry.key)) {
                Some((_, n)) => *n += open,
                None if open > 0 => kept.push((Arc::clone(&entry.key), open)),
                None => {}
            }
        }
        kept
    }
}

impl<B> Drop for Shared<B> {
    fn drop(&mut self) {
        // A permit if the reaper is not waiting right now: it ends at its next look.
        self.gone.notify_one();
    }
}

/// How long an upstream keeps an idle connection open, from its `Keep-Alive: timeout=N`
/// (seconds), less a margin so that the gateway stops using it before the upstream closes it:
/// half a second, or a quarter of a timeout shorter than two seconds.
pub(crate) fn announced_keep_alive(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("keep-alive")?.to_str().ok()?;
    let secs: u64 = value.split(',').find_map(|param| {
        let (k, v) = param.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| v.trim().parse().ok())?
    })?;
    let full = Duration::from_secs(secs);
    let margin = if secs >= 2 {
        Duration::from_millis(500)
    } else {
        full / 4
    };
    Some(full.saturating_sub(margin))
}

fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// Closes idle connections past the idle timeout, every half timeout, for as long as the pool
/// exists (connections are otherwise only looked at when a request wants one).
async fn reap<B>(pool: Weak<Shared<B>>, gone: Arc<tokio::sync::Notify>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = gone.notified() => return,
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = crate::now();
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, list) in idle.iter_mut() {
            list.retain_mut(|e| now < e.expires && e.conn.is_open());
        }
        drop(idle);
        let mut h2 = pool.h2.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in h2.iter_mut() {
            entry
                .conns
                .retain(|c| !c.is_closed() && !c.idle_longer_than(pool.idle_timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_announcements_parse_with_a_margin() {
        let ka = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("keep-alive", http::HeaderValue::from_static(v));
            announced_keep_alive(&h)
        };
        assert_eq!(ka("timeout=5, max=100"), Some(Duration::from_millis(4500)));
        assert_eq!(ka("max=10, Timeout = 1"), Some(Duration::from_millis(750)));
        assert_eq!(ka("timeout=0"), Some(Duration::ZERO));
        assert_eq!(ka("max=10"), None);
        assert_eq!(ka("timeout=soon"), None);
        assert_eq!(announced_keep_alive(&http::HeaderMap::new()), None);
    }
}
