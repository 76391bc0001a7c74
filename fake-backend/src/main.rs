//! `fake-backend [PORT] [--port PORT] [--name NAME]`: a fake upstream on 127.0.0.1 (see the
//! library docs for what it answers).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;

/// A fake upstream for demos and tests: echoes each request as JSON; query parameters
/// (status, delay_ms, bytes, sse + interval_ms, reset) inject faults.
#[derive(Debug, Parser)]
#[command(name = "fake-backend", version)]
struct Args {
    /// The port to listen on, on 127.0.0.1.
    #[arg(value_name = "PORT")]
    port_arg: Option<u16>,
    /// The port to listen on (same as the positional PORT).
    #[arg(long = "port", value_name = "PORT", conflicts_with = "port_arg")]
    port: Option<u16>,
    /// The name reported in `x-backend` and the JSON body (default `:<port>`).
    #[arg(long)]
    name: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Some(port) = args.port.or(args.port_arg) else {
        eprintln!("fake-backend: give a port, e.g. `fake-backend 9001`");
        return ExitCode::from(2);
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let backend = match fake_backend::spawn(addr, args.name.as_deref()).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!(
                "fake-backend: port {port} is already in use on 127.0.0.1; stop whatever holds it or pick another port"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("fake-backend: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(name = %backend.name(), addr = %backend.addr(), "fake-backend listening");
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("fake-backend stopping");
    ExitCode::SUCCESS
}
