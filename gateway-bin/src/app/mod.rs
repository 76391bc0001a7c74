//! Wiring: a parsed configuration becomes one `Mux` with its upstreams, routes, middleware and
//! index page. Everything that can be decided once is decided here, in one file per job:
//! `upstreams` (targets, health, forwarding settings), [`routes`] (the route stacks and the
//! route table), `pre` (the stack every request meets first), [`index`] (the page at `GET /`)
//! and `warnings` (valid but suspicious configurations).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use proxy::Proxy;
use router::{Mux, MuxService};

use crate::config::{Config, ConfigError, Source};
use crate::stats::Stats;

mod actions;
mod edits;
mod forwarding;
pub mod index;
mod matching;
mod policies;
mod pre;
pub mod routes;
mod upstreams;
mod warnings;

pub use forwarding::MirrorStats;

pub use routes::RouteRow;

/// The request body type the gateway's routes take.
pub trait GatewayBody:
    http_body::Body<Data = Bytes, Error: Into<proxy::BoxError>> + Send + Unpin + 'static
{
}

impl<B> GatewayBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<proxy::BoxError>> + Send + Unpin + 'static
{
}

/// The built gateway: the service to serve, and what the index page and `--check` show.
pub struct App<B> {
    /// The router with everything wired in.
    pub service: MuxService<B>,
    /// The route table.
    pub routes: Vec<RouteRow>,
    /// The upstreams, for health display.
    pub upstreams: Vec<(String, Proxy<B>)>,
    /// Valid but suspicious settings, for `--check` and the start-up log.
    pub warnings: Vec<String>,
    /// What the gateway counts (the proxies count per upstream and target).
    pub stats: Arc<Stats>,
}

impl<B: GatewayBody> App<B> {
    /// Starts every upstream's background tasks (DNS re-resolution, active health checks)
    /// with the system's resolver; they run until the returned handles are dropped.
    pub fn start(&self) -> Vec<proxy::Background> {
        self.start_with(Arc::new(proxy::dns::SystemResolver))
    }

    /// [`start`](Self::start) with another resolver (tests, service registries).
    pub fn start_with(&self, resolver: Arc<dyn proxy::dns::Resolve>) -> Vec<proxy::Background> {
        self.upstreams
            .iter()
            .map(|(_, p)| p.start(Arc::clone(&resolver)))
            .filter(|b| !b.is_empty())
            .collect()
    }
}

/// What a reload builds on: the running upstreams (an unchanged one is kept as it is) and
/// the running counters (they keep counting).
pub struct Previous<'a, B> {
    /// The running upstreams.
    pub upstreams: &'a [(String, Proxy<B>)],
    /// The running counters.
    pub stats: &'a Stats,
}

/// Builds the gateway from `config` (positions in errors refer to `source`).
pub fn build<B: GatewayBody>(config: &Config, source: &Source) -> Result<App<B>, ConfigError> {
    build_from(config, source, None)
}

/// [`build`], keeping what `previous` has running where the configuration did not change it.
pub fn build_from<B: GatewayBody>(
    config: &Config,
    source: &Source,
    previous: Option<Previous<'_, B>>,
) -> Result<App<B>, ConfigError> {
    let proxies = upstreams::build(
        config,
        source,
        previous.as_ref().map_or(&[], |p| p.upstreams),
    )?;
    let mut mux: Mux<B> = Mux::new();
    let mut stats = previous.map_or_else(Stats::default, |p| Stats::continuing(p.stats));
    let rows = routes::build(config, &proxies, &mut mux, &mut stats, source)?;
    stats.retain_routes(|name| rows.iter().any(|r| r.series == name));
    let mut warnings = warnings::gate_bypasses(&rows, &proxies);
    warnings.extend(warnings::insecure_upstreams(config));
    let upstreams: Vec<(String, Proxy<B>)> = proxies.into_iter().collect();

    if config.index.enabled {
        // A route of the user's always wins over the page.
        match rows.iter().find(|r| r.answers_get_root()) {
            Some(owner) => warnings.push(format!(
                "the index page is enabled, but route `{}` answers GET /: the route wins and the page is not served",
                owner.path
            )),
            None => {
                let page = Arc::new(index::IndexPage {
                    routes: rows.clone(),
                    upstreams: upstreams.clone(),
                    reload: Arc::clone(&stats.reload),
                });
                let service = tower::service_fn(move |req: Request<B>| {
                    let page = Arc::clone(&page);
                    async move { Ok::<_, Infallible>(page.render(&req)) }
                });
                mux.get("/", service)
                    .map_err(|e| source.error(0..0, Some("index"), e.to_string()))?;
            }
        }
    }
    pre::install(&mut mux, config, &stats);
    Ok(App {
        service: mux.into_service(),
        routes: rows,
        upstreams,
        warnings,
        stats: Arc::new(stats),
    })
}
