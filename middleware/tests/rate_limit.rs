//! The rate limiter's guarantees, over random arrival times and random keys.
#![allow(missing_docs, clippy::unwrap_used)]

use middleware::RateLimiter;
use proptest::prelude::*;

/// Whether the allowed arrival times (ms, sorted) ever exceed `burst + rate * window` in
/// some window between two of them.
fn worst_excess(allowed: &[u64], rate: f64, burst: u32) -> Option<(usize, u64)> {
    for i in 0..allowed.len() {
        for j in i..allowed.len() {
            let window_ms = allowed[j] - allowed[i];
            let count = (j - i + 1) as f64;
            let cap = f64::from(burst) + rate * window_ms as f64 / 1000.0;
            if count > cap + 1e-9 {
                return Some((j - i + 1, window_ms));
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// One key: in no window do more requests pass than the bucket allows, and a request is
    /// refused only when the bucket really is empty.
    #[test]
    fn never_more_than_the_bucket_allows_in_any_window(
        rate in 0.5f64..50.0,
        burst in 1u32..20,
        gaps in prop::collection::vec(0u64..400, 1..150),
    ) {
        let limiter = RateLimiter::new(rate, burst, 64);
        let key = limiter.hash_key(b"client");
        let mut now = 0;
        let mut allowed = Vec::new();
        for gap in gaps {
            now += gap;
            let d = limiter.check_at(key, now);
            if d.allowed {
                allowed.push(now);
            } else {
                prop_assert!(d.retry_after_s >= 1);
            }
        }
        prop_assert_eq!(worst_excess(&allowed, rate, burst), None);
        // The first `burst` requests always pass (the bucket starts full).
        prop_assert!(!allowed.is_empty());
    }

    /// Random keys without end: the table never grows past its capacity, evicts the least
    /// recently used, and each key that was never evicted kept its limit.
    #[test]
    fn memory_is_bounded_under_random_keys(keys in prop::collection::vec(any::<u64>(), 200..2000)) {
        let limiter = RateLimiter::new(1.0, 1, 64);
        let capacity = limiter.capacity();
        prop_assert_eq!(capacity, 64);
        for (t, k) in keys.iter().enumerate() {
            limiter.check_at(*k, t as u64);
        }
        prop_assert_eq!(limiter.capacity(), capacity);
        // More distinct keys than slots: some were evicted to make room.
        prop_assert!(limiter.evictions() > 0);
        // A key just seen is still there: with its bucket empty, it is refused.
        let last = *keys.last().unwrap();
        prop_assert!(!limiter.check_at(last, keys.len() as u64).allowed);
    }
}

#[test]
fn refill_and_reset_figures() {
    let l = RateLimiter::new(2.0, 4, 8);
    let k = l.hash_key(b"k");
    for i in 0..4 {
        let d = l.check_at(k, 0);
        assert!(d.allowed, "{i}");
        assert_eq!(d.remaining, 3 - i);
    }
    let d = l.check_at(k, 0);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_s, 1); // one token at 2/s: 0.5 s, rounded up
    assert_eq!(d.reset_s, 2); // four tokens: 2 s
    assert!(l.check_at(k, 500).allowed);
    assert_eq!(l.limited().get(), 1);
}
