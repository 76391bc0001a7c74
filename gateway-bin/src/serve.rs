//! Serving: accept loops with a connection limit, HTTP/1.1 and HTTP/2 on one port, limits on
//! request heads and bodies, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use proxy::ClientAddr;
use router::MuxService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::config::Server;

/// The body the gateway's routes see: the client's, capped at `max_body_bytes`.
pub type ServedBody = Limited<Incoming>;

/// How the connections are served.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`Server::header_read_timeout_ms`].
    pub header_read_timeout: Duration,
    /// See [`Server::max_header_bytes`].
    pub max_header_bytes: usize,
    /// See [`Server::max_body_bytes`] (0: none).
    pub max_body_bytes: u64,
    /// See [`Server::max_connections`].
    pub max_connections: usize,
    /// See [`Server::shutdown_grace_ms`].
    pub shutdown_grace: Duration,
}

impl From<&Server> for Limits {
    fn from(s: &Server) -> Self {
        Limits {
            header_read_timeout: s.header_read_timeout(),
            max_header_bytes: s.max_header_bytes,
            max_body_bytes: s.max_body_bytes,
            max_connections: s.max_connections.max(1),
            shutdown_grace: s.shutdown_grace(),
        }
    }
}

/// Serves `service` on every listener until `shutdown` completes; then stops accepting and
/// waits up to the grace period for the connections in progress. Returns whether they all
/// finished in time.
pub async fn serve(
    service: MuxService<ServedBody>,
    listeners: Vec<TcpListener>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let graceful = Arc::new(GracefulShutdown::new());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::spawn(accept_loop(
            listener,
            service.clone(),
            limits.clone(),
            Arc::clone(&graceful),
            Arc::clone(&permits),
            stop_rx.clone(),
        )));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => {
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
    listener: TcpListener,
    service: MuxService<ServedBody>,
    limits: Limits,
    graceful: Arc<GracefulShutdown>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // At most max_connections at once: wait for a slot before accepting more.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_connection(stream, peer, service.clone(), &limits);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: MuxService<ServedBody>,
    limits: &Limits,
) -> impl hyper_util::server::graceful::GracefulConnection + use<> {
    let max_body = if limits.max_body_bytes == 0 {
        usize::MAX
    } else {
        usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX)
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(|b| Limited::new(b, max_body));
        req.extensions_mut().insert(ClientAddr(peer));
        let service = service.clone();
        async move {
            Ok::<_, Infallible>(
                service
                    .oneshot(req)
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned()
}
