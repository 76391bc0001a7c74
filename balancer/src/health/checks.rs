//! Active-check state: `fall` failed probes in a row take a target out, `rise` passing ones
//! bring it back (HAProxy's semantics). The probes themselves are I/O and live with the caller.

use std::sync::PoisonError;
use std::sync::atomic::Ordering::Relaxed;

use super::{ACTIVE_DOWN, HealthPolicy, PASSIVE, TargetState};

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

impl TargetState {
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
}
