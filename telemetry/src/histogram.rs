//! [`Histogram`]: durations counted into fixed buckets, one atomic per bucket; [`Snapshot`]:
//! its counts at one moment, which can be subtracted (the last minute) and asked for quantiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::stripes::Stripes;

/// Bucket bounds (seconds) for request and upstream latencies: 0.5 ms to 60 s, about three
/// buckets per decade, as Envoy's and the Go client's defaults are spread.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A histogram of durations with fixed bucket bounds (in seconds). Recording is one
/// `partition_point` over the bounds and two relaxed atomic adds on the calling thread's
/// stripe; nothing is allocated and no lock is taken. The count is the sum of the buckets, so
/// `_count` and the `+Inf` bucket always agree.
#[derive(Debug)]
pub struct Histogram {
    /// The bounds in nanoseconds, for the comparison on the hot path.
    bounds_ns: Arc<[u64]>,
    /// Per stripe: one count per bound, then the `+Inf` bucket (not cumulative), then the sum
    /// in nanoseconds.
    cells: Stripes<Box<[AtomicU64]>>,
}

impl Histogram {
    /// A histogram with `bounds` (seconds, ascending; anything else is sorted and deduplicated
    /// here, NaN and negative bounds dropped).
    pub fn new(bounds: &[f64]) -> Self {
        let mut ns: Vec<u64> = bounds
            .iter()
            .filter(|b| b.is_finite() && **b >= 0.0)
            .map(|b| (b * 1e9).round() as u64)
            .collect();
        ns.sort_unstable();
        ns.dedup();
        let cells = Stripes::new(|| (0..ns.len() + 2).map(|_| AtomicU64::new(0)).collect());
        Histogram {
            bounds_ns: ns.into(),
            cells,
        }
    }

    /// Records one duration.
    #[inline]
    pub fn observe(&self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        let cells = self.cells.local();
        if let Some(bucket) = cells.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sum) = cells.last() {
            sum.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> Snapshot {
        let buckets = self.bounds_ns.len() + 1;
        let mut counts = vec![0u64; buckets];
        let mut sum_ns = 0u64;
        for cells in self.cells.iter() {
            for (total, cell) in counts.iter_mut().zip(cells.iter()) {
                *total = total.wrapping_add(cell.load(Ordering::Relaxed));
            }
            if let Some(sum) = cells.get(buckets) {
                sum_ns = sum_ns.wrapping_add(sum.load(Ordering::Relaxed));
            }
        }
        Snapshot {
            bounds: Arc::clone(&self.bounds_ns),
            counts,
            sum_ns,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The finite bounds, in nanoseconds.
    bounds: Arc<[u64]>,
    counts: Vec<u64>,
    sum_ns: u64,
}

impl Snapshot {
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// `(upper bound in seconds, cumulative count)` for every finite bucket, then
    /// `(f64::INFINITY, count)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self
            .bounds
            .iter()
            .map(|ns| *ns as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY));
        bounds.zip(self.counts.iter().scan(0u64, |acc, c| {
            *acc += c;
            Some(*acc)
        }))
    }

    /// What was recorded between `earlier` and this snapshot (of the same histogram).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            bounds: Arc::clone(&self.bounds),
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The `q` quantile (0 to 1) in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without any count. A quantile in the
    /// `+Inf` bucket is reported as the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !q.is_finite() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (i, count) in self.counts.iter().enumerate() {
            let Some(upper_ns) = self.bounds.get(i) else {
                return Some(lower);
            };
            let upper = *upper_ns as f64 / 1e9;
            if *count > 0 && (below + count) as f64 >= rank {
                let inside = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * inside.clamp(0.0, 1.0));
            }
            below += count;
            lower = upper;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: &[f64] = &[0.001, 0.01, 0.1];

    #[test]
    fn buckets_hold_values_up_to_their_bound() {
        let h = Histogram::new(B);
        for ms in [0, 1, 2, 10, 11, 100, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        let cumulative: Vec<(f64, u64)> = s.cumulative().collect();
        assert_eq!(
            cumulative,
            vec![(0.001, 2), (0.01, 4), (0.1, 6), (f64::INFINITY, 7)]
        );
        assert_eq!(s.count(), 7);
        assert!((s.sum_seconds() - 5.124).abs() < 1e-9);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::new(B);
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..10 {
            h.observe(Duration::from_micros(5500)); // all in (0.001, 0.01]
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        let p100 = s.quantile(1.0).unwrap();
        assert!((p100 - 0.01).abs() < 1e-12, "{p100}");
        h.observe(Duration::from_secs(3)); // +Inf bucket
        assert_eq!(h.snapshot().quantile(1.0), Some(0.1));
    }

    #[test]
    fn since_is_what_happened_in_between() {
        let h = Histogram::new(B);
        h.observe(Duration::from_millis(5));
        let then = h.snapshot();
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(50));
        let d = h.snapshot().since(&then);
        assert_eq!(d.count(), 2);
        assert_eq!(d.quantile(0.5).map(|q| q > 0.01), Some(true));
        assert!((d.sum_seconds() - 0.1).abs() < 1e-9);
    }

    proptest! {
        /// Against a sorted list: every value is counted in the first bucket whose bound is at
        /// least the value, and a quantile lies in the bucket holding that rank.
        #[test]
        fn matches_a_sorted_reference(values in proptest::collection::vec(0u64..200_000_000, 1..200), q in 0.0f64..1.0) {
            let h = Histogram::new(B);
            for v in &values {
                h.observe(Duration::from_nanos(*v));
            }
            let s = h.snapshot();
            for (bound, cumulative) in s.cumulative() {
                let expected = values.iter().filter(|v| (**v as f64 / 1e9) <= bound).count() as u64;
                prop_assert_eq!(cumulative, expected);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let truth = sorted[rank - 1] as f64 / 1e9;
            let got = s.quantile(q).unwrap();
            let bucket = |x: f64| B.iter().position(|b| x <= *b + 1e-12).unwrap_or(B.len());
            // Interpolation stays inside the true value's bucket (or at its edges).
            let (lo, hi) = match bucket(truth) {
                0 => (0.0, B[0]),
                i if i == B.len() => (B[B.len() - 1], B[B.len() - 1]),
                i => (B[i - 1], B[i]),
            };
            prop_assert!(got >= lo - 1e-12 && got <= hi + 1e-12, "q={} got={} truth={} in [{}, {}]", q, got, truth, lo, hi);
        }
    }
}
