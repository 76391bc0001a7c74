//! Serving: accept loops with a connection limit, HTTP/1.1 and HTTP/2 on one port, limits on
//! request heads and bodies, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::reload::LiveService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::Server;
use crate::stats::ConnStats;

mod body;
mod conn;
mod front;
mod h1;
mod park;
mod stop;

pub use body::ServedBody;

/// A connection's place: its permit under `max_connections` and its share of the count
/// shutdown waits for. Shared with the tunnels (WebSockets) the connection hands over, which
/// outlive it: the slot is free once the connection and its tunnels are all gone.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _alive: mpsc::Sender<()>,
}

/// Listens on `at` with room for `backlog` connections the kernel has completed and the
/// gateway not yet accepted (Linux caps it at `net.core.somaxconn`).
///
/// tokio's and the standard library's `bind` ask for 128, which a burst of new connections
/// overflows while the serving threads are busy (TLS handshakes): the kernel then drops the
/// client's handshake and the client sends its SYN again a second later. nginx asks for 511,
/// HAProxy for its `maxconn`.
pub fn bind(at: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own `bind`: a restarted gateway rebinds at once, past its old TIME_WAITs.
    socket.set_reuseaddr(true)?;
    socket.bind(at)?;
    socket.listen(backlog)
}

/// A listening socket, plain or HTTPS.
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// TLS on every connection it accepts (`None`: plain HTTP).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Listener { tcp, tls: None }
    }
}

/// How the connections are served.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`Server::header_read_timeout_ms`].
    pub header_read_timeout: Duration,
    /// See [`Server::idle_timeout_ms`].
    pub idle_timeout: Duration,
    /// See [`Server::max_header_bytes`].
    pub max_header_bytes: usize,
    /// See [`Server::max_body_bytes`] (0: none).
    pub max_body_bytes: u64,
    /// See [`Server::max_connections`].
    pub max_connections: usize,
    /// See [`Server::inline_http1`].
    pub inline_http1: bool,
    /// See [`Server::idle_park_after_ms`] (`None`: never).
    pub idle_park_after: Option<Duration>,
    /// Where idle connections are parked: made by [`serve`] when `idle_park_after` is set.
    parking: Option<std::sync::Weak<park::Parking>>,
    /// See [`Server::shutdown_grace_ms`].
    pub shutdown_grace: Duration,
    /// The header that carries a verified client certificate's subject upstream (`[tls]
    /// client_subject_header`): removed from every request, then set on those whose TLS
    /// connection presented a certificate.
    pub client_subject_header: Option<http::HeaderName>,
    /// Plain-HTTP requests are answered `308` to HTTPS on this port (`[tls] redirect_http`).
    pub redirect_to_https: Option<u16>,
    /// `Strict-Transport-Security` for HTTPS responses (`[tls] hsts_max_age_s`).
    pub hsts: Option<http::HeaderValue>,
}

impl Limits {
    /// With what `[tls]` asks of every connection: the subject header, the redirect of plain
    /// HTTP to `https_port` (where an HTTPS listener is bound), HSTS.
    pub fn with_tls(
        self,
        tls: &crate::config::Tls,
        server: &crate::tls::TlsServer,
        https_port: Option<u16>,
    ) -> Limits {
        Limits {
            client_subject_header: server.subject_header.clone(),
            redirect_to_https: https_port.filter(|_| tls.redirect_http),
            hsts: (tls.hsts_max_age_s > 0)
                .then(|| http::HeaderValue::from_str(&format!("max-age={}", tls.hsts_max_age_s)))
                .and_then(Result::ok),
            ..self
        }
    }
}

impl From<&Server> for Limits {
    fn from(s: &Server) -> Self {
        Limits {
            header_read_timeout: s.header_read_timeout(),
            idle_timeout: s.idle_timeout(),
            max_header_bytes: s.max_header_bytes,
            max_body_bytes: s.max_body_bytes,
            max_connections: s.max_connections.max(1),
            inline_http1: s.inline_http1,
            idle_park_after: s.idle_park_after(),
            parking: None,
            shutdown_grace: s.shutdown_grace(),
            client_subject_header: None,
            redirect_to_https: None,
            hsts: None,
        }
    }
}

/// Serves `service` on every listener (plain or HTTPS) until `shutdown` completes; then stops accepting, asks
/// every connection to finish (HTTP/1.1: after its current response; HTTP/2: `GOAWAY`), and
/// waits up to the grace period for them. Returns whether they all finished in time.
pub async fn serve(
    service: LiveService<ServedBody>,
    listeners: Vec<Listener>,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; `recv` ends when the last one is gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut limits = limits;
    if limits.idle_park_after.is_some() {
        limits.parking = park::Parking::start(stop_rx.clone());
    }
    let limits = Arc::new(limits);
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::spawn(accept_loop(
            listener,
            service.clone(),
            Arc::clone(&limits),
            Arc::clone(&permits),
            stop_rx.clone(),
            alive_tx.clone(),
            Arc::clone(&stats),
        )));
    }
    drop(alive_tx);
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    match tokio::time::timeout(limits.shutdown_grace, alive_rx.recv()).await {
        Ok(_) => {
            tracing::info!("all connections finished");
            true
        }
        Err(_) => {
            tracing::warn!(
                grace_ms = limits.shutdown_grace.as_millis() as u64,
                "grace period over; closing the rest"
            );
            false
        }
    }
}

async fn accept_loop(
    listener: Listener,
    service: LiveService<ServedBody>,
    limits: Arc<Limits>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    stats: Arc<ConnStats>,
) {
    loop {
        // At most max_connections at once: wait for a slot before accepting more.
        if permits.available_permits() == 0 {
            stats.limit_reached.inc();
        }
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        conn::spawn(
            stream,
            peer,
            listener.tls.clone(),
            service.clone(),
            &limits,
            Slot {
                _permit: permit,
                _alive: alive.clone(),
            },
            stop.clone(),
            Arc::clone(&stats),
        );
    }
}
