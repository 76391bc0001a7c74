//! The contenders: the gateway and the peers installed here (nginx, HAProxy, Caddy), each on
//! core 0 with its config from `xtask/templates`.

use super::{Contender, Rig, Upstreams};
use crate::procs::{free_port, wait_for, which};

/// Starts every contender; `direct` first, the gateway second (then the gateway with metrics
/// off).
pub(super) fn start(rig: &mut Rig, upstreams: &Upstreams) -> Result<Vec<Contender>, String> {
    let certs = certificate(rig)?;
    let ports = |port: u16, tls_port: u16| {
        vec![
            ("port", port.to_string()),
            ("tls_port", tls_port.to_string()),
            ("u1", upstreams.u1.to_string()),
            ("u2", upstreams.u2.to_string()),
            ("chunked", upstreams.fake.to_string()),
            ("cert", certs.cert.clone()),
            ("key", certs.key.clone()),
            ("haproxy_pem", certs.haproxy_pem.clone()),
        ]
    };
    let mut contenders = vec![Contender {
        name: "direct",
        port: 0,
        h2_port: None,
        tls_port: None,
        pid: None,
    }];
    // Ours three times: as shipped (metrics on); with metrics off, to measure their cost;
    // and with 1,000 virtual hosts more, to show that host lookup does not grow with them.
    let thousand: String = (0..998)
        .map(|i| format!(", \"h{i}.tenants.example\""))
        .collect();
    for (name, file, metrics, extra_hosts) in [
        ("gateway (ours)", "gateway.toml", "true", String::new()),
        (
            "gateway (metrics off)",
            "gateway-metrics-off.toml",
            "false",
            String::new(),
        ),
        (
            GATEWAY_1000_HOSTS,
            "gateway-1000-hosts.toml",
            "true",
            thousand,
        ),
        (GATEWAY_NO_THP, "gateway-no-thp.toml", "true", String::new()),
    ] {
        if rig.counting.is_some() && name != "gateway (ours)" {
            // Counting compares the gateway as shipped with the peers.
            continue;
        }
        let (port, tls_port) = (free_port()?, free_port()?);
        let mut values = ports(port, tls_port);
        values.push(("metrics", metrics.to_owned()));
        values.push(("extra_hosts", extra_hosts));
        let conf = rig.write(
            file,
            include_str!("../../templates/gateway.bench.toml"),
            &values,
        )?;
        let exe = rig.root.join("target/release/gateway");
        let mut cmd = rig.on_core0(&exe);
        if name == GATEWAY_NO_THP {
            cmd.env("MIMALLOC_ALLOW_THP", "0");
        }
        let pid = rig
            .procs
            .start(name, cmd.arg("--config").arg(&conf).env("RUST_LOG", "warn"))?;
        wait_for(port, name, &mut rig.procs)?;
        contenders.push(Contender {
            name,
            port,
            // HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
            h2_port: Some(port),
            tls_port: Some(tls_port),
            pid: Some(pid),
        });
    }
    for peer in PEERS {
        if rig.counting.is_some() && peer.program == "caddy" {
            // Go's runtime and valgrind do not get along.
            continue;
        }
        let Some(program) = which(peer.program) else {
            eprintln!("skipped {}: `apt-get install {}`", peer.name, peer.package);
            continue;
        };
        let port = free_port()?;
        let h2_port = match peer.h2c {
            H2c::SamePort => port,
            H2c::OwnPort => free_port()?,
        };
        let tls_port = free_port()?;
        let mut values = ports(port, tls_port);
        values.push(("h2port", h2_port.to_string()));
        values.push(("pid", rig.file(&format!("{}.pid", peer.program))));
        values.push(("error_log", rig.file(&format!("{}.err", peer.program))));
        let conf = rig.write(peer.file, peer.template, &values)?;
        let mut cmd = rig.on_core0(&program);
        if rig.counting.is_some() && peer.program == "nginx" {
            // One process: callgrind_control reaches only the process valgrind started, not
            // a worker forked from it.
            cmd.args(["-g", "master_process off;"]);
        }
        cmd.args(peer.args).arg(&conf);
        if let Some((key, value)) = peer.env {
            cmd.env(key, value);
        }
        let pid = rig.procs.start(peer.name, &mut cmd)?;
        wait_for(port, peer.name, &mut rig.procs)?;
        contenders.push(Contender {
            name: peer.name,
            port,
            h2_port: Some(h2_port),
            tls_port: peer.tls.then_some(tls_port),
            pid: Some(pid),
        });
    }
    Ok(contenders)
}

/// The files of the certificate every contender serves HTTPS with.
struct BenchCertificate {
    /// The chain (leaf, then CA), PEM.
    cert: String,
    /// Its key, PEM.
    key: String,
    /// Chain and key in one file, as HAProxy takes them.
    haproxy_pem: String,
}

/// One ECDSA P-256 certificate for 127.0.0.1 and localhost, by a throwaway CA, in the work
/// directory.
fn certificate(rig: &Rig) -> Result<BenchCertificate, String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let fail = |e: rcgen::Error| format!("making the bench certificate: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
        .map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(fail)?
        .signed_by(&key, &ca)
        .map_err(fail)?;
    let chain = format!("{}{}", cert.pem(), ca.pem());
    let key_pem = key.serialize_pem();
    let write = |name: &str, text: &str| {
        std::fs::write(rig.work.join(name), text).map_err(|e| format!("{name}: {e}"))?;
        Ok::<_, String>(rig.file(name))
    };
    Ok(BenchCertificate {
        cert: write("bench.pem", &chain)?,
        key: write("bench.key", &key_pem)?,
        haproxy_pem: write("bench-haproxy.pem", &format!("{chain}{key_pem}"))?,
    })
}

/// The gateway with 1,000 virtual hosts on its rich route: it takes part in the `routes`
/// scenario only.
pub(super) const GATEWAY_1000_HOSTS: &str = "gateway (1,000 hosts)";

/// The gateway as shipped with mimalloc's transparent huge pages off
/// (`MIMALLOC_ALLOW_THP=0`): in the memory check only, where its RSS is exact to the page
/// (the shipped gateway's moves in 2 MiB steps as huge pages are faulted in and purged).
pub(super) const GATEWAY_NO_THP: &str = "gateway (MIMALLOC_ALLOW_THP=0)";

/// A peer proxy: how to start it on its config.
struct Peer {
    name: &'static str,
    program: &'static str,
    package: &'static str,
    file: &'static str,
    template: &'static str,
    /// Arguments before the config file's path.
    args: &'static [&'static str],
    env: Option<(&'static str, &'static str)>,
    /// Where it speaks cleartext HTTP/2.
    h2c: H2c,
    /// Whether its template serves HTTPS on `{{tls_port}}`.
    tls: bool,
}

/// Where a peer takes cleartext HTTP/2 (prior knowledge).
enum H2c {
    /// On its HTTP/1.1 port too.
    SamePort,
    /// On a port of its own (`{{h2port}}` in its template).
    OwnPort,
}

const PEERS: [Peer; 3] = [
    Peer {
        name: "nginx (1 worker)",
        program: "nginx",
        package: "nginx-light",
        file: "proxy.nginx.conf",
        template: include_str!("../../templates/proxy.nginx.conf"),
        args: &["-c"],
        env: None,
        h2c: H2c::OwnPort,
        tls: true,
    },
    Peer {
        name: "HAProxy (1 thread)",
        program: "haproxy",
        package: "haproxy",
        file: "haproxy.cfg",
        template: include_str!("../../templates/haproxy.cfg"),
        args: &["-db", "-f"],
        env: None,
        h2c: H2c::OwnPort,
        tls: true,
    },
    Peer {
        name: "Caddy (GOMAXPROCS=1)",
        program: "caddy",
        package: "caddy",
        file: "Caddyfile",
        template: include_str!("../../templates/Caddyfile"),
        args: &["run", "--adapter", "caddyfile", "--config"],
        env: Some(("GOMAXPROCS", "1")),
        h2c: H2c::SamePort,
        tls: false,
    },
];
