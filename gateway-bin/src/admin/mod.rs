//! The admin listener: what an operator looks at, on an address of its own (loopback in the
//! demo), never on the traffic port, and never serving proxied routes:
//!
//! - `GET /metrics`: every series in the Prometheus text format, or OpenMetrics when the
//!   scraper asks for it (`admin/metrics.rs`);
//! - `GET /healthz`: the process serves; `GET /readyz`: listeners bound and every upstream has
//!   a usable target (else `503`, naming what is not ready);
//! - `GET /`: the live dashboard, one self-contained page; `GET /stats.json`: what it shows,
//!   the last minute's figures from the [`history`] sampler.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use proxy::{Attempt, Proxy};
use serde_json::{Value, json};
use telemetry::Format;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::RouteRow;
use crate::stats::{Stats, UNMATCHED};

pub mod history;
mod metrics;
mod process;

use history::{History, Point, Sample};

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Admin connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// What the admin listener serves from.
pub struct Admin<B> {
    /// What the configuration serving now has: swapped by a reload.
    view: ArcSwap<View<B>>,
    ready: AtomicBool,
    history: History,
    /// What `POST /reload` runs (set when the gateway can reload).
    reload: OnceLock<ReloadHook>,
}

/// What `POST /reload` runs: the new generation, or why nothing changed.
pub type ReloadHook = Box<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// The upstreams, routes and counters of the configuration serving now.
pub(crate) struct View<B> {
    pub(crate) upstreams: Vec<(String, Proxy<B>)>,
    pub(crate) routes: Vec<RouteRow>,
    pub(crate) stats: Arc<Stats>,
}

impl<B> View<B> {
    fn of(app: &crate::app::App<B>) -> Self {
        View {
            upstreams: app.upstreams.clone(),
            routes: app.routes.clone(),
            stats: Arc::clone(&app.stats),
        }
    }
}

impl<B> Admin<B> {
    /// The admin view of a built gateway.
    pub fn new(app: &crate::app::App<B>) -> Self {
        Admin {
            view: ArcSwap::from_pointee(View::of(app)),
            ready: AtomicBool::new(false),
            history: History::default(),
            reload: OnceLock::new(),
        }
    }

    /// From now on, shows `app` (a reloaded configuration); the dashboard's history starts
    /// again, its series having changed.
    pub fn replace(&self, app: &crate::app::App<B>) {
        self.view.store(Arc::new(View::of(app)));
        self.history.clear();
    }

    /// What `POST /reload` runs (once; later calls are ignored).
    pub fn on_reload(&self, hook: ReloadHook) {
        let _ = self.reload.set(hook);
    }

    /// The counters of the configuration serving now (they carry over reloads).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.view.load().stats)
    }

    pub(crate) fn view(&self) -> Arc<View<B>> {
        self.view.load_full()
    }

    /// Says the traffic listeners are bound (until then `/readyz` answers `503`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// What keeps the gateway from being ready: nothing when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.ready.load(Ordering::Relaxed) {
            why.push("the traffic listeners are not bound yet".to_owned());
        }
        for (name, proxy) in &self.view().upstreams {
            let balancer = proxy.upstream().balancer();
            let policy = balancer.policy();
            let targets = balancer.targets();
            if !targets.iter().any(|t| t.state().is_available(policy)) {
                why.push(format!(
                    "upstream `{name}`: none of its {} target(s) is usable",
                    targets.len()
                ));
            }
        }
        why
    }

    /// The figures now, as the sampler keeps them.
    fn sample(&self) -> Sample {
        let routes = self
            .request_series()
            .iter()
            .map(|(_, m)| Point {
                count: m.total(),
                errors: m.server_errors(),
                latency: m.duration().snapshot(),
            })
            .collect();
        let targets = self
            .target_views()
            .into_iter()
            .map(|t| {
                let m = t.addr.metrics();
                let count = Attempt::ALL.iter().map(|a| m.attempts(*a)).sum();
                let errors = count - m.attempts(Attempt::Ok);
                (
                    (t.upstream, t.target),
                    Point {
                        count,
                        errors,
                        latency: m.response_head(),
                    },
                )
            })
            .collect();
        let view = self.view();
        let c = &view.stats.connections;
        Sample {
            at: Instant::now(),
            routes,
            targets,
            bytes: (c.received_bytes.get(), c.sent_bytes.get()),
        }
    }

    /// Takes a sample into the history: once a second, from [`run_sampler`].
    pub fn tick(&self) {
        self.history.push(self.sample());
    }

    /// `GET /stats.json`: the dashboard's data.
    pub fn stats_json(&self) -> Value {
        let view = self.view();
        let now = self.sample();
        let windows = self.history.windows(&now);
        let ms = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        let routes: Vec<Value> = self
            .request_series()
            .iter()
            .zip(&windows.routes)
            .zip(&now.routes)
            .map(|(((route, _), w), point)| {
                let rows: Vec<&RouteRow> =
                    view.routes.iter().filter(|r| r.series == *route).collect();
                json!({
                    "route": route,
                    "methods": rows.iter().map(|r| r.methods.as_str()).collect::<Vec<_>>().join(" "),
                    "upstream": rows.first().map(|r| r.upstream.as_str()).unwrap_or(if *route == UNMATCHED { "-" } else { "" }),
                    "requests": point.count,
                    "rps": w.rate,
                    "error_rate": w.error_rate,
                    "p50_ms": ms(w.p50_ms),
                    "p99_ms": ms(w.p99_ms),
                    "per_second": w.per_second,
                })
            })
            .collect();
        let targets: Vec<Value> = self
            .target_views()
            .into_iter()
            .map(|t| {
                let w = windows
                    .targets
                    .iter()
                    .find(|((u, tt), _)| *u == t.upstream && *tt == t.target)
                    .map(|(_, w)| w.clone())
                    .unwrap_or_default();
                let m = t.addr.metrics();
                json!({
                    "upstream": t.upstream,
                    "target": t.target,
                    "state": t.state,
                    "available": t.available,
                    "check": t.check,
                    "in_flight": t.in_flight,
                    "idle_connections": t.idle,
                    "open_connections": m.connections_open(),
                    "rps": w.rate,
                    "error_rate": w.error_rate,
                    "p50_ms": ms(w.p50_ms),
                    "p99_ms": ms(w.p99_ms),
                    "per_second": w.per_second,
                    "weight_ratio": t.ramp,
                })
            })
            .collect();
        let total_rps: f64 = windows.routes.iter().map(|w| w.rate).sum();
        let total_errors: f64 = windows.routes.iter().map(|w| w.rate * w.error_rate).sum();
        let c = &view.stats.connections;
        let open: i64 = crate::stats::Protocol::ALL.iter().map(|p| c.open(*p)).sum();
        let uptime = SystemTime::now()
            .duration_since(view.stats.started)
            .unwrap_or_default();
        let reload = &view.stats.reload;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_s": uptime.as_secs(),
            "config": {
                "generation": reload.generation(),
                "loaded_at": crate::reload::utc(reload.loaded_at_ms()),
                "last_error": reload.last_error(),
            },
            "not_ready": self.not_ready(),
            "totals": {
                "rps": total_rps,
                "error_rate": if total_rps > 0.0 { total_errors / total_rps } else { 0.0 },
                "connections_open": open,
                "connections_accepted": c.accepted.get(),
                "received_bytes_per_s": windows.bytes.0,
                "sent_bytes_per_s": windows.bytes.1,
                "auth_denied": view.stats.auth_denied.get(),
                "panics": view.stats.panics.get(),
            },
            "routes": routes,
            "targets": targets,
        })
    }

    /// Answers one admin request; `from_loopback` says whether the peer is on this machine
    /// (`POST /reload` is refused otherwise: the admin port may be reachable for scraping).
    pub fn answer<T>(&self, req: &Request<T>, from_loopback: bool) -> Response<Full<Bytes>> {
        if req.method() == Method::POST && req.uri().path() == "/reload" {
            return self.reload_now(from_loopback);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed\n".into(),
            );
            res.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match req.uri().path() {
            "/metrics" => {
                let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
                let format = Format::negotiate(accept);
                with_type(self.metrics(format), format.content_type())
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let why = self.not_ready();
                if why.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{}\n", why.join("\n")),
                    )
                }
            }
            "/stats.json" => with_type(self.stats_json().to_string(), "application/json"),
            "/" => with_type(DASHBOARD.to_owned(), "text/html; charset=utf-8"),
            _ => text(StatusCode::NOT_FOUND, "Not Found\n".into()),
        }
    }
}

impl<B> Admin<B> {
    /// `POST /reload`: `200` with the new generation, `422` with why nothing changed.
    fn reload_now(&self, from_loopback: bool) -> Response<Full<Bytes>> {
        if !from_loopback {
            return text(
                StatusCode::FORBIDDEN,
                "reload is allowed from this machine only\n".into(),
            );
        }
        let Some(hook) = self.reload.get() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "this gateway cannot reload its configuration\n".into(),
            );
        };
        match hook() {
            Ok(generation) => text(
                StatusCode::OK,
                format!("reloaded: configuration generation {generation}\n"),
            ),
            Err(why) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not reloaded; the running configuration stays: {why}\n"),
            ),
        }
    }
}

fn with_type(body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = with_type(body, "text/plain; charset=utf-8");
    *res.status_mut() = status;
    res
}

/// Samples `admin` once a second, for as long as it runs (abort the task to stop it).
pub async fn run_sampler<B: Send + Sync + 'static>(admin: Arc<Admin<B>>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        admin.tick();
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped or aborted.
pub async fn serve<B: Send + Sync + 'static>(listener: TcpListener, admin: Arc<Admin<B>>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, from_loopback) = match listener.accept().await {
            Ok((stream, peer)) => (stream, peer.ip().is_loopback()),
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let res = admin.answer(&req, from_loopback);
                async move { Ok::<_, Infallible>(res) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            drop(permit);
        });
    }
}
