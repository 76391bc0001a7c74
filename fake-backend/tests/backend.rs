//! The fake backend over real sockets.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn start() -> fake_backend::Backend {
    fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap()
}

async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (http::response::Parts, Result<Bytes, String>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = sender.send_request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (parts, body)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "backend")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn describes_each_request_as_json() {
    let backend = start().await;
    let name = format!(":{}", backend.addr().port());
    assert_eq!(backend.name(), name);
    let req = Request::post("/some/path?a=1&b=two")
        .header("host", "backend")
        .header("x-one", "1")
        .header("x-many", "a")
        .header("x-many", "b")
        .body(Full::new(Bytes::from(vec![7u8; 12345])))
        .unwrap();
    let (head, body) = send(backend.addr(), req).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-type"], "application/json");
    assert_eq!(head.headers["x-backend"], name.as_str());
    let json: Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(json["backend"], name.as_str());
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/some/path");
    assert_eq!(json["query"], "a=1&b=two");
    assert_eq!(json["headers"]["x-one"], "1");
    assert_eq!(json["headers"]["x-many"], serde_json::json!(["a", "b"]));
    assert_eq!(json["headers"]["host"], "backend");
    assert_eq!(json["body_bytes"], 12345);

    let (_, body) = send(backend.addr(), get("/")).await;
    let json: Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(json["query"], Value::Null);
    assert_eq!(json["body_bytes"], 0);
}

#[tokio::test]
async fn named_backends() {
    let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("blue"))
        .await
        .unwrap();
    let (head, _) = send(backend.addr(), get("/")).await;
    assert_eq!(head.headers["x-backend"], "blue");
}

#[tokio::test]
async fn status_delay_and_bytes_faults() {
    let backend = start().await;
    let (head, _) = send(backend.addr(), get("/x?status=503")).await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    let (head, body) = send(backend.addr(), get("/x?status=abc")).await;
    assert_eq!(head.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body.unwrap()).contains("status"));

    let start = Instant::now();
    let (head, _) = send(backend.addr(), get("/x?delay_ms=150")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(150));

    let (head, body) = send(backend.addr(), get("/x?bytes=100000")).await;
    assert_eq!(head.headers["content-length"], "100000");
    let body = body.unwrap();
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(|&b| b == b'x'));
}

#[tokio::test]
async fn server_sent_events() {
    let backend = start().await;
    let (head, body) = send(backend.addr(), get("/events?sse=3&interval_ms=5")).await;
    assert_eq!(head.headers["content-type"], "text/event-stream");
    let text = String::from_utf8(body.unwrap().to_vec()).unwrap();
    assert_eq!(
        text,
        "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    );
}

#[tokio::test]
async fn reset_aborts_after_the_head() {
    let backend = start().await;
    let (head, body) = send(backend.addr(), get("/x?reset=1")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(body.is_err(), "the body must be cut, got {body:?}");
}

#[tokio::test]
async fn websocket_echo() {
    let backend = start().await;
    let stream = TcpStream::connect(backend.addr()).await.unwrap();
    let url = format!("ws://{}/ws", backend.addr());
    let (mut ws, res) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "second"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_taken_port_is_an_error() {
    let backend = start().await;
    let err = fake_backend::spawn(backend.addr(), None).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn chunked_answers_and_a_connection_count() {
    let backend = start().await;
    let (head, body) = send(backend.addr(), get("/c?chunked=1")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.headers.get("content-length").is_none(), "{head:?}");
    assert_eq!(head.headers["transfer-encoding"], "chunked");
    let json: Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(json["path"], "/c");
    assert_eq!(head.headers["x-connections"], "1");
    let (head, _) = send(backend.addr(), get("/again")).await;
    assert_eq!(head.headers["x-connections"], "2");
    assert_eq!(backend.connections(), 2);
}

#[test]
fn the_binary_listens_on_a_free_port_and_says_where() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fake-backend"))
        .args(["--port", "0", "--name", "bin"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("fake-backend listening") && line.contains("127.0.0.1:"),
        "{line}"
    );
    assert!(!line.contains("127.0.0.1:0 "), "{line}");
}
