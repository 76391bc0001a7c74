//! `gateway`: see `gateway --help`.

/// mimalloc (the default `mimalloc` feature): less CPU per request than the system allocator,
/// and no more memory per idle connection (BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: gateway_bin::alloc::MiMalloc = gateway_bin::alloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gateway_bin::admin::{self, Admin};
use gateway_bin::app::{self, App, RouteRow};
use gateway_bin::config::{Config, DEFAULT, Source};
use gateway_bin::reload::{self, Reloader};
use gateway_bin::serve::{self, Limits, ServedBody};

/// An HTTP gateway: routes, middleware, load balancing and forwarding, from a TOML file.
/// Without --config it runs the embedded demo topology (127.0.0.1:8080 in front of
/// 127.0.0.1:9001 and 127.0.0.1:9002).
///
/// Exit status: 0 after a clean stop; 1 when the configuration or a listener fails at
/// start-up; 3 when the shutdown grace period ran out with requests still in flight (they were
/// cut).
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    /// The configuration file (default: the embedded demo configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE, print its route table and warnings, and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text (level from RUST_LOG; default info).
    #[arg(long)]
    log_json: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Reload the configuration when the file's content changes (checked every second; a
    /// rename over the file and a swapped symlink, as Kubernetes does for a ConfigMap, both
    /// count). SIGHUP and `POST /reload` on the admin listener reload too.
    #[arg(long, requires = "config")]
    watch: bool,
}

#[cfg(target_os = "linux")]
use gateway_bin::upgrade::Inherited;

/// Off Linux no listening socket is handed in: every listener is bound.
#[cfg(not(target_os = "linux"))]
struct Inherited;

#[cfg(not(target_os = "linux"))]
impl Inherited {
    fn from_env() -> Inherited {
        Inherited
    }

    fn take(
        &mut self,
        _: std::net::SocketAddr,
    ) -> Option<std::io::Result<tokio::net::TcpListener>> {
        None
    }

    fn unused(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }
}

/// A listener on `at`: the socket handed in for it (an upgrade's, or systemd's, which keeps
/// the backlog it was given), else a new one with `backlog`.
fn listen(
    at: std::net::SocketAddr,
    backlog: u32,
    inherited: &mut Inherited,
) -> std::io::Result<tokio::net::TcpListener> {
    match inherited.take(at) {
        Some(adopted) => adopted,
        None => gateway_bin::serve::bind(at, backlog),
    }
}

/// Requests were cut because the shutdown grace ran out.
const EXIT_GRACE_EXPIRED: u8 = 3;

fn print_routes(rows: &[RouteRow]) {
    println!(
        "{:<20} {:<24} {:<28} {:<12} notes",
        "hosts", "methods", "path", "target"
    );
    for r in rows {
        println!(
            "{:<20} {:<24} {:<28} {:<12} {}",
            r.hosts, r.methods, r.path, r.upstream, r.notes
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT}");
        return ExitCode::SUCCESS;
    }
    let checking = args.check.is_some();
    let source = match Source::load(args.check.as_deref().or(args.config.as_deref())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match source.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One worker: a current-thread runtime, which spares the cross-thread wake-ups of a
    // multi-thread runtime with a single worker.
    let workers = config.server.worker_threads;
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    if workers > 1 {
        runtime.worker_threads(workers);
    }
    match runtime.build() {
        Ok(rt) => rt.block_on(run(args, source, config, checking)),
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, source: Source, config: Config, checking: bool) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init();
    }
    // Signals are taken over before anything else: one that comes early is then kept for its
    // task, not the default action (which ends the process).
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(target_os = "linux")]
    let usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
    let app: App<ServedBody> = match app::build(&config, &source) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("gateway: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match gateway_bin::tls::build(&config, &source) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("gateway: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if checking {
        println!("{}: ok", source.name);
        if let Some(t) = &config.tls {
            let at: Vec<String> = t.listen.iter().map(|a| a.to_string()).collect();
            println!(
                "https on {}: {} certificate(s), TLS {} and newer",
                at.join(", "),
                t.certificates.get_ref().len(),
                t.min_version.get_ref()
            );
        }
        print_routes(&app.routes);
        for w in &app.warnings {
            println!("warning: {w}");
        }
        return ExitCode::SUCCESS;
    }
    for w in &app.warnings {
        tracing::warn!(config = %source.name, "{w}");
    }

    let mut listeners = Vec::new();
    let plain = config
        .server
        .listen
        .iter()
        .map(|&at| (at, None, "server.listen"));
    let https = config.tls.iter().zip(&tls).flat_map(|(c, t)| {
        c.listen
            .iter()
            .map(|&at| (at, Some(t.acceptor.clone()), "tls.listen"))
    });
    // Sockets handed in by the process this one upgrades (or by systemd) are adopted, not
    // bound again.
    let mut inherited = Inherited::from_env();
    for (at, acceptor, key) in plain.chain(https) {
        match listen(at, config.server.listen_backlog, &mut inherited) {
            Ok(tcp) => listeners.push(serve::Listener { tcp, tls: acceptor }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                eprintln!(
                    "gateway: {at} is already in use; stop whatever holds it or change `{key}`"
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("gateway: cannot listen on {at} (`{key}`): {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Certificates reload on SIGHUP and when their files change.
    let _reloader = tls
        .as_ref()
        .map(|t| AbortOnDrop(gateway_bin::tls::watch(Arc::clone(&t.certificates))));
    let admin = Arc::new(Admin::new(&app));
    let mut admin_tasks = Vec::new();
    #[cfg(target_os = "linux")]
    let mut handover = gateway_bin::upgrade::Handover::default();
    #[cfg(target_os = "linux")]
    for l in &listeners {
        if let Err(error) = handover.add(&l.tcp) {
            tracing::warn!(%error, "a listening socket cannot be handed over: upgrades would refuse connections");
        }
    }
    if let Some(at) = config.admin.listen {
        let listener = match listen(at, config.server.listen_backlog, &mut inherited) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gateway: cannot listen on {at} (`admin.listen`): {e}");
                return ExitCode::FAILURE;
            }
        };
        #[cfg(target_os = "linux")]
        if let Err(error) = handover.add(&listener) {
            tracing::warn!(%error, "the admin socket cannot be handed over");
        }
        if let Ok(a) = listener.local_addr() {
            tracing::info!(
                addr = %a,
                dashboard = %format!("http://{a}/"),
                metrics = %format!("http://{a}/metrics"),
                "admin listening"
            );
        }
        admin_tasks.push(tokio::spawn(admin::serve(listener, Arc::clone(&admin))));
        admin_tasks.push(tokio::spawn(admin::run_sampler(Arc::clone(&admin))));
    }
    for l in &listeners {
        if let Ok(a) = l.tcp.local_addr() {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %a, scheme, config = %source.name, "gateway listening");
        }
    }
    let https_port = listeners
        .iter()
        .find(|l| l.tls.is_some())
        .and_then(|l| l.tcp.local_addr().ok())
        .map(|a| a.port());
    let mut limits = Limits::from(&config.server);
    if let (Some(c), Some(t)) = (&config.tls, &tls) {
        limits = limits.with_tls(c, t, https_port);
    }
    admin.set_ready();
    let connections = Arc::clone(&app.stats.connections);
    // The service follows reloads: SIGHUP, POST /reload, and --watch.
    let (reloader, service) = Reloader::start(
        args.config.clone(),
        &source,
        &config,
        app,
        Arc::clone(&admin),
        Arc::new(proxy::dns::SystemResolver),
    );
    let hook = Arc::downgrade(&reloader);
    admin.on_reload(Box::new(move || match hook.upgrade() {
        Some(r) => r.reload(),
        None => Err("shutting down".to_owned()),
    }));
    #[cfg(unix)]
    let _on_hangup = AbortOnDrop(tokio::spawn(reload::on_hangup(
        Arc::clone(&reloader),
        hangups,
    )));
    let _watch = args.watch.then(|| {
        AbortOnDrop(tokio::spawn(reload::watch(
            Arc::clone(&reloader),
            std::time::Duration::from_secs(1),
        )))
    });
    for at in inherited.unused() {
        tracing::warn!(%at, "an inherited socket is not in the configuration: closed");
    }
    drop(inherited);
    // SIGUSR2: a new binary takes the sockets over; once it serves, this one drains.
    let (upgraded_tx, upgraded) = tokio::sync::oneshot::channel::<u32>();
    #[cfg(target_os = "linux")]
    let _upgrades = AbortOnDrop(tokio::spawn(gateway_bin::upgrade::on_usr2(
        handover,
        upgraded_tx,
        usr2,
    )));
    #[cfg(not(target_os = "linux"))]
    drop(upgraded_tx);
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            Ok(_pid) = upgraded => {}
        }
    };
    // The process that started this one (an upgrade) stops accepting once it hears this.
    #[cfg(target_os = "linux")]
    gateway_bin::upgrade::announce_ready();
    let clean = serve::serve(service, listeners, limits, connections, stop).await;
    for task in admin_tasks {
        task.abort();
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_GRACE_EXPIRED)
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
