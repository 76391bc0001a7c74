//! Project automation, run as `cargo xtask <task>` through the alias in `.cargo/config.toml`;
//! `cargo xtask --help` lists the tasks and `cargo xtask <task> --help` their options.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

mod bench;
mod client;
mod criterion;
mod demo;
mod deploy;
mod flaky;
mod procs;
mod soak;

/// The gateway's project tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Two fake backends (127.0.0.1:9001, :9002) and the gateway on 127.0.0.1:8080 with its
    /// embedded default configuration; waits until all three answer, prints what to try, and
    /// runs until Ctrl-C (or until one of them exits, which stops the others).
    Demo {
        /// Also serve HTTPS on 127.0.0.1:8443, with a certificate for localhost made now
        /// (under target/demo-tls/) by a throwaway CA whose certificate curl can trust.
        #[arg(long)]
        tls: bool,
    },
    /// What CI runs: `cargo fmt --check`, clippy with warnings denied, the tests, the
    /// deployment checks.
    Ci,
    /// The gateway next to nginx, HAProxy and Caddy under wrk, in interleaved rounds, fixed
    /// and chunked upstreams; a table of medians, CPU per request and upstream connections
    /// written to BENCHMARKS.md, with the gateway's memory figures.
    Bench(bench::Options),
    /// Minutes of mixed traffic through the release gateway; fails on a failed request, on
    /// growth of RSS, descriptors, threads or tasks between minute 1 and the end, or on a
    /// response cut by SIGTERM.
    Soak(soak::Options),
    /// The whole test suite, many times, under CPU hogs: reports every test that failed once.
    Flaky(flaky::Options),
    /// The deployment files (deploy/: Dockerfile, systemd units, Kubernetes manifests) checked
    /// against each other, the binary and its configuration, and their platforms' validators
    /// (kubernetes-validate, systemd-analyze); the image built and run where docker answers.
    DeployCheck,
    /// The bench's full-handshake load (a TLS 1.3 handshake and one request per connection)
    /// against an HTTPS port on 127.0.0.1; prints its results in wrk's words.
    #[command(hide = true)]
    Handshakes(bench::handshakes::Options),
    /// `cargo bench -p router`, then a table of medians and ratios against matchit.
    BenchRouter {
        /// Passed to criterion.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        criterion: Vec<String>,
    },
    /// `cargo bench -p balancer`, then a table of pick medians as ratios to a bare
    /// `fetch_add` and to a mutex round-robin.
    BenchBalancer {
        /// Passed to criterion.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        criterion: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Demo { tls } => demo::run(tls),
        Task::Ci => ci(),
        Task::DeployCheck => deploy::run(&root),
        Task::Bench(o) => bench::run(&root, &o),
        Task::Soak(o) => soak::run(&root, &o),
        Task::Flaky(o) => flaky::run(&o),
        Task::Handshakes(o) => bench::handshakes::run(&o),
        Task::BenchRouter { criterion } => criterion::router(&criterion),
        Task::BenchBalancer { criterion } => criterion::balancer(&criterion),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing if it does.
fn run_command(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

/// Runs cargo with `args` in the workspace root.
fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("$ cargo {}", args.join(" "));
    run_command(Command::new(cargo).args(args).current_dir(workspace_root()))
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    deploy::run(&workspace_root())
}
