//! Serving: accept loops with a connection limit, HTTP/1.1 and HTTP/2 on one port, limits on
//! request heads and bodies, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proxy::{ClientAddr, TunnelGuard};
use router::MuxService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tower::ServiceExt;

use crate::config::Server;

/// The body the gateway's routes see: the client's, capped at `max_body_bytes`.
pub type ServedBody = Limited<Incoming>;

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
    /// See [`Server::shutdown_grace_ms`].
    pub shutdown_grace: Duration,
}

impl From<&Server> for Limits {
    fn from(s: &Server) -> Self {
        Limits {
            header_read_timeout: s.header_read_timeout(),
            idle_timeout: s.idle_timeout(),
            max_header_bytes: s.max_header_bytes,
            max_body_bytes: s.max_body_bytes,
            max_connections: s.max_connections.max(1),
            shutdown_grace: s.shutdown_grace(),
        }
    }
}

/// Serves `service` on every listener until `shutdown` completes; then stops accepting, asks
/// every connection to finish (HTTP/1.1: after its current response; HTTP/2: `GOAWAY`), and
/// waits up to the grace period for them. Returns whether they all finished in time.
pub async fn serve(
    service: MuxService<ServedBody>,
    listeners: Vec<TcpListener>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; `recv` ends when the last one is gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::spawn(accept_loop(
            listener,
            service.clone(),
            limits.clone(),
            Arc::clone(&permits),
            stop_rx.clone(),
            alive_tx.clone(),
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
    listener: TcpListener,
    service: MuxService<ServedBody>,
    limits: Limits,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
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
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(AtomicU64::new(0));
        let io = Tracked {
            inner: stream,
            count: 0,
            shared: Arc::clone(&activity),
        };
        // Tunnels (WebSockets) count as alive until they close, so shutdown waits for them
        // within the grace period too.
        let tunnel_guard = TunnelGuard(Arc::new(alive.clone()));
        let conn = serve_connection(io, peer, service.clone(), &limits, tunnel_guard);
        let stop = stop.clone();
        let alive = alive.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            drive(conn, activity, idle, stop).await;
            drop(permit);
            drop(alive);
        });
    }
}

/// Runs one connection to its end, asking it to finish gracefully on shutdown or after
/// `idle` without a byte read or written.
async fn drive<C: Connection>(
    conn: C,
    activity: Arc<AtomicU64>,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = std::pin::pin!(conn);
    let mut seen = activity.load(Ordering::Relaxed);
    // One timer for the connection's life, re-armed only when it fires: the connection
    // future is polled for every read and write, and a new timer per poll would cost a
    // timer-wheel insert each time.
    let timer = tokio::time::sleep(idle);
    let mut timer = std::pin::pin!(timer);
    let mut finishing = *stop.borrow_and_update();
    if finishing {
        conn.as_mut().finish();
    }
    loop {
        tokio::select! {
            biased;
            _ = conn.as_mut() => return,
            _ = stop.changed(), if !finishing => {
                finishing = true;
                conn.as_mut().finish();
            }
            _ = timer.as_mut(), if !finishing => {
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    tracing::debug!(idle_ms = idle.as_millis() as u64, "closing an idle connection");
                    finishing = true;
                    conn.as_mut().finish();
                } else {
                    seen = now;
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
        }
    }
}

/// A served connection that can be asked to finish gracefully.
trait Connection: Future {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S, E> Connection for hyper_util::server::conn::auto::UpgradeableConnection<'static, I, S, E>
where
    Self: Future,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
    shared: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&mut self) {
        self.count += 1;
        self.shared.store(self.count, Ordering::Relaxed);
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
        if buf.filled().len() != before {
            self.touch();
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
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
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

fn serve_connection(
    stream: Tracked,
    peer: SocketAddr,
    service: MuxService<ServedBody>,
    limits: &Limits,
    tunnel_guard: TunnelGuard,
) -> impl Connection + use<> {
    let max_body = if limits.max_body_bytes == 0 {
        usize::MAX
    } else {
        usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX)
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(|b| Limited::new(b, max_body));
        // Framing hyper lets through but a gateway should not: refused before anything runs.
        let refused = proxy::headers::odd_transfer_encoding(req.headers());
        // Connection options belong to this hop: gone before any middleware looks.
        proxy::headers::consume_connection_options(req.headers_mut());
        req.extensions_mut().insert(ClientAddr(peer));
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(tunnel_guard.clone());
        }
        let service = service.clone();
        async move {
            if refused {
                return Ok(bad_request("Bad Request: Transfer-Encoding\n"));
            }
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

/// `400` that also closes the connection: after a framing error nothing else on it can be
/// trusted.
fn bad_request(text: &'static str) -> http::Response<router::Body> {
    let mut res = http::Response::new(router::Body::from(text));
    *res.status_mut() = http::StatusCode::BAD_REQUEST;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    res
}
