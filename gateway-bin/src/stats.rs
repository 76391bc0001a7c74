//! Everything the gateway counts outside the proxy: requests per route (and those no route
//! took), client connections, and the refusals of the middleware and the server. Made once at
//! start-up, before the first request, so the request path only touches atomics it already
//! holds. The proxy counts per upstream and target (`proxy::TargetMetrics`); the admin
//! listener reads both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use middleware::RequestMetrics;
use telemetry::{Counter, Gauge};

/// The label of requests no route took: `404`s, `405`s, redirects and refusals before routing.
pub const UNMATCHED: &str = "(unmatched)";

/// The gateway's series.
#[derive(Debug)]
pub struct Stats {
    /// Requests no route took.
    pub unmatched: Arc<RequestMetrics>,
    /// Each route's requests, by route pattern, after its hosts when it has some (routes
    /// with the same name share).
    pub routes: BTreeMap<String, Arc<RequestMetrics>>,
    /// Client connections.
    pub connections: Arc<ConnStats>,
    /// Requests refused by an auth gate.
    pub auth_denied: Arc<Counter>,
    /// Panics caught by the recover layer.
    pub panics: Arc<Counter>,
    /// Requests cut by a route's deadline.
    pub deadlines: Arc<Counter>,
    /// Requests refused by a route's rate limit.
    pub rate_limited: Arc<Counter>,
    /// Mirrored copies, by outcome.
    pub mirror: Arc<crate::app::MirrorStats>,
    /// Requests refused for a declared body over `max_body_bytes`.
    pub body_too_large: Arc<Counter>,
    /// When the process started.
    pub started: SystemTime,
    /// The configuration's generation, and how its reloads went.
    pub reload: Arc<crate::reload::ReloadStatus>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            unmatched: Arc::new(RequestMetrics::new()),
            routes: BTreeMap::new(),
            connections: Arc::default(),
            auth_denied: Arc::default(),
            panics: Arc::default(),
            deadlines: Arc::default(),
            rate_limited: Arc::default(),
            mirror: Arc::default(),
            body_too_large: Arc::default(),
            started: SystemTime::now(),
            reload: Arc::default(),
        }
    }
}

impl Stats {
    /// The series of a configuration reloaded after `previous`'s: the same counters (they
    /// keep counting across the reload), and the same series for the routes that stay;
    /// [`retain_routes`](Self::retain_routes) drops those of the routes that went.
    pub fn continuing(previous: &Stats) -> Stats {
        Stats {
            unmatched: Arc::clone(&previous.unmatched),
            routes: previous.routes.clone(),
            connections: Arc::clone(&previous.connections),
            auth_denied: Arc::clone(&previous.auth_denied),
            panics: Arc::clone(&previous.panics),
            deadlines: Arc::clone(&previous.deadlines),
            rate_limited: Arc::clone(&previous.rate_limited),
            mirror: Arc::clone(&previous.mirror),
            body_too_large: Arc::clone(&previous.body_too_large),
            started: previous.started,
            reload: Arc::clone(&previous.reload),
        }
    }

    /// Keeps only the route series `keep` says yes to (the routes of the configuration).
    pub fn retain_routes(&mut self, keep: impl Fn(&str) -> bool) {
        self.routes.retain(|name, _| keep(name));
    }

    /// The series of the route with `pattern`, made on first use.
    pub fn route(&mut self, pattern: &str) -> Arc<RequestMetrics> {
        Arc::clone(
            self.routes
                .entry(pattern.to_owned())
                .or_insert_with(|| Arc::new(RequestMetrics::new())),
        )
    }
}

/// The protocol a client connection speaks, once its first request says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Accepted, no request yet.
    Pending,
    /// HTTP/1.0 or 1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

impl Protocol {
    /// Every value, in label order.
    pub const ALL: [Protocol; 3] = [Protocol::Pending, Protocol::Http1, Protocol::Http2];

    /// The `protocol` label.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Pending => "pending",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// Client connections: accepted, open by protocol, bytes, and what the server refused.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections accepted.
    pub accepted: Counter,
    open: [Gauge; 3],
    /// Open connections parked while they wait for a request (`idle_park_after_ms`).
    pub parked: Gauge,
    /// Bytes read from clients.
    pub received_bytes: Counter,
    /// Bytes written to clients.
    pub sent_bytes: Counter,
    /// Request heads over `max_header_bytes` (`431`).
    pub header_too_large: Counter,
    /// Request heads not complete within `header_read_timeout_ms`.
    pub header_timeouts: Counter,
    /// Times the accept loop waited because `max_connections` were open.
    pub limit_reached: Counter,
    /// TLS connections that ended before their handshake did: not TLS (plain HTTP to the
    /// HTTPS port), no handshake within the header-read timeout, or a handshake error.
    pub tls_plain_http: Counter,
    /// See `tls_plain_http`.
    pub tls_timeouts: Counter,
    /// See `tls_plain_http`.
    pub tls_errors: Counter,
}

impl ConnStats {
    /// Connections open now speaking `protocol`.
    pub fn open(&self, protocol: Protocol) -> i64 {
        self.open[protocol as usize].get()
    }

    /// A connection was accepted.
    pub fn opened(&self) {
        self.accepted.inc();
        self.open[Protocol::Pending as usize].inc();
    }

    /// A connection's first request said what it speaks.
    pub fn speaks(&self, protocol: Protocol) {
        self.open[Protocol::Pending as usize].dec();
        self.open[protocol as usize].inc();
    }

    /// A connection speaking `protocol` closed.
    pub fn closed(&self, protocol: Protocol) {
        self.open[protocol as usize].dec();
    }
}
