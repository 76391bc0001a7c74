//! Graceful shutdown under load: every request the gateway accepted completes, the rest are
//! refused with a clean close, and the gateway reports it finished within the grace period.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use testkit::upstream::{Conn, Upstream};
use testkit::wire;
use tokio::net::TcpStream;

#[tokio::test]
async fn shutdown_under_load_loses_no_accepted_request() {
    // Counted at the upstream: every request that reached it must have been answered to its
    // client in full. A request the gateway read and dropped at shutdown would show up as
    // one the upstream served and no client got.
    let up = Upstream::start(|c: Conn| async move {
        let mut c = c;
        while let Some(req) = c.next_request().await {
            if req.head.target().contains("slow") {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            if !c.send(&wire::fixed(200, "done")).await {
                return;
            }
        }
    })
    .await;
    let gw = start_gateway(format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshutdown_grace_ms = 5000\n\
         [upstreams.api]\ntargets = [\"{}\"]\n\
         [[routes]]\npath = \"/api/*path\"\nupstream = \"api\"\n",
        up.url()
    ))
    .await;
    let addr = gw.addr;
    const WORKERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, completed, problems) = (
            Arc::clone(&stop),
            Arc::clone(&completed),
            Arc::clone(&problems),
        );
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            'conns: while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok(stream) = TcpStream::connect(addr).await else {
                    break; // refused: the gateway stopped accepting
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                else {
                    continue;
                };
                tokio::spawn(conn);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break 'conns;
                    }
                    // A mix of fast requests and ones that take a while upstream.
                    let path = if (w + i) % 4 == 0 {
                        "/api/slow"
                    } else {
                        "/api/fast"
                    };
                    let req = Request::get(path)
                        .header("host", "g")
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    match sender.send_request(req).await {
                        Ok(res) => {
                            let status = res.status();
                            match res.into_body().collect().await {
                                Ok(_) if status == StatusCode::OK => {
                                    completed.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => problems.lock().unwrap().push(format!("status {status}")),
                                Err(e) => problems.lock().unwrap().push(format!("cut body: {e}")),
                            }
                        }
                        // Closed before a response: fine only if the upstream never saw the
                        // request, which the count at the end checks.
                        Err(_) => continue 'conns,
                    }
                }
            }
        }));
    }
    // Shut down once the load is well under way, with slow requests in flight.
    up.wait("200 requests", Duration::from_secs(10), |u| {
        u.requests().len() >= 200
    })
    .await;
    let finished = gw.shutdown().await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(finished, "connections still open after the grace period");
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        up.requests().len(),
        completed.load(Ordering::Relaxed),
        "requests the upstream served that no client received"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn shutdown_waits_for_open_websocket_tunnels() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut d = demo().await;
    let addr = d.gateway.addr;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/api/ws"), stream)
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let _ = d.gateway.stop.take().unwrap().send(());
    // Once new connections are refused, the shutdown is under way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut done = d.gateway.done;
    // Without the tunnel it would be done at once: give it ample time to (wrongly) finish.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut done)
            .await
            .is_err(),
        "finished with a tunnel open"
    );
    // The tunnel still carries messages during the grace period, and closes cleanly.
    ws.send(Message::text("during shutdown")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("during shutdown")
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    assert!(done.await.unwrap(), "finished once the tunnel closed");
}
