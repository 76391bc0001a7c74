//! The proxy against real upstreams on loopback that record what they receive.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer::{Algorithm, HealthPolicy};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use proxy::{ClientAddr, Proxy, Settings, Upstream, UpstreamTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tower::ServiceExt;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    /// Which connection (in accept order) carried it.
    connection: usize,
}

type Log = Arc<Mutex<Vec<Seen>>>;
type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A recording upstream. `/slow` never answers in time; `/sse` sends one event, waits for
/// `release`, then a second; everything else answers 200 with the upstream's name.
async fn upstream(name: &'static str, release: Arc<Notify>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((stream, _)) = listener.accept().await {
            connections += 1;
            let connection = connections;
            let seen = seen.clone();
            let release = release.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                let release = release.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let path = parts.uri.path_and_query().unwrap().as_str().to_owned();
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        path_and_query: path.clone(),
                        headers: parts.headers,
                        body: body.clone(),
                        connection,
                    });
                    let res: Response<UpBody> = match path.as_str() {
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Response::new(Full::new(Bytes::new()).boxed())
                        }
                        "/trailers" => {
                            let mut res = Response::new(WithTrailers(0).boxed());
                            res.headers_mut()
                                .insert("trailer", "x-checksum".parse().unwrap());
                            res
                        }
                        "/sse" => {
                            let (tx, rx) = mpsc::channel::<Bytes>(4);
                            tokio::spawn(async move {
                                let _ = tx.send(Bytes::from("data: one\n\n")).await;
                                release.notified().await;
                                let _ = tx.send(Bytes::from("data: two\n\n")).await;
                            });
                            let mut res = Response::new(ChannelBody(rx).boxed());
                            res.headers_mut()
                                .insert("content-type", "text/event-stream".parse().unwrap());
                            res
                        }
                        _ => {
                            let mut res = Response::new(Full::new(Bytes::from(name)).boxed());
                            let h = res.headers_mut();
                            h.insert("x-backend", name.parse().unwrap());
                            h.insert("connection", "x-upstream-private".parse().unwrap());
                            h.insert("x-upstream-private", "secret".parse().unwrap());
                            h.insert("keep-alive", "timeout=5".parse().unwrap());
                            res
                        }
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
    (addr, log)
}

/// A body of one chunk followed by an `x-checksum` trailer.
struct WithTrailers(u8);

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0 += 1;
        std::task::Poll::Ready(match self.0 {
            1 => Some(Ok(Frame::data(Bytes::from("payload")))),
            2 => {
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc123".parse().unwrap());
                Some(Ok(Frame::trailers(t)))
            }
            _ => None,
        })
    }
}

/// A body fed by a channel: each message is one chunk, the end of the channel its end.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn proxy_to(targets: &[SocketAddr], settings: Settings) -> Proxy<Full<Bytes>> {
    let urls: Vec<(String, u32)> = targets.iter().map(|a| (format!("http://{a}"), 1)).collect();
    let upstream = Upstream::new(
        "test",
        Algorithm::RoundRobin,
        urls,
        HealthPolicy::default(),
        settings,
    )
    .unwrap();
    Proxy::new(upstream)
}

fn request(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "gateway.example")
}

fn with_client(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    req.extensions_mut()
        .insert(ClientAddr("127.0.0.9:4444".parse().unwrap()));
    req
}

fn released() -> Arc<Notify> {
    Arc::new(Notify::new())
}

async fn text<B>(res: Response<proxy::ProxyBody<B>>) -> String
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<proxy::BoxError>,
{
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn forwards_path_query_host_and_rewrites_headers() {
    let (addr, log) = upstream("a", released()).await;
    let proxy = proxy_to(&[addr], Settings::default());
    let req = request("/api/items?b=2&a=%20x&a=1&&=")
        .header(
            "connection",
            "keep-alive, x-client-private, x-forwarded-for",
        )
        .header("x-client-private", "drop me")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "spoofed.example")
        .header("forwarded", "for=6.6.6.6")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = proxy.oneshot(with_client(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-backend"], "a");
    // Hop-by-hop headers of the response are not passed on either.
    assert!(res.headers().get("x-upstream-private").is_none());
    assert!(res.headers().get("keep-alive").is_none());
    assert!(res.headers().get("connection").is_none());
    let served = res.extensions().get::<UpstreamTarget>().unwrap().clone();
    assert_eq!(served.target.to_string(), format!("http://{addr}"));
    assert_eq!(text(res).await, "a");

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        seen.path_and_query, "/api/items?b=2&a=%20x&a=1&&=",
        "query byte for byte"
    );
    let h = &seen.headers;
    assert_eq!(h["host"], addr.to_string().as_str());
    assert_eq!(h["x-forwarded-for"], "127.0.0.9");
    assert_eq!(h["x-forwarded-host"], "gateway.example");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in [
        "x-client-private",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
        "forwarded",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
}

#[tokio::test]
async fn responses_name_their_target_unless_told_not_to() {
    let (addr, _log) = upstream("a", released()).await;
    for (tag_responses, named) in [(true, true), (false, false)] {
        let proxy = proxy_to(
            &[addr],
            Settings {
                tag_responses,
                ..Settings::default()
            },
        );
        let res = proxy
            .oneshot(request("/x").body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.extensions().get::<UpstreamTarget>().is_some(),
            named,
            "tag_responses = {tag_responses}"
        );
    }
}

#[tokio::test]
async fn the_path_and_query_go_byte_for_byte() {
    let (addr, log) = upstream("a", released()).await;
    let proxy = proxy_to(&[addr], Settings::default());
    for (path, expected) in [
        ("/css/app.css?v=3", "/css/app.css?v=3"),
        ("/?v=3&b=%2F", "/?v=3&b=%2F"),
        ("/a%20b;c?x", "/a%20b;c?x"),
    ] {
        let req = request(path).body(Full::new(Bytes::new())).unwrap();
        let res = proxy.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(log.lock().unwrap().last().unwrap().path_and_query, expected);
    }
    // preserve_host sends the client's Host.
    let proxy = proxy_to(
        &[addr],
        Settings {
            preserve_host: true,
            ..Settings::default()
        },
    );
    proxy
        .oneshot(request("/x").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(
        log.lock().unwrap().last().unwrap().headers["host"],
        "gateway.example"
    );
}

#[tokio::test]
async fn a_one_mib_post_arrives_intact() {
    let (addr, log) = upstream("a", released()).await;
    let proxy = proxy_to(&[addr], Settings::default());
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    let req = Request::post("/upload")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let res = proxy.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "bytes differ");
}

#[tokio::test]
async fn a_dead_target_gives_502() {
    let dead = testkit::upstream::Refusing::new();
    let proxy = proxy_to(&[dead.addr()], Settings::default());
    let res = proxy
        .clone()
        .oneshot(request("/x").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(text(res).await, "Bad Gateway\n");
    let state = proxy.upstream().balancer().targets()[0].state().clone();
    assert_eq!(state.failures(), 1, "reported to passive health");
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_the_next_target_with_its_body() {
    let (live, log) = upstream("live", released()).await;
    let dead = testkit::upstream::Refusing::new();
    let proxy = proxy_to(&[dead.addr(), live], Settings::default());
    for i in 0..4 {
        let req = Request::post("/p")
            .body(Full::new(Bytes::from(format!("payload {i}"))))
            .unwrap();
        let res = proxy.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        assert_eq!(text(res).await, "live");
    }
    let bodies: Vec<_> = log.lock().unwrap().iter().map(|s| s.body.clone()).collect();
    assert_eq!(bodies, ["payload 0", "payload 1", "payload 2", "payload 3"]);
    // The dead target failed once and was then skipped (max_fails 1).
    let targets = proxy.upstream().balancer().targets();
    assert_eq!(targets[0].state().failures(), 1);
    assert_eq!(targets[1].state().successes(), 4);
}

#[tokio::test]
async fn a_slow_target_gives_504() {
    let (addr, _log) = upstream("slow", released()).await;
    let settings = Settings {
        response_timeout: Duration::from_millis(200),
        ..Settings::default()
    };
    let proxy = proxy_to(&[addr], settings);
    let start = std::time::Instant::now();
    let res = proxy
        .oneshot(request("/slow").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn server_sent_events_arrive_before_the_upstream_finishes() {
    let release = released();
    let (addr, _log) = upstream("sse", release.clone()).await;
    let proxy = proxy_to(&[addr], Settings::default());
    let res = proxy
        .oneshot(request("/sse").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        first, "data: one\n\n",
        "the first event came through on its own"
    );
    release.notify_one();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "data: two\n\n");
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn an_upstream_reset_mid_body_aborts_the_response() {
    // A raw upstream: promises 100 bytes, sends 10, closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        drop(stream);
    });
    let proxy = proxy_to(&[addr], Settings::default());
    let res = proxy
        .oneshot(request("/x").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.into_body().collect().await.is_err(),
        "a clean end would hide the truncation"
    );
}

#[tokio::test]
async fn trailers_pass_through_when_the_client_accepts_them() {
    let (addr, log) = upstream("t", released()).await;
    let proxy = proxy_to(&[addr], Settings::default());
    let req = request("/trailers")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = proxy.oneshot(req).await.unwrap();
    assert_eq!(res.headers()["trailer"], "x-checksum");
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "payload");
    assert_eq!(log.lock().unwrap()[0].headers["te"], "trailers");
}

/// A raw upstream that switches to an echo protocol on `Upgrade: echo`, and answers
/// `/refuse` with a plain 200 instead.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await.to_ascii_lowercase();
                if head.starts_with("get /refuse") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                        .await;
                    return;
                }
                assert!(head.contains("upgrade: echo"), "{head}");
                assert!(head.contains("connection: upgrade"), "{head}");
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                    .await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads up to the end of an HTTP head.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Serves the proxy over HTTP/1.1 with upgrades allowed, as the gateway does.
async fn serve_proxy(proxy: Proxy<Incoming>) -> SocketAddr {
    testkit::serve::serve(proxy).await
}

#[tokio::test]
async fn upgrades_tunnel_on_101_and_stay_http_otherwise() {
    let up = echo_upstream().await;
    let upstream = Upstream::new(
        "ws",
        Algorithm::RoundRobin,
        [(format!("http://{up}"), 1)],
        HealthPolicy::default(),
        Settings::default(),
    )
    .unwrap();
    let gateway = serve_proxy(Proxy::new(upstream)).await;

    let mut client = tokio::net::TcpStream::connect(gateway).await.unwrap();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [&b"ping"[..], b"second message"] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }

    let mut client = tokio::net::TcpStream::connect(gateway).await.unwrap();
    client
        .write_all(
            b"GET /refuse HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "a refused upgrade is a plain response: {head}"
    );
    let mut body = [0u8; 2];
    client.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"no");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    // A raw upstream that reports when a request arrives and when its connection closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events_tx, mut events) = mpsc::channel::<&'static str>(8);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let events = events_tx.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                let _ = events.send("request").await;
                // Never answer; wait for the proxy to close the connection.
                let mut buf = [0u8; 64];
                while stream.read(&mut buf).await.unwrap_or(0) > 0 {}
                let _ = events.send("closed").await;
            });
        }
    });
    let proxy = proxy_to(&[addr], Settings::default());
    let call = tokio::spawn(
        proxy
            .clone()
            .oneshot(request("/hang").body(Full::new(Bytes::new())).unwrap()),
    );
    assert_eq!(events.recv().await, Some("request"));
    assert_eq!(
        proxy.upstream().balancer().targets()[0].state().in_flight(),
        1
    );
    call.abort();
    let closed = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(
        closed.unwrap(),
        Some("closed"),
        "the upstream connection was closed, not pooled"
    );
    assert_eq!(
        proxy.upstream().balancer().targets()[0].state().in_flight(),
        0
    );
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (addr, log) = upstream("a", released()).await;
    let proxy = proxy_to(&[addr], Settings::default());
    for _ in 0..5 {
        let res = proxy
            .clone()
            .oneshot(request("/x").body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        text(res).await;
    }
    let connections: Vec<usize> = log.lock().unwrap().iter().map(|s| s.connection).collect();
    assert_eq!(
        connections,
        [1, 1, 1, 1, 1],
        "one pooled connection served all five"
    );
}

#[tokio::test]
async fn a_websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let backend = fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("ws"))
        .await
        .unwrap();
    let upstream = Upstream::new(
        "ws",
        Algorithm::RoundRobin,
        [(format!("http://{}", backend.addr()), 1)],
        HealthPolicy::default(),
        Settings::default(),
    )
    .unwrap();
    let gateway = serve_proxy(Proxy::new(upstream)).await;
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{gateway}/chat"), stream)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(res.headers()["x-backend"], "ws");
    for text in ["hello through the gateway", "and again"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn the_pool_honours_its_idle_timeout_and_size() {
    let send = |proxy: &Proxy<Full<Bytes>>| {
        let proxy = proxy.clone();
        async move {
            let res = proxy
                .oneshot(request("/x").body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            text(res).await;
        }
    };
    let connections =
        |log: &Log| -> Vec<usize> { log.lock().unwrap().iter().map(|s| s.connection).collect() };

    // No idle connections kept: each request has a connection of its own.
    let (addr, log) = upstream("a", released()).await;
    let proxy = proxy_to(
        &[addr],
        Settings {
            pool_max_idle_per_target: 0,
            ..Settings::default()
        },
    );
    for _ in 0..3 {
        send(&proxy).await;
    }
    assert_eq!(connections(&log), [1, 2, 3]);

    // A connection idle past the timeout is not used again.
    let (addr, log) = upstream("b", released()).await;
    let proxy = proxy_to(
        &[addr],
        Settings {
            pool_idle_timeout: Duration::from_millis(100),
            ..Settings::default()
        },
    );
    send(&proxy).await;
    send(&proxy).await;
    // Idle for longer than the timeout (this wait is the thing under test).
    tokio::time::sleep(Duration::from_millis(250)).await;
    send(&proxy).await;
    assert_eq!(connections(&log), [1, 1, 2]);
}
