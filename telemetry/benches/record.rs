//! What recording costs on the request path: our `Counter` and `Histogram` next to
//! prometheus-client's (the Prometheus project's Rust client, whose `Histogram` takes a mutex
//! per observation), alone and with two threads recording into the same series.
//! `cargo bench -p telemetry --bench record`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::histogram::Histogram as PcHistogram;
use telemetry::{Counter, Histogram, LATENCY_BUCKETS};

const LATENCY: Duration = Duration::from_micros(1700);

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_thread");
    let ours = Counter::new();
    g.bench_function("counter/ours", |b| b.iter(|| black_box(&ours).inc()));
    let theirs: PcCounter = PcCounter::default();
    g.bench_function("counter/prometheus_client", |b| {
        b.iter(|| {
            black_box(&theirs).inc();
        })
    });
    let ours = Histogram::new(LATENCY_BUCKETS);
    g.bench_function("histogram/ours", |b| {
        b.iter(|| black_box(&ours).observe(black_box(LATENCY)))
    });
    let theirs = PcHistogram::new(LATENCY_BUCKETS.iter().copied());
    g.bench_function("histogram/prometheus_client", |b| {
        b.iter(|| black_box(&theirs).observe(black_box(LATENCY).as_secs_f64()))
    });
    g.finish();
}

/// Two threads, 10,000 observations each into one series; the time is for both.
fn contended(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut g = c.benchmark_group("two_threads_10k_each");
    let ours = Histogram::new(LATENCY_BUCKETS);
    g.bench_function("histogram/ours", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..N {
                            ours.observe(black_box(LATENCY));
                        }
                    });
                }
            })
        })
    });
    let theirs = PcHistogram::new(LATENCY_BUCKETS.iter().copied());
    g.bench_function("histogram/prometheus_client", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..N {
                            theirs.observe(black_box(LATENCY).as_secs_f64());
                        }
                    });
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, single, contended);
criterion_main!(benches);
