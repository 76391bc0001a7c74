//! Clients over real sockets: one-shot HTTP/1.1 calls and HTTP/2 connections with hyper, and
//! the reply as one value.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Trailers, if the body ended with some.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text (empty when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    async fn read<B>(res: http::Response<B>) -> Result<Reply, String>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = res.into_parts();
        let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }
}

/// A GET request builder for `path` with a `Host` header.
pub fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "gateway.test")
}

/// An HTTP/1.1 connection to `addr`, its connection task spawned.
pub async fn h1<B>(addr: SocketAddr) -> http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("handshake {addr}: {e}"));
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 (prior knowledge) connection to `addr`, its connection task spawned.
pub async fn h2<B>(addr: SocketAddr) -> http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("h2 handshake {addr}: {e}"));
    tokio::spawn(conn);
    sender
}

/// Sends `req` on an HTTP/1.1 connection: the reply, or what went wrong.
pub async fn send_h1<B>(
    sender: &mut http1::SendRequest<B>,
    req: Request<B>,
) -> Result<Reply, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Reply::read(res).await
}

/// Sends `req` on an HTTP/2 connection: the reply, or what went wrong.
pub async fn send_h2<B>(
    sender: &mut http2::SendRequest<B>,
    req: Request<B>,
) -> Result<Reply, String>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Reply::read(res).await
}

/// `req` on a new HTTP/1.1 connection; panics if no response comes.
pub async fn call<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = h1(addr).await;
    send_h1(&mut sender, req)
        .await
        .unwrap_or_else(|e| panic!("request to {addr}: {e}"))
}

/// `GET path` on a new HTTP/1.1 connection.
pub async fn fetch(addr: SocketAddr, path: &str) -> Reply {
    let mut sender = h1(addr).await;
    let req = get(path)
        .body(Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("request for {path}: {e}"));
    send_h1(&mut sender, req)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}
