//! `cargo bench -p middleware --bench rate_limit`: what a rate limit costs per request (one
//! token taken: hash the key, lock its set, refill, take), for one hot key, for keys spread
//! over the table, and with two threads on one key.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use middleware::RateLimiter;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");
    let limiter = RateLimiter::new(1e9, u32::MAX, 65_536);
    let key = limiter.hash_key(b"203.0.113.7");
    group.bench_function("one key (hash + check)", |b| {
        b.iter(|| black_box(limiter.check(limiter.hash_key(black_box(b"203.0.113.7")))))
    });
    group.bench_function("one key (check only)", |b| {
        b.iter(|| black_box(limiter.check(black_box(key))))
    });
    let keys: Vec<u64> = (0..50_000u32)
        .map(|i| limiter.hash_key(&i.to_le_bytes()))
        .collect();
    let mut i = 0;
    group.bench_function("50k keys in a 64k table", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(keys[i]))
        })
    });
    let shared = Arc::new(RateLimiter::new(1e9, u32::MAX, 65_536));
    group.bench_function("two threads, one key (per pair of checks)", |b| {
        b.iter_custom(|iters| {
            let other = Arc::clone(&shared);
            let start = std::time::Instant::now();
            let t = std::thread::spawn(move || {
                for _ in 0..iters {
                    black_box(other.check(key));
                }
            });
            for _ in 0..iters {
                black_box(shared.check(key));
            }
            t.join().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
