//! A scripted upstream: a loopback listener that runs a script on every connection it
//! accepts, and records what crossed the wire (connections opened, requests read, connections
//! still open). Dropping it is a killed process: the listener and every connection close.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::wire::{Message, Wire};

/// A request the upstream read, and on which of its connections (0-based, in accept order).
#[derive(Debug, Clone)]
pub struct Seen {
    /// The connection's number.
    pub conn: usize,
    /// The request.
    pub request: Message,
}

#[derive(Default)]
struct Shared {
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
    changed: Notify,
}

impl Shared {
    fn changed(&self) {
        self.changed.notify_waiters();
    }
}

/// One accepted connection, handed to the script.
pub struct Conn {
    /// The raw connection.
    pub wire: Wire,
    /// The connection's number (0-based, in accept order).
    pub index: usize,
    shared: Arc<Shared>,
}

impl Conn {
    /// Reads the next request and records it; `None` when the peer closed or sent garbage.
    pub async fn next_request(&mut self) -> Option<Message> {
        let request = self.wire.read_request().await.ok()??;
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Seen {
                conn: self.index,
                request: request.clone(),
            });
        self.shared.changed();
        Some(request)
    }

    /// Writes `bytes`; false if the peer is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.wire.send(bytes).await.is_ok()
    }

    /// Closes with a TCP reset instead of a clean close (a crashed process, a middlebox).
    pub fn reset(mut self) {
        // A zero linger makes the close a reset; it never blocks (the deprecation is about
        // non-zero lingers).
        #[allow(deprecated)]
        let _ = self
            .wire
            .stream()
            .set_linger(Some(std::time::Duration::ZERO));
    }

    /// Answers every request on this connection with what `respond` makes of it, until the
    /// peer closes.
    pub async fn serve(mut self, respond: impl Fn(&Message) -> Vec<u8>) {
        while let Some(req) = self.next_request().await {
            if !self.send(&respond(&req)).await {
                return;
            }
        }
    }
}

/// A scripted upstream on a loopback port (see the [module docs](self)).
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Counts a connection as open while alive.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed();
    }
}

impl Upstream {
    /// Starts on a free loopback port.
    pub async fn start<F, Fut>(script: F) -> Upstream
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind a loopback port: {e}"),
        };
        Self::on(listener, script)
    }

    /// Starts on `listener` (to come back on the same address after a kill).
    pub fn on<F, Fut>(listener: TcpListener, script: F) -> Upstream
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("listener without an address: {e}"),
        };
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let index = s.accepted.fetch_add(1, Ordering::SeqCst);
                s.open.fetch_add(1, Ordering::SeqCst);
                s.changed();
                let guard = OpenGuard(Arc::clone(&s));
                let conn = Conn {
                    wire: Wire::new(stream),
                    index,
                    shared: Arc::clone(&s),
                };
                let run = script(conn);
                conns.spawn(async move {
                    run.await;
                    drop(guard);
                });
            }
        });
        Upstream { addr, shared, task }
    }

    /// An upstream that answers every request on every connection with `respond(request)`.
    pub async fn serving<R>(respond: R) -> Upstream
    where
        R: Fn(&Message) -> Vec<u8> + Send + Sync + Clone + 'static,
    {
        Upstream::start(move |conn| conn.serve(respond.clone())).await
    }

    /// An upstream that reads a request and never answers it, until the peer hangs up (a
    /// hung application, a long poll).
    pub async fn silent() -> Upstream {
        Upstream::start(|mut c: Conn| async move {
            if c.next_request().await.is_some() {
                let _ = c.wire.closed_within(Duration::from_secs(60)).await;
            }
        })
        .await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, as a target URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Every request read so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `done(self)` holds, at most `bound` (then panics naming `what`). Wakes on
    /// every accept, request and close, not on a timer.
    pub async fn wait(&self, what: &str, bound: Duration, done: impl Fn(&Upstream) -> bool) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.shared.changed.notified();
            if done(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                assert!(
                    done(self),
                    "upstream {}: {what} within {bound:?}",
                    self.addr
                );
                return;
            }
        }
    }

    /// Waits until at least `n` requests arrived (at most `bound`), and returns them all.
    pub async fn wait_requests(&self, n: usize, bound: Duration) -> Vec<Seen> {
        self.wait(&format!("{n} requests"), bound, |u| u.requests().len() >= n)
            .await;
        self.requests()
    }
}

/// A loopback port where nothing listens, held for as long as this lives: a socket bound to
/// it but not listening, so connects are refused (a reset) and no other test can take the
/// port meanwhile (a port bound and released could be).
#[derive(Debug)]
pub struct Refusing {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl Refusing {
    /// Binds a fresh loopback port without listening.
    pub fn new() -> Refusing {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("a loopback port");
        let addr = socket.local_addr().expect("its address");
        Refusing {
            _socket: socket,
            addr,
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Default for Refusing {
    fn default() -> Self {
        Self::new()
    }
}

/// A loopback port whose connects never complete: a listener with a backlog of one, filled
/// by connections nobody accepts, so the kernel drops further handshakes (a firewall that
/// drops, an overloaded host). For connect timeouts.
#[derive(Debug)]
pub struct Blackhole {
    _listener: tokio::net::TcpListener,
    _fill: Vec<tokio::net::TcpStream>,
    addr: SocketAddr,
}

impl Blackhole {
    /// Binds, listens with the smallest backlog, and fills it.
    pub async fn new() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("a loopback port");
        let listener = socket.listen(0).expect("listening");
        let addr = listener.local_addr().expect("its address");
        let mut fill = Vec::new();
        // Connect until one does not complete at once: the queue is full from there on.
        for _ in 0..8 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => fill.push(s),
                _ => break,
            }
        }
        Blackhole {
            _listener: listener,
            _fill: fill,
            addr,
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
