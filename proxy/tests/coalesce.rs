//! A response body without a length leaves the proxy in as few writes as the upstream allows:
//! its first frame is taken before the head goes out, and a small frame waits a moment for the
//! end of the body, so that hyper writes data and chunked terminator together. The wait is
//! bounded: a body whose end is late is not held back for it.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use balancer::{Algorithm, HealthPolicy};
use bytes::Bytes;
use http::Request;
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use proxy::{Proxy, Settings, Upstream};
use testkit::upstream::{Conn, Upstream as Scripted};
use tokio::sync::Notify;
use tower::ServiceExt;

fn proxy_to(upstream: &Scripted) -> Proxy<Empty<Bytes>> {
    Proxy::new(
        Upstream::new(
            "chunked",
            Algorithm::RoundRobin,
            [(upstream.url(), 1)],
            HealthPolicy::default(),
            Settings::default(),
        )
        .unwrap(),
    )
}

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

#[tokio::test]
async fn a_chunked_body_sent_at_once_leaves_with_its_end() {
    let up = Scripted::start(|mut c: Conn| async move {
        while c.next_request().await.is_some() {
            let mut all = HEAD.to_vec();
            all.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
            if !c.send(&all).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_to(&up);
    for _ in 0..3 {
        let res = proxy
            .clone()
            .oneshot(Request::get("/x").body(Empty::new()).unwrap())
            .await
            .unwrap();
        let mut body = res.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        // The server writing this body sees its end with its only data frame, and writes
        // both at once.
        assert!(body.is_end_stream(), "the end travels with the last frame");
        assert!(body.frame().await.is_none());
    }
    assert_eq!(up.connections(), 1, "and the connection was pooled");
}

#[tokio::test]
async fn a_late_end_does_not_hold_the_data_back() {
    let release = Arc::new(Notify::new());
    let r = Arc::clone(&release);
    let up = Scripted::start(move |mut c: Conn| {
        let r = Arc::clone(&r);
        async move {
            if c.next_request().await.is_some() {
                let mut first = HEAD.to_vec();
                first.extend_from_slice(b"5\r\nhello\r\n");
                c.send(&first).await;
                r.notified().await;
                c.send(b"0\r\n\r\n").await;
            }
        }
    })
    .await;
    let res = proxy_to(&up)
        .oneshot(Request::get("/x").body(Empty::new()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    // The end is not coming until released: the data must come anyway.
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the data frame was held back for an end that was not coming")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    assert!(!body.is_end_stream());
    release.notify_one();
    assert!(body.frame().await.is_none(), "then the body ends");
}
