//! Per-target health: passive failure accounting (nginx's `max_fails` / `fail_timeout`),
//! manual up/down, and in-flight counts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

/// What a pick does when no target is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllDown {
    /// Return no target: the caller answers at once (a gateway: `502`/`503`).
    #[default]
    FailFast,
    /// Ignore health and pick among all targets, as Envoy's panic mode does: when every
    /// target looks down, the health signal is more likely wrong than every target.
    Panic,
}

/// How failures take a target out of rotation, shared by every target of a balancer.
#[derive(Clone)]
pub struct HealthPolicy {
    /// Failures within `fail_timeout` that take a target out (nginx's `max_fails`, default 1).
    /// Zero turns passive health off.
    pub max_fails: u32,
    /// The window failures are counted in, and how long a failed target stays out (nginx's
    /// `fail_timeout`, default 10 s).
    pub fail_timeout: Duration,
    /// What to do when every target is down (default: [`AllDown::FailFast`]).
    pub all_down: AllDown,
    clock: Arc<dyn Clock>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            all_down: AllDown::FailFast,
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
            .finish()
    }
}

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

    /// Uses `clock` for failure windows (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Now, in whole milliseconds plus one, so that zero can mean "never".
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.fail_timeout.as_millis()).unwrap_or(u64::MAX / 2)
    }
}

/// Set in `TargetState::down` while a target is marked down by hand.
const MANUAL: u64 = 1 << 63;

/// The shared, mutable state of one target: health and counters. Shared by every strategy
/// that uses the target, and kept across a replacement of the target set.
#[derive(Debug, Default)]
pub struct TargetState {
    /// `MANUAL` while marked down by hand; otherwise the time (ms, see `now_ms`) until which
    /// the target is out after failures, or 0 when it is in.
    down: AtomicU64,
    fails: AtomicU32,
    window_start: AtomicU64,
    in_flight: AtomicUsize,
    successes: AtomicU64,
    failures: AtomicU64,
}

impl TargetState {
    /// A healthy target with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// One load: in rotation and never failed since. Strategies try this first.
    #[inline(always)]
    pub(crate) fn surely_up(&self) -> bool {
        self.down.load(Relaxed) == 0
    }

    /// Whether the target may be picked now.
    pub fn is_available(&self, policy: &HealthPolicy) -> bool {
        let down = self.down.load(Relaxed);
        if down == 0 {
            return true;
        }
        if down & MANUAL != 0 {
            return false;
        }
        if policy.now_ms() >= down {
            // The penalty is over: back in rotation (a concurrent failure may have renewed it).
            let _ = self.down.compare_exchange(down, 0, Relaxed, Relaxed);
            return true;
        }
        false
    }

    /// Takes the target out until [`mark_up`](Self::mark_up) (draining, active checks).
    pub fn mark_down(&self) {
        self.down.store(MANUAL, Relaxed);
    }

    /// Puts the target back in rotation and forgets its failures.
    pub fn mark_up(&self) {
        self.fails.store(0, Relaxed);
        self.down.store(0, Relaxed);
    }

    /// Whether the target was marked down by hand.
    pub fn is_marked_down(&self) -> bool {
        self.down.load(Relaxed) & MANUAL != 0
    }

    /// Records a successful exchange with the target: its failure count starts over.
    pub fn report_success(&self) {
        self.successes.fetch_add(1, Relaxed);
        // Read first: the common case writes nothing, so the line is not bounced between cores.
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
    }

    /// Records a failed exchange. After `max_fails` failures within `fail_timeout` the target
    /// is out for `fail_timeout`. Returns whether this failure took it out.
    pub fn report_failure(&self, policy: &HealthPolicy) -> bool {
        self.failures.fetch_add(1, Relaxed);
        if policy.max_fails == 0 {
            return false;
        }
        let now = policy.now_ms();
        let window = self.window_start.load(Relaxed);
        let fails = if window == 0 || now.saturating_sub(window) > policy.timeout_ms() {
            self.window_start.store(now, Relaxed);
            self.fails.store(1, Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Relaxed) + 1
        };
        if fails < policy.max_fails {
            return false;
        }
        let until = now.saturating_add(policy.timeout_ms()).max(1) & !MANUAL;
        // A manual mark wins over a passive one.
        self.down
            .fetch_update(Relaxed, Relaxed, |d| (d & MANUAL == 0).then_some(until))
            .is_ok()
    }

    /// Requests to this target not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped, which happens also
    /// when the request's future is cancelled or its task panics.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Successes reported so far.
    pub fn successes(&self) -> u64 {
        self.successes.load(Relaxed)
    }

    /// Failures reported so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }
}

/// A request in flight to a target; dropping it ends the request. See [`TargetState::start`].
#[derive(Debug)]
pub struct InFlight(Arc<TargetState>);

impl InFlight {
    /// The target's state.
    pub fn state(&self) -> &Arc<TargetState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
