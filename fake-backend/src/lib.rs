//! A fake upstream for demos and tests: it answers every request with a JSON description of
//! what it received, and query parameters make it misbehave, so faults can be driven through a
//! gateway.
//!
//! - Every request: `200`, `content-type: application/json`, `x-backend: <name>` (default
//!   `:<port>`), and `{"backend", "method", "path", "query", "headers", "body_bytes"}`; the
//!   request body is streamed and counted, never held whole. Header names are lower case;
//!   repeated headers become arrays.
//! - `status=N` answers with status `N`; `delay_ms=N` waits before the head; `bytes=N` sends
//!   an `N`-byte streamed body instead of JSON; `sse=N&interval_ms=M` sends `N` server-sent
//!   events `M` ms apart; `reset=1` aborts the connection right after the head; `chunked=1`
//!   sends the JSON without a length (chunked on HTTP/1.1), as most dynamic applications do.
//! - Every response carries `x-connections: N`, the connections this backend has accepted so
//!   far (this one included): how a test or a benchmark sees a proxy's connection reuse.
//! - `Upgrade: websocket` gets a WebSocket echo.
//! - gRPC calls (`content-type: application/grpc`, over HTTP/2) reach a gRPC echo service,
//!   `echo.v1.Echo` (`Unary`, `ServerStream`, `ClientStream`, `Bidi`; `fake-backend/proto/echo.proto`),
//!   and `grpc.health.v1.Health/Check`; metadata `x-grpc-status`, `x-delay-ms` and `x-reset`
//!   make it fail.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None).await?;
//! println!("listening on {}, as {}", backend.addr(), backend.name());
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod answer;
mod bodies;
mod faults;
mod grpc;
mod websocket;

use answer::handle;

/// A running fake backend; dropping it (or [`shutdown`](Self::shutdown)) stops it like a
/// killed process: the listener and every open connection close.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    name: Arc<str>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it reports in `x-backend` and the JSON body.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops it: the listener and every open connection close.
    pub fn shutdown(self) {}
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend on `addr` (port 0 picks a free port) with `name`, or `:<port>` by default.
pub async fn spawn(addr: SocketAddr, name: Option<&str>) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = match name {
        Some(n) => n.into(),
        None => format!(":{}", addr.port()).into(),
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(serve(listener, Arc::clone(&name), Arc::clone(&accepted)));
    Ok(Backend {
        addr,
        name,
        accepted,
        task,
    })
}

/// Serves connections from `listener` until the task is dropped (HTTP/1.1 and HTTP/2),
/// counting them in `accepted`. Dropping it also drops every open connection, as a process
/// that dies would.
pub async fn serve(listener: TcpListener, name: Arc<str>, counter: Arc<AtomicU64>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set stays as large as the open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As servers in production do: an HTTP/2 answer is several small writes (HEADERS, DATA,
        // trailers), and Nagle would hold each one back for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let name = Arc::clone(&name);
        let number = counter.fetch_add(1, Ordering::Relaxed) + 1;
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&name), number, req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// What every answer's body is.
type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
