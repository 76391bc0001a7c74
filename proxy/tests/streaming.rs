//! Large bodies stream through the proxy without its memory growing with them.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use balancer::{Algorithm, HealthPolicy};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use proxy::{Proxy, Settings, Upstream};
use tokio::net::TcpListener;
use tower::ServiceExt;

const TOTAL: u64 = 1 << 30;
const CHUNK: usize = 64 << 10;

/// `TOTAL` bytes made on the fly, one reused chunk at a time.
struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Generated {
    fn new() -> Self {
        Generated {
            left: TOTAL,
            chunk: Bytes::from(vec![0x5a; CHUNK]),
        }
    }
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// An upstream that counts what it receives and answers `/download` with `TOTAL` bytes.
async fn upstream(received: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let received = received.clone();
                async move {
                    let download = req.uri().path() == "/download";
                    let mut body = req.into_body();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data() {
                            received.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    let res: Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> =
                        if download {
                            Response::new(Generated::new().boxed())
                        } else {
                            Response::new(http_body_util::Empty::new().boxed())
                        };
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn one_gib_each_way_with_bounded_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let addr = upstream(received.clone()).await;
    let up = Upstream::new(
        "big",
        Algorithm::RoundRobin,
        [(format!("http://{addr}"), 1)],
        HealthPolicy::default(),
        Settings::default(),
    )
    .unwrap();
    let proxy: Proxy<Generated> = Proxy::new(up);
    let before = rss();

    let upload = Request::post("/upload").body(Generated::new()).unwrap();
    let res = proxy.clone().oneshot(upload).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(received.load(Ordering::Relaxed), TOTAL);

    let download = Request::get("/download")
        .body(Generated {
            left: 0,
            chunk: Bytes::new(),
        })
        .unwrap();
    let mut body = proxy.oneshot(download).await.unwrap().into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, TOTAL);

    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "memory grew by {} MiB for 2 GiB streamed",
        grown >> 20
    );
}
