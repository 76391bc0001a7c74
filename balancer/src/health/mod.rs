//! Per-target health: passive failure accounting (nginx's `max_fails` / `fail_timeout`),
//! active-check state (HAProxy's `rise` / `fall`), slow start after a return, manual marks,
//! and in-flight counts.
//!
//! How the signals combine: a target may be picked when it is not marked down by hand, not
//! failing its active checks, and not serving a passive penalty. A target that passes `rise`
//! active checks after failing them starts over: its passive state is forgotten. A target that
//! comes back (a passive penalty over, active checks passing again, or added to the set at run
//! time) ramps up over `slow_start`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

mod checks;
mod policy;
mod ramp;

pub use checks::{CheckResult, CheckTransition};
use policy::millis;
pub use policy::{AllDown, HealthPolicy, Outcome};
pub(crate) use ramp::Admit;

/// Flags of [`TargetState::flags`]; zero means "up, warm, nothing to check".
const MANUAL: u32 = 1;
const ACTIVE_DOWN: u32 = 1 << 1;
const PASSIVE: u32 = 1 << 2;
const WARMING: u32 = 1 << 3;

/// Body failures in a row (no complete body between) that count as one [`Outcome::Failure`].
pub const BODY_FAILURES_IN_A_ROW: u32 = 3;

/// The shared, mutable state of one target: health and counters. Shared by every strategy
/// that uses the target, and kept across a replacement of the target set.
#[derive(Debug, Default)]
pub struct TargetState {
    /// MANUAL | ACTIVE_DOWN | PASSIVE | WARMING: zero on the fast path.
    flags: AtomicU32,
    /// While PASSIVE: the time (ms, see `now_ms`) the penalty ends.
    passive_until: AtomicU64,
    fails: AtomicU32,
    window_start: AtomicU64,
    /// While WARMING: when the ramp started.
    warm_since: AtomicU64,
    /// Slow-start credit, in 1/1024 picks.
    credit: AtomicU32,
    /// Active checks: successes (> 0) or failures (< 0) in a row.
    streak: AtomicI32,
    last_check: Mutex<Option<CheckResult>>,
    in_flight: AtomicUsize,
    successes: AtomicU64,
    failures: AtomicU64,
    body_failures: AtomicU64,
    /// Body failures since the last complete body.
    body_streak: AtomicU32,
    /// Left the target set (see [`retire`](Self::retire)).
    retired: std::sync::atomic::AtomicBool,
}

impl TargetState {
    /// A healthy target with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// A target that joins a running set: it ramps up over `slow_start` if the policy has one.
    pub fn joining(policy: &HealthPolicy) -> Self {
        let state = Self::new();
        state.start_ramp(policy);
        state
    }

    /// One load: in rotation, warm, never failed since. Strategies try this first.
    #[inline(always)]
    pub(crate) fn surely_up(&self) -> bool {
        self.flags.load(Relaxed) == 0
    }

    /// Ends a passive penalty that is over; returns the flags after.
    fn settle(&self, policy: &HealthPolicy, flags: u32) -> u32 {
        if flags & PASSIVE != 0 && policy.now_ms() >= self.passive_until.load(Relaxed) {
            if self.flags.fetch_and(!PASSIVE, Relaxed) & PASSIVE != 0 {
                self.start_ramp(policy);
            }
            return self.flags.load(Relaxed);
        }
        flags
    }

    /// Whether the target may be picked now (slow start aside).
    pub fn is_available(&self, policy: &HealthPolicy) -> bool {
        let flags = self.flags.load(Relaxed);
        flags == 0 || self.settle(policy, flags) & (MANUAL | ACTIVE_DOWN | PASSIVE) == 0
    }

    /// Takes the target out until [`mark_up`](Self::mark_up) (draining, maintenance).
    pub fn mark_down(&self) {
        self.flags.fetch_or(MANUAL, Relaxed);
    }

    /// Ends a [`mark_down`](Self::mark_down) and forgets the target's passive failures.
    pub fn mark_up(&self) {
        self.fails.store(0, Relaxed);
        self.flags.fetch_and(!(MANUAL | PASSIVE), Relaxed);
    }

    /// Whether the target was marked down by hand.
    pub fn is_marked_down(&self) -> bool {
        self.flags.load(Relaxed) & MANUAL != 0
    }

    /// Whether the target is failing its active checks.
    pub fn is_check_down(&self) -> bool {
        self.flags.load(Relaxed) & ACTIVE_DOWN != 0
    }

    /// Whether the target is serving a passive penalty now.
    pub fn is_passive_down(&self, policy: &HealthPolicy) -> bool {
        let flags = self.flags.load(Relaxed);
        flags & PASSIVE != 0 && self.settle(policy, flags) & PASSIVE != 0
    }

    /// Forgets a passive penalty (all targets were down: see [`AllDown::Reset`]). Returns
    /// whether the target is available now.
    pub(crate) fn forgive(&self) -> bool {
        self.fails.store(0, Relaxed);
        self.flags.fetch_and(!PASSIVE, Relaxed) & (MANUAL | ACTIVE_DOWN) == 0
    }

    /// Records the outcome of an exchange. `ejectable` is false for the only target of a
    /// set, which passive health never takes out. Returns whether this took the target out.
    pub fn report(&self, policy: &HealthPolicy, outcome: Outcome, ejectable: bool) -> bool {
        match outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Relaxed);
                // Read first: the common case writes nothing, so the line is not bounced
                // between cores.
                if self.fails.load(Relaxed) != 0 {
                    self.fails.store(0, Relaxed);
                }
                false
            }
            Outcome::BodyFailure => {
                self.failures.fetch_add(1, Relaxed);
                self.body_failures.fetch_add(1, Relaxed);
                let streak = self.body_streak.fetch_add(1, Relaxed) + 1;
                ejectable
                    && streak.is_multiple_of(BODY_FAILURES_IN_A_ROW)
                    && self.count_failure(policy)
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Relaxed);
                ejectable && self.count_failure(policy)
            }
        }
    }

    /// Records that a response body ended whole: body failures start a new run.
    pub fn body_completed(&self) {
        // Read first: the common case writes nothing.
        if self.body_streak.load(Relaxed) != 0 {
            self.body_streak.store(0, Relaxed);
        }
    }

    fn count_failure(&self, policy: &HealthPolicy) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let now = policy.now_ms();
        let window = self.window_start.load(Relaxed);
        let fails = if window == 0 || now.saturating_sub(window) > millis(policy.fail_timeout) {
            self.window_start.store(now, Relaxed);
            self.fails.store(1, Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Relaxed) + 1
        };
        if fails < policy.max_fails {
            return false;
        }
        self.passive_until
            .store(now.saturating_add(millis(policy.fail_timeout)), Relaxed);
        self.flags.fetch_or(PASSIVE, Relaxed) & PASSIVE == 0
    }

    /// Marks the target as gone from its set (a replacement left it out): requests in flight
    /// finish, but its connections should not be kept for more.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    /// Whether the target left its set.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
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

    /// Failures reported so far (of either kind).
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Of [`failures`](Self::failures), those after a response head ([`Outcome::BodyFailure`]).
    pub fn body_failures(&self) -> u64 {
        self.body_failures.load(Relaxed)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ManualClock;

    #[test]
    fn a_huge_fail_timeout_still_takes_a_target_out() {
        let clock = Arc::new(ManualClock::new());
        clock.advance(Duration::from_secs(3600));
        let policy = HealthPolicy::default()
            .with_fail_timeout(Duration::from_millis(u64::MAX))
            .with_clock(Arc::clone(&clock));
        let s = TargetState::new();
        assert!(s.report(&policy, Outcome::Failure, true));
        assert!(!s.is_available(&policy));
        clock.advance(Duration::from_secs(10 * 365 * 24 * 3600));
        assert!(!s.is_available(&policy), "still out ten years later");
    }
}
