//! [`Mux`]: HTTP dispatch by method and path, as a tower `Service`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{ALLOW, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::InsertError;
use crate::method::MethodRouter;
use crate::normalize::normalize_path;
use crate::params::{Params, RouteInfo};
use crate::route::{IntoRoute, Route, RouteFuture};
use httpkit::{Body, text_response};

type Wrap<B> = Arc<dyn Fn(Route<B>) -> Route<B> + Send + Sync>;

fn wrap_with<B, L>(layer: L) -> Wrap<B>
where
    B: Send + 'static,
    L: Layer<Route<B>> + Send + Sync + 'static,
    L::Service: IntoRoute<B>,
{
    Arc::new(move |route| layer.layer(route).into_route())
}

/// The parameters of the route that matched, put in the request's extensions by [`Mux`] when
/// the route has any.
///
/// ```
/// # use http::Request;
/// # fn handler(req: Request<()>) {
/// if let Some(params) = req.extensions().get::<router::PathParams>() {
///     let id = params.get("id");
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct PathParams {
    info: Arc<RouteInfo>,
    path: PathAndQuery,
}

impl PathParams {
    /// The value of the parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params().get(name)
    }

    /// All parameters, in route order.
    pub fn params(&self) -> Params<'_, '_> {
        Params::new(&self.info, self.path.path())
    }

    /// The pattern of the matched route, e.g. `/users/:id`.
    pub fn route(&self) -> &str {
        self.info.pattern()
    }
}

impl fmt::Debug for PathParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathParams")
            .field("route", &self.route())
            .field("params", &self.params())
            .finish()
    }
}

/// An HTTP router: routes by method and path to tower services, with middleware before routing
/// (`pre`), per group and per route.
///
/// - No route for the path: `404 Not Found` (or the [`not_found`](Self::not_found) service).
/// - A route for the path but not the method: `405 Method Not Allowed` with an `Allow` header
///   (or the [`method_not_allowed`](Self::method_not_allowed) service, `Allow` added).
/// - `OPTIONS` without an `OPTIONS` route: `204 No Content` with `Allow`.
/// - Only the other trailing-slash form of the path has a route: a redirect to it, `301` for
///   `GET`/`HEAD` and `308` (method and body kept) otherwise. `/admin` redirects to `/admin/`
///   when `/admin/*path` is registered.
/// - `HEAD` uses the `GET` route when there is no `HEAD` route; the HTTP server drops the body.
///
/// Route and group layers are applied once, when the route is registered; `pre` layers once,
/// in [`into_service`](Self::into_service). A request pays for none of that assembly.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use router::{Body, Mux, PathParams};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hello = service_fn(|req: Request<()>| async move {
///     let name = req.extensions().get::<PathParams>().and_then(|p| p.get("name"));
///     Ok::<_, Infallible>(Response::new(Body::from(format!("hello {}", name.unwrap_or("?")))))
/// });
/// let mut mux = Mux::new();
/// mux.get("/hello/:name", hello)?;
/// let svc = mux.into_service();
///
/// let res = svc.clone().oneshot(Request::get("/hello/world").body(())?).await?;
/// assert_eq!(res.status(), StatusCode::OK);
/// let res = svc.clone().oneshot(Request::post("/hello/world").body(())?).await?;
/// assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
/// assert_eq!(res.headers()["allow"], "GET, HEAD, OPTIONS");
/// let res = svc.oneshot(Request::get("/nope").body(())?).await?;
/// assert_eq!(res.status(), StatusCode::NOT_FOUND);
/// # Ok(())
/// # }
/// ```
pub struct Mux<B> {
    routes: MethodRouter<Route<B>>,
    pre: Vec<Wrap<B>>,
    not_found: Option<Route<B>>,
    method_not_allowed: Option<Route<B>>,
    auto_options: bool,
    redirect_trailing_slash: bool,
    normalize_paths: bool,
}

impl<B: Send + 'static> Default for Mux<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> fmt::Debug for Mux<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> = self
            .routes
            .routes()
            .map(|(m, p, _)| format!("{} {p}", m.map_or("*", Method::as_str)))
            .collect();
        f.debug_struct("Mux").field("routes", &routes).finish()
    }
}

/// The per-method registration shorthands, for `Mux` and `Group`; `$at` names where the
/// route goes in the docs.
macro_rules! method_fns {
    ($at:literal) => {
        method_fns!(@one $at, get, GET, " (and so `HEAD`)");
        method_fns!(@one $at, head, HEAD, "");
        method_fns!(@one $at, post, POST, "");
        method_fns!(@one $at, put, PUT, "");
        method_fns!(@one $at, delete, DELETE, "");
        method_fns!(@one $at, patch, PATCH, "");
        method_fns!(@one $at, options, OPTIONS, " (no automatic `OPTIONS` answer there then)");
    };
    (@one $at:literal, $name:ident, $method:ident, $note:literal) => {
        #[doc = concat!("Registers `service` for `", stringify!($method), "`", $note, " at ", $at, ".")]
        pub fn $name<S: IntoRoute<B>>(
            &mut self,
            path: &str,
            service: S,
        ) -> Result<&mut Self, InsertError> {
            self.route([Method::$method], path, service)
        }
    };
}

impl<B: Send + 'static> Mux<B> {
    /// An empty router with automatic `OPTIONS` answers and trailing-slash redirects on.
    pub fn new() -> Self {
        Mux {
            routes: MethodRouter::new(),
            pre: Vec::new(),
            not_found: None,
            method_not_allowed: None,
            auto_options: true,
            redirect_trailing_slash: true,
            normalize_paths: true,
        }
    }

    /// Registers `service` at `path` for each of `methods`. Either every method is registered
    /// or, on error, none is.
    pub fn route<S: IntoRoute<B>>(
        &mut self,
        methods: impl IntoIterator<Item = Method>,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        let methods: Vec<Method> = methods.into_iter().collect();
        self.insert(Some(&methods), path, service.into_route())?;
        Ok(self)
    }

    /// Registers `service` at `path` for every method (routes for a specific method at the
    /// same path take precedence).
    pub fn any<S: IntoRoute<B>>(
        &mut self,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        self.insert(None, path, service.into_route())?;
        Ok(self)
    }

    method_fns!("`path`");

    fn insert(
        &mut self,
        methods: Option<&[Method]>,
        path: &str,
        route: Route<B>,
    ) -> Result<(), InsertError> {
        match methods {
            None => self.routes.insert(None, path, route),
            Some(methods) => {
                for (i, m) in methods.iter().enumerate() {
                    self.routes.check(Some(m), path)?;
                    if methods[..i].contains(m) {
                        return Err(InsertError::Conflict {
                            route: path.to_owned(),
                            existing: path.to_owned(),
                        });
                    }
                }
                for m in methods {
                    self.routes.insert(Some(m), path, route.clone())?;
                }
                Ok(())
            }
        }
    }

    /// A group of routes under `prefix`, with layers of its own (see [`Group`]).
    pub fn group(&mut self, prefix: &str) -> Group<'_, B> {
        Group {
            mux: self,
            prefix: prefix.trim_end_matches('/').to_owned(),
            layers: Vec::new(),
        }
    }

    /// Adds a layer that runs for every request before routing, 404s and 405s included. The
    /// first layer added is the outermost.
    pub fn pre<L>(&mut self, layer: L) -> &mut Self
    where
        L: Layer<Route<B>> + Send + Sync + 'static,
        L::Service: IntoRoute<B>,
    {
        self.pre.push(wrap_with(layer));
        self
    }

    /// Answers requests that match no route (default: `404 Not Found`).
    pub fn not_found<S: IntoRoute<B>>(&mut self, service: S) -> &mut Self {
        self.not_found = Some(service.into_route());
        self
    }

    /// Answers requests whose path has routes, none for the method (default: `405 Method Not
    /// Allowed`). The `Allow` header is added to its response unless it set one.
    pub fn method_not_allowed<S: IntoRoute<B>>(&mut self, service: S) -> &mut Self {
        self.method_not_allowed = Some(service.into_route());
        self
    }

    /// Whether `OPTIONS` requests without a route get `204` and `Allow` (default: on).
    pub fn auto_options(&mut self, on: bool) -> &mut Self {
        self.auto_options = on;
        self
    }

    /// Whether a path that matches only in its other trailing-slash form is redirected there
    /// (default: on).
    pub fn redirect_trailing_slash(&mut self, on: bool) -> &mut Self {
        self.redirect_trailing_slash = on;
        self
    }

    /// Whether paths are normalized before routing (default: on): dot segments resolved,
    /// unreserved escapes decoded, and the request's URI rewritten to the normalized path, so
    /// the route and the services behind it see the same path; a path that climbs above the
    /// root or holds `%00` or a broken escape gets `400 Bad Request`. See [`normalize_path`].
    ///
    /// [`normalize_path`]: crate::normalize_path
    pub fn normalize_paths(&mut self, on: bool) -> &mut Self {
        self.normalize_paths = on;
        self
    }

    /// Every route as `(method, pattern)`, `None` standing for any method.
    pub fn routes(&self) -> impl Iterator<Item = (Option<&Method>, &str)> {
        self.routes.routes().map(|(m, p, _)| (m, p))
    }

    /// Freezes the router into a cloneable service; `pre` layers are applied here, once.
    pub fn into_service(self) -> MuxService<B> {
        self.routes.prepare();
        let table = Arc::new(Table {
            routes: self.routes,
            not_found: self.not_found,
            method_not_allowed: self.method_not_allowed,
            auto_options: self.auto_options,
            redirect_trailing_slash: self.redirect_trailing_slash,
            normalize_paths: self.normalize_paths,
        });
        if self.pre.is_empty() {
            return MuxService(Inner::Direct(Dispatch(table)));
        }
        let mut route = Dispatch(table).into_route();
        for wrap in self.pre.iter().rev() {
            route = wrap(route);
        }
        MuxService(Inner::Layered(route))
    }
}

/// Routes registered under a common prefix with shared layers, wrapped around each route
/// when it is registered. Layers added first run first; a layer applies to the routes
/// registered after it. Nested groups inherit their parent's layers.
///
/// ```
/// # use std::convert::Infallible;
/// # use http::{Request, Response};
/// # use router::{Body, Mux};
/// # let handler = tower::service_fn(|_: Request<()>| async {
/// #     Ok::<_, Infallible>(Response::new(Body::empty()))
/// # });
/// let mut mux = Mux::new();
/// let mut admin = mux.group("/admin");
/// admin.layer(tower::layer::util::Identity::new()); // an auth gate, say
/// admin.get("/*path", handler)?;
/// # Ok::<_, router::InsertError>(())
/// ```
pub struct Group<'m, B> {
    mux: &'m mut Mux<B>,
    prefix: String,
    layers: Vec<Wrap<B>>,
}

impl<B: Send + 'static> Group<'_, B> {
    /// Adds a layer to the routes registered in this group from now on.
    pub fn layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: Layer<Route<B>> + Send + Sync + 'static,
        L::Service: IntoRoute<B>,
    {
        self.layers.push(wrap_with(layer));
        self
    }

    /// A nested group under `prefix`, starting with this group's layers.
    pub fn group(&mut self, prefix: &str) -> Group<'_, B> {
        Group {
            prefix: format!("{}{}", self.prefix, prefix.trim_end_matches('/')),
            layers: self.layers.clone(),
            mux: self.mux,
        }
    }

    fn wrap(&self, service: Route<B>) -> Route<B> {
        self.layers
            .iter()
            .rev()
            .fold(service, |svc, wrap| wrap(svc))
    }

    /// Registers `service` at `prefix + path` for each of `methods`.
    pub fn route<S: IntoRoute<B>>(
        &mut self,
        methods: impl IntoIterator<Item = Method>,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        let methods: Vec<Method> = methods.into_iter().collect();
        let route = self.wrap(service.into_route());
        let full = format!("{}{path}", self.prefix);
        self.mux.insert(Some(&methods), &full, route)?;
        Ok(self)
    }

    /// Registers `service` at `prefix + path` for every method.
    pub fn any<S: IntoRoute<B>>(
        &mut self,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        let route = self.wrap(service.into_route());
        let full = format!("{}{path}", self.prefix);
        self.mux.insert(None, &full, route)?;
        Ok(self)
    }

    method_fns!("`prefix + path`");
}

struct Table<B> {
    routes: MethodRouter<Route<B>>,
    not_found: Option<Route<B>>,
    method_not_allowed: Option<Route<B>>,
    auto_options: bool,
    redirect_trailing_slash: bool,
    normalize_paths: bool,
}

/// The routing step itself, wrapped by the `pre` layers.
struct Dispatch<B>(Arc<Table<B>>);

impl<B> Clone for Dispatch<B> {
    fn clone(&self) -> Self {
        Dispatch(Arc::clone(&self.0))
    }
}

impl<B: Send + 'static> Service<Request<B>> for Dispatch<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = MuxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> MuxFuture {
        dispatch(&self.0, req)
    }
}

fn dispatch<B: Send + 'static>(table: &Table<B>, mut req: Request<B>) -> MuxFuture {
    if table.normalize_paths && !req.uri().path().is_empty() {
        match normalize_path(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(path)) => {
                if set_path(&mut req, &path).is_none() {
                    return ready(text_response(
                        StatusCode::BAD_REQUEST,
                        "Bad Request: path\n",
                    ));
                }
            }
            Err(_) => {
                return ready(text_response(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: path\n",
                ));
            }
        }
    }
    let found = match table.routes.at(req.method(), req.uri().path()) {
        Ok(m) => Some((m.value, m.route_info())),
        Err(_) => None,
    };
    if let Some((route, info)) = found {
        if info.has_params() {
            if let Some(path) = req.uri().path_and_query().cloned() {
                req.extensions_mut().insert(PathParams {
                    info: Arc::clone(info),
                    path,
                });
            }
        }
        return MuxFuture(State::Route(route.call_ref(req)));
    }
    miss(table, req)
}

/// Replaces the request's path with `path` (an empty one becomes `/`), keeping its query,
/// scheme and authority. `None`, and the request untouched, when `path` is not valid in a URI.
///
/// ```
/// let mut req = http::Request::get("/static/css/app.css?v=3").body(()).unwrap();
/// router::set_path(&mut req, "/css/app.css").unwrap();
/// assert_eq!(req.uri(), "/css/app.css?v=3");
/// router::set_path(&mut req, "").unwrap();
/// assert_eq!(req.uri(), "/?v=3");
/// ```
pub fn set_path<B>(req: &mut Request<B>, path: &str) -> Option<()> {
    let path = if path.is_empty() { "/" } else { path };
    let pq = match req.uri().query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")).ok()?,
        None => PathAndQuery::try_from(path).ok()?,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = http::Uri::from_parts(parts).ok()?;
    Some(())
}

/// Whether a browser could read `location` (a redirect to a path of ours) as another origin:
/// `//host`, `/\host`, `/%5Chost`, `/%2F%2Fhost`, or anything with a backslash, control
/// character or white space, which browsers strip or turn into slashes.
fn leaves_the_origin(location: &str) -> bool {
    let escaped = |code: &[u8]| {
        location
            .as_bytes()
            .get(1..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(code))
    };
    !location.starts_with('/')
        || location.starts_with("//")
        || escaped(b"%5c")
        || escaped(b"%2f")
        || location
            .bytes()
            .any(|b| b == b'\\' || b.is_ascii_control() || b == b' ')
}

/// No route for this method: OPTIONS answer, trailing-slash redirect, 405 or 404.
fn miss<B: Send + 'static>(table: &Table<B>, req: Request<B>) -> MuxFuture {
    let method = req.method();
    let path = req.uri().path();
    let mut allowed = if path == "*" && *method == Method::OPTIONS {
        table.routes.methods()
    } else {
        table.routes.allowed(path)
    };
    if table.auto_options && !allowed.is_empty() && !allowed.contains(&Method::OPTIONS) {
        allowed.push(Method::OPTIONS);
    }
    let allow = (!allowed.is_empty()).then(|| allow_header(&allowed));

    if *method == Method::OPTIONS && table.auto_options {
        if let Some(allow) = &allow {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            res.headers_mut().insert(ALLOW, allow.clone());
            return ready(res);
        }
    }
    if table.redirect_trailing_slash && *method != Method::CONNECT {
        if let Some(res) = trailing_slash_redirect(table, &req) {
            return ready(res);
        }
    }
    if let Some(allow) = allow {
        return match &table.method_not_allowed {
            Some(route) => MuxFuture(State::AddAllow(route.call_ref(req), Some(allow))),
            None => {
                let mut res = text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
                res.headers_mut().insert(ALLOW, allow);
                ready(res)
            }
        };
    }
    match &table.not_found {
        Some(route) => MuxFuture(State::Route(route.call_ref(req))),
        None => ready(text_response(StatusCode::NOT_FOUND, "Not Found\n")),
    }
}

fn allow_header(methods: &[Method]) -> HeaderValue {
    let list = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    // Method names are tokens, always valid header text.
    HeaderValue::from_str(&list).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn trailing_slash_redirect<B: Send + 'static>(
    table: &Table<B>,
    req: &Request<B>,
) -> Option<Response<Body>> {
    let path = req.uri().path();
    let other = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        Some(_) => return None,
        None => format!("{path}/"),
    };
    // `//host/...` or `/\host/...` in a Location would send the client to another host.
    if leaves_the_origin(&other) || table.routes.at(req.method(), &other).is_err() {
        return None;
    }
    let location = match req.uri().query() {
        Some(q) => format!("{other}?{q}"),
        None => other,
    };
    let status = if *req.method() == Method::GET || *req.method() == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(LOCATION, HeaderValue::from_str(&location).ok()?);
    Some(res)
}

fn ready(res: Response<Body>) -> MuxFuture {
    MuxFuture(State::Ready(Some(res)))
}

/// The router as a cloneable tower `Service`, made by [`Mux::into_service`].
pub struct MuxService<B>(Inner<B>);

enum Inner<B> {
    Direct(Dispatch<B>),
    Layered(Route<B>),
}

impl<B> Clone for MuxService<B> {
    fn clone(&self) -> Self {
        MuxService(match &self.0 {
            Inner::Direct(d) => Inner::Direct(d.clone()),
            Inner::Layered(r) => Inner::Layered(r.clone()),
        })
    }
}

impl<B> fmt::Debug for MuxService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MuxService")
    }
}

impl<B: Send + 'static> Service<Request<B>> for MuxService<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = MuxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> MuxFuture {
        match &self.0 {
            Inner::Direct(Dispatch(table)) => dispatch(table, req),
            Inner::Layered(route) => MuxFuture(State::Route(route.call_ref(req))),
        }
    }
}

/// The response future of [`MuxService`].
pub struct MuxFuture(State);

enum State {
    Ready(Option<Response<Body>>),
    Route(RouteFuture),
    AddAllow(RouteFuture, Option<HeaderValue>),
}

impl Future for MuxFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            State::Ready(res) => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
            State::Route(fut) => Pin::new(fut).poll(cx),
            State::AddAllow(fut, allow) => {
                let Poll::Ready(Ok(mut res)) = Pin::new(fut).poll(cx) else {
                    return Poll::Pending;
                };
                if let Some(allow) = allow.take() {
                    res.headers_mut().entry(ALLOW).or_insert(allow);
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

impl fmt::Debug for MuxFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MuxFuture")
    }
}
