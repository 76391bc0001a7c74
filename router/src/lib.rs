//! Fast HTTP path routing: a radix tree of route patterns ([`Router`]), and on top of it an
//! HTTP dispatcher ([`Mux`]) that is a tower `Service`.
//!
//! Route syntax: static text, `:name` for one path segment, and a final `*name` that catches
//! the rest of the path with its leading slash. Static beats parameter beats catch-all at each
//! segment, with backtracking when a more specific branch dead-ends. Lookup never allocates.
//!
//! ```
//! use router::Router;
//!
//! let mut routes = Router::new();
//! routes.insert("/api/*path", "api").unwrap();
//! routes.insert("/users/:id", "user").unwrap();
//!
//! let m = routes.at("/api/v1/items").unwrap();
//! assert_eq!(*m.value, "api");
//! assert_eq!(m.params.get("path"), Some("/v1/items"));
//! ```

mod body;
mod error;
mod lookup;
mod method;
mod mux;
mod params;
mod pattern;
mod route;
mod tree;

pub use body::{Body, BoxError};
pub use error::{InsertError, MalformedReason, MatchError};
pub use method::MethodRouter;
pub use mux::{Group, Mux, MuxFuture, MuxService, PathParams};
pub use params::{Params, ParamsIter, RouteInfo};
pub use route::{Route, RouteFuture};
pub use tree::{Match, Router};
