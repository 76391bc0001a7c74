//! `gateway`: see `gateway --help`.

/// With `--features mimalloc`: less CPU per request, more memory per idle connection.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gateway_bin::app::{self, RouteRow};
use gateway_bin::config::{DEFAULT, Source};
use gateway_bin::serve::{self, Limits, ServedBody};

/// An HTTP gateway: routes, middleware, load balancing and forwarding, from a TOML file.
/// Without --config it runs the embedded demo topology (127.0.0.1:8080 in front of
/// 127.0.0.1:9001 and 127.0.0.1:9002).
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    /// The configuration file (default: the embedded demo configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE, print its route table, and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text (level from RUST_LOG; default info).
    #[arg(long)]
    log_json: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn load(path: Option<&PathBuf>) -> Result<Source, String> {
    match path {
        None => Ok(Source {
            name: "<embedded default>".into(),
            text: DEFAULT.into(),
        }),
        Some(p) => std::fs::read_to_string(p)
            .map(|text| Source {
                name: p.display().to_string(),
                text,
            })
            .map_err(|e| format!("{}: cannot read: {e}", p.display())),
    }
}

fn print_routes(rows: &[RouteRow]) {
    println!("{:<24} {:<28} {:<12} notes", "methods", "path", "upstream");
    for r in rows {
        println!(
            "{:<24} {:<28} {:<12} {}",
            r.methods, r.path, r.upstream, r.notes
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The worker count comes from the configuration, so the runtime is built after reading it;
    // a configuration that does not load is reported by `run` with its position.
    let workers = load(args.check.as_ref().or(args.config.as_ref()))
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(0, |c| c.server.worker_threads);
    // One worker: a current-thread runtime, which spares the cross-thread wake-ups of a
    // multi-thread runtime with a single worker.
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
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    if args.print_default_config {
        print!("{DEFAULT}");
        return ExitCode::SUCCESS;
    }
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

    let checking = args.check.is_some();
    let source = match load(args.check.as_ref().or(args.config.as_ref())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let built = source
        .parse()
        .and_then(|config| app::build::<ServedBody>(&config, &source).map(|app| (config, app)));
    let (config, app) = match built {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("gateway: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if checking {
        println!("{}: ok", source.name);
        print_routes(&app.routes);
        return ExitCode::SUCCESS;
    }

    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        let text = addr.get_ref();
        let bound = match text.parse::<std::net::SocketAddr>() {
            Ok(a) => tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| (a.to_string(), e)),
            Err(_) => {
                eprintln!(
                    "gateway: invalid configuration: {}",
                    source.error(
                        addr.span(),
                        Some("listen"),
                        format!("`{text}` is not an address like 127.0.0.1:8080")
                    )
                );
                return ExitCode::FAILURE;
            }
        };
        match bound {
            Ok(l) => listeners.push(l),
            Err((a, e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                eprintln!(
                    "gateway: {a} is already in use; stop whatever holds it or change `server.listen`"
                );
                return ExitCode::FAILURE;
            }
            Err((a, e)) => {
                eprintln!("gateway: cannot listen on {a}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, config = %source.name, "gateway listening");
        }
    }
    let clean = serve::serve(
        app.service,
        listeners,
        Limits::from(&config.server),
        shutdown_signal(),
    )
    .await;
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(0)
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
