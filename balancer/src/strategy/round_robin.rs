//! [`RoundRobin`].

use super::{Choice, Strategy, TargetSet};
use crate::health::HealthPolicy;
use crate::ring::Ring;
use crate::target::Target;

/// Round-robin: one atomic counter, wait-free.
///
/// The counter is 32 bits; where 2³² is not a multiple of the number of targets, the rotation
/// skips once every four billion picks.
///
/// ```
/// use balancer::{HealthPolicy, RoundRobin, Strategy, Target};
///
/// let rr = RoundRobin::new(
///     vec![Target::new("127.0.0.1:9001", 1), Target::new("127.0.0.1:9002", 1)],
///     HealthPolicy::default(),
/// );
/// let picks: Vec<_> = (0..4).map(|_| *rr.targets()[rr.pick().unwrap()].value()).collect();
/// assert_eq!(picks, ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9001", "127.0.0.1:9002"]);
/// ```
#[derive(Debug)]
pub struct RoundRobin<T> {
    set: TargetSet<T>,
    ring: Ring,
}

impl<T> RoundRobin<T> {
    /// Round-robin over `targets` (weights are ignored).
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        let order = 0..u32::try_from(targets.len()).unwrap_or(u32::MAX);
        RoundRobin {
            ring: Ring::new(&targets, order),
            set: TargetSet::new(targets, policy),
        }
    }
}

impl<T: Send + Sync> Strategy<T> for RoundRobin<T> {
    fn set(&self) -> &TargetSet<T> {
        &self.set
    }
    #[inline]
    fn choose(&self) -> Option<Choice> {
        self.ring.choice()
    }
}
