//! `cargo xtask deploy-check`: the deployment files (`deploy/`) checked against each other, the
//! gateway binary and its configuration, and their platforms' own validators:
//!
//! - the configurations they ship (`deploy/gateway.toml`, the ConfigMap's) pass
//!   `gateway --check`;
//! - the Dockerfile builds the `gateway` binary and starts it on the configuration path the
//!   docs name, and exposes the ports that configuration listens on;
//! - the Kubernetes Deployment's ports, probe paths and config mount match the ConfigMap's
//!   configuration and the admin listener's endpoints; its grace period outlasts the drain;
//!   the manifests pass the Kubernetes schemas offline (`kubernetes-validate`, installed with
//!   pip when missing);
//! - the systemd socket lists the configuration's addresses, the service starts the binary on
//!   the configuration path and waits longer than the drain, and `systemd-analyze verify`
//!   finds nothing to say;
//! - where a container runtime answers, the image is built and run against two fake
//!   backends and must proxy a request.
//!
//! A validator that is missing and cannot be installed is named as skipped; every other
//! finding fails the task.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// Where the image and the unit read the configuration.
const CONFIG_PATH: &str = "/etc/gateway/gateway.toml";
/// The admin endpoints the probes may use.
const ADMIN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// What one run found.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    passed: Vec<String>,
    skipped: Vec<String>,
}

impl Findings {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            self.passed.push(what);
        } else {
            self.problems.push(what);
        }
    }
}

/// Runs every check; fails naming each problem.
pub fn run(root: &Path) -> Result<(), String> {
    crate::cargo(&["build", "--bin", "gateway", "--bin", "fake-backend"])?;
    let gateway = root.join("target/debug/gateway");
    let deploy = root.join("deploy");
    let mut f = Findings::default();

    // The configurations shipped.
    let image_config = read(&deploy.join("gateway.toml"))?;
    f.check(
        gateway_check(&gateway, &deploy.join("gateway.toml")).is_ok(),
        "deploy/gateway.toml passes gateway --check",
    );
    let manifests = kubernetes(&deploy.join("kubernetes"))?;
    let cm_config = manifests
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("ConfigMap"))
        .and_then(|(_, d)| d["data"]["gateway.toml"].as_str().map(str::to_owned))
        .ok_or("deploy/kubernetes: no ConfigMap with a gateway.toml")?;
    let cm_file = root.join("target/deploy-check-configmap.toml");
    std::fs::write(&cm_file, &cm_config).map_err(|e| e.to_string())?;
    f.check(
        gateway_check(&gateway, &cm_file).is_ok(),
        "the ConfigMap's gateway.toml passes gateway --check",
    );
    let admin_paths_served = read(&root.join("gateway-bin/src/admin/mod.rs"))?;
    for p in ADMIN_PATHS {
        f.check(
            admin_paths_served.contains(&format!("\"{p}\" =>")),
            format!("the admin listener answers {p}"),
        );
    }

    dockerfile(root, &image_config, &mut f)?;
    deployment(&manifests, &cm_config, &mut f);
    systemd(root, &gateway, &image_config, &mut f)?;
    schemas(&deploy.join("kubernetes"), &mut f);
    container(root, &mut f);

    for p in &f.passed {
        println!("ok       {p}");
    }
    for s in &f.skipped {
        println!("skipped  {s}");
    }
    for p in &f.problems {
        println!("PROBLEM  {p}");
    }
    if f.problems.is_empty() {
        println!("deploy-check: {} checks passed", f.passed.len());
        Ok(())
    } else {
        Err(format!("deploy-check: {} problem(s)", f.problems.len()))
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn gateway_check(gateway: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(gateway)
        .arg("--check")
        .arg(file)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("{}: {why}", file.display());
        Err(why)
    }
}

/// The addresses a configuration listens on: traffic (plain and HTTPS) and admin.
fn listens(config: &str) -> Result<(Vec<SocketAddr>, Option<SocketAddr>), String> {
    let table: toml::Table = config.parse().map_err(|e| format!("{e}"))?;
    let addrs = |v: Option<&toml::Value>| -> Vec<SocketAddr> {
        v.and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str()?.parse().ok()).collect())
            .unwrap_or_default()
    };
    let mut traffic = addrs(table.get("server").and_then(|s| s.get("listen")));
    traffic.extend(addrs(table.get("tls").and_then(|s| s.get("listen"))));
    let admin = table
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(toml::Value::as_str)
        .and_then(|s| s.parse().ok());
    Ok((traffic, admin))
}

fn shutdown_grace_ms(config: &str) -> u64 {
    config
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("server")?.get("shutdown_grace_ms")?.as_integer())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(30_000)
}

fn dockerfile(root: &Path, image_config: &str, f: &mut Findings) -> Result<(), String> {
    let text = read(&root.join("deploy/Dockerfile"))?;
    let bins = read(&root.join("gateway-bin/Cargo.toml"))?;
    f.check(
        bins.contains("name = \"gateway\"") && text.contains("--bin gateway"),
        "the Dockerfile builds the gateway binary (gateway-bin's [[bin]] gateway)",
    );
    let entry = text
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .unwrap_or_default();
    f.check(
        entry.contains("\"/usr/local/bin/gateway\"")
            && entry.contains(&format!("\"--config\", \"{CONFIG_PATH}\"")),
        format!("the image starts /usr/local/bin/gateway --config {CONFIG_PATH}"),
    );
    f.check(
        text.lines()
            .any(|l| l.starts_with("COPY deploy/gateway.toml ") && l.ends_with(CONFIG_PATH)),
        format!("the image carries deploy/gateway.toml at {CONFIG_PATH}"),
    );
    for doc in ["README.md", "docs/DEPLOY.md"] {
        f.check(
            read(&root.join(doc))?.contains(CONFIG_PATH),
            format!("{doc} names {CONFIG_PATH}"),
        );
    }
    let exposed: Vec<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect();
    let (traffic, admin) = listens(image_config)?;
    let wanted: Vec<u16> = traffic
        .iter()
        .map(SocketAddr::port)
        .chain(admin.map(|a| a.port()))
        .collect();
    f.check(
        wanted.iter().all(|p| exposed.contains(p)) && exposed.iter().all(|p| wanted.contains(p)),
        format!(
            "the image exposes {exposed:?}, the ports deploy/gateway.toml listens on ({wanted:?})"
        ),
    );
    f.check(
        traffic
            .iter()
            .chain(admin.iter())
            .all(|a| a.ip().is_unspecified()),
        "deploy/gateway.toml listens on all interfaces (inside a container)",
    );
    f.check(
        text.contains("USER ") && !text.contains("USER root") && !text.contains("USER 0"),
        "the image runs as a non-root user",
    );
    Ok(())
}

/// Every document of every manifest, with its file name.
fn kubernetes(dir: &Path) -> Result<Vec<(String, Yaml)>, String> {
    let mut all = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let docs = YamlLoader::load_from_str(&read(&file)?)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        all.extend(docs.into_iter().map(|d| (name.clone(), d)));
    }
    Ok(all)
}

fn deployment(manifests: &[(String, Yaml)], cm_config: &str, f: &mut Findings) {
    let Some((_, d)) = manifests
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("Deployment"))
    else {
        f.check(false, "deploy/kubernetes has a Deployment");
        return;
    };
    let (traffic, admin) = listens(cm_config).unwrap_or_default();
    let spec = &d["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let port = |name: &str| -> Option<u16> {
        container["ports"]
            .as_vec()?
            .iter()
            .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
            .as_i64()
            .and_then(|n| u16::try_from(n).ok())
    };
    f.check(
        d["spec"]["replicas"].as_i64().unwrap_or(0) >= 2,
        "the Deployment runs 2 replicas or more",
    );
    f.check(
        port("http").is_some() && traffic.iter().any(|a| Some(a.port()) == port("http")),
        "the container's http port is the configuration's server.listen port",
    );
    f.check(
        admin.is_some() && port("admin") == admin.map(|a| a.port()),
        "the container's admin port is the configuration's admin.listen port",
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        f.check(
            get["path"].as_str() == Some(path) && get["port"].as_str() == Some("admin"),
            format!("{probe} asks the admin port for {path}"),
        );
    }
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    f.check(
        annotations["prometheus.io/port"]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            == admin.map(|a| a.port())
            && annotations["prometheus.io/path"].as_str() == Some("/metrics"),
        "the scrape annotations name the admin port and /metrics",
    );
    let args: Vec<&str> = container["args"]
        .as_vec()
        .map(|a| a.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default();
    let config_at = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1));
    let mount = container["volumeMounts"][0]["mountPath"].as_str();
    f.check(
        args.contains(&"--watch")
            && config_at.is_some_and(|c| mount.is_some_and(|m| c.starts_with(m)))
            && container["volumeMounts"][0]["subPath"].is_badvalue(),
        "the container reads its configuration from the mounted ConfigMap directory with --watch",
    );
    let pre_stop_s = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_vec()
        .and_then(|c| c.get(1)?.as_str()?.parse::<u64>().ok())
        .unwrap_or(0);
    let grace_s = spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    let drain_ms = shutdown_grace_ms(cm_config);
    f.check(
        pre_stop_s > 0 && u64::try_from(grace_s).unwrap_or(0) * 1000 > pre_stop_s * 1000 + drain_ms,
        format!(
            "terminationGracePeriodSeconds ({grace_s} s) outlasts the preStop sleep ({pre_stop_s} s) and shutdown_grace_ms ({drain_ms} ms)"
        ),
    );
    for kind in ["Service", "PodDisruptionBudget"] {
        f.check(
            manifests
                .iter()
                .any(|(_, d)| d["kind"].as_str() == Some(kind)),
            format!("deploy/kubernetes has a {kind}"),
        );
    }
    f.check(
        manifests.iter().any(|(_, d)| {
            d["kind"].as_str() == Some("Service") && d["spec"]["clusterIP"].as_str() == Some("None")
        }),
        "deploy/kubernetes has a headless Service example",
    );
}

fn systemd(
    root: &Path,
    gateway: &Path,
    image_config: &str,
    f: &mut Findings,
) -> Result<(), String> {
    let service = read(&root.join("deploy/systemd/gateway.service"))?;
    let socket = read(&root.join("deploy/systemd/gateway.socket"))?;
    let (traffic, admin) = listens(image_config)?;
    let listed: Vec<SocketAddr> = socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let configured: Vec<SocketAddr> = traffic.iter().copied().chain(admin).collect();
    f.check(
        configured.iter().all(|a| listed.contains(a))
            && listed.iter().all(|a| configured.contains(a)),
        format!("gateway.socket listens on {listed:?}, the addresses of deploy/gateway.toml"),
    );
    f.check(
        service.lines().any(|l| {
            l.starts_with("ExecStart=/usr/local/bin/gateway --config ") && l.contains(CONFIG_PATH)
        }),
        format!("gateway.service starts /usr/local/bin/gateway --config {CONFIG_PATH}"),
    );
    f.check(
        service.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "gateway.service reloads with SIGHUP",
    );
    let stop_s: u64 = service
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap_or(0);
    let drain_ms = shutdown_grace_ms(image_config);
    f.check(
        stop_s * 1000 > drain_ms,
        format!("TimeoutStopSec ({stop_s} s) outlasts shutdown_grace_ms ({drain_ms} ms)"),
    );
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
    ] {
        f.check(
            service.contains(hardening),
            format!("gateway.service sets {hardening}"),
        );
    }
    let Some(analyze) = crate::procs::which("systemd-analyze") else {
        f.skipped
            .push("systemd-analyze verify: systemd-analyze is not installed".into());
        return Ok(());
    };
    // verify wants the binary the unit names: the one just built stands in for it.
    let dir = root.join("target/deploy-check-systemd");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = gateway.display().to_string();
    std::fs::write(
        dir.join("gateway.service"),
        service.replace("/usr/local/bin/gateway", &exe),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("gateway.socket"), &socket).map_err(|e| e.to_string())?;
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.join("gateway.socket"))
        .arg(dir.join("gateway.service"))
        .output()
        .map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !said.trim().is_empty() {
        println!("{said}");
    }
    f.check(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify finds nothing to say about gateway.socket and gateway.service",
    );
    Ok(())
}

/// The manifests against the Kubernetes schemas, offline.
fn schemas(dir: &Path, f: &mut Findings) {
    if crate::procs::which("kubernetes-validate").is_none() {
        let installed = Command::new("pip3")
            .args(["install", "--quiet", "kubernetes-validate"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            f.skipped.push(
                "Kubernetes schemas: kubernetes-validate is missing and pip3 could not install it"
                    .into(),
            );
            return;
        }
    }
    let Some(validate) = crate::procs::which("kubernetes-validate") else {
        f.skipped
            .push("Kubernetes schemas: kubernetes-validate is not on PATH after pip3".into());
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
    files.sort();
    // The oldest Kubernetes still maintained by the big providers.
    let out = Command::new(validate)
        .args(["--strict", "--quiet", "-k", "1.30.0"])
        .args(&files)
        .output();
    match out {
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if !said.trim().is_empty() {
                println!("{said}");
            }
            f.check(
                out.status.success(),
                "the manifests pass the Kubernetes 1.30 schemas (kubernetes-validate --strict)",
            );
        }
        Err(e) => f.check(false, format!("kubernetes-validate did not run: {e}")),
    }
}

/// Builds the image and runs it against two fake backends, where a container runtime
/// answers.
fn container(root: &Path, f: &mut Findings) {
    let Some(docker) = crate::procs::which("docker") else {
        f.skipped
            .push("the image: no container runtime (docker) is installed".into());
        return;
    };
    let up = Command::new(&docker)
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        f.skipped
            .push("the image: docker is installed but its daemon does not answer".into());
        return;
    }
    match run_image(root, &docker) {
        Ok(()) => f.check(
            true,
            "the image builds and proxies a request to a fake backend",
        ),
        Err(e) => f.check(false, format!("the image: {e}")),
    }
}

fn run_image(root: &Path, docker: &Path) -> Result<(), String> {
    let tag = "gateway:deploy-check";
    crate::run_command(
        Command::new(docker)
            .args(["build", "-f", "deploy/Dockerfile", "-t", tag, "."])
            .current_dir(root),
    )?;
    let mut procs = crate::procs::Processes::default();
    let backend = crate::procs::free_port()?;
    let mut cmd = Command::new(root.join("target/debug/fake-backend"));
    procs.start("fake backend", cmd.arg(backend.to_string()))?;
    crate::procs::wait_for(backend, "the fake backend", &mut procs)?;
    let port = crate::procs::free_port()?;
    let admin = crate::procs::free_port()?;
    let dir = root.join("target/deploy-check-image");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[upstreams.b]\ntargets = [\"http://127.0.0.1:{backend}\"]\n[[routes]]\npath = \"/*rest\"\nupstream = \"b\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let name = format!("gateway-deploy-check-{}", std::process::id());
    let mut run = Command::new(docker);
    run.args(["run", "--rm", "--name", &name, "--network", "host", "-v"])
        .arg(format!("{}:/etc/gateway:ro", dir.display()))
        .arg(tag);
    procs.start("the gateway image", &mut run)?;
    let result =
        crate::procs::wait_for(port, "the gateway in its image", &mut procs).and_then(|()| {
            let reply = crate::client::Conn::open(port)
                .map_err(|e| e.to_string())?
                .request("GET", "/x", 0, false)
                .map_err(|e| e.to_string())?;
            if reply.status == 200 {
                Ok(())
            } else {
                Err(format!("GET /x answered {}", reply.status))
            }
        });
    let _ = Command::new(docker).args(["stop", &name]).output();
    result
}
