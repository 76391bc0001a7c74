//! Metrics for a server's request path: [`Counter`], [`Gauge`] and [`Histogram`] are relaxed
//! atomics (no lock, no allocation when recorded), one set per stripe ([`Stripes`]: threads
//! recording at once write to cache lines of their own), made once at start-up for every series
//! the server will ever report, so that a request never looks a series up by its labels.
//! [`Exposition`] writes them in the Prometheus text format (0.0.4) or in OpenMetrics 1.0,
//! chosen from the scraper's `Accept` header by [`Format::negotiate`]. The durations they
//! record are read from [`clock::now`], which reads the clock once per poll of a task run in
//! [`clock::OneReadPerPoll`].
//!
//! ```
//! use std::time::Duration;
//! use telemetry::{Counter, Exposition, Format, Histogram, Kind, LATENCY_BUCKETS};
//!
//! let requests = Counter::new();
//! let latency = Histogram::new(LATENCY_BUCKETS);
//! requests.inc();
//! latency.observe(Duration::from_millis(3));
//!
//! let mut out = Exposition::new(Format::Prometheus);
//! out.family("http_requests", "Requests served.", Kind::Counter);
//! out.counter(&[("route", "/api/*path")], requests.get());
//! out.family("http_request_duration_seconds", "Time to serve a request.", Kind::Histogram);
//! out.histogram(&[("route", "/api/*path")], &latency.snapshot());
//! let text = out.finish();
//! assert!(text.contains("http_requests_total{route=\"/api/*path\"} 1\n"));
//! assert!(text.contains("http_request_duration_seconds_bucket{route=\"/api/*path\",le=\"0.005\"} 1\n"));
//! assert!(text.contains("http_request_duration_seconds_count{route=\"/api/*path\"} 1\n"));
//! ```

pub mod clock;
mod counter;
mod exposition;
mod histogram;
pub mod stripes;

pub use counter::{Counter, Gauge};
pub use exposition::{Exposition, Format, Kind};
pub use histogram::{Histogram, LATENCY_BUCKETS, Snapshot};
pub use stripes::Stripes;
