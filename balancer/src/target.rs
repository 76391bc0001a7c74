//! Targets: a value (an address, a URL, a connection pool...) with a weight and shared state.

use std::sync::Arc;

use crate::health::TargetState;

/// One upstream target: what to pick (`T`), its weight, and its [`TargetState`].
#[derive(Debug, Clone)]
pub struct Target<T> {
    value: T,
    weight: u32,
    state: Arc<TargetState>,
}

impl<T> Target<T> {
    /// A target with fresh state. A weight of 0 is raised to 1 (every target gets traffic);
    /// [`Balancer::new`](crate::Balancer::new) rejects zero weights instead.
    pub fn new(value: T, weight: u32) -> Self {
        Self::with_state(value, weight, Arc::new(TargetState::new()))
    }

    /// A target sharing existing state, e.g. the same upstream in another balancer.
    pub fn with_state(value: T, weight: u32, state: Arc<TargetState>) -> Self {
        Target {
            value,
            weight: weight.max(1),
            state,
        }
    }

    /// The target's value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The configured weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The shared health and counters.
    pub fn state(&self) -> &Arc<TargetState> {
        &self.state
    }
}
