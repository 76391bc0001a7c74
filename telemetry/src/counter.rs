//! [`Counter`] and [`Gauge`]: one atomic per stripe (see [`Stripes`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::stripes::Stripes;

/// A count that only goes up. Relaxed atomics, one per stripe: a scrape sees every increment
/// made before it started, in no particular order across series.
#[derive(Debug, Default)]
pub struct Counter(Stripes<AtomicU64>);

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Counter::default()
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.local().fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

/// A value that goes up and down (open connections, requests in flight). A stripe alone may
/// go below zero (a connection opened on one thread and closed on another); the sum does not.
#[derive(Debug, Default)]
pub struct Gauge(Stripes<AtomicI64>);

impl Gauge {
    /// A gauge at zero.
    pub fn new() -> Self {
        Gauge::default()
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.local().fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    #[inline]
    pub fn dec(&self) {
        self.0.local().fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the value (meant for one writer: other stripes are cleared first).
    pub fn set(&self, value: i64) {
        for s in self.0.iter() {
            s.store(0, Ordering::Relaxed);
        }
        self.0.local().store(value, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0
            .iter()
            .fold(0i64, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads() {
        let c = Counter::new();
        let g = Gauge::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.inc();
                        g.inc();
                    }
                    c.add(10);
                });
            }
        });
        // Decremented on other threads than the ones that incremented.
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..4000 {
                    g.dec();
                }
            });
        });
        assert_eq!(c.get(), 4 * 1010);
        assert_eq!(g.get(), 0);
        g.set(-3);
        assert_eq!(g.get(), -3);
    }
}
