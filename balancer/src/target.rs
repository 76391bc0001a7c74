//! Targets: a value (an address, a URL, a connection pool...) with a weight and shared state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

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

/// Reduces `x` modulo a fixed divisor with two multiplications instead of a division
/// (Lemire's "fastmod"), exact for every 32-bit `x`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastMod {
    m: u64,
    d: u32,
}

impl FastMod {
    pub(crate) fn new(d: u32) -> Self {
        let d = d.max(1);
        FastMod {
            m: (u64::MAX / u64::from(d)).wrapping_add(1),
            d,
        }
    }

    #[inline(always)]
    pub(crate) fn reduce(self, x: u32) -> usize {
        let low = self.m.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.d)) >> 64) as usize
    }
}

/// Keeps a hot atomic on a cache line (pair) of its own, so that reads of the fields around
/// it do not miss each time another core bumps it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Alone<T>(T);

/// One entry of a [`Ring`]: a target's index and state, side by side, so the walk and the
/// health check cost two dependent loads.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) state: Arc<TargetState>,
}

/// A fixed sequence of targets walked by one atomic counter: wait-free.
///
/// The counter is 32 bits; where 2³² is not a multiple of the sequence length, the walk skips
/// once every four billion picks.
#[derive(Debug)]
pub(crate) struct Ring {
    next: Alone<AtomicU32>,
    modulo: FastMod,
    slots: Box<[Slot]>,
}

impl Ring {
    /// A ring over `order` (indices into `targets`; out-of-range ones are dropped).
    pub(crate) fn new<T>(targets: &[Target<T>], order: impl IntoIterator<Item = u32>) -> Ring {
        let slots: Box<[Slot]> = order
            .into_iter()
            .filter_map(|i| {
                let target = targets.get(i as usize)?;
                Some(Slot {
                    index: i as usize,
                    state: Arc::clone(target.state()),
                })
            })
            .collect();
        Ring {
            next: Alone(AtomicU32::new(0)),
            modulo: FastMod::new(slots.len() as u32),
            slots,
        }
    }

    /// The next slot in the sequence; `None` only for an empty ring.
    #[inline(always)]
    pub(crate) fn next(&self) -> Option<&Slot> {
        let at = self.modulo.reduce(self.next.0.fetch_add(1, Relaxed));
        self.slots.get(at)
    }
}

/// The smooth weighted round-robin order of one full cycle (nginx's algorithm from a zero
/// state): target indices, each appearing exactly `weight / gcd` times. `None` if the cycle
/// would be longer than `max_len`.
pub(crate) fn smooth_cycle(weights: &[u32], max_len: usize) -> Option<Box<[u32]>> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1) / g)).collect();
    let total: i64 = reduced.iter().sum();
    if total == 0 || total as usize > max_len {
        return None;
    }
    let mut current = vec![0i64; reduced.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    Some(cycle.into_boxed_slice())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastmod_is_exact() {
        for d in [1u32, 2, 3, 7, 8, 64, 1000, 65_537, u32::MAX] {
            let f = FastMod::new(d);
            for x in [
                0u32,
                1,
                2,
                3,
                63,
                64,
                999,
                1000,
                123_456_789,
                u32::MAX - 1,
                u32::MAX,
            ] {
                assert_eq!(f.reduce(x), (x % d) as usize, "{x} % {d}");
            }
        }
    }

    #[test]
    fn nginx_sequences() {
        let name = |c: Box<[u32]>, names: &[char]| -> String {
            c.iter().map(|&i| names[i as usize]).collect()
        };
        let cycle = smooth_cycle(&[5, 1, 2], 1000).unwrap();
        assert_eq!(name(cycle, &['a', 'b', 'c']), "acaabaca");
        assert_eq!(
            name(smooth_cycle(&[5, 1], 1000).unwrap(), &['A', 'B']),
            "AAABAA"
        );
        assert_eq!(
            name(smooth_cycle(&[2, 1], 1000).unwrap(), &['A', 'B']),
            "ABA"
        );
        // Scaling the weights does not change the order, so it is reduced by the gcd.
        assert_eq!(smooth_cycle(&[10, 2, 4], 1000).unwrap().len(), 8);
        assert!(smooth_cycle(&[1000, 1], 100).is_none());
    }
}
