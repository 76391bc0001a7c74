//! HTTPS listeners over real sockets and real TLS: HTTP/1.1 and HTTP/2 by ALPN, certificates
//! by SNI (checked from the client's view of the chain), the default for unknown names, the
//! minimum version, plain HTTP on the HTTPS port, slow handshakes, certificate reload, and
//! `--check`'s errors. Certificates are made here with rcgen; no private key is committed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

/// A test CA and the files of the certificates it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca,
            dir: tempdir(name),
        }
    }

    /// A certificate for `names`, written as `<file>.pem` (leaf then CA) and `<file>.key`;
    /// returns the paths and the leaf's DER.
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        self.leaf_with(file, names, |_| {})
    }

    /// [`leaf`](Self::leaf), its parameters changed by `edit` first.
    fn leaf_with(
        &self,
        file: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.der().clone())
    }

    /// The CA certificate, as a PEM file.
    fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts the test CA, offering `alpn`, TLS 1.2 and 1.3 (or only `versions`).
fn client(
    pki: &Pki,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Accepts any certificate and keeps the one it saw: to look at what the server chose for a
/// name no certificate covers.
#[derive(Debug, Default)]
struct Recording(Mutex<Option<CertificateDer<'static>>>);

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificate the server presents for `sni`, whatever it is.
async fn presented(addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
    let seen = Arc::new(Recording::default());
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&seen) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let der = seen.0.lock().unwrap().clone();
    der.expect("a certificate was presented")
}

fn config(b: SocketAddr, certs: &[(&Path, &Path)], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
            )
        })
        .collect();
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
header_read_timeout_ms = 500

[upstreams.b]
targets = ["http://{b}"]

[[routes]]
path = "/*rest"
methods = ["GET", "POST"]
upstream = "b"

[tls]
listen = ["127.0.0.1:0"]
certificates = [{}]
{extra}
"#,
        list.join(", ")
    )
}

async fn backend() -> fake_backend::Backend {
    fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some("b"))
        .await
        .unwrap()
}

#[tokio::test]
async fn http1_and_http2_over_tls_with_certificates_by_sni() {
    let pki = Pki::new("tls-sni");
    let (a_cert, a_key, a_der) = pki.leaf("a", &["a.test"]);
    let (b_cert, b_key, b_der) = pki.leaf("b", &["*.b.test"]);
    let b = backend().await;
    // config: tls.listen, tls.certificates, tls.certificates.cert, tls.certificates.key
    let gw = start_gateway(config(
        b.addr(),
        &[(&a_cert, &a_key), (&b_cert, &b_key)],
        "",
    ))
    .await;
    let addr = gw.tls_addr.unwrap();

    // HTTP/1.1 (ALPN), the chain verified against the test CA for a.test.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = client(&pki, &[b"http/1.1"], BOTH)
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], a_der);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/hello")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["path"], "/hello");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");

    // HTTP/2 by ALPN, on a wildcard certificate.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = client(&pki, &[b"h2", b"http/1.1"], BOTH)
        .connect(ServerName::try_from("www.b.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], b_der);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://www.b.test/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(
        (res.status(), res.version()),
        (StatusCode::OK, Version::HTTP_2)
    );

    // No certificate for the name: the first one, the default.
    assert_eq!(presented(addr, "unknown.example").await, a_der);
    // The plain port still speaks plain HTTP, and says http upstream.
    let r = fetch(gw.addr, "/plain").await;
    assert_eq!(json(&r)["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn minimum_version_plain_http_and_slow_handshakes_are_refused() {
    let pki = Pki::new("tls-refusals");
    let (cert, key, _) = pki.leaf("a", &["a.test"]);
    let b = backend().await;
    // config: tls.min_version
    let gw = start_gateway(config(b.addr(), &[(&cert, &key)], "min_version = \"1.3\"")).await;
    let addr = gw.tls_addr.unwrap();

    // A TLS 1.2-only client: refused (older versions are never offered at all).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let old = client(&pki, &[], &[&rustls::version::TLS12])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await;
    assert!(old.is_err());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls13 = client(&pki, &[], &[&rustls::version::TLS13])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // Plain HTTP on the HTTPS port: a 400 that says so, then the close.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("plain HTTP sent to an HTTPS port"), "{text}");

    // A client that connects and never says hello is cut at the header-read timeout (500 ms).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let (_, closed_at) = read_to_close(&mut silent, Duration::from_secs(10)).await;
    let waited = closed_at - started;
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");

    let metrics = fetch(gw.admin_addr, "/metrics").await.text();
    for line in [
        "gateway_requests_rejected_total{reason=\"tls_plain_http\"} 1",
        "gateway_requests_rejected_total{reason=\"tls_handshake_timeout\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn certificates_reload_and_a_bad_file_keeps_the_old_ones() {
    let pki = Pki::new("tls-reload");
    let (cert, key, first) = pki.leaf("a", &["a.test"]);
    let b = backend().await;
    let gw = start_gateway(config(b.addr(), &[(&cert, &key)], "")).await;
    let addr = gw.tls_addr.unwrap();
    let certificates = Arc::clone(&gw.tls.as_ref().unwrap().certificates);
    assert_eq!(presented(addr, "a.test").await, first);

    // The watcher sees the files change and serves the new certificate to new handshakes;
    // a connection made before keeps working.
    let watcher = AbortOnDrop(gateway_bin::tls::watch(Arc::clone(&certificates)));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let early = client(&pki, &[b"http/1.1"], BOTH)
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    let (_, _, second) = pki.leaf("a", &["a.test"]);
    assert_ne!(first, second);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while presented(addr, "a.test").await != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(early))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/x")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    drop(watcher);

    // A broken file: the reload fails naming it, and the last good certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    let error = certificates.reload().unwrap_err();
    assert!(error.contains(&key.display().to_string()), "{error}");
    assert_eq!(presented(addr, "a.test").await, second);
    // A key that belongs to another certificate: refused too.
    let (_, other_key, _) = pki.leaf("other", &["other.test"]);
    std::fs::copy(&other_key, &key).unwrap();
    let error = certificates.reload().unwrap_err();
    assert!(error.contains("does not match"), "{error}");
    assert_eq!(presented(addr, "a.test").await, second);
}

#[test]
fn check_names_the_entry_of_a_bad_certificate() {
    let pki = Pki::new("tls-check");
    let (cert, key, _) = pki.leaf("a", &["a.test"]);
    let (_, other_key, _) = pki.leaf("b", &["b.test"]);
    let missing = pki.dir.join("missing.pem");
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let build = |text: String| {
        let source = gateway_bin::config::Source {
            name: "test.toml".into(),
            text,
        };
        let config = source.parse().unwrap_or_else(|e| panic!("{e}"));
        gateway_bin::tls::build(&config, &source)
            .err()
            .map(|e| e.to_string())
    };
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(build(config(b, &[(&cert, &key)], "")), None);
    for (pair, what) in [
        ((&missing, &key), "cannot read"),
        ((&garbage, &key), "not a PEM certificate chain"),
        ((&cert, &other_key), "does not match"),
    ] {
        let e = build(config(b, &[(pair.0, pair.1)], "")).expect("refused");
        assert!(e.starts_with("test.toml:16: `tls.certificates`"), "{e}");
        assert!(e.contains(what), "{what}: {e}");
    }
    let e = build(config(b, &[(&cert, &key)], "min_version = \"1.1\"")).expect("refused");
    assert!(e.contains("`tls.min_version`"), "{e}");
}

/// An HTTPS upstream on `cert`/`key`: answers every request `200` with the path it saw in
/// its body, sent chunked (no length, as most applications answer), and `x-conn: N` (the
/// connection's number, from 1) in its head.
async fn https_upstream(cert: &Path, key: &Path) -> SocketAddr {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let acceptor = upstream_acceptor(cert, key, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    async move {
                        let frames =
                            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                                hyper::body::Frame::data(Bytes::from(path)),
                            )]);
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("x-conn", n.to_string())
                                .body(http_body_util::StreamBody::new(frames))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_verified_pooled_and_refused_when_wrong() {
    testkit::logs::capture();
    let pki = Pki::new("tls-upstreams");
    let ca_file = pki.ca_file();
    let (cert, key, _) = pki.leaf("up", &["127.0.0.1", "up.test"]);
    let good = https_upstream(&cert, &key).await;
    let (old_cert, old_key, _) = pki.leaf_with("expired", &["127.0.0.1"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let expired = https_upstream(&old_cert, &old_key).await;
    // Signed by a CA the gateway does not trust.
    let stranger = Pki::new("tls-stranger");
    let (s_cert, s_key, _) = stranger.leaf("s", &["127.0.0.1"]);
    let unknown = https_upstream(&s_cert, &s_key).await;
    let ca = ca_file.display();
    // config: upstreams.*.tls_ca_file, upstreams.*.tls_server_name, upstreams.*.tls_insecure_skip_verify
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.good]
targets = ["https://{good}"]
tls_ca_file = "{ca}"

[upstreams.by_name]
targets = ["https://{good}"]
tls_ca_file = "{ca}"
tls_server_name = "up.test"

[upstreams.wrong_name]
targets = ["https://{good}"]
tls_ca_file = "{ca}"
tls_server_name = "other.test"

[upstreams.expired]
targets = ["https://{expired}"]
tls_ca_file = "{ca}"

[upstreams.unknown_ca]
targets = ["https://{unknown}"]

[upstreams.fallback]
strategy = "round-robin"
targets = ["https://{unknown}", "https://{good}"]
tls_ca_file = "{ca}"

[upstreams.insecure]
targets = ["https://{unknown}"]
tls_insecure_skip_verify = true

[[routes]]
path = "/:up/*rest"
upstream = "good"
"#
    );
    // One route per upstream, by name.
    let mut text = text.replace(
        "[[routes]]\npath = \"/:up/*rest\"\nupstream = \"good\"\n",
        "",
    );
    for up in [
        "good",
        "by_name",
        "wrong_name",
        "expired",
        "unknown_ca",
        "fallback",
        "insecure",
    ] {
        text.push_str(&format!(
            "\n[[routes]]\npath = \"/{up}/*rest\"\nupstream = \"{up}\"\n"
        ));
    }
    let gw = start_gateway(text.clone()).await;

    // Verified against the configured CA; one connection serves them all (pooled), chunked
    // answers included.
    for i in 0..3 {
        let r = fetch(gw.addr, &format!("/good/item{i}")).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, format!("/item{i}")));
        assert_eq!(
            r.header("content-length"),
            "",
            "the upstream's answer was not chunked"
        );
        assert_eq!(
            r.header("x-conn"),
            "1",
            "request {i} did not reuse the connection"
        );
    }
    assert_eq!(fetch(gw.addr, "/by_name/x").await.status, StatusCode::OK);
    for (up, reason) in [
        ("wrong_name", "not valid for name"),
        ("expired", "expired"),
        ("unknown_ca", "UnknownIssuer"),
    ] {
        let r = fetch(gw.addr, &format!("/{up}/x")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{up}");
        let id = r.header("x-request-id").to_owned();
        let lines = testkit::logs::lines_with(&id);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("TLS handshake failed") && l.contains(reason)),
            "{up}: no log line with {reason}: {lines:#?}"
        );
    }
    // A target that fails the handshake: the request goes to the next one.
    for _ in 0..4 {
        assert_eq!(fetch(gw.addr, "/fallback/x").await.status, StatusCode::OK);
    }
    // Verification off: served, and warned about.
    assert_eq!(fetch(gw.addr, "/insecure/x").await.status, StatusCode::OK);
    let source = gateway_bin::config::Source {
        name: "test.toml".into(),
        text,
    };
    let config = source.parse().unwrap();
    let app = gateway_bin::app::build::<gateway_bin::serve::ServedBody>(&config, &source).unwrap();
    assert!(
        app.warnings
            .iter()
            .any(|w| w.contains("`insecure`") && w.contains("not verified")),
        "{:?}",
        app.warnings
    );
}

/// A client that trusts the test CA and presents `cert`/`key` (`None`: no certificate).
fn client_with_cert(pki: &Pki, cert: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET /who` over TLS with `connector`, a spoofed subject header sent along; the upstream's
/// view of that header, or the error.
async fn who(addr: SocketAddr, connector: tokio_rustls::TlsConnector) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/who")
        .header("host", "a.test")
        .header("x-client-subject", "CN=admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(json["headers"]["x-client-subject"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}

#[tokio::test]
async fn client_certificates_required_or_optional_and_the_subject_header() {
    let pki = Pki::new("tls-mtls");
    let ca = pki.ca_file();
    let (cert, key, _) = pki.leaf("a", &["a.test"]);
    let (client_cert, client_key, _) = pki.leaf("client", &["svc-a"]);
    // A client certificate from a CA the gateway does not trust.
    let stranger = Pki::new("tls-mtls-stranger");
    let (s_cert, s_key, _) = stranger.leaf("s", &["svc-x"]);
    let b = backend().await;
    let extra = |mode: &str| {
        format!(
            "client_auth = \"{mode}\"\nclient_ca_file = \"{}\"\nclient_subject_header = \"x-client-subject\"",
            ca.display()
        )
    };
    // config: tls.client_auth, tls.client_ca_file, tls.client_subject_header
    let required = start_gateway(config(b.addr(), &[(&cert, &key)], &extra("required"))).await;
    let addr = required.tls_addr.unwrap();
    assert_eq!(
        who(
            addr,
            client_with_cert(&pki, Some((&client_cert, &client_key)))
        )
        .await,
        Ok("CN=svc-a".to_owned())
    );
    // No certificate, or one from another CA: no request gets through.
    assert!(who(addr, client_with_cert(&pki, None)).await.is_err());
    assert!(
        who(addr, client_with_cert(&pki, Some((&s_cert, &s_key))))
            .await
            .is_err()
    );
    // On the plain port the spoofed header is removed, never passed on.
    let req = Request::get("/who")
        .header("host", "a.test")
        .header("x-client-subject", "CN=admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = call(required.addr, req).await;
    assert!(
        json(&r)["headers"].get("x-client-subject").is_none(),
        "{}",
        r.text()
    );

    let optional = start_gateway(config(b.addr(), &[(&cert, &key)], &extra("optional"))).await;
    let addr = optional.tls_addr.unwrap();
    assert_eq!(
        who(addr, client_with_cert(&pki, None)).await,
        Ok(String::new())
    );
    assert_eq!(
        who(
            addr,
            client_with_cert(&pki, Some((&client_cert, &client_key)))
        )
        .await,
        Ok("CN=svc-a".to_owned())
    );

    let source = |text: String| gateway_bin::config::Source {
        name: "test.toml".into(),
        text,
    };
    for (bad, wanted) in [
        ("client_auth = \"sometimes\"".to_owned(), "tls.client_auth"),
        (
            "client_auth = \"required\"".to_owned(),
            "tls.client_ca_file",
        ),
        (
            format!("client_ca_file = \"{}\"", ca.display()),
            "tls.client_ca_file",
        ),
    ] {
        let s = source(config(b.addr(), &[(&cert, &key)], &bad));
        let c = s.parse().unwrap();
        let e = gateway_bin::tls::build(&c, &s)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(&format!("`{wanted}`")), "{bad}: {e}");
    }
}

#[tokio::test]
async fn plain_http_redirected_to_https_and_hsts_on_https_answers() {
    let pki = Pki::new("tls-redirect");
    let (cert, key, _) = pki.leaf("a", &["a.test"]);
    let b = backend().await;
    // config: tls.redirect_http, tls.hsts_max_age_s
    let gw = start_gateway(config(
        b.addr(),
        &[(&cert, &key)],
        "redirect_http = true\nhsts_max_age_s = 31536000",
    ))
    .await;
    let port = gw.tls_addr.unwrap().port();
    let r = get_as_host(gw.addr, "A.test:8080", "/cart?id=7").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location"),
        format!("https://A.test:{port}/cart?id=7")
    );
    assert_eq!(r.header("strict-transport-security"), "");
    // Over HTTPS: served, with HSTS.
    let tcp = TcpStream::connect(gw.tls_addr.unwrap()).await.unwrap();
    let tls = client(&pki, &[b"http/1.1"], BOTH)
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/cart")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
}

async fn get_as_host(addr: SocketAddr, host: &str, path: &str) -> Reply {
    call(
        addr,
        Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await
}

/// The TLS side of a test upstream: the chain and key in `cert`/`key`, offering `alpn` (none:
/// no ALPN).
fn upstream_acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A WebSocket echo over TLS on `cert`/`key`.
async fn wss_echo_upstream(cert: &Path, key: &Path) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let acceptor = upstream_acceptor(cert, key, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_over_tls_on_both_sides() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new("tls-wss");
    let ca = pki.ca_file();
    let (cert, key, _) = pki.leaf("a", &["a.test", "127.0.0.1"]);
    let upstream = wss_echo_upstream(&cert, &key).await;
    let gw = start_gateway(format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.echo]
targets = ["https://{upstream}"]
tls_ca_file = "{}"

[[routes]]
path = "/ws"
upstream = "echo"

[tls]
listen = ["127.0.0.1:0"]
certificates = [{{ cert = "{}", key = "{}" }}]
"#,
        ca.display(),
        cert.display(),
        key.display()
    ))
    .await;
    let tcp = TcpStream::connect(gw.tls_addr.unwrap()).await.unwrap();
    let tls = client(&pki, &[b"http/1.1"], BOTH)
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async("wss://a.test/ws", tls)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["over TLS", "both ways"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(None).await.unwrap();
}

/// An HTTPS upstream that speaks only HTTP/2 (ALPN `h2`): answers `h2 <path> <connection>`.
async fn https_h2_upstream(cert: &Path, key: &Path) -> SocketAddr {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let acceptor = upstream_acceptor(cert, key, &[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let text = format!("h2 {} {n}", req.uri().path());
                    let res = http::Response::builder().body(()).unwrap();
                    if let Ok(mut send) = respond.send_response(res, false) {
                        let _ = send.send_data(Bytes::from(text), true);
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_speak_http2_when_alpn_agrees() {
    let pki = Pki::new("tls-h2-upstreams");
    let ca = pki.ca_file();
    let ca = ca.display();
    let (cert, key, _) = pki.leaf("up", &["127.0.0.1"]);
    let h2_only = https_h2_upstream(&cert, &key).await;
    let h1_only = https_upstream(&cert, &key).await;
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.h2_auto]
targets = ["https://{h2_only}"]
tls_ca_file = "{ca}"
protocol = "auto"

[upstreams.h2_forced]
targets = ["https://{h2_only}"]
tls_ca_file = "{ca}"
protocol = "h2"

[upstreams.h1_auto]
targets = ["https://{h1_only}"]
tls_ca_file = "{ca}"
protocol = "auto"

[upstreams.h1_forced]
targets = ["https://{h1_only}"]
tls_ca_file = "{ca}"
protocol = "h2"

[[routes]]
path = "/h2_auto/*rest"
upstream = "h2_auto"

[[routes]]
path = "/h2_forced/*rest"
upstream = "h2_forced"

[[routes]]
path = "/h1_auto/*rest"
upstream = "h1_auto"

[[routes]]
path = "/h1_forced/*rest"
upstream = "h1_forced"
"#
    );
    let gw = start_gateway(text).await;
    // HTTP/2 by ALPN, both ways of asking for it; every request of an upstream on its one
    // connection (the server numbers its connections).
    for route in ["h2_auto", "h2_forced"] {
        let mut connections = std::collections::BTreeSet::new();
        for i in 0..3 {
            let r = testkit::client::fetch(gw.addr, &format!("/{route}/x{i}")).await;
            assert_eq!(r.status, 200, "{route}: {r:?}");
            let text = r.text();
            let conn = text
                .strip_prefix(&format!("h2 /x{i} "))
                .unwrap_or_else(|| panic!("{route}: {text}"));
            connections.insert(conn.to_owned());
        }
        assert_eq!(connections.len(), 1, "{route}: {connections:?}");
    }
    // `auto` falls back to HTTP/1.1 when the server does not offer h2; `h2` refuses it.
    let r = testkit::client::fetch(gw.addr, "/h1_auto/y").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "/y".to_owned()));
    let r = testkit::client::fetch(gw.addr, "/h1_forced/y").await;
    assert_eq!(r.status, 502, "{r:?}");
    let h1 = gw.health("h1_forced");
    assert_eq!(h1[0].failures, 1, "{h1:?}");
}
