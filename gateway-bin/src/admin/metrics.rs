//! `GET /metrics`: every series, in the format the scraper asked for. Names follow the
//! Prometheus conventions (base units, `_total`, `_seconds`, `_bytes`); labels are the route
//! pattern, the upstream and the target, never anything a client chose.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use proxy::{Attempt, Retry};
use telemetry::{Exposition, Format, Kind};

use super::{Admin, process};
use crate::stats::{Protocol, UNMATCHED};

impl<B> Admin<B> {
    /// The exposition of every series.
    pub fn metrics(&self, format: Format) -> String {
        let mut out = Exposition::new(format);
        self.process(&mut out);
        self.requests(&mut out);
        self.connections(&mut out);
        self.refusals(&mut out);
        self.upstreams(&mut out);
        out.finish()
    }

    fn process(&self, out: &mut Exposition) {
        out.family("gateway_build", "The gateway's version.", Kind::Info);
        out.info(&[("version", env!("CARGO_PKG_VERSION"))]);
        let view = self.view();
        let start = view
            .stats
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        out.family(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            Kind::Gauge,
        );
        out.gauge(&[], start.floor());
        let reload = &view.stats.reload;
        out.family(
            "gateway_config_generation",
            "The configuration's generation: 1 at start, one more per reload that took effect.",
            Kind::Gauge,
        );
        out.gauge(&[], reload.generation() as f64);
        out.family(
            "gateway_config_loaded_timestamp_seconds",
            "When the configuration serving now was loaded, since the Unix epoch, in seconds.",
            Kind::Gauge,
        );
        out.gauge(&[], (reload.loaded_at_ms() / 1000) as f64);
        out.family(
            "gateway_config_reloads",
            "Configuration reloads, by result: ok (took effect) or failed (the file did not read, parse or build; the running configuration stayed).",
            Kind::Counter,
        );
        out.counter(&[("result", "ok")], reload.succeeded.get());
        out.counter(&[("result", "failed")], reload.failed.get());
        if let Some(p) = process::read() {
            out.family(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                Kind::Counter,
            );
            out.counter_f64(&[], p.cpu_seconds);
            out.family(
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
                Kind::Gauge,
            );
            out.gauge(&[], p.resident_bytes as f64);
            out.family("process_open_fds", "Open file descriptors.", Kind::Gauge);
            out.gauge(&[], p.open_fds as f64);
        }
    }

    fn requests(&self, out: &mut Exposition) {
        let series = self.request_series();
        out.family(
            "gateway_requests",
            "Requests served, by route pattern, method and status class (a client that left before its response counts as 4xx).",
            Kind::Counter,
        );
        for (route, m) in &series {
            for (method, class, n) in m.counts() {
                out.counter(
                    &[
                        ("route", route),
                        ("method", method),
                        ("status_class", class),
                    ],
                    n,
                );
            }
        }
        out.family(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by route pattern.",
            Kind::Histogram,
        );
        for (route, m) in &series {
            out.histogram(&[("route", route)], &m.duration().snapshot());
        }
    }

    fn connections(&self, out: &mut Exposition) {
        let view = self.view();
        let c = &view.stats.connections;
        out.family(
            "gateway_client_connections_accepted",
            "Client connections accepted.",
            Kind::Counter,
        );
        out.counter(&[], c.accepted.get());
        out.family(
            "gateway_client_connections_open",
            "Client connections open, by protocol (pending: no request yet).",
            Kind::Gauge,
        );
        for p in Protocol::ALL {
            out.gauge(&[("protocol", p.label())], c.open(p) as f64);
        }
        out.family(
            "gateway_client_connections_parked",
            "Open client connections parked while they wait for a request (among the open ones).",
            Kind::Gauge,
        );
        out.gauge(&[], c.parked.get() as f64);
        out.family(
            "gateway_client_received_bytes",
            "Bytes read from clients.",
            Kind::Counter,
        );
        out.counter(&[], c.received_bytes.get());
        out.family(
            "gateway_client_sent_bytes",
            "Bytes written to clients.",
            Kind::Counter,
        );
        out.counter(&[], c.sent_bytes.get());
        out.family(
            "gateway_client_connection_limit_reached",
            "Times accepting paused because max_connections were open.",
            Kind::Counter,
        );
        out.counter(&[], c.limit_reached.get());
    }

    fn refusals(&self, out: &mut Exposition) {
        let view = self.view();
        let s = &view.stats;
        out.family(
            "gateway_requests_rejected",
            "Requests refused by a limit: head over max_header_bytes (431), head not complete within header_read_timeout_ms, declared body over max_body_bytes (413); and TLS connections closed before their handshake completed: plain HTTP on the HTTPS port (400), no handshake within header_read_timeout_ms, a handshake error.",
            Kind::Counter,
        );
        for (reason, n) in [
            ("tls_plain_http", s.connections.tls_plain_http.get()),
            ("tls_handshake_timeout", s.connections.tls_timeouts.get()),
            ("tls_handshake_error", s.connections.tls_errors.get()),
            ("header_too_large", s.connections.header_too_large.get()),
            ("header_timeout", s.connections.header_timeouts.get()),
            ("body_too_large", s.body_too_large.get()),
        ] {
            out.counter(&[("reason", reason)], n);
        }
        for (name, help, n) in [
            (
                "gateway_auth_denied",
                "Requests refused by a route's auth gate.",
                s.auth_denied.get(),
            ),
            (
                "gateway_panics_recovered",
                "Panics caught and answered 500.",
                s.panics.get(),
            ),
            (
                "gateway_route_deadline_exceeded",
                "Requests cut by a route's timeout_ms (503).",
                s.deadlines.get(),
            ),
            (
                "gateway_rate_limited",
                "Requests refused by a route's rate limit (429).",
                s.rate_limited.get(),
            ),
        ] {
            out.family(name, help, Kind::Counter);
            out.counter(&[], n);
        }
        out.family(
            "gateway_mirror_requests",
            "Copies of requests for routes' mirrors: sent, failed (a 5xx or an error at the shadow), dropped (too many in flight), skipped (body over the limit or never complete).",
            Kind::Counter,
        );
        let m = &s.mirror;
        for (outcome, n) in [
            ("sent", m.sent.get()),
            ("failed", m.failed.get()),
            ("dropped", m.dropped.get()),
            ("skipped", m.skipped.get()),
        ] {
            out.counter(&[("outcome", outcome)], n);
        }
    }

    fn upstreams(&self, out: &mut Exposition) {
        let targets = self.target_views();
        out.family(
            "gateway_upstream_attempts",
            "Attempts on upstream targets, by outcome: ok, 5xx (a 5xx answer), connect_error, timeout (no response head in time), reset (broken before a head).",
            Kind::Counter,
        );
        for t in &targets {
            for a in Attempt::ALL {
                out.counter(
                    &[
                        ("upstream", &t.upstream),
                        ("target", &t.target),
                        ("outcome", a.label()),
                    ],
                    t.addr.metrics().attempts(a),
                );
            }
        }
        out.family(
            "gateway_upstream_response_head_seconds",
            "Time from picking a target to its response head, connecting included.",
            Kind::Histogram,
        );
        for t in &targets {
            out.histogram(
                &[("upstream", &t.upstream), ("target", &t.target)],
                &t.addr.metrics().response_head(),
            );
        }
        let per_target: [PerTarget; 8] = [
            (
                "gateway_upstream_body_failures",
                "Response bodies that broke off after their head.",
                Kind::Counter,
                |t| t.addr.metrics().body_failures() as f64,
            ),
            (
                "gateway_upstream_connections_opened",
                "Connections opened to the target.",
                Kind::Counter,
                |t| t.addr.metrics().connections_opened() as f64,
            ),
            (
                "gateway_upstream_connections_open",
                "Connections open to the target, busy or idle.",
                Kind::Gauge,
                |t| t.addr.metrics().connections_open() as f64,
            ),
            (
                "gateway_upstream_connections_idle",
                "Idle connections to the target kept in the pool.",
                Kind::Gauge,
                |t| t.idle as f64,
            ),
            (
                "gateway_upstream_in_flight",
                "Requests in flight on the target, connecting included.",
                Kind::Gauge,
                |t| t.in_flight as f64,
            ),
            (
                "gateway_upstream_target_available",
                "1 when the balancer may pick the target now.",
                Kind::Gauge,
                |t| f64::from(u8::from(t.available)),
            ),
            (
                "gateway_upstream_target_ejected",
                "1 while passive health keeps the target out after failures.",
                Kind::Gauge,
                |t| f64::from(u8::from(t.ejected)),
            ),
            (
                "gateway_upstream_target_weight_ratio",
                "Share of its weight the target gets now (below 1 while slow start ramps it up).",
                Kind::Gauge,
                |t| t.ramp,
            ),
        ];
        for (name, help, kind, value) in per_target {
            out.family(name, help, kind);
            for t in &targets {
                let labels = [("upstream", t.upstream.as_str()), ("target", &t.target)];
                match kind {
                    Kind::Counter => out.counter(&labels, value(t) as u64),
                    _ => out.gauge(&labels, value(t)),
                }
            }
        }
        out.family(
            "gateway_upstream_target_check_up",
            "1 while active health checks pass, 0 while they keep the target out (targets of upstreams with checks only).",
            Kind::Gauge,
        );
        for t in targets.iter().filter(|t| t.checked) {
            out.gauge(
                &[("upstream", &t.upstream), ("target", &t.target)],
                f64::from(u8::from(!t.check_down)),
            );
        }
        out.family(
            "gateway_upstream_retries",
            "Requests sent again: to the next target after a failed attempt, or on a new connection after a pooled one turned out closed.",
            Kind::Counter,
        );
        for (name, proxy) in &self.view().upstreams {
            for r in Retry::ALL {
                out.counter(
                    &[("upstream", name), ("reason", r.label())],
                    proxy.upstream().metrics().retries(r),
                );
            }
        }
        out.family(
            "gateway_upstream_unavailable",
            "Requests answered 503 because no target of the upstream was available.",
            Kind::Counter,
        );
        for (name, proxy) in &self.view().upstreams {
            out.counter(
                &[("upstream", name)],
                proxy.upstream().metrics().unavailable(),
            );
        }
        out.family(
            "gateway_upstream_exhausted",
            "Requests answered 502 or 504 after every attempt failed.",
            Kind::Counter,
        );
        for (name, proxy) in &self.view().upstreams {
            out.counter(
                &[("upstream", name)],
                proxy.upstream().metrics().exhausted(),
            );
        }
    }

    /// Every request series with its route label, the unmatched one last.
    pub(super) fn request_series(&self) -> Vec<(String, Arc<middleware::RequestMetrics>)> {
        let view = self.view();
        let mut all: Vec<(String, Arc<middleware::RequestMetrics>)> = view
            .stats
            .routes
            .iter()
            .map(|(route, m)| (route.clone(), Arc::clone(m)))
            .collect();
        all.push((UNMATCHED.to_owned(), Arc::clone(&view.stats.unmatched)));
        all
    }
}

/// A per-target family: name, help, kind, and how to read its value.
type PerTarget = (&'static str, &'static str, Kind, fn(&TargetView) -> f64);

/// One target as the exposition and the dashboard show it.
pub(super) struct TargetView {
    pub(super) upstream: String,
    pub(super) target: String,
    pub(super) addr: proxy::TargetAddr,
    pub(super) state: &'static str,
    pub(super) available: bool,
    pub(super) ejected: bool,
    pub(super) checked: bool,
    pub(super) check_down: bool,
    pub(super) check: Option<String>,
    pub(super) ramp: f64,
    pub(super) in_flight: usize,
    pub(super) idle: usize,
}

impl<B> Admin<B> {
    /// Every target of every upstream, now.
    pub(super) fn target_views(&self) -> Vec<TargetView> {
        let mut views = Vec::new();
        for (name, proxy) in &self.view().upstreams {
            let balancer = proxy.upstream().balancer();
            let policy = balancer.policy();
            let idle = proxy.idle_connections_by_target();
            for t in balancer.targets() {
                let s = t.state();
                let target = t.value().to_string();
                let last = s.last_check();
                let ejected = s.is_passive_down(policy);
                let state = if s.is_marked_down() {
                    "marked down"
                } else if s.is_check_down() {
                    "failing checks"
                } else if ejected {
                    "ejected"
                } else if s.ramp(policy).is_some() {
                    "ramping up"
                } else {
                    "up"
                };
                views.push(TargetView {
                    upstream: name.clone(),
                    idle: idle
                        .iter()
                        .find(|(k, _)| **k == *target)
                        .map_or(0, |(_, n)| *n),
                    target,
                    addr: t.value().clone(),
                    state,
                    available: s.is_available(policy),
                    ejected,
                    checked: last.is_some(),
                    check_down: s.is_check_down(),
                    check: last
                        .map(|c| format!("{} {}", if c.ok { "ok" } else { "failed" }, c.detail)),
                    ramp: s.ramp(policy).unwrap_or(1.0),
                    in_flight: s.in_flight(),
                });
            }
        }
        views
    }
}
