//! The [`Strategy`] trait, retries without repeats ([`Attempts`]), and the four strategies.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use crate::health::HealthPolicy;
use crate::target::{Ring, Target, smooth_cycle};

/// How many targets one request may try (a first pick and its retries).
pub const MAX_ATTEMPTS: usize = 16;

/// The targets already tried by one request, held inline: no allocation.
///
/// ```
/// use balancer::{Attempts, HealthPolicy, RoundRobin, Strategy, Target};
///
/// let rr = RoundRobin::new(
///     (0..3).map(|i| Target::new(i, 1)).collect(),
///     HealthPolicy::default(),
/// );
/// let mut attempts = Attempts::new();
/// let mut seen = Vec::new();
/// while let Some(i) = rr.next_attempt(&mut attempts) {
///     seen.push(i);
/// }
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2]); // every target once, then no more
/// ```
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    tried: [u32; MAX_ATTEMPTS],
    len: usize,
}

impl Attempts {
    /// No target tried yet.
    pub const fn new() -> Self {
        Attempts {
            tried: [0; MAX_ATTEMPTS],
            len: 0,
        }
    }

    /// The indices tried so far, in order.
    pub fn tried(&self) -> &[u32] {
        &self.tried[..self.len]
    }

    /// How many targets were tried.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether target `index` was tried.
    pub fn contains(&self, index: usize) -> bool {
        self.tried().iter().any(|&t| t as usize == index)
    }

    fn push(&mut self, index: usize) -> bool {
        if self.len == MAX_ATTEMPTS {
            return false;
        }
        self.tried[self.len] = index as u32;
        self.len += 1;
        true
    }
}

/// A load-balancing strategy over a fixed set of targets.
///
/// Implementors provide [`choose`](Self::choose); the provided methods add health (skip
/// targets that are down, fail fast or panic-mode when all are), retries without repeats,
/// and outcome reporting.
pub trait Strategy<T>: Send + Sync {
    /// The targets, in the order given at construction.
    fn targets(&self) -> &[Target<T>];

    /// The health policy shared by the targets.
    fn policy(&self) -> &HealthPolicy;

    /// The strategy's own next choice; may be a target that turns out to be unavailable (the
    /// provided methods then move on to the next available one). `None` when the strategy
    /// already knows nothing is available.
    fn choose(&self) -> Option<Choice>;

    /// Sees every outcome reported through [`report`](Self::report).
    fn observe(&self, _index: usize, _success: bool) {}

    /// The next target to use: the strategy's choice if it is available, or else the next
    /// available target after it.
    fn pick(&self) -> Option<usize> {
        match self.choose() {
            Some(Choice {
                index,
                known_up: true,
            }) => Some(index),
            choice => select(self, &Attempts::new(), choice),
        }
    }

    /// Like [`pick`](Self::pick), never returning a target in `attempts`, and recording the
    /// one returned. `None` once every available target was tried, or after
    /// [`MAX_ATTEMPTS`].
    fn next_attempt(&self, attempts: &mut Attempts) -> Option<usize> {
        if attempts.len() == MAX_ATTEMPTS {
            return None;
        }
        let index = select(self, attempts, self.choose())?;
        attempts.push(index);
        Some(index)
    }

    /// Reports the outcome of an exchange with target `index` to its passive health (and to
    /// the strategy, for those that adapt).
    fn report(&self, index: usize, success: bool) {
        let Some(target) = self.targets().get(index) else {
            return;
        };
        if success {
            target.state().report_success();
        } else {
            target.state().report_failure(self.policy());
        }
        self.observe(index, success);
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

/// The strategy's `choice` if usable, else the next available target after it that is not in
/// `attempts`; then the all-down policy.
fn select<T, S: Strategy<T> + ?Sized>(
    strategy: &S,
    attempts: &Attempts,
    choice: Option<Choice>,
) -> Option<usize> {
    let targets = strategy.targets();
    let policy = strategy.policy();
    let n = targets.len();
    let usable = |i: usize| {
        !attempts.contains(i) && {
            let state = targets[i].state();
            state.surely_up() || state.is_available(policy)
        }
    };
    let start = match choice {
        Some(Choice {
            index,
            known_up: true,
        }) if index < n && !attempts.contains(index) => return Some(index),
        Some(Choice { index, .. }) if index < n => {
            if usable(index) {
                return Some(index);
            }
            index + 1
        }
        _ => 0,
    };
    let mut any_available = false;
    for k in 0..n {
        let i = (start + k) % n;
        if targets[i].state().is_available(policy) {
            any_available = true;
            if !attempts.contains(i) {
                return Some(i);
            }
        }
    }
    if !any_available && policy.all_down == crate::AllDown::Panic {
        return (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !attempts.contains(i));
    }
    None
}

/// The next slot of `ring`, marked known-up when its state says so in one load.
#[inline(always)]
fn ring_choice(ring: &Ring) -> Option<Choice> {
    let slot = ring.next()?;
    Some(Choice {
        index: slot.index,
        known_up: slot.state.surely_up(),
    })
}

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
    targets: Vec<Target<T>>,
    policy: HealthPolicy,
    ring: Ring,
}

impl<T> RoundRobin<T> {
    /// Round-robin over `targets` (weights are ignored).
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        RoundRobin {
            ring: Ring::new(&targets, 0..targets.len() as u32),
            targets,
            policy,
        }
    }
}

impl<T: Send + Sync> Strategy<T> for RoundRobin<T> {
    fn targets(&self) -> &[Target<T>] {
        &self.targets
    }
    fn policy(&self) -> &HealthPolicy {
        &self.policy
    }
    #[inline]
    fn choose(&self) -> Option<Choice> {
        ring_choice(&self.ring)
    }
}

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
    targets: Vec<Target<T>>,
    policy: HealthPolicy,
    tickets: Ring,
}

/// The longest ticket table or precomputed cycle (entries); heavier weight sets fall back.
const MAX_TABLE: usize = 1 << 16;

impl<T> WeightedTicket<T> {
    /// Weighted round-robin over `targets`. If the gcd-reduced weights add up to more than
    /// 65 536 tickets, they are scaled down proportionally (keeping every target at least one).
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        let mut weights: Vec<u32> = targets.iter().map(Target::weight).collect();
        let tickets = loop {
            match smooth_cycle(&weights, MAX_TABLE) {
                Some(t) => break t,
                None if weights.is_empty() => break Box::default(),
                None => weights.iter_mut().for_each(|w| *w = (*w / 2).max(1)),
            }
        };
        WeightedTicket {
            tickets: Ring::new(&targets, tickets.iter().copied()),
            targets,
            policy,
        }
    }
}

impl<T: Send + Sync> Strategy<T> for WeightedTicket<T> {
    fn targets(&self) -> &[Target<T>] {
        &self.targets
    }
    fn policy(&self) -> &HealthPolicy {
        &self.policy
    }
    #[inline]
    fn choose(&self) -> Option<Choice> {
        ring_choice(&self.tickets)
    }
}

/// nginx's smooth weighted round-robin, with its effective weights: a failing target's
/// effective weight drops by `weight / max_fails` and climbs back by one per pick.
///
/// Synchronisation: while every target is up at full weight the sequence is periodic, so it
/// is computed once (one cycle, gcd-reduced) and walked with one atomic counter, wait-free
/// like [`RoundRobin`]. While any target is down or recovering, picks run nginx's algorithm
/// itself under a mutex, as nginx does under its upstream lock. Once every target is back at
/// full weight, picks return to the precomputed cycle where its counter stands, so the order
/// restarts there (each target still gets exactly its weight per cycle). The `balancer` benches
/// measure both paths, alone and under two threads; see BENCHMARKS.md.
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
    targets: Vec<Target<T>>,
    policy: HealthPolicy,
    cycle: Option<Ring>,
    /// Targets down or below full weight, as last seen by the locked path.
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
            policy,
            cycle,
            degraded: AtomicUsize::new(0),
            weights: Mutex::new(Weights {
                current: vec![0; targets.len()],
                effective: weights.iter().map(|&w| i64::from(w)).collect(),
            }),
            targets,
        }
    }

    /// One round of nginx's algorithm over the available targets.
    fn choose_locked(&self) -> Option<usize> {
        let mut w = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        let Weights { current, effective } = &mut *w;
        let mut best: Option<usize> = None;
        let mut total = 0;
        let mut degraded = 0;
        for (i, target) in self.targets.iter().enumerate() {
            if !target.state().is_available(&self.policy) {
                degraded += 1;
                continue;
            }
            let weight = i64::from(target.weight());
            current[i] += effective[i];
            total += effective[i];
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
    fn targets(&self) -> &[Target<T>] {
        &self.targets
    }
    fn policy(&self) -> &HealthPolicy {
        &self.policy
    }
    #[inline]
    fn choose(&self) -> Option<Choice> {
        if self.degraded.load(Relaxed) == 0 {
            if let Some(choice) = self.cycle.as_ref().and_then(ring_choice) {
                if choice.known_up {
                    return Some(choice);
                }
            }
        }
        self.choose_locked().map(|index| Choice {
            index,
            known_up: true,
        })
    }

    fn observe(&self, index: usize, success: bool) {
        if success || self.policy.max_fails == 0 {
            return;
        }
        let Some(target) = self.targets.get(index) else {
            return;
        };
        let mut w = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        let drop = i64::from(target.weight() / self.policy.max_fails);
        w.effective[index] = (w.effective[index] - drop).max(0);
        if w.effective[index] < i64::from(target.weight()) {
            self.degraded.fetch_add(1, Relaxed);
        }
    }
}

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
    targets: Vec<Target<T>>,
    policy: HealthPolicy,
}

impl<T> LeastRequest<T> {
    /// Least-request over `targets`.
    pub fn new(targets: Vec<Target<T>>, policy: HealthPolicy) -> Self {
        LeastRequest { targets, policy }
    }
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A per-thread xorshift64* generator: plenty for choosing two targets, and no shared state.
fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        if x == 0 {
            // Seed from a global counter and the thread-local's address: distinct per thread.
            static SEED: AtomicUsize = AtomicUsize::new(0x9E37_79B9);
            let salt = SEED.fetch_add(0x7F4A_7C15, Relaxed) as u64;
            x = (salt ^ (state as *const Cell<u64> as u64)).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

impl<T: Send + Sync> Strategy<T> for LeastRequest<T> {
    fn targets(&self) -> &[Target<T>] {
        &self.targets
    }
    fn policy(&self) -> &HealthPolicy {
        &self.policy
    }
    fn choose(&self) -> Option<Choice> {
        let n = self.targets.len();
        if n < 2 {
            return (n == 1).then_some(Choice::unchecked(0));
        }
        let r = random();
        let a = ((r & 0xFFFF_FFFF) % n as u64) as usize;
        let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
        if b >= a {
            b += 1;
        }
        let (ta, tb) = (&self.targets[a], &self.targets[b]);
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
