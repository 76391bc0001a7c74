//! Fixed pick sequences walked by one atomic counter ([`Ring`]), and how they are laid out:
//! nginx's smooth weighted order, or an earliest-deadline order where that is too costly to
//! compute.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::health::TargetState;
use crate::strategy::Choice;
use crate::target::Target;

/// The longest ticket table or precomputed cycle (entries) before weights are scaled down.
pub(crate) const MAX_TABLE: usize = 1 << 16;

/// The most steps (cycle length x targets) nginx's order may take to lay out; beyond it the
/// earliest-deadline order, which costs cycle length x log(targets), is used instead.
const MAX_LAYOUT_COST: u64 = 1 << 24;

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

    /// The next slot as a strategy's choice, marked known-up when its state says so in one
    /// load.
    #[inline(always)]
    pub(crate) fn choice(&self) -> Option<Choice> {
        let slot = self.next()?;
        Some(Choice {
            index: slot.index,
            known_up: slot.state.surely_up(),
        })
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
    if (total as u64).saturating_mul(reduced.len() as u64) > MAX_LAYOUT_COST {
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

/// A ticket table of at most `max_len` entries (`max_len` at least the number of targets):
/// weights reduced by their gcd and halved (never below 1) until they fit, laid out in
/// nginx's smooth order, or in earliest-deadline order when that would cost too much.
pub(crate) fn ticket_order(weights: &[u32], max_len: usize) -> Box<[u32]> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u32> = weights.iter().map(|&w| (w / g).max(1)).collect();
    while reduced.iter().map(|&w| u64::from(w)).sum::<u64>() > max_len as u64 {
        if reduced.iter().all(|&w| w == 1) {
            break;
        }
        reduced.iter_mut().for_each(|w| *w = (*w / 2).max(1));
    }
    smooth_cycle(&reduced, max_len).unwrap_or_else(|| deadline_order(&reduced))
}

/// Each target's `k`-th ticket is due at the middle of its `k`-th share of the cycle,
/// `(k - 1/2) / weight`; tickets are laid out by due time (ties: lower index first). Smooth
/// like nginx's order (the same order for small sets), in cycle length x log(targets).
fn deadline_order(weights: &[u32]) -> Box<[u32]> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut heap: BinaryHeap<Reverse<Due>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Reverse(Due {
                k: 1,
                weight: u64::from(w.max(1)),
                index: i as u32,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while (out.len() as u64) < total {
        let Some(Reverse(due)) = heap.pop() else {
            break;
        };
        out.push(due.index);
        if due.k < due.weight {
            heap.push(Reverse(Due {
                k: due.k + 1,
                ..due
            }));
        }
    }
    out.into_boxed_slice()
}

/// A ticket due at `(k - 1/2) / weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    k: u64,
    weight: u64,
    index: u32,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (u128::from(2 * self.k - 1) * u128::from(other.weight))
            .cmp(&(u128::from(2 * other.k - 1) * u128::from(self.weight)))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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

    #[test]
    fn many_targets_get_a_table_quickly() {
        // 70 000 targets of weight 1: more than the table limit, all ones, so the weights
        // cannot shrink; every target keeps one ticket, in index order.
        let weights = vec![1u32; 70_000];
        let start = std::time::Instant::now();
        let order = ticket_order(&weights, MAX_TABLE.max(weights.len()));
        assert_eq!(order.len(), 70_000);
        assert!(order.iter().enumerate().all(|(i, &t)| t as usize == i));
        // Uneven weights beyond nginx's layout budget: each target still gets its share.
        let mut weights = vec![1u32; 5_000];
        weights[0] = 10;
        let order = ticket_order(&weights, MAX_TABLE);
        assert_eq!(order.iter().filter(|&&t| t == 0).count(), 10);
        assert_eq!(order.len(), 5_009);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn deadline_order_is_smooth() {
        // nginx's order for these weights, and each target exactly its weight per cycle.
        assert_eq!(&*deadline_order(&[5, 1, 2]), &[0, 2, 0, 0, 1, 0, 2, 0]);
        let order = deadline_order(&[7, 3, 1, 1]);
        for (t, w) in [7, 3, 1, 1].into_iter().enumerate() {
            assert_eq!(order.iter().filter(|&&i| i as usize == t).count(), w);
        }
    }
}
