//! Fast HTTP path routing: a radix tree of route patterns ([`Router`]), one tree per method
//! ([`MethodRouter`]), and on top of them an HTTP dispatcher ([`Mux`]) that is a tower
//! `Service` with middleware slots before routing, per group and per route.
//!
//! Route syntax: static text, `:name` for one non-empty path segment, and a final `*name` that
//! catches the rest of the path with its leading slash (`/static/*path` on
//! `/static/css/app.css` gives `path = /css/app.css`). Static beats parameter beats catch-all
//! at each segment, with backtracking when a more specific branch dead-ends. A parameter is a
//! whole segment: `:` or `*` inside one (`/user_:id`) is refused, and a literal `:` or `*` is
//! written `\:` or `\*` (`/v1/projects\:batchGet`). Routes can also be chosen by host name
//! ([`Hosts`], [`Mux::host`]) and guarded by header or query conditions ([`Matcher`],
//! [`Mux::route_if`]). Lookup never allocates, whatever the number of
//! parameters; parameter values are sliced out of the path when read.
//!
//! This crate does no I/O: serve a [`MuxService`] with hyper (or any tower-compatible server).
//!
//! ```
//! use router::Router;
//!
//! let mut routes = Router::new();
//! routes.insert("/api/*path", "api").unwrap();
//! routes.insert("/users/:id", "user").unwrap();
//! routes.insert("/users/list", "list").unwrap();
//!
//! let m = routes.at("/api/v1/items").unwrap();
//! assert_eq!(*m.value, "api");
//! assert_eq!(m.params.get("path"), Some("/v1/items"));
//! assert_eq!(*routes.at("/users/listx").unwrap().value, "user");
//! ```
//!
//! The dispatcher, with a group whose layer wraps its routes once, at registration:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Method, Request, Response, StatusCode};
//! use router::{Body, Mux, PathParams};
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = service_fn(|req: Request<()>| async move {
//!     let path = req.extensions().get::<PathParams>().and_then(|p| p.get("path"));
//!     Ok::<_, Infallible>(Response::new(Body::from(format!("-> {}", path.unwrap_or("/")))))
//! });
//!
//! let mut mux = Mux::new();
//! mux.route([Method::GET, Method::POST], "/api/*path", upstream)?;
//! let mut admin = mux.group("/admin");
//! admin.layer(tower::layer::util::Identity::new()); // e.g. an auth gate
//! admin.get("/*path", upstream)?;
//! let svc = mux.into_service();
//!
//! let res = svc.clone().oneshot(Request::get("/api/users").body(())?).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! // Only `/admin/*path` exists: `/admin` redirects to `/admin/`.
//! let res = svc.oneshot(Request::get("/admin").body(())?).await?;
//! assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
//! assert_eq!(res.headers()["location"], "/admin/");
//! # Ok(())
//! # }
//! ```

mod error;
mod guard;
mod host;
mod lookup;
mod method;
mod mux;
mod normalize;
mod params;
mod pattern;
mod route;
mod tree;

pub use error::{InsertError, MalformedReason, MatchError};
pub use guard::{Guard, Matcher, SharedGuard, Subject, Test};
pub use host::{HostError, Hosts};
pub use httpkit::{Body, BoxError};
pub use method::MethodRouter;
pub use mux::{Group, HostRoutes, Mux, MuxFuture, MuxService, PathParams, set_path};
pub use normalize::{BadPath, normalize_path};
pub use params::{Params, ParamsIter, RouteInfo};
pub use route::{IntoRoute, Route, RouteFuture};
pub use tree::{Match, Router};
