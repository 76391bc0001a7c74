//! Helpers shared by the gateway's integration tests: the gateway in-process on port 0, fake
//! backends, a recording upstream, plain HTTP/1.1 calls and raw-bytes exchanges.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_bin::app;
use gateway_bin::config::Source;
use gateway_bin::serve::{self, Limits, ServedBody};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The default topology, on the given backend addresses, plus a slow-timeout upstream.
pub fn config(b1: SocketAddr, b2: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shutdown_grace_ms = 5000
max_body_bytes = 1000

[upstreams.static]
targets = ["http://{b1}"]

[upstreams.admin]
targets = ["http://{b2}"]

[upstreams.api]
strategy = "round-robin"
targets = ["http://{b1}", "http://{b2}"]
response_timeout_ms = 300

[[routes]]
path = "/api/*path"
methods = ["GET", "POST", "PUT", "DELETE"]
upstream = "api"

[[routes]]
path = "/static/*path"
methods = ["GET", "HEAD"]
upstream = "static"

[[routes]]
path = "/admin/*path"
methods = ["GET"]
upstream = "admin"
auth = {{ header = "X-Admin-Token", secrets = ["letmein"] }}
"#
    )
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<bool>,
}

pub async fn start_gateway(text: String) -> Gateway {
    let source = Source {
        name: "test.toml".into(),
        text,
    };
    let config = source.parse().unwrap();
    let app = app::build::<ServedBody>(&config, &source).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = Limits::from(&config.server);
    let done = tokio::spawn(serve::serve(app.service, vec![listener], limits, async {
        let _ = stopped.await;
    }));
    Gateway {
        addr,
        stop: Some(stop),
        done,
    }
}

pub struct Demo {
    pub gateway: Gateway,
    pub b1: fake_backend::Backend,
    pub b2: fake_backend::Backend,
}

pub async fn demo() -> Demo {
    let b1 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let b2 = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let gateway = start_gateway(config(b1.addr(), b2.addr())).await;
    Demo { gateway, b1, b2 }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub async fn call(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = sender.send_request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "gateway.test")
}

pub async fn fetch(addr: SocketAddr, path: &str) -> Reply {
    call(addr, get(path).body(Empty::new()).unwrap()).await
}

/// A free loopback port for a child process (bound, then released for it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    pub addr: SocketAddr,
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
            self.conns.lock().unwrap()[self.index]
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
                    let mut all = c.lock().unwrap();
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
                                c.lock().unwrap()[index].requests.push((parts, body));
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(b"ok")),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades()
                        .await;
                    c.lock().unwrap()[index].closed = true;
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
                let all = self.conns.lock().unwrap();
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
        self.conns.lock().unwrap().clear();
    }
}

/// Sends `bytes` on a fresh connection followed by a `Connection: close` sentinel request,
/// and reads until the gateway closes (at most 10 s). Returns the status of every response
/// in order and the whole text.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes.to_vec();
    out.extend_from_slice(b"GET /sentinel HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n");
    // The gateway may answer and close before it has read it all.
    let _ = stream.write_all(&out).await;
    let (text, _) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

/// Reads until the peer closes (failing after `bound`); returns what came and when the close
/// came.
pub async fn read_to_close(stream: &mut TcpStream, bound: Duration) -> (String, Instant) {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after {bound:?}");
    (String::from_utf8_lossy(&text).into_owned(), Instant::now())
}
