//! Slow start: a target that comes back gets a growing share of the picks it is offered, from a
//! tenth to all of them over the policy's `slow_start`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::policy::millis;
use super::{ACTIVE_DOWN, HealthPolicy, MANUAL, PASSIVE, TargetState, WARMING};

/// The share of picks a returning target starts with, in 1/1024.
const RAMP_FLOOR: u64 = 102;
const ONE: u32 = 1024;

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

impl TargetState {
    pub(super) fn start_ramp(&self, policy: &HealthPolicy) {
        if policy.slow_start > Duration::ZERO {
            self.warm_since.store(policy.now_ms(), Relaxed);
            self.credit.store(0, Relaxed);
            self.flags.fetch_or(WARMING, Relaxed);
        }
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
}
