//! The last minute, second by second: a sampler copies the cumulative counters once a second
//! into a ring of 61 samples, from which the dashboard's rates, error rates, percentiles and
//! sparklines are differences. The request path never sees it: the sampler reads the same
//! atomics a scrape reads, and only the sampler and the admin listener take its lock.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use telemetry::Snapshot;

/// Samples kept: one minute of differences.
pub const KEPT: usize = 61;

/// One series' cumulative figures at one moment.
#[derive(Debug, Clone)]
pub struct Point {
    /// Requests (or attempts) so far.
    pub count: u64,
    /// Those that failed (5xx answers; failed attempts).
    pub errors: u64,
    /// Their durations so far.
    pub latency: Snapshot,
}

/// Everything sampled at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Per route (in the order the admin state lists them).
    pub routes: Vec<Point>,
    /// Per target, by `(upstream, target)` label.
    pub targets: Vec<((String, String), Point)>,
    /// Bytes read from and written to clients so far.
    pub bytes: (u64, u64),
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// The figures of one series over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Requests per second over the window.
    pub rate: f64,
    /// Share of them that failed.
    pub error_rate: f64,
    /// Median and 99th percentile, in milliseconds (`None` without requests).
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Requests in each second of the window, oldest first.
    pub per_second: Vec<u64>,
}

impl History {
    /// Forgets every sample (the series changed: a reloaded configuration).
    pub fn clear(&self) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Adds a sample, dropping the oldest beyond [`KEPT`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The window's figures for each route, each target (by label), and the client bytes per
    /// second in and out; `now` is a sample taken now (not stored).
    pub fn windows(&self, now: &Sample) -> Windows {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        // Before the first sample, the window is empty: rates of zero.
        let oldest = samples.front().unwrap_or(now);
        let seconds = now
            .at
            .duration_since(oldest.at)
            .max(Duration::from_millis(1));
        let routes = now
            .routes
            .iter()
            .enumerate()
            .map(|(i, point)| {
                window(
                    point,
                    samples.iter().map(|s| s.routes.get(i)),
                    oldest.routes.get(i),
                    seconds,
                )
            })
            .collect();
        let targets = now
            .targets
            .iter()
            .map(|(label, point)| {
                let find = |s: &Sample| {
                    s.targets
                        .iter()
                        .find(|(l, _)| l == label)
                        .map(|(_, p)| p.clone())
                };
                let past: Vec<Option<Point>> = samples.iter().map(find).collect();
                let first = find(oldest);
                (
                    label.clone(),
                    window(
                        point,
                        past.iter().map(Option::as_ref),
                        first.as_ref(),
                        seconds,
                    ),
                )
            })
            .collect();
        let secs = seconds.as_secs_f64();
        let bytes = (
            now.bytes.0.saturating_sub(oldest.bytes.0) as f64 / secs,
            now.bytes.1.saturating_sub(oldest.bytes.1) as f64 / secs,
        );
        Windows {
            routes,
            targets,
            bytes,
        }
    }
}

/// The figures of every series over the window.
#[derive(Debug, Default)]
pub struct Windows {
    /// Per route, in the sample's order.
    pub routes: Vec<Window>,
    /// Per target label.
    pub targets: Vec<((String, String), Window)>,
    /// Client bytes per second, in and out.
    pub bytes: (f64, f64),
}

fn window<'a>(
    now: &'a Point,
    past: impl Iterator<Item = Option<&'a Point>>,
    oldest: Option<&Point>,
    seconds: Duration,
) -> Window {
    let zero = Point {
        count: 0,
        errors: 0,
        latency: now.latency.since(&now.latency),
    };
    let oldest = oldest.unwrap_or(&zero);
    let count = now.count.saturating_sub(oldest.count);
    let errors = now.errors.saturating_sub(oldest.errors);
    let latency = now.latency.since(&oldest.latency);
    let mut per_second = Vec::with_capacity(KEPT);
    let mut previous: Option<u64> = None;
    for point in past.chain(std::iter::once(Some(now))) {
        let c = point.map_or(0, |p| p.count);
        if let Some(prev) = previous {
            per_second.push(c.saturating_sub(prev));
        }
        previous = Some(c);
    }
    Window {
        rate: count as f64 / seconds.as_secs_f64(),
        error_rate: if count == 0 {
            0.0
        } else {
            errors as f64 / count as f64
        },
        p50_ms: latency.quantile(0.5).map(|s| s * 1000.0),
        p99_ms: latency.quantile(0.99).map(|s| s * 1000.0),
        per_second,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::{Histogram, LATENCY_BUCKETS};

    fn point(h: &Histogram, count: u64, errors: u64) -> Point {
        Point {
            count,
            errors,
            latency: h.snapshot(),
        }
    }

    #[test]
    fn rates_and_percentiles_are_differences_over_the_window() {
        let history = History::default();
        let h = Histogram::new(LATENCY_BUCKETS);
        let t0 = Instant::now();
        // 100 requests before the window started: they must not count.
        for _ in 0..100 {
            h.observe(Duration::from_secs(2));
        }
        history.push(Sample {
            at: t0,
            routes: vec![point(&h, 100, 100)],
            targets: vec![],
            bytes: (1000, 5000),
        });
        for _ in 0..10 {
            h.observe(Duration::from_millis(3));
        }
        history.push(Sample {
            at: t0 + Duration::from_secs(1),
            routes: vec![point(&h, 110, 101)],
            targets: vec![],
            bytes: (2000, 9000),
        });
        for _ in 0..10 {
            h.observe(Duration::from_millis(3));
        }
        let now = Sample {
            at: t0 + Duration::from_secs(2),
            routes: vec![point(&h, 120, 101)],
            targets: vec![],
            bytes: (3000, 13000),
        };
        let w = history.windows(&now);
        let r = &w.routes[0];
        assert!((r.rate - 10.0).abs() < 1e-9, "{r:?}");
        assert!((r.error_rate - 0.05).abs() < 1e-9, "{r:?}");
        let p99 = r.p99_ms.unwrap();
        assert!(p99 > 2.5 && p99 <= 5.0, "only the window's requests: {p99}");
        assert_eq!(r.per_second, vec![10, 10]);
        assert_eq!(w.bytes, (1000.0, 4000.0));
    }

    #[test]
    fn the_ring_is_bounded() {
        let history = History::default();
        let h = Histogram::new(LATENCY_BUCKETS);
        let t0 = Instant::now();
        for i in 0..200u64 {
            history.push(Sample {
                at: t0 + Duration::from_secs(i),
                routes: vec![point(&h, i, 0)],
                targets: vec![],
                bytes: (0, 0),
            });
        }
        let now = Sample {
            at: t0 + Duration::from_secs(200),
            routes: vec![point(&h, 200, 0)],
            targets: vec![],
            bytes: (0, 0),
        };
        let w = history.windows(&now);
        assert_eq!(w.routes[0].per_second.len(), KEPT);
        assert!((w.routes[0].rate - 1.0).abs() < 1e-9);
    }
}
