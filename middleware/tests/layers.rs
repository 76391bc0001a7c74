//! Each layer through a plain tower stack, through a `router::Mux`, and over real sockets.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{Client, capture, serve};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use middleware::{
    AccessLogLayer, AuthLayer, RecoverLayer, RequestId, RequestIdLayer, Secrets, TimeoutLayer,
};
use router::{Body, Mux};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Reply = Response<Full<Bytes>>;

fn ok_text(text: &'static str) -> Reply {
    Response::new(Full::new(Bytes::from_static(text.as_bytes())))
}

async fn body_text<B>(res: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

// ---------- request id ----------

fn echo_id()
-> impl Service<Request<()>, Response = Reply, Error = Infallible, Future = impl Send> + Clone {
    service_fn(|req: Request<()>| async move {
        let ext = req.extensions().get::<RequestId>().unwrap().clone();
        assert_eq!(
            req.headers()["x-request-id"],
            ext.as_str(),
            "upstream sees the id"
        );
        assert!(
            req.headers()["x-request-id"].is_sensitive(),
            "never indexed by HTTP/2"
        );
        tracing::info!("inside the handler");
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
            ext.as_str().to_owned(),
        ))))
    })
}

async fn id_for(
    svc: impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible>,
    inbound: &[&[u8]],
) -> String {
    let mut req = Request::new(());
    for v in inbound {
        req.headers_mut()
            .append("x-request-id", HeaderValue::from_bytes(v).unwrap());
    }
    let res = svc.oneshot(req).await.unwrap();
    assert!(res.headers()["x-request-id"].is_sensitive());
    let header = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        header,
        body_text(res).await,
        "response header = id the handler saw"
    );
    header
}

#[tokio::test]
async fn request_ids_accepted_rejected_and_generated() {
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .service(echo_id());
    let longest = "a".repeat(128);
    for good in ["a", "Z", "0", "abc-DEF_123.x", longest.as_str(), "-._"] {
        assert_eq!(id_for(svc.clone(), &[good.as_bytes()]).await, good);
    }
    let too_long = "a".repeat(129);
    let bad: [&[u8]; 7] = [
        b"",
        too_long.as_bytes(),
        b"a b",
        b"a/b",
        b"a:b",
        b"\xc3\xa9t\xc3\xa9",
        b"a+b",
    ];
    for bad in bad {
        let id = id_for(svc.clone(), &[bad]).await;
        assert_ne!(id.as_bytes(), bad);
        assert_eq!(id.len(), 32, "generated ids are 128 bits in hex");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // Two inbound ids: ambiguous, replaced.
    let id = id_for(svc.clone(), &[b"one", b"two"]).await;
    assert_eq!(id.len(), 32);
    // Generated ids do not repeat.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        assert!(seen.insert(id_for(svc.clone(), &[]).await));
    }
    // An edge that does not trust clients replaces even valid ids.
    let strict = ServiceBuilder::new()
        .layer(RequestIdLayer::new().trust_inbound(false))
        .service(echo_id());
    assert_ne!(
        id_for(strict, &[b"chosen-by-client"]).await,
        "chosen-by-client"
    );
}

#[tokio::test]
async fn request_id_is_on_every_log_line_of_the_request() {
    let logs = capture();
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .service(echo_id());
    let id = id_for(svc, &[b"trace-me"]).await;
    assert_eq!(id, "trace-me");
    let events = logs.events();
    let inside = events
        .iter()
        .find(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m == "inside the handler")
        })
        .unwrap();
    assert_eq!(inside.span_fields["request_id"], "trace-me");
}

#[tokio::test]
async fn without_the_span_the_id_is_still_everywhere_but_in_a_span() {
    let logs = capture();
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new().span(false))
        .service(echo_id());
    // The handler still sees the id as a header and an extension, the client gets it back.
    assert_eq!(id_for(svc, &[b"no-span"]).await, "no-span");
    let events = logs.events();
    let inside = events
        .iter()
        .find(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m == "inside the handler")
        })
        .unwrap();
    assert!(inside.span_fields.is_empty(), "{:?}", inside.span_fields);
}

#[tokio::test]
async fn request_id_through_a_mux() {
    let mut mux = Mux::new();
    mux.get("/x", echo_id()).unwrap();
    mux.pre(RequestIdLayer::new());
    let svc = mux.into_service();
    let req = Request::get("/x")
        .header("x-request-id", "via-mux")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "via-mux");
    // Pre layers see 404s too.
    let res = svc
        .oneshot(Request::get("/nope").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["x-request-id"].len(), 32);
}

// ---------- recover ----------

/// A body that yields one chunk, lets the server flush it, then panics.
struct PanickyBody(u8);

impl http_body::Body for PanickyBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0 += 1;
        match self.0 {
            1 => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first chunk"))))),
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => panic!("body blew up\nmid-stream"),
        }
    }
}

#[tokio::test]
async fn a_panic_answers_500_logs_once_and_the_connection_stays_usable() {
    let logs = capture();
    let mut mux: Mux<hyper::body::Incoming> = Mux::new();
    mux.get(
        "/boom",
        service_fn(|_: Request<hyper::body::Incoming>| async {
            if true {
                panic!("handler bug\u{1b}[31m with\ncontrol chars");
            }
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }),
    )
    .unwrap();
    mux.get(
        "/ok",
        service_fn(|_: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Body::from("fine")))
        }),
    )
    .unwrap();
    mux.get(
        "/stream-panic",
        service_fn(|_: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Body::new(PanickyBody(0))))
        }),
    )
    .unwrap();
    mux.pre(RequestIdLayer::new());
    mux.pre(RecoverLayer::new());
    let addr = serve(mux.into_service()).await;

    let mut client = Client::connect(addr).await;
    let (status, body) = client.get("/boom").await;
    assert_eq!(status, 500);
    assert_eq!(body.unwrap(), "Internal Server Error\n");
    // The same connection serves the next request.
    let (status, body) = client.get("/ok").await;
    assert_eq!((status, body.unwrap().as_str()), (200, "fine"));

    let errors: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0].fields;
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/boom");
    assert_eq!(e["request_id"].len(), 32);
    assert!(
        e["panic"].contains("handler bug\\u{1b}[31m with\\ncontrol chars"),
        "{}",
        e["panic"]
    );
    assert!(!e["panic"].contains('\n'));

    // A panic after the head was sent aborts the response instead of ending it cleanly.
    let mut client = Client::connect(addr).await;
    let (status, body) = client.get("/stream-panic").await;
    assert_eq!(status, 200);
    assert!(
        body.is_err(),
        "the client must see a broken body, got {body:?}"
    );
}

#[derive(Clone)]
struct PanicsInCall;

impl Service<Request<()>> for PanicsInCall {
    type Response = Reply;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Reply, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<()>) -> Self::Future {
        panic!("in call itself");
    }
}

#[tokio::test]
async fn a_panic_in_call_itself_is_caught() {
    let logs = capture();
    let svc = ServiceBuilder::new()
        .layer(RecoverLayer::new())
        .service(PanicsInCall);
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let errors: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR)
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].fields["panic"], "in call itself");
}

// ---------- timeout ----------

/// Sets its flag when dropped: shows that the inner future was cancelled.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_service_gets_503_at_the_deadline_and_is_cancelled() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let slow = service_fn(move |_: Request<()>| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(ok_text("too late"))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(1500)))
        .service(slow);
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the inner future was dropped"
    );
    assert_eq!(body_text(res).await, "Service Unavailable\n");
}

#[tokio::test(start_paused = true)]
async fn per_route_timeouts_in_a_mux() {
    let sleeper = |secs: u64| {
        service_fn(move |_: Request<()>| async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok::<_, Infallible>(ok_text("done"))
        })
    };
    let mut mux = Mux::new();
    mux.get(
        "/fast-enough",
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(10)))
            .service(sleeper(2)),
    )
    .unwrap();
    mux.get(
        "/too-slow",
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service(sleeper(2)),
    )
    .unwrap();
    let svc = mux.into_service();
    let res = svc
        .clone()
        .oneshot(Request::get("/fast-enough").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_text(res).await, "done");
    let res = svc
        .oneshot(Request::get("/too-slow").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---------- auth ----------

fn counted(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Reply, Error = Infallible, Future = impl Send> + Clone {
    service_fn(move |_: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(ok_text("secret stuff")) }
    })
}

async fn status_with(
    svc: impl Service<
        Request<()>,
        Response = Response<httpkit::TextOr<Full<Bytes>>>,
        Error = Infallible,
    >,
    headers: &[(&str, &[u8])],
) -> StatusCode {
    let mut req = Request::new(());
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    svc.oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn header_gate_passes_fails_and_is_not_fooled() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = AuthLayer::header(
        "x-admin-token",
        Secrets::new(["letmein", "other-secret"]).unwrap(),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(gate)
        .service(counted(calls.clone()));

    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_text(res).await, "Forbidden\n");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the inner service is not called"
    );

    for good in [&b"letmein"[..], b"other-secret"] {
        assert_eq!(
            status_with(svc.clone(), &[("x-admin-token", good)]).await,
            StatusCode::OK
        );
    }
    // Header names are case-insensitive in HTTP.
    assert_eq!(
        status_with(svc.clone(), &[("X-Admin-Token", b"letmein")]).await,
        StatusCode::OK
    );
    for bad in [
        &b"LETMEIN"[..],
        b"Letmein",
        b"letmein ",
        b" letmein",
        b"letmein\t",
        b"letmei",
        b"letmeinn",
        b"letmein,other-secret",
        b"",
        b"x",
    ] {
        assert_eq!(
            status_with(svc.clone(), &[("x-admin-token", bad)]).await,
            StatusCode::FORBIDDEN,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Sent twice (once right): refused, whatever the order.
    assert_eq!(
        status_with(
            svc.clone(),
            &[("x-admin-token", b"letmein"), ("x-admin-token", b"nope")]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    // The token in another header does not count.
    assert_eq!(
        status_with(svc.clone(), &[("x-admin-tokens", b"letmein")]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bearer_gate() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::bearer(Secrets::new(["t0k3n"]).unwrap()))
        .service(counted(calls.clone()));
    for good in [
        &b"Bearer t0k3n"[..],
        b"bearer t0k3n",
        b"BEARER t0k3n",
        b"Bearer   t0k3n",
    ] {
        assert_eq!(
            status_with(svc.clone(), &[("authorization", good)]).await,
            StatusCode::OK
        );
    }
    for bad in [
        &b"Bearer T0K3N"[..],
        b"Bearert0k3n",
        b"Basic t0k3n",
        b"t0k3n",
        b"Bearer ",
        b"Bearer t0k3n x",
    ] {
        assert_eq!(
            status_with(svc.clone(), &[("authorization", bad)]).await,
            StatusCode::FORBIDDEN
        );
    }
}

#[test]
fn secrets_from_the_environment() {
    // Cargo sets CARGO_PKG_NAME for the tests it runs.
    let secrets = Secrets::from_env("CARGO_PKG_NAME").unwrap();
    assert!(secrets.matches(b"middleware"));
    assert!(matches!(
        Secrets::from_env("SURELY_NOT_SET_GATEWAY_TOKEN_7f3a"),
        Err(middleware::AuthError::MissingEnv(_))
    ));
    assert!(AuthLayer::header("bad header", secrets).is_err());
}

#[tokio::test]
async fn auth_gate_on_a_mux_group() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut mux = Mux::new();
    mux.get("/open", counted(calls.clone())).unwrap();
    let mut admin = mux.group("/admin");
    admin.layer(AuthLayer::header("x-admin-token", Secrets::new(["letmein"]).unwrap()).unwrap());
    admin.get("/*path", counted(calls.clone())).unwrap();
    let svc = mux.into_service();

    let send = |path: &'static str, token: Option<&'static str>| {
        let svc = svc.clone();
        async move {
            let mut req = Request::get(path);
            if let Some(t) = token {
                req = req.header("x-admin-token", t);
            }
            svc.oneshot(req.body(()).unwrap()).await.unwrap().status()
        }
    };
    assert_eq!(send("/admin/dashboard", None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        send("/admin/dashboard", Some("wrong")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        send("/admin/dashboard", Some("letmein")).await,
        StatusCode::OK
    );
    assert_eq!(send("/open", None).await, StatusCode::OK);
}

// ---------- access log ----------

#[derive(Clone, Debug)]
struct Upstream(&'static str);
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[tokio::test]
async fn one_access_log_event_per_request_with_the_right_fields() {
    let logs = capture();
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(AccessLogLayer::new().upstream::<Upstream>())
        .service(service_fn(|_: Request<()>| async {
            let mut res = ok_text("twelve bytes");
            *res.status_mut() = StatusCode::CREATED;
            res.extensions_mut().insert(Upstream("127.0.0.1:9001"));
            Ok::<_, Infallible>(res)
        }));
    let req = Request::post("/items?x=1")
        .header("x-request-id", "log-me")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(
        logs.with_target("access_log").len(),
        0,
        "logged at completion, not before"
    );
    assert_eq!(body_text(res).await, "twelve bytes");
    let events = logs.with_target("access_log");
    assert_eq!(events.len(), 1);
    let f = &events[0].fields;
    assert_eq!(f["method"], "POST");
    assert_eq!(f["path"], "/items");
    assert_eq!(f["status"], "201");
    assert_eq!(f["bytes"], "12");
    assert_eq!(f["request_id"], "log-me");
    assert_eq!(f["upstream"], "127.0.0.1:9001");
    assert_eq!(f["complete"], "true");
    assert!(f["duration_ms"].parse::<f64>().unwrap() >= 0.0);

    // A response dropped unread is still logged once, as incomplete.
    let res = svc
        .oneshot(Request::get("/gone").body(()).unwrap())
        .await
        .unwrap();
    drop(res);
    let events = logs.with_target("access_log");
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].fields["complete"], "false");
    assert_eq!(events[1].fields["ended"], "body_dropped");
    assert_eq!(events[1].fields["path"], "/gone");
}

#[tokio::test]
async fn a_client_gone_before_the_response_head_is_logged_once_as_499() {
    let logs = capture();
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(AccessLogLayer::new())
        .service(service_fn(|_: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(ok_text("never"))
        }));
    let req = Request::get("/slow")
        .header("x-request-id", "gone-early")
        .body(())
        .unwrap();
    let mut fut = Box::pin(svc.oneshot(req));
    std::future::poll_fn(|cx| {
        assert!(fut.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    drop(fut); // what a server does when the client disconnects
    let events = logs.with_target("access_log");
    assert_eq!(events.len(), 1, "{events:?}");
    let f = &events[0].fields;
    assert_eq!(f["status"], "499");
    assert_eq!(f["ended"], "client_gone");
    assert_eq!(f["complete"], "false");
    assert_eq!(f["request_id"], "gone-early");
}

#[tokio::test]
async fn a_panic_turned_into_a_500_reaches_the_access_log() {
    let logs = capture();
    // The gateway's order: request id, access log, then recovery inside it.
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(AccessLogLayer::new())
        .layer(RecoverLayer::new())
        .service(service_fn(|_: Request<()>| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(ok_text("never"))
        }));
    let res = svc
        .oneshot(Request::get("/boom").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let _ = body_text(res).await;
    let events = logs.with_target("access_log");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fields["status"], "500");
    assert_eq!(events[0].fields["ended"], "complete");
}

#[tokio::test]
async fn access_log_through_a_mux_sees_404s() {
    let logs = capture();
    let mut mux = Mux::new();
    mux.get(
        "/x",
        service_fn(|_: Request<()>| async { Ok::<_, Infallible>(ok_text("x")) }),
    )
    .unwrap();
    mux.pre(RequestIdLayer::new());
    mux.pre(AccessLogLayer::new());
    let svc = mux.into_service();
    for (path, status) in [("/x", "200"), ("/missing", "404")] {
        let res = svc
            .clone()
            .oneshot(Request::get(path).body(()).unwrap())
            .await
            .unwrap();
        body_text(res).await;
        let last = logs.with_target("access_log").pop().unwrap();
        assert_eq!(last.fields["status"], status);
        assert_eq!(last.fields["path"], path);
        assert_eq!(last.fields["request_id"].len(), 32);
    }
    assert_eq!(logs.with_target("access_log").len(), 2);
    let _ = Method::GET;
}

#[tokio::test]
async fn bodies_a_server_never_polls_to_the_end_still_count_as_complete() {
    let logs = capture();
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new())
        .service(service_fn(|req: Request<()>| async move {
            let res = if req.uri().path() == "/empty" {
                Response::new(Full::new(Bytes::new()))
            } else {
                ok_text("0123456789")
            };
            Ok::<_, Infallible>(res)
        }));
    // An empty body: a server checks is_end_stream and never polls it.
    let res = svc
        .clone()
        .oneshot(Request::get("/empty").body(()).unwrap())
        .await
        .unwrap();
    drop(res);
    // A body of known length: a server stops polling after the last byte.
    let mut body = svc
        .oneshot(Request::get("/ten").body(()).unwrap())
        .await
        .unwrap()
        .into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap().len(), 10);
    drop(body);
    let events = logs.with_target("access_log");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].fields["complete"], "true");
    assert_eq!(events[1].fields["complete"], "true");
    assert_eq!(events[1].fields["bytes"], "10");
}
