//! [`Balancer`]: a strategy over a target set that can be replaced while in use.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::health::{HealthPolicy, Outcome, TargetState};
use crate::strategy::{
    Attempts, LeastRequest, RoundRobin, SmoothWeighted, Strategy, WeightedTicket,
};
use crate::target::Target;

/// The strategies a [`Balancer`] can run. With the `serde` feature it deserializes from
/// `round-robin`, `weighted-ticket`, `smooth-weighted` and `least-request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Algorithm {
    /// [`RoundRobin`].
    #[default]
    RoundRobin,
    /// [`WeightedTicket`].
    WeightedTicket,
    /// [`SmoothWeighted`].
    SmoothWeighted,
    /// [`LeastRequest`].
    LeastRequest,
}

/// Why a balancer could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// A target has weight 0; the index is its position in the list.
    ZeroWeight(usize),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroWeight(i) => write!(f, "target #{i} has weight 0; weights start at 1"),
        }
    }
}

impl std::error::Error for BuildError {}

enum AnyStrategy<T> {
    RoundRobin(RoundRobin<T>),
    WeightedTicket(WeightedTicket<T>),
    SmoothWeighted(SmoothWeighted<T>),
    LeastRequest(LeastRequest<T>),
}

impl<T: Send + Sync> AnyStrategy<T> {
    fn build(kind: Algorithm, targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        match kind {
            Algorithm::RoundRobin => AnyStrategy::RoundRobin(RoundRobin::new(targets, policy)),
            Algorithm::WeightedTicket => {
                AnyStrategy::WeightedTicket(WeightedTicket::new(targets, policy))
            }
            Algorithm::SmoothWeighted => {
                AnyStrategy::SmoothWeighted(SmoothWeighted::new(targets, policy))
            }
            Algorithm::LeastRequest => {
                AnyStrategy::LeastRequest(LeastRequest::new(targets, policy))
            }
        }
    }

    fn get(&self) -> &dyn Strategy<T> {
        match self {
            AnyStrategy::RoundRobin(s) => s,
            AnyStrategy::WeightedTicket(s) => s,
            AnyStrategy::SmoothWeighted(s) => s,
            AnyStrategy::LeastRequest(s) => s,
        }
    }
}

/// A target chosen by a [`Balancer`]: its value, index and state. Start an in-flight guard
/// with `picked.state().start()` and report the outcome with [`Balancer::report`].
#[derive(Debug, Clone)]
pub struct Picked<T> {
    index: usize,
    value: T,
    state: Arc<TargetState>,
}

impl<T> Picked<T> {
    /// The target's value.
    pub fn value(&self) -> &T {
        &self.value
    }
    /// The target's position in the set it was picked from.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The target's shared state.
    pub fn state(&self) -> &Arc<TargetState> {
        &self.state
    }
}

/// A load balancer: an [`Algorithm`] over targets whose set can be replaced at run time
/// (an atomic swap; picks never wait). Targets that stay keep their health and in-flight
/// counts.
///
/// ```
/// use balancer::{Algorithm, Attempts, Balancer, HealthPolicy, Outcome};
///
/// let lb = Balancer::new(
///     Algorithm::RoundRobin,
///     [("127.0.0.1:9001", 1), ("127.0.0.1:9002", 1)],
///     HealthPolicy::default(),
/// )?;
///
/// // A request: try targets until one answers, never the same one twice.
/// let mut attempts = Attempts::new();
/// let first = lb.next_attempt(&mut attempts).unwrap();
/// lb.report(&first, Outcome::Failure); // connection refused: 9001 is out for fail_timeout
/// let second = lb.next_attempt(&mut attempts).unwrap();
/// assert_ne!(first.value(), second.value());
/// lb.report(&second, Outcome::Success);
/// assert!(lb.next_attempt(&mut attempts).is_none());
///
/// // The next requests avoid the failed target.
/// assert_eq!(*lb.pick().unwrap().value(), "127.0.0.1:9002");
/// assert_eq!(*lb.pick().unwrap().value(), "127.0.0.1:9002");
/// # Ok::<_, balancer::BuildError>(())
/// ```
pub struct Balancer<T> {
    kind: Algorithm,
    policy: HealthPolicy,
    current: ArcSwap<AnyStrategy<T>>,
}

impl<T: fmt::Debug + Send + Sync> fmt::Debug for Balancer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.current.load();
        let targets: Vec<_> = set.get().targets().iter().map(Target::value).collect();
        f.debug_struct("Balancer")
            .field("kind", &self.kind)
            .field("targets", &targets)
            .finish()
    }
}

fn check<T>(targets: &[(T, u32)]) -> Result<(), BuildError> {
    match targets.iter().position(|(_, w)| *w == 0) {
        Some(i) => Err(BuildError::ZeroWeight(i)),
        None => Ok(()),
    }
}

impl<T: Clone + PartialEq + Send + Sync> Balancer<T> {
    /// A balancer over `(value, weight)` pairs.
    pub fn new(
        kind: Algorithm,
        targets: impl IntoIterator<Item = (T, u32)>,
        policy: HealthPolicy,
    ) -> Result<Self, BuildError> {
        let targets: Vec<(T, u32)> = targets.into_iter().collect();
        check(&targets)?;
        let set = targets
            .into_iter()
            .map(|(v, w)| Target::new(v, w))
            .collect();
        Ok(Balancer {
            kind,
            current: ArcSwap::from_pointee(AnyStrategy::build(kind, set, policy.clone())),
            policy,
        })
    }

    /// The strategy in use.
    pub fn kind(&self) -> Algorithm {
        self.kind
    }

    /// The health policy.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Replaces the target set. A target whose value equals one in the current set keeps that
    /// target's state (health, failures, in-flight count); new ones start healthy and ramp
    /// up over the policy's slow start.
    pub fn replace(&self, targets: impl IntoIterator<Item = (T, u32)>) -> Result<(), BuildError> {
        let targets: Vec<(T, u32)> = targets.into_iter().collect();
        check(&targets)?;
        let current = self.current.load();
        let old = current.get().targets();
        let set: Vec<Target<T>> = targets
            .into_iter()
            .map(
                |(value, weight)| match old.iter().find(|t| *t.value() == value) {
                    Some(kept) => Target::with_state(value, weight, Arc::clone(kept.state())),
                    None => Target::with_state(
                        value,
                        weight,
                        Arc::new(TargetState::joining(&self.policy)),
                    ),
                },
            )
            .collect();
        for gone in old
            .iter()
            .filter(|t| !set.iter().any(|n| Arc::ptr_eq(n.state(), t.state())))
        {
            gone.state().retire();
        }
        self.current.store(Arc::new(AnyStrategy::build(
            self.kind,
            set,
            self.policy.clone(),
        )));
        Ok(())
    }

    /// Takes over what `previous` knows of the targets both have (a configuration reload that
    /// changed the upstream's strategy, policy or target set): each such target keeps its
    /// value as `previous` has it and its state (health, active-check results, in-flight
    /// count, slow start); the others are as built.
    pub fn adopt(&self, previous: &Balancer<T>) {
        let old = previous.targets();
        let current = self.current.load();
        let set: Vec<Target<T>> = current
            .get()
            .targets()
            .iter()
            .map(|t| match old.iter().find(|o| o.value() == t.value()) {
                Some(kept) => {
                    Target::with_state(kept.value().clone(), t.weight(), Arc::clone(kept.state()))
                }
                None => t.clone(),
            })
            .collect();
        self.current.store(Arc::new(AnyStrategy::build(
            self.kind,
            set,
            self.policy.clone(),
        )));
    }

    /// A snapshot of the targets: value, weight and state.
    pub fn targets(&self) -> Vec<Target<T>> {
        self.current.load().get().targets().to_vec()
    }

    fn picked(&self, strategy: &dyn Strategy<T>, index: usize) -> Option<Picked<T>> {
        let target = strategy.targets().get(index)?;
        Some(Picked {
            index,
            value: target.value().clone(),
            state: Arc::clone(target.state()),
        })
    }

    /// The next target, skipping unavailable ones (see [`Strategy::pick`]).
    pub fn pick(&self) -> Option<Picked<T>> {
        let set = self.current.load();
        let index = set.get().pick()?;
        self.picked(set.get(), index)
    }

    /// The next target not yet in `attempts`, recorded there (see [`Strategy::next_attempt`]).
    pub fn next_attempt(&self, attempts: &mut Attempts) -> Option<Picked<T>> {
        let set = self.current.load();
        let index = set.get().next_attempt(attempts)?;
        self.picked(set.get(), index)
    }

    /// Reports the outcome of an exchange with `picked` to its passive health, and to the
    /// strategy if the target is still in the current set.
    pub fn report(&self, picked: &Picked<T>, outcome: Outcome) {
        let set = self.current.load();
        let strategy = set.get();
        match strategy.targets().get(picked.index) {
            Some(t) if Arc::ptr_eq(t.state(), &picked.state) => {
                strategy.report(picked.index, outcome)
            }
            // The set was replaced since the pick: the state is still shared, the strategy not.
            _ => {
                picked
                    .state
                    .report(&self.policy, outcome, strategy.targets().len() > 1);
            }
        }
    }
}
