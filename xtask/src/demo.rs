//! `cargo xtask demo`: two fake backends and the gateway on its embedded default config
//! (with `--tls`, plus HTTPS on 127.0.0.1:8443).

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

/// Where `--tls` serves HTTPS.
const TLS_PORT: u16 = 8443;

/// Makes a throwaway CA and a certificate for `localhost` (and 127.0.0.1) under
/// `target/demo-tls/`, and the default configuration with a `[tls]` section that uses it;
/// returns the configuration's path and the CA file for curl.
fn tls_files(bin: &std::path::Path) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = crate::workspace_root().join("target").join("demo-tls");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fail = |e: rcgen::Error| format!("making the demo certificate: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gateway demo CA (throwaway)");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
        .map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(fail)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).map_err(fail)?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok::<_, String>(path)
    };
    let ca_file = write("ca.pem", ca.pem())?;
    write("localhost.pem", format!("{}{}", cert.pem(), ca.pem()))?;
    write("localhost.key", key.serialize_pem())?;
    let default = Command::new(bin.join("gateway"))
        .arg("--print-default-config")
        .output()
        .map_err(|e| format!("gateway --print-default-config: {e}"))?;
    let mut config = String::from_utf8_lossy(&default.stdout).into_owned();
    config.push_str(&format!(
        "\n# Added by `cargo xtask demo --tls`: HTTPS with a throwaway certificate for localhost.\n[tls]\nlisten = [\"127.0.0.1:{TLS_PORT}\"]\ncertificates = [{{ cert = \"localhost.pem\", key = \"localhost.key\" }}]\n"
    ));
    let config_file = write("gateway.toml", config)?;
    Ok((config_file, ca_file))
}

/// Runs the demo (see `cargo xtask demo --help`).
pub fn run(tls: bool) -> Result<(), String> {
    // Say clearly which port is taken before starting anything (the admin listener's too).
    let tls_port = tls.then_some(TLS_PORT);
    for port in DEMO
        .iter()
        .map(|(_, _, p)| *p)
        .chain([ADMIN_PORT])
        .chain(tls_port)
    {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Err(format!(
                "port {port} on 127.0.0.1 is not free ({e}); stop whatever holds it (`ss -ltnp | grep :{port}`) and try again"
            ));
        }
    }
    crate::cargo(&["build", "--bin", "gateway", "--bin", "fake-backend"])?;
    let bin = crate::workspace_root().join("target").join("debug");
    let files = if tls { Some(tls_files(&bin)?) } else { None };
    let mut procs = Processes::default();
    for (program, args, port) in DEMO {
        let mut cmd = Command::new(bin.join(program));
        cmd.args(args);
        if let (Some((config, _)), "gateway") = (&files, program) {
            cmd.arg("--config").arg(config);
        }
        procs.start_visible(&format!("{program} :{port}"), &mut cmd)?;
    }
    for (program, _, port) in DEMO
        .iter()
        .map(|&(p, a, port)| (p, a, port))
        .chain(tls_port.map(|p| ("gateway (https)", &[] as &[&str], p)))
    {
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

  gRPC (echo.v1.Echo on both backends, HTTP/2 upstreams): the frame of \"hello\" back, and grpc-status 0
  printf '\\0\\0\\0\\0\\7\\n\\5hello' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' \\
      -H 'te: trailers' --data-binary @- -D - http://localhost:8080/echo.v1.Echo/Unary | od -c
  grpcurl -plaintext -import-path fake-backend/proto -proto echo.proto -d '{{\"message\":\"hi\"}}' \\
      localhost:8080 echo.v1.Echo/Unary                                  # if you have grpcurl

  Live dashboard:  http://127.0.0.1:9901/           (open it in a browser)
  Metrics:         http://127.0.0.1:9901/metrics    (Prometheus text; OpenMetrics on request)
  Health:          http://127.0.0.1:9901/healthz    http://127.0.0.1:9901/readyz

Ctrl-C stops all three.
"
    );
    if let Some((config, ca)) = &files {
        println!(
            "HTTPS on https://localhost:{TLS_PORT} (configuration {}):

  curl --cacert {} https://localhost:{TLS_PORT}/api/users
  curl --cacert {} --http2 -sI https://localhost:{TLS_PORT}/static/x.png   # HTTP/2 by ALPN
",
            config.display(),
            ca.display(),
            ca.display()
        );
    }
    // Ctrl-C reaches the whole process group: the three children stop on it too. Until then,
    // watch them: if one exits, stop the others (dropping `procs`).
    loop {
        if let Err(e) = procs.check_alive() {
            return Err(format!("{e}; stopped the others"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
