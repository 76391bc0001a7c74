//! `cargo xtask demo`: two fake backends and the gateway on its embedded default config.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use crate::procs::{Processes, wait_for};

/// The demo topology: (what, arguments, port).
const DEMO: [(&str, &[&str], u16); 3] = [
    ("fake-backend", &["9001"], 9001),
    ("fake-backend", &["9002"], 9002),
    ("gateway", &[], 8080),
];

/// The gateway's admin listener in its embedded default configuration.
const ADMIN_PORT: u16 = 9901;

/// Runs the demo (see `cargo xtask demo --help`).
pub fn run() -> Result<(), String> {
    // Say clearly which port is taken before starting anything (the admin listener's too).
    for port in DEMO.iter().map(|(_, _, p)| *p).chain([ADMIN_PORT]) {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Err(format!(
                "port {port} on 127.0.0.1 is not free ({e}); stop whatever holds it (`ss -ltnp | grep :{port}`) and try again"
            ));
        }
    }
    crate::cargo(&["build", "--bin", "gateway", "--bin", "fake-backend"])?;
    let bin = crate::workspace_root().join("target").join("debug");
    let mut procs = Processes::default();
    for (program, args, port) in DEMO {
        procs.start_visible(
            &format!("{program} :{port}"),
            Command::new(bin.join(program)).args(args),
        )?;
    }
    for (program, _, port) in DEMO {
        wait_for(port, program, &mut procs)?;
    }
    println!(
        "
The demo is up: fake backends on 127.0.0.1:9001 and :9002, the gateway on http://127.0.0.1:8080

  curl http://localhost:8080/api/users                                    # alternates :9001 / :9002
  curl http://localhost:8080/static/x.png                                 # :9001, path /x.png
  curl -H 'X-Admin-Token: letmein' http://localhost:8080/admin/dashboard  # :9002
  curl http://localhost:8080/                                             # routes and upstream health
  curl 'http://localhost:8080/api/slow?delay_ms=500'                      # faults: see fake-backend docs

  Live dashboard:  http://127.0.0.1:9901/           (open it in a browser)
  Metrics:         http://127.0.0.1:9901/metrics    (Prometheus text; OpenMetrics on request)
  Health:          http://127.0.0.1:9901/healthz    http://127.0.0.1:9901/readyz

Ctrl-C stops all three.
"
    );
    // Ctrl-C reaches the whole process group: the three children stop on it too. Until then,
    // watch them: if one exits, stop the others (dropping `procs`).
    loop {
        if let Err(e) = procs.check_alive() {
            return Err(format!("{e}; stopped the others"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
