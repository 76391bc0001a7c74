//! Reverse-proxy forwarding to balanced upstreams, as a tower `Service`.
//!
//! An [`Upstream`] is a named set of `http://host:port` targets behind a
//! [`balancer`] strategy, with [`Settings`]. A [`Proxy`] forwards each request to a target
//! the balancer picks: the path is the request's own or a [`ForwardPath`] extension (a
//! router's catch-all suffix), the query passes byte for byte, `Host` is the target's, and the
//! [`headers`] are rewritten (hop-by-hop stripping, `X-Forwarded-*`). Bodies stream both ways.
//! Connections are pooled per target (HTTP/1.1 keep-alive, most recently used first, closed
//! after `pool_idle_timeout`). A refused or timed-out connect is retried on the next target
//! (nothing reached the upstream), and a request that could not be written on a pooled
//! connection the upstream had closed goes out again on a new one; when no target answers the
//! client gets `502`, and an upstream slower than `response_timeout` to send its head gets
//! `504`; a body the upstream cuts short aborts the client's response. Each failure is logged
//! with the request id, upstream and target, and reported to the balancer's passive health.
//! Failures the client causes are not: a malformed request body gets `400` (`413` over a
//! limit), a body the client stops sending gets `408`.
//!
//! Upgrades (WebSocket): `Upgrade` and `Connection: upgrade` are forwarded (never `h2c`); on a
//! `101` the proxy tunnels bytes both ways until either side closes, and an upstream that
//! answers anything else gives a normal response. The server must be set up to allow upgrades
//! (hyper's `serve_connection(...).with_upgrades()`). Trailers pass through in both directions.
//!
//! Not yet: HTTPS targets.
//!
//! ```
//! use balancer::{HealthPolicy, Kind};
//! use proxy::{Proxy, Settings, Upstream};
//!
//! let api = Upstream::new(
//!     "api",
//!     Kind::RoundRobin,
//!     [("http://127.0.0.1:9001", 1), ("http://127.0.0.1:9002", 1)],
//!     HealthPolicy::default(),
//!     Settings::default(),
//! )?;
//! // A tower Service<Request<hyper::body::Incoming>>: serve it with hyper, or route to it.
//! let proxy: Proxy<hyper::body::Incoming> = Proxy::new(api);
//! # Ok::<_, proxy::UpstreamError>(())
//! ```

mod forward;
pub mod headers;
mod pool;
mod upstream;

pub use forward::{
    BoxError, ClientAddr, ForwardPath, Outgoing, Proxy, ProxyBody, TunnelGuard, UpstreamTarget,
};
pub use upstream::{Settings, TargetAddr, TargetError, Upstream, UpstreamError};
