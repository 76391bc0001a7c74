//! What the proxy counts, per target ([`TargetMetrics`], carried by the target's address so
//! that a request finds its series without a lookup) and per upstream ([`UpstreamMetrics`]).

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use telemetry::{Counter, Gauge, Histogram, LATENCY_BUCKETS, Snapshot, Stripes};

/// How an attempt on a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A response head below 500.
    Ok,
    /// A `5xx` response head.
    ServerError,
    /// No connection could be made (refused, unreachable, connect timeout, handshake).
    ConnectError,
    /// No response head within the response timeout.
    Timeout,
    /// The connection broke before a response head: reset, closed, malformed or oversized head.
    Reset,
}

impl Attempt {
    /// Every outcome, in label order.
    pub const ALL: [Attempt; 5] = [
        Attempt::Ok,
        Attempt::ServerError,
        Attempt::ConnectError,
        Attempt::Timeout,
        Attempt::Reset,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Attempt::Ok => "ok",
            Attempt::ServerError => "5xx",
            Attempt::ConnectError => "connect_error",
            Attempt::Timeout => "timeout",
            Attempt::Reset => "reset",
        }
    }
}

/// One target's series.
#[derive(Debug)]
pub struct TargetMetrics {
    /// By [`Attempt`], one block per stripe.
    attempts: Stripes<[AtomicU64; 5]>,
    head: Histogram,
    body_failures: Counter,
    opened: Counter,
    open: Gauge,
}

impl Default for TargetMetrics {
    fn default() -> Self {
        TargetMetrics {
            attempts: Stripes::default(),
            head: Histogram::new(LATENCY_BUCKETS),
            body_failures: Counter::new(),
            opened: Counter::new(),
            open: Gauge::new(),
        }
    }
}

impl TargetMetrics {
    pub(crate) fn attempt(&self, outcome: Attempt) {
        self.attempts.local()[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn head_after(&self, elapsed: Duration) {
        self.head.observe(elapsed);
    }

    pub(crate) fn body_failed(&self) {
        self.body_failures.inc();
    }

    pub(crate) fn connection_opened(&self) {
        self.opened.inc();
        self.open.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.open.dec();
    }

    /// Attempts that ended with `outcome`.
    pub fn attempts(&self, outcome: Attempt) -> u64 {
        self.attempts
            .iter()
            .map(|a| a[outcome as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Time from the pick of this target to the response head, connecting included.
    pub fn response_head(&self) -> Snapshot {
        self.head.snapshot()
    }

    /// Response bodies that broke off after their head.
    pub fn body_failures(&self) -> u64 {
        self.body_failures.get()
    }

    /// Connections opened to this target.
    pub fn connections_opened(&self) -> u64 {
        self.opened.get()
    }

    /// Connections open to this target now, busy or idle.
    pub fn connections_open(&self) -> i64 {
        self.open.get()
    }
}

/// Why a request went to the upstream again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The attempt failed and the request went to the next target.
    NextTarget,
    /// A pooled connection turned out closed by the upstream; the request went again on a
    /// new one to the same target.
    StaleConnection,
    /// An HTTP/2 upstream refused the stream without processing it (GOAWAY, `REFUSED_STREAM`);
    /// the request went again on another connection to the same target.
    Refused,
}

impl Retry {
    /// Every reason, in label order.
    pub const ALL: [Retry; 3] = [Retry::NextTarget, Retry::StaleConnection, Retry::Refused];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Retry::NextTarget => "next_target",
            Retry::StaleConnection => "stale_connection",
            Retry::Refused => "refused_stream",
        }
    }
}

/// One upstream's series.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    retries: [Counter; 3],
    unavailable: Counter,
    exhausted: Counter,
}

impl UpstreamMetrics {
    pub(crate) fn retried(&self, why: Retry) {
        self.retries[why as usize].inc();
    }

    pub(crate) fn no_target(&self) {
        self.unavailable.inc();
    }

    pub(crate) fn all_failed(&self) {
        self.exhausted.inc();
    }

    /// Requests sent again, by reason.
    pub fn retries(&self, why: Retry) -> u64 {
        self.retries[why as usize].get()
    }

    /// Requests answered `503` because no target was available.
    pub fn unavailable(&self) -> u64 {
        self.unavailable.get()
    }

    /// Requests answered `502`/`504` after every attempt failed.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.get()
    }
}
