//! Reverse-proxy forwarding to balanced upstreams, as a tower `Service`.
//!
//! An [`Upstream`] is a named set of `http://` or `https://` targets behind a [`balancer`]
//! algorithm, with [`Settings`]. A [`Proxy`] forwards each request to a target the balancer
//! picks: the path and query are the request's own (a router may have rewritten them), `Host`
//! is the target's, and the [`headers`] are rewritten (hop-by-hop stripping,
//! `X-Forwarded-*`). Bodies stream both ways; a request body without a declared length goes
//! as chunked, whatever the method.
//!
//! Connections are pooled per target (HTTP/1.1 keep-alive, most recently used first): a
//! response hands its connection back when its body ends, however it is framed, and an idle
//! one is closed after `pool_idle_timeout` or sooner when the upstream announced a shorter
//! `Keep-Alive: timeout`. A request without a body goes on a connection the request's own
//! task drives (its head written in one pass, the response parsed with `httparse`, the body
//! read as the client takes it; hyper's client is the oracle a differential test holds it
//! to); requests with a body and upgrades go through hyper's HTTP/1.1 client.
//!
//! With [`Protocol::H2`] (or [`Protocol::Auto`] over TLS when the server picks `h2`),
//! requests go as streams of shared HTTP/2 connections, as many per connection as the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows, another connection made when all are full (by one
//! request, the others waiting for it). A stream the server refused unprocessed (GOAWAY,
//! `REFUSED_STREAM`) goes again on another connection whatever its method, its body too (the
//! part already sent is kept, up to 64 KiB, and the rest is taken back from the pipe). PINGs
//! find a connection that went silent. gRPC calls (`content-type: application/grpc`) get
//! their `grpc-timeout` as a deadline: no response head by then is a `504` that is not the
//! target's fault, and a response still streaming then ends with `grpc-status: 4` trailers.
//!
//! Failures, and what the client and passive health see:
//! - A refused or timed-out connect: the next target (nothing reached the upstream); counted.
//! - A pooled connection the upstream had closed while idle: the request goes again on a new
//!   connection to the same target when it can (never written, or bodiless and idempotent);
//!   never counted.
//! - An exchange broken before the response head (reset, malformed or oversized head): a
//!   bodiless idempotent request goes to the next target; otherwise `502`; counted.
//! - No response head within `response_timeout`: `504`; counted.
//! - A body the upstream cuts short, or leaves silent for `response_timeout`: the client's
//!   response is cut; counted as a body failure, which alone never takes a target out.
//! - No target left to try: `502`; no target available at all (all marked down or failing
//!   their checks): `503`.
//! - The client's fault: a malformed request body gets `400`, one over a limit `413`, a body
//!   the client stops sending `408`; never counted.
//!
//! Each is logged with the upstream, the target and the request's id (when the server makes
//! one, as [`httpkit::RequestId`]), and counted in the target's [`TargetMetrics`] (attempts by
//! outcome, time to the response head, body failures, connections) and the upstream's
//! [`UpstreamMetrics`] (retries, `503`s, exhausted attempts): plain atomics each request
//! finds through its target, read by whoever exports them.
//!
//! Upgrades (WebSocket): `Upgrade` and `Connection: upgrade` are forwarded (never `h2c`); on a
//! `101` the proxy tunnels bytes both ways until either side closes, and an upstream that
//! answers anything else gives a normal response. The server must be set up to allow upgrades
//! (hyper's `serve_connection(...).with_upgrades()`). Trailers pass through in both
//! directions; interim `1xx` responses are read past.
//!
//! Beside the request path, [`Proxy::start`] runs the upstream's [`Background`] tasks:
//! targets named by a host name are resolved to every address and re-resolved every
//! `resolve_interval` ([`dns`]), and [`ActiveCheck`]s probe every target. Both change what
//! picks read through atomic swaps and atomics; a request never waits for them.
//!
//! ```
//! use balancer::{Algorithm, HealthPolicy};
//! use proxy::{Proxy, Settings, Upstream};
//!
//! let api = Upstream::new(
//!     "api",
//!     Algorithm::RoundRobin,
//!     [("http://127.0.0.1:9001", 1), ("http://127.0.0.1:9002", 1)],
//!     HealthPolicy::default(),
//!     Settings::default(),
//! )?;
//! // A tower Service<Request<hyper::body::Incoming>>: serve it with hyper, or route to it.
//! let proxy: Proxy<hyper::body::Incoming> = Proxy::new(api);
//! # Ok::<_, proxy::UpstreamError>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

mod background;
mod checks;
pub mod dns;
mod exchange;
mod forward;
mod h2;
pub mod headers;
mod metrics;
mod outgoing;
mod pool;
mod relay;
mod response;
mod retry;
mod tap;
mod target;
mod tls;
mod tunnel;
mod upstream;
mod wire;

pub use background::Background;
pub use forward::{Proxy, RequestBody};
pub use metrics::{Attempt, Retry, TargetMetrics, UpstreamMetrics};
pub use response::{BodyStalled, ProxyBody, UpstreamBody};
pub use retry::RetryPolicy;
pub use tap::{BodyTap, TapReceiver};
pub use target::{TargetAddr, TargetError};
pub use tls::UpstreamTls;
pub use tunnel::TunnelGuard;
pub use upstream::{ActiveCheck, Probe, Protocol, Settings, Upstream, UpstreamError};

pub use httpkit::BoxError;

/// The client's address, put in the request's extensions by the server; used for
/// `X-Forwarded-For` and trusted-proxy checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The client's connection is TLS (the server puts it in the request's extensions): the
/// upstream sees `X-Forwarded-Proto: https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTls;

/// Which upstream and target served a response; in the response's extensions, for the access
/// log. Displays as the upstream's name and the target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The target that answered.
    pub target: TargetAddr,
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.upstream, self.target)
    }
}

/// An error and its sources, `: `-separated (hyper's errors say the most in their sources).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The request path's time (`telemetry::clock::now`: read once per poll of the task) as the
/// runtime's instant, which deadlines and the pool's expiry are set in.
pub(crate) fn now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(telemetry::clock::now())
}
