//! Configuration reload without a restart: on SIGHUP, on `POST /reload` at the admin listener
//! (from loopback only), and with `--watch` when the file's content changes (editors that
//! replace the file by rename, and the symlink swap Kubernetes does for a mounted ConfigMap,
//! both look like a change of content at the same path).
//!
//! The new file is read, parsed and fully built (the checks of `--check`) before anything
//! changes; then the new router is swapped in at once ([`LiveService`]: each request takes the
//! router current when it starts, so requests in flight finish on the configuration they
//! started with, and a kept-alive connection's next request uses the new one). An invalid file
//! changes nothing: it is logged with its `file:line: key: message`, answered to `POST
//! /reload`, kept as the last error on the index page and the dashboard, and counted.
//!
//! What survives a reload: an upstream whose definition did not change is the same upstream,
//! with its connection pool, its targets' passive and active health, its balancer position and
//! its background tasks; the counters and the series of the routes that stay keep counting. A
//! changed upstream (targets, strategy, timeouts...) is built anew and takes over, for the
//! targets that stay, their state (health, active-check results, in-flight counts, counters)
//! and, when connections would be made the same way (protocol and TLS unchanged), their
//! pooled connections; the removed targets' idle connections close, and requests in flight on
//! them finish. Settings that need a restart (the listeners, `[server]` limits, the admin
//! listener) are named in the log and left as they were: a binary upgrade (SIGUSR2, see
//! `upgrade`) applies them without refusing a connection.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{Request, Response};
use proxy::{Background, Proxy};
use router::{Body, MuxFuture, MuxService};
use telemetry::Counter;
use tower::Service;

use crate::admin::Admin;
use crate::app::{self, App, GatewayBody};
use crate::config::{Config, Source};

/// The configuration's generation (1 at start, one more per successful reload), when it was
/// loaded, and how reloads went.
#[derive(Debug)]
pub struct ReloadStatus {
    generation: AtomicU64,
    loaded_at_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Reloads that took effect.
    pub succeeded: Counter,
    /// Reloads refused (the file did not read, parse or build).
    pub failed: Counter,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        ReloadStatus {
            generation: AtomicU64::new(1),
            loaded_at_ms: AtomicU64::new(unix_ms()),
            last_error: Mutex::new(None),
            succeeded: Counter::default(),
            failed: Counter::default(),
        }
    }
}

impl ReloadStatus {
    /// The generation serving now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// When it was loaded, in milliseconds since the Unix epoch.
    pub fn loaded_at_ms(&self) -> u64 {
        self.loaded_at_ms.load(Ordering::Relaxed)
    }

    /// Why the last reload failed, when it did (cleared by the next one that succeeds).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn loaded(&self) -> u64 {
        self.loaded_at_ms.store(unix_ms(), Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.succeeded.inc();
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn refused(&self, why: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why.to_owned());
        self.failed.inc();
    }
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time, to the second.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), in the proleptic Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The service the listeners serve: the router of the configuration current when a request
/// starts (one `ArcSwap` load per request, no shared count written).
pub struct LiveService<B> {
    current: Arc<ArcSwap<MuxService<B>>>,
}

impl<B> Clone for LiveService<B> {
    fn clone(&self) -> Self {
        LiveService {
            current: Arc::clone(&self.current),
        }
    }
}

impl<B> std::fmt::Debug for LiveService<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveService")
    }
}

impl<B> LiveService<B> {
    /// Serves `service` until [`replace`](Self::replace)d.
    pub fn new(service: MuxService<B>) -> Self {
        LiveService {
            current: Arc::new(ArcSwap::from_pointee(service)),
        }
    }

    /// From now on, new requests go to `service`.
    pub fn replace(&self, service: MuxService<B>) {
        self.current.store(Arc::new(service));
    }

    /// The response to `req` from the router current now: [`Service::call`] through a
    /// shared reference (a connection calls it without cloning the service per request).
    pub fn call_ref(&self, req: Request<B>) -> MuxFuture
    where
        B: Send + 'static,
    {
        // A guard, not a clone: no shared reference count touched per request.
        self.current.load().call_ref(req)
    }
}

impl<B: Send + 'static> Service<Request<B>> for LiveService<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = MuxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> MuxFuture {
        self.call_ref(req)
    }
}

/// What is running now, that the next reload starts from.
struct Running<B> {
    upstreams: Vec<(String, Proxy<B>)>,
    stats: Arc<crate::stats::Stats>,
    /// Each upstream's background tasks (DNS, active checks), with the proxy they serve.
    backgrounds: Vec<(Proxy<B>, Background)>,
    /// The settings only a restart changes, as the running process has them.
    restart_only: Vec<(&'static str, String)>,
}

/// Reloads the configuration file and swaps the result in (see the [module docs](self)).
pub struct Reloader<B> {
    path: Option<PathBuf>,
    /// A hash of the text serving now: `--watch` reloads when the file differs from it.
    loaded: AtomicU64,
    live: LiveService<B>,
    admin: Arc<Admin<B>>,
    resolver: Arc<dyn proxy::dns::Resolve>,
    running: Mutex<Running<B>>,
}

impl<B: GatewayBody> Reloader<B> {
    /// Takes over `app` (built from `source`, read from the file at `path`, or the embedded
    /// default when `None`): starts its upstreams' background tasks, and returns the service
    /// to serve, which follows every reload.
    pub fn start(
        path: Option<PathBuf>,
        source: &Source,
        config: &Config,
        app: App<B>,
        admin: Arc<Admin<B>>,
        resolver: Arc<dyn proxy::dns::Resolve>,
    ) -> (Arc<Reloader<B>>, LiveService<B>) {
        let live = LiveService::new(app.service);
        let backgrounds = app
            .upstreams
            .iter()
            .map(|(_, p)| (p.clone(), p.start(Arc::clone(&resolver))))
            .collect();
        let reloader = Arc::new(Reloader {
            path,
            loaded: AtomicU64::new(hash(source.text.as_bytes())),
            live: live.clone(),
            admin,
            resolver,
            running: Mutex::new(Running {
                upstreams: app.upstreams,
                stats: app.stats,
                backgrounds,
                restart_only: restart_only(config),
            }),
        });
        (reloader, live)
    }

    /// The upstreams of the configuration serving now.
    pub fn upstreams(&self) -> Vec<(String, Proxy<B>)> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upstreams
            .clone()
    }

    /// Reads the file again and, if it builds, serves it from now on: the new generation, or
    /// why nothing changed (`file:line: key: message` for a bad file). Counted, and the
    /// failure kept as the last error.
    pub fn reload(&self) -> Result<u64, String> {
        let result = self.try_reload();
        let status = &self.admin.stats().reload;
        match &result {
            Ok(generation) => {
                tracing::info!(generation, "configuration reloaded");
            }
            Err(why) => {
                status.refused(why);
                tracing::error!(error = %why, "configuration not reloaded; the running one stays");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<u64, String> {
        let path = self
            .path
            .as_ref()
            .ok_or("running on the embedded default configuration: there is no file to reload")?;
        let source = Source::load(Some(path))?;
        let text_hash = hash(source.text.as_bytes());
        let config = source.parse().map_err(|e| e.to_string())?;
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = app::Previous {
            upstreams: &running.upstreams,
            stats: &running.stats,
        };
        let app = app::build_from(&config, &source, Some(previous)).map_err(|e| e.to_string())?;
        for w in &app.warnings {
            tracing::warn!(config = %source.name, "{w}");
        }
        for (key, now) in restart_only(&config) {
            let was = running
                .restart_only
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str());
            if was != Some(now.as_str()) {
                tracing::warn!(
                    key,
                    "`{key}` changed, which needs a restart: the running value stays"
                );
            }
        }
        // Background tasks: kept for the upstreams that stay the same, started for the new
        // ones; those of the upstreams that went stop as their handles drop.
        let mut old = std::mem::take(&mut running.backgrounds);
        let mut backgrounds = Vec::with_capacity(app.upstreams.len());
        for (_, proxy) in &app.upstreams {
            match old.iter().position(|(p, _)| p.ptr_eq(proxy)) {
                Some(at) => backgrounds.push(old.swap_remove(at)),
                None => backgrounds.push((proxy.clone(), proxy.start(Arc::clone(&self.resolver)))),
            }
        }
        drop(old);
        let kept = app
            .upstreams
            .iter()
            .filter(|(_, p)| running.upstreams.iter().any(|(_, q)| q.ptr_eq(p)))
            .count();
        tracing::info!(
            upstreams = app.upstreams.len(),
            kept,
            routes = app.routes.len(),
            "new configuration built"
        );
        running.backgrounds = backgrounds;
        running.upstreams = app.upstreams.clone();
        running.stats = Arc::clone(&app.stats);
        self.admin.replace(&app);
        self.live.replace(app.service);
        self.loaded.store(text_hash, Ordering::Relaxed);
        Ok(app.stats.reload.loaded())
    }
}

/// The settings a reload cannot change, as text to compare.
fn restart_only(config: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("server", format!("{:?}", config.server)),
        ("admin.listen", format!("{:?}", config.admin.listen)),
        (
            "tls.listen",
            format!("{:?}", config.tls.as_ref().map(|t| &t.listen)),
        ),
        // The HTTPS listeners' settings are built into their acceptors at start; the
        // certificate files reload on their own (SIGHUP, or when they change).
        (
            "tls",
            format!(
                "{:?}",
                config.tls.as_ref().map(|t| (
                    t.certificates
                        .get_ref()
                        .iter()
                        .map(|c| (&c.get_ref().cert, &c.get_ref().key))
                        .collect::<Vec<_>>(),
                    t.min_version.get_ref(),
                    t.client_auth.as_ref().map(|v| v.get_ref()),
                    t.client_ca_file.as_ref().map(|v| v.get_ref()),
                    t.redirect_http,
                    t.hsts_max_age_s,
                    t.client_subject_header.as_ref().map(|v| v.get_ref()),
                ))
            ),
        ),
    ]
}

/// Reloads on every signal `hangups` receives (SIGHUP, made at start-up so that none is
/// missed or kills the process before this task runs), for as long as the task runs.
#[cfg(unix)]
pub async fn on_hangup<B: GatewayBody>(
    reloader: Arc<Reloader<B>>,
    hangups: Option<tokio::signal::unix::Signal>,
) {
    let Some(mut hangups) = hangups else {
        tracing::warn!("cannot listen for SIGHUP: reload with POST /reload or --watch");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = reloader.reload();
    }
}

/// How long a changed file must stay the same before it is loaded (an editor or a deploy
/// tool writing it in several steps).
const SETTLE: Duration = Duration::from_millis(200);

/// Reloads when the content at `path` differs from the configuration serving now, looking
/// every `every` (the path is read whole, through any symlinks: a rename over it and a swapped
/// symlink both show), for as long as the task runs. A content that failed to load is not
/// tried again until it changes; a file that is missing for a moment is waited for.
pub async fn watch<B: GatewayBody>(reloader: Arc<Reloader<B>>, every: Duration) {
    let Some(path) = reloader.path.clone() else {
        tracing::warn!("--watch: running on the embedded default; there is no file to watch");
        return;
    };
    let mut tried = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(now) = content_hash(&path).await else {
            continue;
        };
        if now == reloader.loaded.load(Ordering::Relaxed) || Some(now) == tried {
            continue;
        }
        // Written in several steps? Wait until it holds still.
        tokio::time::sleep(SETTLE).await;
        if content_hash(&path).await != Some(now) {
            continue;
        }
        tried = Some(now);
        tracing::info!(config = %path.display(), "the configuration file changed: reloading");
        let _ = reloader.reload();
    }
}

async fn content_hash(path: &std::path::Path) -> Option<u64> {
    tokio::fs::read(path).await.ok().map(|bytes| hash(&bytes))
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_rfc3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_006_096_789), "2026-11-30T02:34:56Z");
    }
}
