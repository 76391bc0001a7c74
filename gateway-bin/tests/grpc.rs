//! HTTP/2 upstreams and gRPC through the real gateway: a tonic client on one side, a tonic
//! server (or, for the shapes tonic will not make, a raw `h2` server) on the other, all on
//! loopback sockets.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{AbortOnDrop, start_gateway};
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::service_fn;

/// The test's one message type, both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_owned(),
        n,
    }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;
type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// `echo.Echo`: `Unary` answers with the message (`fail:N` fails with code N, `sleep:MS`
/// waits first), `Serve` streams `n` messages (20 ms apart with `slow`), `Collect` joins
/// what the client streams, `Chat` echoes each message as it comes.
#[derive(Clone, Default)]
struct Echo {
    /// Calls it answered.
    calls: Arc<AtomicUsize>,
}

/// What a test server answers a request with.
type Handler = Arc<dyn Fn(http::Request<tonic::body::Body>) -> BoxFut<GrpcResponse> + Send + Sync>;
type GrpcResponse = http::Response<tonic::body::Body>;

impl Echo {
    /// The service, for [`serve`].
    fn handler(&self) -> Handler {
        let calls = Arc::clone(&self.calls);
        Arc::new(move |req| Echo::answer(Arc::clone(&calls), req))
    }

    fn answer(
        calls: Arc<AtomicUsize>,
        req: http::Request<tonic::body::Body>,
    ) -> BoxFut<GrpcResponse> {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            // By method name, whatever the service's name (routes of several names lead here).
            let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            match method.as_str() {
                "Unary" => {
                    let svc = service_fn(move |r: Request<Msg>| {
                        let calls = Arc::clone(&calls);
                        async move {
                            let m = r.into_inner();
                            if let Some(code) = m.text.strip_prefix("fail:") {
                                let code = Code::from_i32(code.parse().unwrap_or(2));
                                return Err(Status::new(code, "asked to fail"));
                            }
                            if let Some(ms) = m.text.strip_prefix("sleep:") {
                                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0)))
                                    .await;
                            }
                            calls.fetch_add(1, Ordering::Relaxed);
                            Ok(Response::new(m))
                        }
                    });
                    grpc.unary(svc, req).await
                }
                "Serve" => {
                    let svc = service_fn(|r: Request<Msg>| async move {
                        let m = r.into_inner();
                        let (tx, rx) = tokio::sync::mpsc::channel(4);
                        tokio::spawn(async move {
                            for i in 0..m.n {
                                if m.text == "slow" {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                if tx.send(Ok(msg(&m.text, i))).await.is_err() {
                                    return;
                                }
                            }
                        });
                        let stream: MsgStream =
                            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
                        Ok::<_, Status>(Response::new(stream))
                    });
                    grpc.server_streaming(svc, req).await
                }
                "Collect" => {
                    let svc = service_fn(|r: Request<tonic::Streaming<Msg>>| async move {
                        let mut stream = r.into_inner();
                        let mut all = String::new();
                        let mut n = 0;
                        while let Some(m) = stream.message().await? {
                            all.push_str(&m.text);
                            n += 1;
                        }
                        Ok::<_, Status>(Response::new(msg(&all, n)))
                    });
                    grpc.client_streaming(svc, req).await
                }
                "Chat" => {
                    let svc = service_fn(|r: Request<tonic::Streaming<Msg>>| async move {
                        let mut incoming = r.into_inner();
                        let (tx, rx) = tokio::sync::mpsc::channel(4);
                        tokio::spawn(async move {
                            while let Ok(Some(m)) = incoming.message().await {
                                let reply = msg(&format!("re:{}", m.text), m.n);
                                if tx.send(Ok(reply)).await.is_err() {
                                    return;
                                }
                            }
                        });
                        let stream: MsgStream =
                            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
                        Ok::<_, Status>(Response::new(stream))
                    });
                    grpc.streaming(svc, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            }
        })
    }
}

/// A tonic server answering with `handler` on a free loopback port, stopped when the guard
/// drops.
async fn serve(handler: Handler) -> (SocketAddr, AbortOnDrop) {
    let svc = service_fn(move |req| {
        let answer = handler(req);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(svc, incoming)
            .await;
    });
    (addr, AbortOnDrop(task))
}

/// A gRPC client of the gateway at `addr`.
async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn unary(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    req: Request<Msg>,
) -> Result<Msg, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    client
        .unary(
            req,
            PathAndQuery::from_static("/echo.Echo/Unary"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .map(Response::into_inner)
}

/// A gateway with upstream `echo` on `targets` (HTTP/2), its routes under `/echo.Echo/`,
/// and `extra` appended.
fn config(targets: &[SocketAddr], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.echo]
targets = [{}]
protocol = "h2"

[[routes]]
path = "/echo.Echo/*method"
methods = ["POST"]
upstream = "echo"
strip_prefix = false
{extra}
"#,
        targets.join(", ")
    )
}

#[tokio::test]
async fn all_four_kinds_of_rpc_pass_with_their_trailers() {
    // config: upstreams.*.protocol
    let (upstream, _server) = serve(Echo::default().handler()).await;
    let gw = start_gateway(config(&[upstream], "")).await;
    let mut c = client(gw.addr).await;

    // Unary, and an error status with its message relayed in the trailers.
    let answer = unary(&mut c, Request::new(msg("hello", 7))).await.unwrap();
    assert_eq!(answer, msg("hello", 7));
    let err = unary(&mut c, Request::new(msg("fail:5", 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "asked to fail");

    // Server streaming.
    c.ready().await.unwrap();
    let mut stream = c
        .server_streaming(
            Request::new(msg("s", 5)),
            PathAndQuery::from_static("/echo.Echo/Serve"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    // Client streaming.
    c.ready().await.unwrap();
    let parts = tokio_stream::iter(["a", "b", "c"].map(|t| msg(t, 0)));
    let joined = c
        .client_streaming(
            Request::new(parts),
            PathAndQuery::from_static("/echo.Echo/Collect"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined, msg("abc", 3));

    // Bidirectional, in lock step: each reply comes before the next message is sent, so
    // nothing is buffered whole on the way.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    c.ready().await.unwrap();
    let mut replies = c
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/echo.Echo/Chat"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        tx.send(msg("ping", i)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply while the request stream is still open")
            .unwrap()
            .unwrap();
        assert_eq!(reply, msg("re:ping", i));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn errors_the_gateway_makes_are_grpc_statuses() {
    let (upstream, _server) = serve(Echo::default().handler()).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let extra = format!(
        r#"
[upstreams.gone]
targets = ["http://{closed}"]
protocol = "h2"

[[routes]]
path = "/gone.Gone/*method"
methods = ["POST"]
upstream = "gone"

[[routes]]
path = "/limited.Limited/*method"
methods = ["POST"]
upstream = "echo"
rate_limit = {{ rate = 0.001, burst = 1 }}

[[routes]]
path = "/secret.Secret/*method"
methods = ["POST"]
upstream = "echo"
auth = {{ header = "x-token", secrets = ["letmein"] }}

[[routes]]
path = "/slow.Slow/*method"
methods = ["POST"]
upstream = "echo"
timeout_ms = 100
"#
    );
    let gw = start_gateway(config(&[upstream], &extra)).await;
    let mut c = client(gw.addr).await;
    let call = |path: &'static str, text: &'static str| {
        let mut c = c.clone();
        async move {
            c.ready().await.unwrap();
            c.unary(
                Request::new(msg(text, 0)),
                PathAndQuery::from_static(path),
                ProstCodec::<Msg, Msg>::default(),
            )
            .await
            .map(Response::into_inner)
        }
    };
    let unavailable = call("/gone.Gone/Unary", "x").await.unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    assert!(unavailable.message().contains("502"), "{unavailable:?}");

    let no_route = call("/nothing.Here/Unary", "x").await.unwrap_err();
    assert_eq!(no_route.code(), Code::Unimplemented, "{no_route:?}");

    let denied = call("/secret.Secret/Unary", "x").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let timed_out = call("/slow.Slow/Unary", "sleep:2000").await.unwrap_err();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");

    // The first call of the limited route passes, the second is over the limit.
    assert_eq!(
        call("/limited.Limited/Unary", "x").await.unwrap(),
        msg("x", 0)
    );
    let limited = call("/limited.Limited/Unary", "x").await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");

    // Still fine for calls that are allowed.
    assert_eq!(
        unary(&mut c, Request::new(msg("ok", 1))).await.unwrap(),
        msg("ok", 1)
    );
}

#[tokio::test]
async fn grpc_timeout_is_the_calls_deadline_before_and_during_the_response() {
    let echo = Echo::default();
    let (upstream, _server) = serve(echo.handler()).await;
    let gw = start_gateway(config(&[upstream], "")).await;
    let mut c = client(gw.addr).await;

    // Before the response head: the gateway gives up at the deadline, not the target's fault.
    // A raw HTTP/2 client, so that the only timer is the gateway's (tonic's client has its own).
    let mut h2 = testkit::client::h2(gw.addr).await;
    let call = |text: &str, n: u32, path: &str, timeout: &'static str| {
        let mut framed = vec![0u8; 5];
        prost::Message::encode(&msg(text, n), &mut framed).unwrap();
        let len = u32::try_from(framed.len() - 5).unwrap();
        framed[1..5].copy_from_slice(&len.to_be_bytes());
        http::Request::post(format!("http://gw{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(http_body_util::Full::new(Bytes::from(framed)))
            .unwrap()
    };
    let started = tokio::time::Instant::now();
    let r = testkit::client::send_h2(&mut h2, call("sleep:3000", 0, "/echo.Echo/Unary", "150m"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), "4", "{r:?}");
    assert_eq!(gw.health("echo")[0].failures, 0);
    assert!(gw.health("echo")[0].available);

    // During a server stream: cut at the deadline, DEADLINE_EXCEEDED in the trailers after
    // the messages that came in time.
    let r = testkit::client::send_h2(&mut h2, call("slow", 1000, "/echo.Echo/Serve", "200m"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let trailers = r.trailers.clone().expect("trailers");
    assert_eq!(trailers["grpc-status"], "4", "{r:?}");
    assert!(
        !r.body.is_empty() && r.body.len() < 1000 * 10,
        "{} bytes",
        r.body.len()
    );
    assert_eq!(echo.calls.load(Ordering::Relaxed), 0);

    // A deadline long enough changes nothing.
    let r = testkit::client::send_h2(&mut h2, call("quick", 1, "/echo.Echo/Unary", "5S"))
        .await
        .unwrap();
    assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(echo.calls.load(Ordering::Relaxed), 1);
    let _ = &mut c;
}

/// A raw HTTP/2 server: each stream is answered by `answer` (stream number from 0, across
/// connections); returns the address, how many connections it accepted, and a guard that
/// kills it, connections and all, when dropped.
async fn raw_h2<F>(
    settings: h2::server::Builder,
    answer: F,
) -> (SocketAddr, Arc<AtomicUsize>, AbortOnDrop)
where
    F: Fn(usize, http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> BoxFut<()>
        + Send
        + Sync
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let streams = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        // Connections and their streams die with the listener's task.
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let Ok(mut conn) = settings.handshake::<_, Bytes>(socket).await else {
                continue;
            };
            let answer = Arc::clone(&answer);
            let streams = Arc::clone(&streams);
            tasks.spawn(async move {
                let mut answers = tokio::task::JoinSet::new();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let n = streams.fetch_add(1, Ordering::SeqCst);
                    answers.spawn(answer(n, req, respond));
                }
                while answers.join_next().await.is_some() {}
            });
        }
    });
    (addr, connections, AbortOnDrop(task))
}

/// Answers `200` with the request's body (read whole) and `grpc-status: 0` trailers.
async fn echo_body(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let mut body = req.into_body();
    let mut all = Vec::new();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
        all.extend_from_slice(&data);
    }
    let res = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(res, false) else {
        return;
    };
    let _ = send.send_data(Bytes::from(all), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}

#[tokio::test]
async fn refused_streams_go_again_with_their_bodies() {
    // Every other stream of the first six is refused unprocessed (REFUSED_STREAM): each of
    // the first three calls is refused once; the gateway sends it again, body included, and
    // no call fails.
    let (upstream, _, _server) = raw_h2(h2::server::Builder::new(), |n, req, mut respond| {
        Box::pin(async move {
            if n < 6 && n % 2 == 0 {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
            echo_body(req, respond).await;
        })
    })
    .await;
    let gw = start_gateway(config(&[upstream], "")).await;
    let mut c = client(gw.addr).await;
    for i in 0..6 {
        let answer = unary(&mut c, Request::new(msg("again", i))).await;
        assert_eq!(answer.unwrap(), msg("again", i));
    }
    let retries = gw.upstreams[0]
        .1
        .upstream()
        .metrics()
        .retries(proxy::Retry::Refused);
    assert!(retries >= 3, "{retries} refused streams sent again");
    assert_eq!(gw.health("echo")[0].failures, 0);
}

#[tokio::test]
async fn a_goaway_mid_load_fails_no_call() {
    // Every connection takes 10 streams, then the server shuts it down gracefully (GOAWAY):
    // calls in flight finish; new ones go on a new connection.
    let served = Arc::new(AtomicUsize::new(0));
    let served_by_first = Arc::clone(&served);
    // A second server closes its connections after 10 streams each.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let served = Arc::clone(&served_by_first);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                let mut taken = 0;
                while let Some(Ok((req, respond))) = conn.accept().await {
                    served.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(echo_body(req, respond));
                    taken += 1;
                    if taken == 10 {
                        conn.graceful_shutdown();
                    }
                }
            });
        }
    });
    let gw = start_gateway(config(&[closing], "")).await;
    let c = client(gw.addr).await;
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..8u32 {
        let mut c = c.clone();
        calls.spawn(async move {
            let mut failed = Vec::new();
            for i in 0..25 {
                if let Err(e) = unary(&mut c, Request::new(msg("load", worker * 100 + i))).await {
                    failed.push(e);
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = calls.join_next().await {
        failed.extend(r.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..1]
    );
    assert!(served.load(Ordering::SeqCst) >= 200);
}

#[tokio::test]
async fn more_calls_than_the_stream_limit_open_more_connections() {
    // The server takes 2 streams per connection and answers none until 6 are open at once:
    // only a gateway that opens more connections gets the answers.
    let open = Arc::new(tokio::sync::Barrier::new(6));
    let mut settings = h2::server::Builder::new();
    settings.max_concurrent_streams(2);
    let (upstream, connections, _server) = raw_h2(settings, move |_, req, respond| {
        let open = Arc::clone(&open);
        Box::pin(async move {
            open.wait().await;
            echo_body(req, respond).await;
        })
    })
    .await;
    let gw = start_gateway(config(&[upstream], "")).await;
    let c = client(gw.addr).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let mut c = c.clone();
        calls.spawn(async move { unary(&mut c, Request::new(msg("wide", i))).await });
    }
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        let mut ok = 0;
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
            ok += 1;
        }
        ok
    })
    .await
    .expect("six calls at once are answered: the gateway opened more connections");
    assert_eq!(all, 6);
    assert!(connections.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn http1_clients_reach_an_h2c_upstream() {
    let (upstream, _, _server) = raw_h2(h2::server::Builder::new(), |_, req, mut respond| {
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let authority = req.uri().authority().map(|a| a.to_string());
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                n += data.len();
            }
            let res = http::Response::builder()
                .header("content-type", "text/plain")
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(res, false) else {
                return;
            };
            let text = format!("{path} {} {n}", authority.unwrap_or_default());
            let _ = send.send_data(Bytes::from(text), true);
        })
    })
    .await;
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.h2c]
targets = ["http://{upstream}"]
protocol = "h2"

[[routes]]
path = "/any/*rest"
methods = ["GET", "POST"]
upstream = "h2c"
"#
    );
    let gw = start_gateway(text).await;
    let get = testkit::client::fetch(gw.addr, "/any/thing").await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.text(), format!("/thing {upstream} 0"));
    // A chunked request body, piped as HTTP/2 DATA.
    let (statuses, text) = common::raw_exchange(
        gw.addr,
        b"POST /any/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses, vec![200], "{text}");
    assert!(
        text.contains(&format!("\r\n/up {upstream} 11\r\n")),
        "{text}"
    );
}

#[tokio::test]
async fn an_h2c_target_that_dies_is_ejected_and_calls_go_to_the_other() {
    let echo = |_, req, respond| -> BoxFut<()> { Box::pin(echo_body(req, respond)) };
    let (a, _, server_a) = raw_h2(h2::server::Builder::new(), echo).await;
    let (b, _, _server_b) = raw_h2(h2::server::Builder::new(), echo).await;
    let gw = start_gateway(config(&[a, b], "")).await;
    let mut c = client(gw.addr).await;
    for i in 0..4 {
        unary(&mut c, Request::new(msg("before", i))).await.unwrap();
    }
    drop(server_a);
    for i in 0..10 {
        let answer = unary(&mut c, Request::new(msg("after", i))).await;
        assert_eq!(answer.unwrap(), msg("after", i), "call {i}");
    }
    let health = gw.health("echo");
    let dead = health
        .iter()
        .find(|t| t.target.ends_with(&a.to_string()))
        .unwrap();
    assert!(!dead.available && dead.failures >= 1, "{health:?}");
}

#[tokio::test]
async fn a_connection_that_stops_answering_pings_is_replaced() {
    // config: upstreams.*.h2_ping_interval_ms, upstreams.*.h2_ping_timeout_ms
    // The first connection answers one request and is then never read again (its PINGs go
    // unanswered); the second works.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((socket, _)) = listener.accept().await {
            let Ok(mut conn) = h2::server::handshake(socket).await else {
                continue;
            };
            if first {
                first = false;
                if let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(echo_body(req, respond));
                }
                // Poll just long enough to flush the answer, then go silent.
                let _ = tokio::time::timeout(Duration::from_millis(50), conn.accept()).await;
                keep.lock().await.push(conn);
                continue;
            }
            tokio::spawn(async move {
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(echo_body(req, respond));
                }
            });
        }
    });
    let extra = "";
    let text = config(&[addr], extra).replace(
        "protocol = \"h2\"",
        "protocol = \"h2\"\nh2_ping_interval_ms = 50\nh2_ping_timeout_ms = 100\nresponse_timeout_ms = 5000",
    );
    let gw = start_gateway(text).await;
    let mut c = client(gw.addr).await;
    unary(&mut c, Request::new(msg("first", 1))).await.unwrap();
    // The dead connection is dropped from the pool once a ping goes unanswered.
    let pool = &gw.upstreams[0].1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool
        .idle_connections_by_target()
        .iter()
        .any(|(_, n)| *n > 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead connection kept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        unary(&mut c, Request::new(msg("second", 2))),
    )
    .await
    .expect("answered on a new connection, not stuck on the silent one");
    assert_eq!(answer.unwrap(), msg("second", 2));
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `grpc.health.v1.Health`: `Check` answers `SERVING` while `serving` holds, else
/// `NOT_SERVING`.
fn health(serving: Arc<AtomicBool>) -> Handler {
    Arc::new(move |req| {
        let serving = Arc::clone(&serving);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                HealthCheckResponse,
                HealthCheckRequest,
            >::default());
            let svc = service_fn(move |_: Request<HealthCheckRequest>| {
                let status = if serving.load(Ordering::SeqCst) { 1 } else { 2 };
                async move { Ok::<_, Status>(Response::new(HealthCheckResponse { status })) }
            });
            grpc.unary(svc, req).await
        })
    })
}

#[tokio::test]
async fn grpc_health_checks_follow_the_servers_answer() {
    // config: upstreams.*.health_check.grpc_service
    let serving = Arc::new(AtomicBool::new(true));
    let (addr, _server) = serve(health(Arc::clone(&serving))).await;
    let extra = r#"
[upstreams.echo.health_check]
kind = "grpc"
grpc_service = "echo.Echo"
interval_ms = 20
timeout_ms = 500
rise = 1
fall = 1
"#;
    let gw = start_gateway(config(&[addr], extra)).await;
    gw.wait_health(
        "echo",
        "a SERVING target is up",
        Duration::from_secs(5),
        |t| t[0].available && !t[0].check_down,
    )
    .await;
    serving.store(false, Ordering::SeqCst);
    gw.wait_health(
        "echo",
        "a NOT_SERVING target goes down",
        Duration::from_secs(5),
        |t| t[0].check_down,
    )
    .await;
    serving.store(true, Ordering::SeqCst);
    gw.wait_health(
        "echo",
        "SERVING again brings it back",
        Duration::from_secs(5),
        |t| !t[0].check_down,
    )
    .await;
}

/// `echo.v1.EchoMessage` of the fake backend's gRPC echo.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    count: u32,
    #[prost(uint32, tag = "3")]
    interval_ms: u32,
}

#[tokio::test]
async fn the_fake_backends_grpc_echo_through_the_gateway() {
    let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let text = config(&[backend.addr()], "").replace(
        "path = \"/echo.Echo/*method\"",
        "path = \"/echo.v1.Echo/*method\"",
    );
    let gw = start_gateway(text).await;
    let mut c = client(gw.addr).await;
    let codec = || ProstCodec::<EchoMessage, EchoMessage>::default();
    let echo = |message: &str, count| EchoMessage {
        message: message.to_owned(),
        count,
        interval_ms: 0,
    };
    c.ready().await.unwrap();
    let one = c
        .unary(
            Request::new(echo("hi", 0)),
            PathAndQuery::from_static("/echo.v1.Echo/Unary"),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one, echo("hi", 0));

    c.ready().await.unwrap();
    let mut stream = c
        .server_streaming(
            Request::new(echo("s", 3)),
            PathAndQuery::from_static("/echo.v1.Echo/ServerStream"),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await.unwrap() {
        assert_eq!(m.message, "s");
        n += 1;
    }
    assert_eq!(n, 3);

    c.ready().await.unwrap();
    let joined = c
        .client_streaming(
            Request::new(tokio_stream::iter([echo("a", 0), echo("b", 0)])),
            PathAndQuery::from_static("/echo.v1.Echo/ClientStream"),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((joined.message.as_str(), joined.count), ("ab", 2));

    c.ready().await.unwrap();
    let mut replies = c
        .streaming(
            Request::new(tokio_stream::iter([echo("x", 0), echo("y", 0)])),
            PathAndQuery::from_static("/echo.v1.Echo/Bidi"),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = replies.message().await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, ["x", "y"]);

    // Its fault knob: the status goes through as the backend set it.
    let mut req = Request::new(echo("no", 0));
    req.metadata_mut()
        .insert("x-grpc-status", "9".parse().unwrap());
    req.metadata_mut()
        .insert("x-grpc-message", "not now".parse().unwrap());
    c.ready().await.unwrap();
    let err = c
        .unary(
            req,
            PathAndQuery::from_static("/echo.v1.Echo/Unary"),
            codec(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "not now");
}

#[tokio::test]
async fn the_readme_grpc_example_builds_and_serves() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let example = readme
        .split("### gRPC and HTTP/2 upstreams")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README's gRPC section has a TOML example");
    // The example's targets, made real: one of them a tonic server with the service's name.
    let (addr, _server) = serve(Echo::default().handler()).await;
    let text = format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{example}")
        .replace("http://10.0.0.5:50051", &format!("http://{addr}"))
        .replace(", \"http://10.0.0.6:50051\"", "");
    assert!(!text.contains("10.0.0"), "{text}");
    let gw = start_gateway(text).await;
    let mut c = client(gw.addr).await;
    c.ready().await.unwrap();
    let answer = c
        .unary(
            Request::new(msg("order", 1)),
            PathAndQuery::from_static("/shop.orders.v1.Orders/Unary"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, msg("order", 1));
}

#[tokio::test]
async fn an_h2_upstream_that_breaks_or_stalls_mid_body_cuts_the_response() {
    // Stream 0: head and some data, then RST_STREAM (the reset may overtake the head on its
    // way to the gateway: then it is a 502). Stream 1: head and some data, then silence: the
    // body is cut after response_timeout_ms and the target charged with a body failure (one
    // does not eject it). Neither may reach the client as a whole response.
    let (upstream, _, _server) = raw_h2(h2::server::Builder::new(), |n, _req, mut respond| {
        Box::pin(async move {
            let res = http::Response::builder().body(()).unwrap();
            let Ok(mut send) = respond.send_response(res, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from_static(b"partial "), false);
            if n == 0 {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
            } else {
                // Silent until the gateway gives up on it (the guard kills the server).
                std::future::pending::<()>().await;
            }
        })
    })
    .await;
    let text = config(&[upstream], "").replace(
        "protocol = \"h2\"",
        "protocol = \"h2\"\nresponse_timeout_ms = 300",
    );
    let gw = start_gateway(text).await;
    for stream in 0..2 {
        let mut conn = testkit::client::h1(gw.addr).await;
        let req = http::Request::post("/echo.Echo/x")
            .header("host", "gw")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), conn.send_request(req))
            .await
            .expect("a head")
            .unwrap();
        if stream == 0 && res.status() == 502 {
            continue;
        }
        assert_eq!(res.status(), 200, "stream {stream}");
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::collect(res.into_body()),
        )
        .await
        .expect("the body ends, one way or the other");
        assert!(
            body.is_err(),
            "stream {stream}: a cut body must not look whole"
        );
    }
    let target = &gw.upstreams[0].1.upstream().balancer().targets()[0];
    assert!(target.value().metrics().body_failures() >= 1);
    assert!(
        target
            .state()
            .is_available(gw.upstreams[0].1.upstream().balancer().policy())
    );
}
