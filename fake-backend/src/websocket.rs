//! The WebSocket echo.

use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::Body;
use crate::answer::full;

pub(crate) fn is_websocket(req: &Request<Incoming>) -> bool {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Accepts the WebSocket handshake and echoes every text and binary message back.
pub(crate) fn websocket_echo(name: &str, mut req: Request<Incoming>) -> Response<Body> {
    let accept = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()));
    let Some(accept) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) else {
        let mut res = Response::new(full("bad WebSocket handshake\n".into()));
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let who = name.to_owned();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(error) => {
                tracing::warn!(%error, backend = %who, "WebSocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            let reply = match message {
                Message::Text(_) | Message::Binary(_) => message,
                Message::Close(_) => {
                    // The close reply is queued on receipt; send it before leaving, as a
                    // well-behaved server completes the closing handshake.
                    let _ = ws.flush().await;
                    break;
                }
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Ok(value) = HeaderValue::from_str(name) {
        h.insert("x-backend", value);
    }
    res
}
