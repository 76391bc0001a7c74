//! [`Mux`]: HTTP dispatch by method and path, as a tower `Service`.

use std::fmt;
use std::sync::Arc;

use http::Method;
use http::uri::PathAndQuery;
use tower_layer::Layer;

use crate::error::InsertError;
use crate::guard::SharedGuard;
use crate::host::{HostError, Hosts};
use crate::params::{Params, RouteInfo};
use crate::route::{IntoRoute, Route};

pub(crate) type Wrap<B> = Arc<dyn Fn(Route<B>) -> Route<B> + Send + Sync>;

pub(crate) fn wrap_with<B, L>(layer: L) -> Wrap<B>
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
    /// Site 0 is the default: every host not named in `hosts`.
    sites: Vec<Site<B>>,
    hosts: Hosts<usize>,
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
        let routes: Vec<String> = self.sites[0]
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

mod dispatch;
mod group;
mod service;
mod site;

pub use dispatch::set_path;
use dispatch::{Dispatch, Table};
pub use group::Group;
use service::Inner;
pub use service::{MuxFuture, MuxService};
pub use site::HostRoutes;
use site::Site;

impl<B: Send + 'static> Mux<B> {
    /// An empty router with automatic `OPTIONS` answers and trailing-slash redirects on.
    pub fn new() -> Self {
        Mux {
            sites: vec![Site::new()],
            hosts: Hosts::new(),
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

    /// Registers `service` at `path` for `methods` (`None`: any), taken only when `guard`
    /// holds for the request (headers, query: see [`Matcher`](crate::Matcher)).
    ///
    /// Several guarded routes and one plain route can share a method and pattern: the guarded
    /// ones are tried first, in the order they were registered, then the plain one. When
    /// every route there is guarded and none holds, the request gets the not-found answer.
    /// Method precedence comes first, as for plain routes: a route for the request's own
    /// method is found before an any-method (`None`) route at the same pattern, guarded or
    /// not.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::sync::Arc;
    /// use http::{Method, Request, Response};
    /// use router::{Body, Matcher, Mux, Subject, Test};
    /// use tower::{ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let answer = |text: &'static str| service_fn(move |_: Request<()>| async move {
    ///     Ok::<_, Infallible>(Response::new(Body::from(text)))
    /// });
    /// let mut mux = Mux::new();
    /// mux.get("/api", answer("stable"))?;
    /// let canary = Matcher::new(Subject::Header("x-canary".parse()?), Test::Exact("1".into()));
    /// mux.route_if(Some(&[Method::GET]), "/api", Arc::new(canary), answer("canary"))?;
    /// let svc = mux.into_service();
    ///
    /// let req = Request::get("/api").header("x-canary", "1").body(())?;
    /// let body = svc.clone().oneshot(req).await?.into_body();
    /// let bytes = http_body_util::BodyExt::collect(body).await.map_err(|e| e.to_string())?;
    /// assert_eq!(bytes.to_bytes(), "canary");
    /// # Ok(())
    /// # }
    /// ```
    pub fn route_if<S: IntoRoute<B>>(
        &mut self,
        methods: Option<&[Method]>,
        path: &str,
        guard: SharedGuard,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        self.sites[0].insert(methods, path, Some(guard), service.into_route())?;
        Ok(self)
    }

    fn insert(
        &mut self,
        methods: Option<&[Method]>,
        path: &str,
        route: Route<B>,
    ) -> Result<(), InsertError> {
        self.sites[0].insert(methods, path, None, route)
    }

    /// The routes of the virtual host `name`: an exact name (`api.example.com`) or a wildcard
    /// (`*.example.com`: any name ending in `.example.com`, the longest such suffix winning).
    /// A request whose `Host` (HTTP/1) or `:authority` (HTTP/2) names a registered host, case
    /// aside and without its port, sees that host's routes only; any other request sees the
    /// routes registered on the `Mux` itself. Calling this again with the same name adds to
    /// the same host. Host lookup costs the same with one host as with thousands.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response, StatusCode};
    /// use router::{Body, Mux};
    /// use tower::{ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ok = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    /// let mut mux = Mux::new();
    /// mux.host("api.example.com")?.get("/v1/*rest", ok)?;
    /// mux.get("/", ok)?;
    /// let svc = mux.into_service();
    ///
    /// let req = Request::get("/v1/x").header("host", "API.example.com:8080").body(())?;
    /// assert_eq!(svc.clone().oneshot(req).await?.status(), StatusCode::OK);
    /// let req = Request::get("/v1/x").header("host", "www.example.com").body(())?;
    /// assert_eq!(svc.oneshot(req).await?.status(), StatusCode::NOT_FOUND);
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(&mut self, name: &str) -> Result<HostRoutes<'_, B>, HostError> {
        let site = match self.hosts.get_registered_mut(name) {
            Some(&mut site) => site,
            None => {
                let site = self.sites.len();
                self.hosts.insert(name, site)?;
                self.sites.push(Site::new());
                site
            }
        };
        Ok(HostRoutes { mux: self, site })
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

    /// Every route of the default site as `(method, pattern)`, `None` standing for any
    /// method (a method and pattern with several guarded routes is listed once).
    pub fn routes(&self) -> impl Iterator<Item = (Option<&Method>, &str)> {
        self.sites[0].routes.routes().map(|(m, p, _)| (m, p))
    }

    /// Freezes the router into a cloneable service; `pre` layers are applied here, once.
    pub fn into_service(mut self) -> MuxService<B> {
        self.sites.iter_mut().for_each(Site::seal);
        let table = Arc::new(Table {
            sites: self.sites,
            hosts: self.hosts,
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
