//! [`WeightedTicket`].

use super::{Choice, Strategy, TargetSet};
use crate::health::HealthPolicy;
use crate::ring::{MAX_TABLE, Ring, ticket_order};
use crate::target::Target;

/// Weighted round-robin through a ticket table: each target appears `weight / gcd` times,
/// walked by one atomic counter (wait-free). The tickets are laid out in smooth order, so a
/// heavy target never gets its whole share in one burst.
///
/// ```
/// use balancer::{HealthPolicy, Strategy, Target, WeightedTicket};
///
/// let w = WeightedTicket::new(
///     vec![Target::new('a', 5), Target::new('b', 1), Target::new('c', 2)],
///     HealthPolicy::default(),
/// );
/// let picks: String = (0..8).map(|_| *w.targets()[w.pick().unwrap()].value()).collect();
/// assert_eq!(picks, "acaabaca");
/// ```
#[derive(Debug)]
pub struct WeightedTicket<T> {
    set: TargetSet<T>,
    tickets: Ring,
}

impl<T> WeightedTicket<T> {
    /// Weighted round-robin over `targets`. If the gcd-reduced weights add up to more than
    /// 65 536 tickets (or the number of targets, if larger), they are scaled down
    /// proportionally, keeping every target at least one ticket.
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        let weights: Vec<u32> = targets.iter().map(Target::weight).collect();
        let tickets = ticket_order(&weights, MAX_TABLE.max(weights.len()));
        WeightedTicket {
            tickets: Ring::new(&targets, tickets.iter().copied()),
            set: TargetSet::new(targets, policy),
        }
    }
}

impl<T: Send + Sync> Strategy<T> for WeightedTicket<T> {
    fn set(&self) -> &TargetSet<T> {
        &self.set
    }
    #[inline]
    fn choose(&self) -> Option<Choice> {
        self.tickets.choice()
    }
}
