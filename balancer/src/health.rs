//! Per-target health: passive failure accounting (nginx's `max_fails` / `fail_timeout`),
//! active-check state (HAProxy's `rise` / `fall`), slow start after a return, manual marks,
//! and in-flight counts.
//!
//! How the signals combine: a target may be picked when it is not marked down by hand, not
//! failing its active checks, and not serving a passive penalty. A target that passes `rise`
//! active checks after failing them starts over: its passive state is forgotten. A target that
//! comes back (a passive penalty over, active checks passing again, or added to the set at run
//! time) ramps up over `slow_start`.

use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// stall). Counted in [`TargetState::failures`], but one alone does not take a target
    /// out: a head arrived, so the target is alive. Only [`BODY_FAILURES_IN_A_ROW`] of them
    /// with no complete body between (see [`TargetState::body_completed`]) count as one
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
fn millis(d: Duration) -> u64 {
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

/// Flags of [`TargetState::flags`]; zero means "up, warm, nothing to check".
const MANUAL: u32 = 1;
const ACTIVE_DOWN: u32 = 1 << 1;
const PASSIVE: u32 = 1 << 2;
const WARMING: u32 = 1 << 3;

/// The share of picks a returning target starts with, in 1/1024.
const RAMP_FLOOR: u64 = 102;
const ONE: u32 = 1024;

/// Body failures in a row (no complete body between) that count as one [`Outcome::Failure`].
pub const BODY_FAILURES_IN_A_ROW: u32 = 3;

/// How a pick may use a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Take it.
    Yes,
    /// Available, but its slow-start ramp passes this turn.
    Ramp,
    /// Not available.
    No,
}

/// The last active check of a target, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether it passed.
    pub ok: bool,
    /// What it found (`200`, `connect refused`, `timed out after 1000 ms`...).
    pub detail: String,
    /// When, on the policy's clock (milliseconds since an arbitrary origin).
    pub at_ms: u64,
}

/// What an active check changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTransition {
    /// Nothing: the state stands.
    None,
    /// `fall` failures in a row: the target is out.
    WentDown,
    /// `rise` successes in a row after being down: the target is back.
    CameUp,
}

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

    fn start_ramp(&self, policy: &HealthPolicy) {
        if policy.slow_start > Duration::ZERO {
            self.warm_since.store(policy.now_ms(), Relaxed);
            self.credit.store(0, Relaxed);
            self.flags.fetch_or(WARMING, Relaxed);
        }
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

    /// The share of its picks the target gets now while it ramps up after a return (0.1 to
    /// 1.0), or `None` when it is not ramping.
    pub fn ramp(&self, policy: &HealthPolicy) -> Option<f64> {
        self.ramp_fixed(policy).map(|r| r as f64 / f64::from(ONE))
    }

    /// The ramp in 1/1024, ending it once it is complete.
    fn ramp_fixed(&self, policy: &HealthPolicy) -> Option<u32> {
        if self.flags.load(Relaxed) & WARMING == 0 {
            return None;
        }
        let span = millis(policy.slow_start);
        let elapsed = policy
            .now_ms()
            .saturating_sub(self.warm_since.load(Relaxed));
        if span == 0 || elapsed >= span {
            self.flags.fetch_and(!WARMING, Relaxed);
            return None;
        }
        let share = (elapsed * u64::from(ONE) / span).max(RAMP_FLOOR);
        Some(share as u32)
    }

    /// Whether a pick may take this target now: slow start lets a ramping target through as
    /// often as its share says (a credit of its share per offer, one pick per whole credit).
    pub(crate) fn admit(&self, policy: &HealthPolicy) -> Admit {
        let flags = self.flags.load(Relaxed);
        if flags == 0 {
            return Admit::Yes;
        }
        if self.settle(policy, flags) & (MANUAL | ACTIVE_DOWN | PASSIVE) != 0 {
            return Admit::No;
        }
        let Some(share) = self.ramp_fixed(policy) else {
            return Admit::Yes;
        };
        let before = self.credit.fetch_add(share, Relaxed);
        if before + share >= ONE {
            self.credit.fetch_sub(ONE, Relaxed);
            Admit::Yes
        } else {
            Admit::Ramp
        }
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
                ejectable && streak % BODY_FAILURES_IN_A_ROW == 0 && self.count_failure(policy)
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

    /// Records an active check: `fall` failures in a row take the target out, then `rise`
    /// successes in a row bring it back (forgetting its passive failures, and ramping up).
    pub fn report_check(
        &self,
        policy: &HealthPolicy,
        result: CheckResult,
        rise: u32,
        fall: u32,
    ) -> CheckTransition {
        let ok = result.ok;
        *self
            .last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(result);
        let streak = self.streak.load(Relaxed);
        let streak = match (ok, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Relaxed);
        let down = self.is_check_down();
        let fall = i32::try_from(fall.max(1)).unwrap_or(i32::MAX);
        let rise = i32::try_from(rise.max(1)).unwrap_or(i32::MAX);
        if !down && -streak >= fall {
            self.flags.fetch_or(ACTIVE_DOWN, Relaxed);
            CheckTransition::WentDown
        } else if down && streak >= rise {
            self.fails.store(0, Relaxed);
            self.flags.fetch_and(!(ACTIVE_DOWN | PASSIVE), Relaxed);
            self.start_ramp(policy);
            CheckTransition::CameUp
        } else {
            CheckTransition::None
        }
    }

    /// The last active check, if any ran.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
