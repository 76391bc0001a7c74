//! The [`Strategy`] trait, and what every strategy shares: the target set with its health
//! policy, health-aware selection with slow start and the all-down policy, and retries
//! without repeats ([`Attempts`]).

mod attempts;
mod least_request;
mod round_robin;
mod smooth_weighted;
mod weighted_ticket;

pub use attempts::{Attempts, MAX_ATTEMPTS};
pub use least_request::LeastRequest;
pub use round_robin::RoundRobin;
pub use smooth_weighted::SmoothWeighted;
pub use weighted_ticket::WeightedTicket;

use crate::health::{Admit, AllDown, HealthPolicy, Outcome};
use crate::target::Target;

/// The targets a strategy picks from, and the health policy they share.
#[derive(Debug)]
pub struct TargetSet<T> {
    targets: Vec<Target<T>>,
    policy: HealthPolicy,
}

impl<T> TargetSet<T> {
    /// A set of `targets` under `policy`.
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        TargetSet { targets, policy }
    }

    /// The targets, in the order given.
    pub fn targets(&self) -> &[Target<T>] {
        &self.targets
    }

    /// The health policy.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }
}

/// A load-balancing strategy over a fixed set of targets.
///
/// Implementors provide [`set`](Self::set) and [`choose`](Self::choose); the provided
/// methods add health (skip targets that are out, ramp up returning ones, apply the all-down
/// policy), retries without repeats, and outcome reporting.
pub trait Strategy<T>: Send + Sync {
    /// The targets and their policy.
    fn set(&self) -> &TargetSet<T>;

    /// The strategy's own next choice; may be a target that turns out to be unavailable (the
    /// provided methods then move on to the next available one). `None` when the strategy
    /// already knows nothing is available.
    fn choose(&self) -> Option<Choice>;

    /// Sees every outcome reported through [`report`](Self::report).
    fn observe(&self, _index: usize, _outcome: Outcome) {}

    /// The targets, in the order given at construction.
    fn targets(&self) -> &[Target<T>] {
        self.set().targets()
    }

    /// The health policy shared by the targets.
    fn policy<'a>(&'a self) -> &'a HealthPolicy
    where
        T: 'a,
    {
        self.set().policy()
    }

    /// The next target to use: the strategy's choice if it is available, or else the next
    /// available target after it.
    fn pick(&self) -> Option<usize> {
        match self.choose() {
            Some(Choice {
                index,
                known_up: true,
            }) => Some(index),
            choice => select(self.set(), &Attempts::new(), choice),
        }
    }

    /// Like [`pick`](Self::pick), never returning a target in `attempts`, and recording the
    /// one returned. `None` once every available target was tried, or after
    /// [`MAX_ATTEMPTS`].
    fn next_attempt(&self, attempts: &mut Attempts) -> Option<usize> {
        if attempts.len() == MAX_ATTEMPTS {
            return None;
        }
        let index = select(self.set(), attempts, self.choose())?;
        attempts.push(index);
        Some(index)
    }

    /// Reports the outcome of an exchange with target `index` to its passive health (and to
    /// the strategy, for those that adapt).
    fn report(&self, index: usize, outcome: Outcome) {
        let set = self.set();
        let Some(target) = set.targets().get(index) else {
            return;
        };
        target
            .state()
            .report(set.policy(), outcome, set.targets().len() > 1);
        self.observe(index, outcome);
    }
}

/// What [`Strategy::choose`] returns: a target index, and whether the strategy already saw it
/// available (which spares a second look at its state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into [`Strategy::targets`].
    pub index: usize,
    /// The strategy checked that the target is available.
    pub known_up: bool,
}

impl Choice {
    /// A choice whose health the caller still has to check.
    pub fn unchecked(index: usize) -> Self {
        Choice {
            index,
            known_up: false,
        }
    }
}

/// The strategy's `choice` if usable, else the next usable target after it that is not in
/// `attempts`; then the all-down policy. A target ramping up after a return is passed over
/// as often as its ramp says, unless nothing else is usable.
fn select<T>(set: &TargetSet<T>, attempts: &Attempts, choice: Option<Choice>) -> Option<usize> {
    let targets = set.targets();
    let policy = set.policy();
    let n = targets.len();
    let start = match choice {
        Some(Choice {
            index,
            known_up: true,
        }) if index < n && !attempts.contains(index) => return Some(index),
        Some(Choice { index, .. }) if index < n => index,
        _ => 0,
    };
    let mut ramping = None;
    let mut any_available = false;
    for k in 0..n {
        let i = (start + k) % n;
        if attempts.contains(i) {
            // Tried already; only whether it is still available matters.
            any_available = any_available || targets[i].state().is_available(policy);
            continue;
        }
        match targets[i].state().admit(policy) {
            Admit::Yes => return Some(i),
            Admit::Ramp => {
                any_available = true;
                ramping = ramping.or(Some(i));
            }
            Admit::No => {}
        }
    }
    if ramping.is_some() || any_available {
        return ramping;
    }
    let untried = |i: &usize| !attempts.contains(*i);
    match policy.all_down {
        AllDown::FailFast => None,
        AllDown::Panic => (0..n).map(|k| (start + k) % n).find(untried),
        AllDown::Reset => {
            let mut back = None;
            for k in 0..n {
                let i = (start + k) % n;
                if targets[i].state().forgive() && back.is_none() && untried(&i) {
                    back = Some(i);
                }
            }
            back
        }
    }
}
