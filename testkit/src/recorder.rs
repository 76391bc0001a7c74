//! A recording upstream: hyper serves it, and it keeps every byte the gateway sent on each
//! connection next to the requests hyper parsed from them, to check framing exactly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// One connection as the recording upstream saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Every byte read from the gateway, in order.
    pub raw: Vec<u8>,
    /// The requests hyper parsed from them: head and body.
    pub requests: Vec<(http::request::Parts, Bytes)>,
    /// The gateway closed the connection.
    pub closed: bool,
}

/// An upstream that records the exact bytes and the requests the gateway sends it, and
/// answers each request `200 ok`.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every connection so far.
    pub conns: Arc<Mutex<Vec<Seen>>>,
    changed: Arc<tokio::sync::Notify>,
}

struct RecordingIo {
    inner: TcpStream,
    conns: Arc<Mutex<Vec<Seen>>>,
    index: usize,
}

impl tokio::io::AsyncRead for RecordingIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.conns.lock().unwrap_or_else(PoisonError::into_inner)[self.index]
                .raw
                .extend_from_slice(new);
        }
        res
    }
}

impl tokio::io::AsyncWrite for RecordingIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Recorder {
    /// Starts on a free loopback port.
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let (c, n) = (Arc::clone(&conns), Arc::clone(&changed));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let index = {
                    let mut all = c.lock().unwrap_or_else(PoisonError::into_inner);
                    all.push(Seen::default());
                    all.len() - 1
                };
                let io = RecordingIo {
                    inner: stream,
                    conns: Arc::clone(&c),
                    index,
                };
                let (c, n) = (Arc::clone(&c), Arc::clone(&n));
                tokio::spawn(async move {
                    let c2 = Arc::clone(&c);
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let c = Arc::clone(&c2);
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = match body.collect().await {
                                    Ok(b) => b.to_bytes(),
                                    Err(_) => Bytes::from_static(b"<body error>"),
                                };
                                c.lock().unwrap_or_else(PoisonError::into_inner)[index]
                                    .requests
                                    .push((parts, body));
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(b"ok")),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades()
                        .await;
                    c.lock().unwrap_or_else(PoisonError::into_inner)[index].closed = true;
                    n.notify_waiters();
                });
            }
        });
        Recorder {
            addr,
            conns,
            changed,
        }
    }

    /// Every connection so far, once the gateway has closed all of them (upstreams in the
    /// hostile suite keep no idle connections, so each closes after its exchange).
    pub async fn settled(&self) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let wait = self.changed.notified();
            {
                let all = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
                if all.iter().all(|s| s.closed) {
                    return all.clone();
                }
            }
            assert!(
                tokio::time::timeout_at(deadline, wait).await.is_ok(),
                "upstream connections still open"
            );
        }
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
