//! [`SmoothWeighted`].

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use super::{Choice, Strategy, TargetSet};
use crate::health::{HealthPolicy, Outcome};
use crate::ring::{MAX_TABLE, Ring, smooth_cycle};
use crate::target::Target;

/// nginx's smooth weighted round-robin, with its effective weights: a failing target's
/// effective weight drops by `weight / max_fails` and climbs back by one per pick, and a
/// target ramping up after a return counts with its ramped share of its weight.
///
/// Synchronisation: while every target is up at full weight the sequence is periodic, so it
/// is computed once (one cycle, gcd-reduced) and walked with one atomic counter, wait-free
/// like [`RoundRobin`](crate::RoundRobin). While any target is down, recovering or ramping,
/// picks run nginx's algorithm itself under a mutex, as nginx does under its upstream lock.
/// Once every target is back at full weight, picks return to the precomputed cycle where its
/// counter stands, so the order restarts there (each target still gets exactly its weight per
/// cycle). The `balancer` benches measure both paths, alone and under two threads; see
/// BENCHMARKS.md.
///
/// ```
/// use balancer::{HealthPolicy, SmoothWeighted, Strategy, Target};
///
/// let s = SmoothWeighted::new(
///     vec![Target::new('a', 5), Target::new('b', 1), Target::new('c', 2)],
///     HealthPolicy::default(),
/// );
/// let picks: String = (0..8).map(|_| *s.targets()[s.pick().unwrap()].value()).collect();
/// assert_eq!(picks, "acaabaca");
/// ```
#[derive(Debug)]
pub struct SmoothWeighted<T> {
    set: TargetSet<T>,
    cycle: Option<Ring>,
    /// Targets down, ramping or below full weight, as last seen by the locked path.
    degraded: AtomicUsize,
    weights: Mutex<Weights>,
}

#[derive(Debug)]
struct Weights {
    current: Vec<i64>,
    effective: Vec<i64>,
}

impl<T> SmoothWeighted<T> {
    /// Smooth weighted round-robin over `targets`.
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        let weights: Vec<u32> = targets.iter().map(Target::weight).collect();
        let cycle =
            smooth_cycle(&weights, MAX_TABLE).map(|c| Ring::new(&targets, c.iter().copied()));
        SmoothWeighted {
            cycle,
            degraded: AtomicUsize::new(0),
            weights: Mutex::new(Weights {
                current: vec![0; targets.len()],
                effective: weights.iter().map(|&w| i64::from(w)).collect(),
            }),
            set: TargetSet::new(targets, policy),
        }
    }

    /// One round of nginx's algorithm over the available targets.
    fn choose_locked(&self) -> Option<usize> {
        let policy = self.set.policy();
        let mut w = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        let Weights { current, effective } = &mut *w;
        let mut best: Option<usize> = None;
        let mut total = 0;
        let mut degraded = 0;
        for (i, target) in self.set.targets().iter().enumerate() {
            let state = target.state();
            if !state.is_available(policy) {
                degraded += 1;
                continue;
            }
            let weight = i64::from(target.weight());
            // A ramping target counts with its share of its effective weight (at least 1).
            let share = match state.ramp(policy) {
                Some(r) => {
                    degraded += 1;
                    ((effective[i] as f64 * r) as i64).max(1)
                }
                None => effective[i],
            };
            current[i] += share;
            total += share;
            if effective[i] < weight {
                effective[i] += 1;
            }
            if effective[i] < weight {
                degraded += 1;
            }
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        self.degraded.store(degraded, Relaxed);
        best
    }
}

impl<T: Send + Sync> Strategy<T> for SmoothWeighted<T> {
    fn set(&self) -> &TargetSet<T> {
        &self.set
    }

    #[inline]
    fn choose(&self) -> Option<Choice> {
        if self.degraded.load(Relaxed) == 0
            && let Some(choice) = self.cycle.as_ref().and_then(Ring::choice)
            && choice.known_up
        {
            return Some(choice);
        }
        self.choose_locked().map(|index| Choice {
            index,
            known_up: true,
        })
    }

    fn observe(&self, index: usize, outcome: Outcome) {
        let max_fails = self.set.policy().max_fails;
        if outcome != Outcome::Failure || max_fails == 0 {
            return;
        }
        let Some(target) = self.set.targets().get(index) else {
            return;
        };
        let mut w = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        let drop = i64::from(target.weight() / max_fails);
        w.effective[index] = (w.effective[index] - drop).max(0);
        if w.effective[index] < i64::from(target.weight()) {
            self.degraded.fetch_add(1, Relaxed);
        }
    }
}
