//! [`LeastRequest`].

use super::{Choice, Strategy, TargetSet};
use crate::health::HealthPolicy;
use crate::target::Target;

/// Least request by the power of two choices (Envoy's default): two distinct random targets,
/// the one with fewer requests in flight (relative to its weight) wins. In-flight counts come
/// from [`TargetState::start`](crate::TargetState::start) guards.
///
/// ```
/// use balancer::{HealthPolicy, LeastRequest, Strategy, Target};
///
/// let lr = LeastRequest::new(
///     vec![Target::new("busy", 1), Target::new("idle", 1)],
///     HealthPolicy::default(),
/// );
/// let _busy = lr.targets()[0].state().start(); // one request in flight on "busy"
/// for _ in 0..10 {
///     assert_eq!(*lr.targets()[lr.pick().unwrap()].value(), "idle");
/// }
/// ```
#[derive(Debug)]
pub struct LeastRequest<T> {
    set: TargetSet<T>,
}

impl<T> LeastRequest<T> {
    /// Least-request over `targets`.
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        LeastRequest {
            set: TargetSet::new(targets, policy),
        }
    }
}

impl<T: Send + Sync> Strategy<T> for LeastRequest<T> {
    fn set(&self) -> &TargetSet<T> {
        &self.set
    }

    fn choose(&self) -> Option<Choice> {
        let targets = self.set.targets();
        let n = targets.len();
        if n < 2 {
            return (n == 1).then_some(Choice::unchecked(0));
        }
        // Two distinct indices: the second drawn from the n - 1 others.
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        let (ta, tb) = (&targets[a], &targets[b]);
        let (ua, ub) = (ta.state().surely_up(), tb.state().surely_up());
        if ua != ub {
            return Some(Choice::unchecked(if ua { a } else { b }));
        }
        // Fewer in flight per unit of weight: (in_flight + 1) / weight, cross-multiplied.
        let load_a = (ta.state().in_flight() as u64 + 1) * u64::from(tb.weight());
        let load_b = (tb.state().in_flight() as u64 + 1) * u64::from(ta.weight());
        Some(Choice::unchecked(if load_b < load_a { b } else { a }))
    }
}
