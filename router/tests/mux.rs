//! `Mux` behaviour through its tower `Service` interface.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use router::{Body, InsertError, Mux, MuxService, PathParams};
use tower::{ServiceExt, service_fn};

/// A handler that answers `<name> <route> <params>`.
fn named(
    name: &'static str,
) -> impl tower::Service<Request<()>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |req: Request<()>| async move {
        let params = req.extensions().get::<PathParams>().map(|p| {
            p.params()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        let text = format!("{name} {}", params.unwrap_or_default());
        Ok::<_, Infallible>(Response::new(Body::from(text)))
    })
}

async fn send(svc: &MuxService<()>, method: Method, uri: &str) -> (StatusCode, Response<Body>) {
    let req = Request::builder().method(method).uri(uri).body(()).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    (res.status(), res)
}

async fn text(res: Response<Body>) -> String {
    let bytes: Bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn demo() -> MuxService<()> {
    let mut mux = Mux::new();
    mux.route(
        [Method::GET, Method::POST, Method::PUT, Method::DELETE],
        "/api/*path",
        named("api"),
    )
    .unwrap();
    mux.route(
        [Method::GET, Method::HEAD],
        "/static/*path",
        named("static"),
    )
    .unwrap();
    mux.get("/users/:id", named("user")).unwrap();
    mux.post("/users/new", named("new-user")).unwrap();
    mux.get("/users/list", named("list")).unwrap();
    mux.get("/docs/", named("docs")).unwrap();
    mux.put("/form", named("form")).unwrap();
    let mut admin = mux.group("/admin");
    admin.get("/*path", named("admin")).unwrap();
    mux.into_service()
}

#[tokio::test]
async fn routes_by_method_and_path_with_params() {
    let svc = demo();
    let (status, res) = send(&svc, Method::GET, "/api/v1/items?x=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(res).await, "api path=/v1/items");
    let (_, res) = send(&svc, Method::DELETE, "/api/").await;
    assert_eq!(text(res).await, "api path=/");
    let (_, res) = send(&svc, Method::GET, "/static/css/app.css").await;
    assert_eq!(text(res).await, "static path=/css/app.css");
    let (_, res) = send(&svc, Method::GET, "/users/listx").await;
    assert_eq!(text(res).await, "user id=listx");
    let (_, res) = send(&svc, Method::GET, "/users/list").await;
    assert_eq!(text(res).await, "list ");
    // A GET for /users/new falls back to the GET route instead of stopping at the POST one.
    let (_, res) = send(&svc, Method::GET, "/users/new").await;
    assert_eq!(text(res).await, "user id=new");
    let (_, res) = send(&svc, Method::POST, "/users/new").await;
    assert_eq!(text(res).await, "new-user ");
    let (_, res) = send(&svc, Method::GET, "/admin/dashboard").await;
    assert_eq!(text(res).await, "admin path=/dashboard");
}

#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let svc = demo();
    let (status, res) = send(&svc, Method::GET, "/nothing/here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(text(res).await, "Not Found\n");

    let (status, res) = send(&svc, Method::PATCH, "/api/x").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        res.headers()["allow"],
        "GET, HEAD, POST, PUT, DELETE, OPTIONS"
    );
    let (status, res) = send(&svc, Method::DELETE, "/static/a").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, HEAD, OPTIONS");
}

#[tokio::test]
async fn head_uses_get_routes() {
    let svc = demo();
    let (status, res) = send(&svc, Method::HEAD, "/users/7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(res).await, "user id=7");
    // An explicit HEAD route wins over GET.
    let mut mux = Mux::new();
    mux.get("/x", named("get")).unwrap();
    mux.head("/x", named("head")).unwrap();
    let svc = mux.into_service();
    let (_, res) = send(&svc, Method::HEAD, "/x").await;
    assert_eq!(text(res).await, "head ");
}

#[tokio::test]
async fn automatic_options() {
    let svc = demo();
    let (status, res) = send(&svc, Method::OPTIONS, "/users/1").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["allow"], "GET, HEAD, OPTIONS");
    let (status, res) = send(&svc, Method::OPTIONS, "*").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        res.headers()["allow"],
        "GET, HEAD, POST, PUT, DELETE, OPTIONS"
    );
    let (status, _) = send(&svc, Method::OPTIONS, "/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An OPTIONS route replaces the automatic answer; turning it off gives a 405.
    let mut mux = Mux::new();
    mux.get("/a", named("get")).unwrap();
    mux.options("/b", named("opts")).unwrap();
    mux.get("/b", named("get")).unwrap();
    mux.auto_options(false);
    let svc = mux.into_service();
    let (_, res) = send(&svc, Method::OPTIONS, "/b").await;
    assert_eq!(text(res).await, "opts ");
    let (status, res) = send(&svc, Method::OPTIONS, "/a").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn trailing_slash_redirects() {
    let svc = demo();
    let (status, res) = send(&svc, Method::GET, "/admin").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(res.headers()["location"], "/admin/");
    let (status, res) = send(&svc, Method::GET, "/docs?page=2").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(res.headers()["location"], "/docs/?page=2");
    let (status, res) = send(&svc, Method::GET, "/users/7/").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(res.headers()["location"], "/users/7");
    let (status, res) = send(&svc, Method::PUT, "/form/").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()["location"], "/form");
    // No open redirect to another host through a leading `//`.
    let mut mux = Mux::new();
    mux.get("//evil.com", named("x")).unwrap();
    let svc = mux.into_service();
    let (status, _) = send(&svc, Method::GET, "//evil.com/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nor through a backslash or an escaped one, which browsers read as a slash.
    let mut mux = Mux::new();
    mux.get("/:page", named("page")).unwrap();
    let svc = mux.into_service();
    let (status, res) = send(&svc, Method::GET, "/about/").await;
    assert_eq!(
        status,
        StatusCode::MOVED_PERMANENTLY,
        "a plain one still redirects"
    );
    assert_eq!(res.headers()["location"], "/about");
    for sneaky in [
        "/\\evil.com/",
        "/%5Cevil.com/",
        "/%5cevil.com/",
        "/%2F%2Fevil.com/",
    ] {
        let (status, res) = send(&svc, Method::GET, sneaky).await;
        assert!(
            res.headers().get("location").is_none(),
            "{sneaky}: redirected to {:?}",
            res.headers().get("location")
        );
        assert_ne!(status, StatusCode::MOVED_PERMANENTLY, "{sneaky}");
    }
    // Redirects can be turned off.
    let mut mux = Mux::new();
    mux.get("/docs/", named("docs")).unwrap();
    mux.redirect_trailing_slash(false);
    let svc = mux.into_service();
    let (status, _) = send(&svc, Method::GET, "/docs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn custom_fallbacks() {
    let mut mux = Mux::new();
    mux.get("/a", named("a")).unwrap();
    mux.not_found(service_fn(|_: Request<()>| async {
        let mut res = Response::new(Body::from("custom 404"));
        *res.status_mut() = StatusCode::NOT_FOUND;
        Ok::<_, Infallible>(res)
    }));
    mux.method_not_allowed(service_fn(|_: Request<()>| async {
        let mut res = Response::new(Body::from("custom 405"));
        *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        Ok::<_, Infallible>(res)
    }));
    let svc = mux.into_service();
    let (status, res) = send(&svc, Method::GET, "/b").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(text(res).await, "custom 404");
    let (status, res) = send(&svc, Method::POST, "/a").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, HEAD, OPTIONS");
    assert_eq!(text(res).await, "custom 405");
}

/// A layer that counts how often it is *built* and tags responses.
#[derive(Clone)]
struct Tag {
    name: &'static str,
    built: Arc<AtomicUsize>,
}

impl<S> tower::Layer<S> for Tag
where
    S: tower::Service<Request<()>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    type Service = tower::util::BoxCloneSyncService<Request<()>, Response<Body>, Infallible>;
    fn layer(&self, inner: S) -> Self::Service {
        self.built.fetch_add(1, Ordering::SeqCst);
        let name = self.name;
        tower::util::BoxCloneSyncService::new(inner.map_response(move |mut res: Response<Body>| {
            res.headers_mut()
                .append("x-layers", HeaderValue::from_static(name));
            res
        }))
    }
}

#[tokio::test]
async fn pre_group_and_route_layers_are_built_once() {
    let built = Arc::new(AtomicUsize::new(0));
    let tag = |name| Tag {
        name,
        built: built.clone(),
    };
    let mut mux = Mux::new();
    mux.pre(tag("pre"));
    mux.get("/plain", named("plain")).unwrap();
    {
        let mut g = mux.group("/g/");
        g.layer(tag("group"));
        g.get(
            "/a",
            tower::ServiceBuilder::new()
                .layer(tag("route"))
                .service(named("a")),
        )
        .unwrap();
        let mut inner = g.group("/inner");
        inner.layer(tag("inner"));
        inner.get("/b", named("b")).unwrap();
    }
    let svc = mux.into_service();
    // route + group on /g/a, group + inner on /g/inner/b, pre once.
    assert_eq!(built.load(Ordering::SeqCst), 5);

    let tags = |res: &Response<Body>| -> Vec<String> {
        res.headers()
            .get_all("x-layers")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let (_, res) = send(&svc, Method::GET, "/g/a").await;
    // Responses pass the innermost layer first.
    assert_eq!(tags(&res), ["route", "group", "pre"]);
    let (_, res) = send(&svc, Method::GET, "/g/inner/b").await;
    assert_eq!(tags(&res), ["inner", "group", "pre"]);
    let (_, res) = send(&svc, Method::GET, "/plain").await;
    assert_eq!(tags(&res), ["pre"]);
    // Pre layers see requests that match no route.
    let (status, res) = send(&svc, Method::GET, "/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(tags(&res), ["pre"]);
    for _ in 0..10 {
        send(&svc, Method::GET, "/g/a").await;
    }
    assert_eq!(
        built.load(Ordering::SeqCst),
        5,
        "no layer is built per request"
    );
}

#[tokio::test]
async fn service_errors_become_500() {
    let mut mux = Mux::new();
    mux.get(
        "/fail",
        service_fn(|_: Request<()>| async {
            Err::<Response<Body>, _>(std::io::Error::other("boom"))
        }),
    )
    .unwrap();
    let svc = mux.into_service();
    let (status, _) = send(&svc, Method::GET, "/fail").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn registration_errors_are_typed_and_atomic() {
    let mut mux: Mux<()> = Mux::new();
    mux.get("/a/:id", named("a")).unwrap();
    let err = mux
        .route([Method::POST, Method::GET], "/a/:name", named("b"))
        .unwrap_err();
    assert_eq!(
        err,
        InsertError::Conflict {
            route: "/a/:name".into(),
            existing: "/a/:id".into()
        }
    );
    // POST was checked before anything was inserted, so it is still free.
    mux.post("/a/:name", named("b")).unwrap();
    assert!(matches!(
        mux.get("no-slash", named("c")),
        Err(InsertError::Malformed { .. })
    ));
    let routes: Vec<_> = mux
        .routes()
        .map(|(m, p)| (m.cloned(), p.to_owned()))
        .collect();
    assert_eq!(
        routes,
        vec![
            (Some(Method::GET), "/a/:id".to_owned()),
            (Some(Method::POST), "/a/:name".to_owned())
        ]
    );
}

#[tokio::test]
async fn any_method_routes() {
    let mut mux = Mux::new();
    mux.any("/hook/:id", named("any")).unwrap();
    mux.post("/hook/:id", named("post")).unwrap();
    let svc = mux.into_service();
    let (_, res) = send(&svc, Method::PATCH, "/hook/1").await;
    assert_eq!(text(res).await, "any id=1");
    let (_, res) = send(&svc, Method::POST, "/hook/1").await;
    assert_eq!(text(res).await, "post id=1");
    let custom = Method::from_bytes(b"PURGE").unwrap();
    let (_, res) = send(&svc, custom, "/hook/2").await;
    assert_eq!(text(res).await, "any id=2");
}

#[tokio::test]
async fn tower_http_style_layers_fit() {
    // tower's own layers (here: a concurrency limit and a request mapper) work as pre layers.
    let mut mux = Mux::new();
    mux.get("/x", named("x")).unwrap();
    mux.pre(tower::limit::ConcurrencyLimitLayer::new(4));
    mux.pre(tower::util::MapRequestLayer::new(|mut req: Request<()>| {
        *req.uri_mut() = "/x".parse().unwrap();
        req
    }));
    let svc = mux.into_service();
    let (status, res) = send(&svc, Method::GET, "/rewritten-to-x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(res).await, "x ");
}

#[tokio::test]
async fn tower_http_layers_fit_every_slot() {
    use tower_http::set_header::SetResponseHeaderLayer;
    let mut mux = Mux::new();
    mux.pre(SetResponseHeaderLayer::overriding(
        http::header::SERVER,
        HeaderValue::from_static("gateway"),
    ));
    let mut api = mux.group("/api");
    api.layer(SetResponseHeaderLayer::appending(
        http::HeaderName::from_static("x-group"),
        HeaderValue::from_static("api"),
    ));
    api.get(
        "/slow",
        tower::ServiceBuilder::new()
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                std::time::Duration::from_millis(10),
            ))
            .service(service_fn(|_: Request<()>| async {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                Ok::<_, Infallible>(Response::new(Body::empty()))
            })),
    )
    .unwrap();
    let svc = mux.into_service();
    let (status, res) = send(&svc, Method::GET, "/api/slow").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "tower-http's timeout as a route layer"
    );
    assert_eq!(
        res.headers()["x-group"],
        "api",
        "tower-http's header layer as a group layer"
    );
    assert_eq!(res.headers()["server"], "gateway", "and as a pre layer");
    let (status, res) = send(&svc, Method::GET, "/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["server"], "gateway");
}

#[tokio::test]
async fn paths_are_normalized_before_routing_and_the_request_sees_the_result() {
    let mut mux = Mux::new();
    mux.get(
        "/admin/*path",
        service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(Body::from(format!("admin {}", req.uri()))))
        }),
    )
    .unwrap();
    mux.get("/static/*path", named("static")).unwrap();
    let svc = mux.into_service();
    for uri in [
        "/static/../admin/x?q=1",
        "/static/%2e%2e/admin/x?q=1",
        "/static/.%2E/admin/./x?q=1",
        "/%61dmin/x?q=1",
    ] {
        let (status, res) = send(&svc, Method::GET, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(text(res).await, "admin /admin/x?q=1", "{uri}");
    }
    for uri in [
        "/../admin/x",
        "/static/%00",
        "/static/%zz",
        "/static/../../admin/x",
    ] {
        let (status, _) = send(&svc, Method::GET, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
    }
    // Other escapes stay escaped: `%2F` is not a separator.
    let (status, _) = send(&svc, Method::GET, "/admin%2Fx").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // And it can be turned off.
    let mut raw = Mux::new();
    raw.normalize_paths(false);
    raw.get("/static/*path", named("static")).unwrap();
    let (_, res) = send(&raw.into_service(), Method::GET, "/static/../x").await;
    assert_eq!(text(res).await, "static path=/../x");
}

async fn send_req(svc: &MuxService<()>, req: Request<()>) -> (StatusCode, String) {
    let res = svc.clone().oneshot(req).await.unwrap();
    (res.status(), text(res).await)
}

#[tokio::test]
async fn virtual_hosts_exact_wildcard_and_default() {
    let mut mux = Mux::new();
    mux.host("api.example.com")
        .unwrap()
        .get("/v1/*rest", named("api"))
        .unwrap();
    mux.host("*.example.com")
        .unwrap()
        .get("/", named("any-sub"))
        .unwrap();
    mux.host("*.eu.example.com")
        .unwrap()
        .get("/", named("eu"))
        .unwrap();
    // The same name again adds to the same host.
    mux.host("API.example.com")
        .unwrap()
        .post("/v1/items", named("api-post"))
        .unwrap();
    mux.get("/", named("default")).unwrap();
    assert!(mux.host("bad host").is_err());
    let svc = mux.into_service();

    let get = |host: &str, path: &str| Request::get(path).header("host", host).body(()).unwrap();
    assert_eq!(
        send_req(&svc, get("api.example.com:8080", "/v1/x")).await,
        (StatusCode::OK, "api rest=/x".into())
    );
    // Another host does not see api's routes.
    assert_eq!(
        send_req(&svc, get("www.example.com", "/v1/x")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send_req(&svc, get("www.example.com", "/")).await.1,
        "any-sub "
    );
    assert_eq!(
        send_req(&svc, get("a.b.eu.example.com", "/")).await.1,
        "eu "
    );
    assert_eq!(send_req(&svc, get("example.com", "/")).await.1, "default ");
    assert_eq!(send_req(&svc, get("[::1]:80", "/")).await.1, "default ");
    // No Host at all (HTTP/1.0): the default site.
    assert_eq!(
        send_req(&svc, Request::get("/").body(()).unwrap()).await.1,
        "default "
    );
    // The authority of an absolute-form target (or HTTP/2's :authority) wins over Host.
    let abs = Request::get("http://api.example.com/v1/y")
        .header("host", "other.test")
        .body(())
        .unwrap();
    assert_eq!(send_req(&svc, abs).await.1, "api rest=/y");
    // 405 and Allow come from the host's own routes.
    let res = svc
        .clone()
        .oneshot(
            Request::delete("/v1/items")
                .header("host", "api.example.com")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, HEAD, POST, OPTIONS");
}

#[tokio::test]
async fn guarded_routes_first_in_order_then_plain_then_not_found() {
    use router::{Matcher, Subject, Test};
    let header = |name: &str, value: &str| {
        Arc::new(Matcher::new(
            Subject::Header(name.parse().unwrap()),
            Test::Exact(value.into()),
        ))
    };
    let mut mux = Mux::new();
    mux.get("/items/:id", named("plain")).unwrap();
    mux.route_if(
        Some(&[Method::GET]),
        "/items/:id",
        header("x-canary", "1"),
        named("canary"),
    )
    .unwrap();
    mux.route_if(
        Some(&[Method::GET]),
        "/items/:id",
        Arc::new(Matcher::new(Subject::Query("beta".into()), Test::Present)),
        named("beta"),
    )
    .unwrap();
    // Only guarded routes at this pattern: none holding is a 404, not a 405.
    mux.route_if(
        Some(&[Method::POST]),
        "/only",
        header("x-ok", "yes"),
        named("only"),
    )
    .unwrap();
    // A second plain route at one method and pattern is still a conflict.
    assert!(matches!(
        mux.get("/items/:id", named("again")),
        Err(InsertError::Conflict { .. })
    ));
    let svc = mux.into_service();

    let req = |uri: &str, h: Option<(&str, &str)>| {
        let mut b = Request::get(uri);
        if let Some((k, v)) = h {
            b = b.header(k, v);
        }
        b.body(()).unwrap()
    };
    assert_eq!(send_req(&svc, req("/items/7", None)).await.1, "plain id=7");
    assert_eq!(
        send_req(&svc, req("/items/7", Some(("x-canary", "1"))))
            .await
            .1,
        "canary id=7"
    );
    assert_eq!(
        send_req(&svc, req("/items/7?beta", None)).await.1,
        "beta id=7"
    );
    // Both hold: the first registered wins.
    assert_eq!(
        send_req(&svc, req("/items/7?beta", Some(("x-canary", "1"))))
            .await
            .1,
        "canary id=7"
    );
    let post = |h: Option<&str>| {
        let mut b = Request::post("/only");
        if let Some(v) = h {
            b = b.header("x-ok", v);
        }
        b.body(()).unwrap()
    };
    assert_eq!(
        send_req(&svc, post(Some("yes"))).await,
        (StatusCode::OK, "only ".into())
    );
    assert_eq!(
        send_req(&svc, post(Some("no"))).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(send_req(&svc, post(None)).await.0, StatusCode::NOT_FOUND);
}

#[test]
fn in_segment_sigils_are_refused_and_escapes_are_literal() {
    let mut mux: Mux<()> = Mux::new();
    for bad in [
        "/user_:id",
        "/files*path",
        "/src2*rest",
        "/v1/projects:batchGet",
    ] {
        let err = mux.get(bad, named("x")).unwrap_err();
        assert!(
            err.to_string().contains("start of a segment"),
            "{bad}: {err}"
        );
    }
    mux.get(r"/v1/projects\:batchGet", named("batch")).unwrap();
    mux.get("/v1/projects/:id", named("one")).unwrap();
    let mut tree = router::Router::new();
    tree.insert(r"/v1/projects\:batchGet", 1).unwrap();
    assert_eq!(*tree.at("/v1/projects:batchGet").unwrap().value, 1);
    assert!(tree.at(r"/v1/projects\:batchGet").is_err());
    // The escaped and the unescaped forms are one shape: a second registration conflicts.
    assert!(tree.insert(r"/v1/projects\:batchGet", 2).is_err());
}

/// A service that is ready only once its gate is opened, keeping the waker it was last asked
/// with.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
}

impl tower::Service<Request<()>> for Gate {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.open.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(Body::from("through the gate"))))
    }
}

/// Counts its wakes.
struct Counted(AtomicUsize);

impl std::task::Wake for Counted {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_route_not_ready_yet_is_waited_for_with_the_task_s_waker() {
    use std::future::Future;
    let gate = Gate::default();
    let mut mux = Mux::new();
    mux.get("/gated", gate.clone()).unwrap();
    let svc = mux.into_service();
    let mut call = Box::pin(
        svc.clone()
            .oneshot(Request::builder().uri("/gated").body(()).unwrap()),
    );
    let wakes = Arc::new(Counted(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(Arc::clone(&wakes));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(call.as_mut().poll(&mut cx).is_pending(), "the gate is shut");
    // The route asked again from inside its future: the waker the gate keeps is the task's.
    gate.open.store(true, Ordering::SeqCst);
    let kept = gate.waker.lock().unwrap().take().unwrap();
    kept.wake();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the task was woken");
    let std::task::Poll::Ready(res) = call.as_mut().poll(&mut cx) else {
        panic!("ready once the gate is open")
    };
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "through the gate");
}
