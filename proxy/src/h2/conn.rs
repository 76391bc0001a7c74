//! One HTTP/2 connection to a target: the handle new streams are opened on, the count of
//! streams in flight (against the upstream's limit), and the task that drives the connection
//! and pings it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::target::TargetAddr;

/// The stream window the gateway grants an upstream per stream: an upstream sends this much
/// of a response body before the client has read any of it (hyper's client uses 2 MiB,
/// nginx 64 KiB; 1 MiB fills a 1 Gbit/s link at 8 ms of round trip).
const STREAM_WINDOW: u32 = 1024 * 1024;
/// The connection's window, across its streams: what one connection can hold unread at once.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Streams opened before the upstream's SETTINGS say how many it takes (RFC 9113 suggests
/// servers allow at least 100).
const INITIAL_STREAMS: usize = 100;
/// The most streams the gateway puts on one connection, whatever the upstream allows.
const MAX_STREAMS: usize = 1000;

/// The upstream's largest header list the gateway accepts.
fn header_list_limit(max_head_bytes: usize) -> u32 {
    u32::try_from(max_head_bytes).unwrap_or(u32::MAX)
}

/// Shared by the pool's entry, the streams in flight and the driver.
struct State {
    /// Streams in flight.
    streams: AtomicUsize,
    /// The connection ended, failed its ping or was refused a stream: no new streams.
    closed: AtomicBool,
    /// When it last had no stream in flight, in ms since `born`.
    idle_since_ms: AtomicU64,
    born: Instant,
    /// The driver; aborted (closing the connection) when the last handle goes.
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// A handle on an HTTP/2 connection: cheap to clone, one per stream being opened.
#[derive(Clone)]
pub(crate) struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<State>,
}

/// A stream reserved on a connection: the handle to open it with, and its slot.
pub(crate) struct Reserved {
    pub(crate) send: h2::client::SendRequest<Bytes>,
    pub(crate) slot: StreamSlot,
}

/// A stream in flight on a connection: counted until dropped (with the response body, or
/// the request body's pipe, whichever goes last).
pub(crate) struct StreamSlot(Arc<State>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = u64::try_from(self.0.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.0.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// Keep-alive pings: one every `interval` on a connection, which counts as dead when the
/// answer takes longer than `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pings {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl H2Conn {
    /// The HTTP/2 handshake on a connected stream (TCP, or TLS that agreed on `h2`); the
    /// connection's task runs on its own from then on.
    pub(crate) async fn handshake<I>(
        io: I,
        target: &TargetAddr,
        max_head_bytes: usize,
        pings: Option<Pings>,
    ) -> Result<H2Conn, h2::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_max_send_streams(INITIAL_STREAMS)
            .max_header_list_size(header_list_limit(max_head_bytes))
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let state = Arc::new(State {
            streams: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
            task: std::sync::Mutex::new(None),
        });
        let counted = target.clone();
        counted.metrics().connection_opened();
        let ping_pong = pings.and_then(|p| connection.ping_pong().map(|pp| (pp, p)));
        // The driver holds the state weakly: the connection closes once nobody needs it.
        let weak = Arc::downgrade(&state);
        let task = tokio::spawn(async move {
            let _open = crate::pool::OpenConnection(counted);
            let why = match ping_pong {
                Some((ping_pong, pings)) => tokio::select! {
                    ended = connection => ended.err().map(|e| crate::error_chain(&e)),
                    dead = keep_alive(ping_pong, pings) => Some(dead),
                },
                None => connection.await.err().map(|e| crate::error_chain(&e)),
            };
            if let Some(state) = weak.upgrade() {
                state.closed.store(true, Ordering::Release);
            }
            match why {
                Some(error) => tracing::debug!(%error, "upstream HTTP/2 connection ended"),
                None => tracing::debug!("upstream HTTP/2 connection closed"),
            }
        });
        *state
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task.abort_handle());
        Ok(H2Conn { send, state })
    }

    /// A stream slot on it, if it can take another stream now (the upstream's limit, ours,
    /// not closed): counted from now, so that requests checking at once do not overfill it.
    pub(crate) fn reserve(&self) -> Option<Reserved> {
        if self.is_closed() {
            return None;
        }
        let limit = self.send.current_max_send_streams().min(MAX_STREAMS);
        self.state
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Reserved {
            send: self.send.clone(),
            slot: StreamSlot(Arc::clone(&self.state)),
        })
    }

    /// Whether it takes no new streams (ended, dead, or going away).
    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    /// No new streams on it from now on.
    pub(crate) fn close(&self) {
        self.state.closed.store(true, Ordering::Release);
    }

    /// No stream in flight, and none since `idle_for`.
    pub(crate) fn idle_longer_than(&self, idle_for: Duration) -> bool {
        if self.state.streams.load(Ordering::Acquire) > 0 {
            return false;
        }
        let since = Duration::from_millis(self.state.idle_since_ms.load(Ordering::Relaxed));
        self.state.born.elapsed().saturating_sub(since) >= idle_for
    }

    /// A stream slot on it whatever its count (the request that made the connection).
    pub(crate) fn open(&self) -> Reserved {
        self.state.streams.fetch_add(1, Ordering::AcqRel);
        Reserved {
            send: self.send.clone(),
            slot: StreamSlot(Arc::clone(&self.state)),
        }
    }
}

/// Pings until one goes unanswered for `timeout` (or the connection is gone): why it died.
async fn keep_alive(mut ping_pong: h2::PingPong, pings: Pings) -> String {
    loop {
        tokio::time::sleep(pings.interval).await;
        match tokio::time::timeout(pings.timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return crate::error_chain(&e),
            Err(_) => {
                return format!(
                    "no answer to a PING within {} ms",
                    pings.timeout.as_millis()
                );
            }
        }
    }
}
