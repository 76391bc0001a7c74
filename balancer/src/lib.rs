//! Load-balancing strategies with health, usable on their own: this crate knows nothing of
//! HTTP or sockets, only *which target next*.
//!
//! - [`RoundRobin`]: one atomic counter, wait-free.
//! - [`WeightedTicket`]: a gcd-reduced ticket table walked by the same counter, wait-free.
//! - [`SmoothWeighted`]: nginx's smooth weighted round-robin, with its effective weights.
//! - [`LeastRequest`]: power of two choices over in-flight counts (Envoy's default).
//!
//! Every target has a [`TargetState`] shared by whichever strategy uses it: passive health
//! with nginx's `max_fails` / `fail_timeout` semantics (never ejecting the only target, and
//! judging each exchange by its [`Outcome`]), active-check state with HAProxy's `rise` /
//! `fall`, slow start after a return, manual up/down, in-flight counts kept by [`InFlight`]
//! guards. Picks skip unavailable targets; when none is available, the [`HealthPolicy`]'s
//! [`AllDown`] says what happens: forget the passive failures and try again (the default, as
//! nginx), pick among all (Envoy's panic mode), or fail fast. Retries use [`Attempts`], which
//! never repeats a target and never allocates. A [`Balancer`] wraps a strategy so its target
//! set can be swapped at run time. The checks themselves (probing a target) are I/O and live
//! with the caller; this crate only keeps their state.
//!
//! ```
//! use balancer::{HealthPolicy, Outcome, SmoothWeighted, Strategy, Target};
//!
//! let upstream = SmoothWeighted::new(
//!     vec![Target::new("a", 5), Target::new("b", 1), Target::new("c", 2)],
//!     HealthPolicy::default(),
//! );
//! let order: Vec<&str> = (0..8).map(|_| *upstream.targets()[upstream.pick().unwrap()].value()).collect();
//! assert_eq!(order, ["a", "c", "a", "a", "b", "a", "c", "a"]);
//!
//! // A failure takes "a" out (max_fails = 1) for fail_timeout (10 s).
//! upstream.report(0, Outcome::Failure);
//! assert!((0..8).all(|_| upstream.pick() != Some(0)));
//! ```

mod balancer;
mod budget;
mod clock;
mod health;
mod ring;
mod split;
mod strategy;
mod target;

pub use balancer::{Algorithm, Balancer, BuildError, Picked};
pub use budget::RetryBudget;
pub use clock::{Clock, ManualClock, SystemClock};
pub use health::{
    AllDown, BODY_FAILURES_IN_A_ROW, CheckResult, CheckTransition, HealthPolicy, InFlight, Outcome,
    TargetState,
};
pub use split::{Split, SplitError};
pub use strategy::{
    Attempts, Choice, LeastRequest, MAX_ATTEMPTS, RoundRobin, SmoothWeighted, Strategy, TargetSet,
    WeightedTicket,
};
pub use target::Target;
