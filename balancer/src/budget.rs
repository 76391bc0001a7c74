//! [`RetryBudget`]: retries as a bounded share of requests, so that retries cannot multiply an
//! outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, SystemClock};

/// Seconds in the window the budget looks back over.
const WINDOW_S: u64 = 10;

/// Counts per second over the last [`WINDOW_S`] seconds, lock-free: each slot holds the
/// second it counts (high 32 bits) and the count (low 32 bits); a slot from an older second
/// is restarted by whoever comes first. Counts can be off by a few under races, never
/// unbounded.
#[derive(Debug, Default)]
struct Window {
    slots: [AtomicU64; WINDOW_S as usize],
}

impl Window {
    fn add(&self, second: u64) {
        let slot = &self.slots[(second % WINDOW_S) as usize];
        let tag = second << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == second & 0xffff_ffff {
                current.saturating_add(1)
            } else {
                tag | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    fn sum(&self, now: u64) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| now.saturating_sub(v >> 32) < WINDOW_S && v >> 32 <= now)
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

/// A retry budget, as Envoy and Linkerd have: over the last 10 seconds, retries may be at
/// most `percent` % of requests, plus `min_per_s` per second so that a quiet route can still
/// retry. A retry the budget refuses is not made; the failure goes back to the client.
///
/// ```
/// use std::sync::Arc;
/// use balancer::{ManualClock, RetryBudget};
///
/// let clock = Arc::new(ManualClock::default());
/// let budget = RetryBudget::with_clock(20, 0, clock);
/// for _ in 0..10 { budget.request(); }
/// assert!(budget.try_retry());  // 1 retry for 10 requests: 10 %
/// assert!(budget.try_retry());  // 20 %
/// assert!(!budget.try_retry()); // 30 % would be over
/// assert_eq!(budget.denied(), 1);
/// ```
pub struct RetryBudget {
    percent: u64,
    min_per_s: u64,
    requests: Window,
    retries: Window,
    denied: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("percent", &self.percent)
            .field("min_per_s", &self.min_per_s)
            .field("denied", &self.denied())
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A budget of `percent` % of requests (0 to 100) plus `min_per_s` retries per second.
    pub fn new(percent: u32, min_per_s: u32) -> Self {
        Self::with_clock(percent, min_per_s, Arc::new(SystemClock))
    }

    /// [`new`](Self::new) with another clock (tests).
    pub fn with_clock(percent: u32, min_per_s: u32, clock: Arc<dyn Clock>) -> Self {
        RetryBudget {
            percent: u64::from(percent.min(100)),
            min_per_s: u64::from(min_per_s),
            requests: Window::default(),
            retries: Window::default(),
            denied: AtomicU64::new(0),
            clock,
        }
    }

    fn second(&self) -> u64 {
        self.clock.now().as_secs()
    }

    /// Records a request (its first attempt).
    pub fn request(&self) {
        self.requests.add(self.second());
    }

    /// Whether one more retry fits; if it does, it is counted.
    pub fn try_retry(&self) -> bool {
        let now = self.second();
        let requests = self.requests.sum(now);
        let retries = self.retries.sum(now);
        // retries + 1 <= percent% of requests + the reserve, in integers.
        let fits = (retries + 1) * 100 <= requests * self.percent + self.min_per_s * WINDOW_S * 100;
        if fits {
            self.retries.add(now);
        } else {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }

    /// Retries refused so far.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::time::Duration;

    #[test]
    fn reserve_and_window_expiry() {
        let clock = Arc::new(ManualClock::default());
        let b = RetryBudget::with_clock(0, 1, clock.clone());
        // No requests, 0 %: the reserve of 1/s over 10 s allows 10.
        assert!((0..10).all(|_| b.try_retry()));
        assert!(!b.try_retry());
        // Ten seconds later the old retries are out of the window.
        clock.advance(Duration::from_secs(10));
        assert!(b.try_retry());
    }
}
