//! [`HealthPolicy`]: how failures take a target out and how it comes back, with what
//! [`AllDown`] does and how an exchange's [`Outcome`] counts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

/// What a pick does when no target is available. With the `serde` feature it deserializes
/// from `reset`, `panic` and `fail-fast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum AllDown {
    /// Forget every target's passive failures and pick again (nginx): when all of them look
    /// down at once, one bad moment is likelier than every target being dead. Targets that
    /// are marked down or failing active checks stay out; if that is all of them, no target.
    #[default]
    Reset,
    /// Ignore health and pick among all targets, as Envoy's panic mode does.
    Panic,
    /// Return no target: the caller answers at once. Opt-in; a single bad response can then
    /// refuse every request for `fail_timeout`.
    FailFast,
}

/// What happened in one exchange with a target, as passive health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived: the failure count starts over.
    Success,
    /// No usable response: the connect was refused or timed out, the connection broke or the
    /// head was malformed before a response, or the head did not come in time. Counts towards
    /// `max_fails`.
    Failure,
    /// The response head arrived and its body then broke off (a reset, a short body, a
    /// stall). Counted in [`TargetState::failures`](crate::TargetState::failures), but one alone does not take a target
    /// out: a head arrived, so the target is alive. Only [`BODY_FAILURES_IN_A_ROW`](crate::BODY_FAILURES_IN_A_ROW) of them
    /// with no complete body between (see [`TargetState::body_completed`](crate::TargetState::body_completed)) count as one
    /// failure towards `max_fails`.
    BodyFailure,
}

/// How failures take a target out of rotation and how it comes back, shared by every target
/// of a balancer.
#[derive(Clone)]
pub struct HealthPolicy {
    /// Failures within `fail_timeout` that take a target out (nginx's `max_fails`, default 1).
    /// Zero turns passive health off. A balancer with a single target never takes it out
    /// passively (as nginx): there would be nothing to send the traffic to instead.
    pub max_fails: u32,
    /// The window failures are counted in, and how long a failed target stays out (nginx's
    /// `fail_timeout`, default 10 s).
    pub fail_timeout: Duration,
    /// What to do when no target is available (default: [`AllDown::Reset`]).
    pub all_down: AllDown,
    /// How long a target that comes back takes to reach its full share of picks, starting at
    /// a tenth (default zero: at once).
    pub slow_start: Duration,
    clock: Arc<dyn Clock>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            all_down: AllDown::Reset,
            slow_start: Duration::ZERO,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for HealthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthPolicy")
            .field("max_fails", &self.max_fails)
            .field("fail_timeout", &self.fail_timeout)
            .field("all_down", &self.all_down)
            .field("slow_start", &self.slow_start)
            .finish()
    }
}

/// A duration in whole milliseconds, saturating far below the top of `u64` so that a time plus
/// a duration never wraps.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).min(MAX_MS)
}

/// The largest time or duration health arithmetic uses: about 292 million years.
const MAX_MS: u64 = 1 << 53;

impl HealthPolicy {
    /// Sets [`max_fails`](Self::max_fails).
    pub fn with_max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = max_fails;
        self
    }

    /// Sets [`fail_timeout`](Self::fail_timeout).
    pub fn with_fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = fail_timeout;
        self
    }

    /// Sets [`all_down`](Self::all_down).
    pub fn with_all_down(mut self, all_down: AllDown) -> Self {
        self.all_down = all_down;
        self
    }

    /// Sets [`slow_start`](Self::slow_start).
    pub fn with_slow_start(mut self, slow_start: Duration) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// Uses `clock` for failure windows and ramps (a [`ManualClock`](crate::ManualClock) in
    /// tests).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Now, in whole milliseconds plus one, so that zero can mean "never".
    pub(crate) fn now_ms(&self) -> u64 {
        millis(self.clock.now()).saturating_add(1)
    }
}
