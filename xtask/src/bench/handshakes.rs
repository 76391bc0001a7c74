//! The load of the `tls-handshake` scenario: a full TLS 1.3 handshake and one request per
//! connection, `conns` at once for `seconds`, from one thread on epoll as wrk's, run as
//! `cargo xtask handshakes` on the client's core.
//!
//! wrk was the load before, and it measured something else: its OpenSSL client keeps the
//! session of a closed connection for the next (`SSL_clear`, with the client session cache
//! on), so every connection after a slot's first resumed from a ticket (nginx logged 4,850 of
//! 4,858 handshakes as reused in one second), and the servers never signed. Its one thread
//! also ran out of core before the gateway did. This client does what a client must for the server to do all of its work (a fresh X25519 key share, no
//! session resumption, the whole handshake to `Finished`, then the request and the answer to
//! its end), and skips what only protects the client: the certificate chain and the
//! signature over the handshake are not verified. One client core then outpaces one server
//! core, and the rate is the server's. Every server meets the same client.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Options of `cargo xtask handshakes`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The HTTPS port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// Connections at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub conns: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// The request's path.
    #[arg(long, default_value = "/api/ping")]
    pub path: String,
}

/// Accepts the server's certificate and signatures unchecked (see the module docs).
#[derive(Debug)]
struct Unverified(Vec<SignatureScheme>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// What one connection slot did.
#[derive(Default)]
struct Tally {
    /// Each answered request's time, from connect to the answer's end, in microseconds.
    latencies: Vec<u32>,
    /// The first failure, and how many there were.
    first_error: Option<String>,
    errors: u64,
}

/// Runs the load and prints what the bench reads, in wrk's words: `N requests in`,
/// `Requests/sec:`, and `PCT p50 p99 p99.9` in microseconds. Fails if any request failed.
pub fn run(opts: &Options) -> Result<(), String> {
    let provider = rustls::crypto::ring::default_provider();
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(schemes)))
        .with_no_client_auth();
    // Every connection a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        opts.path
    )
    .into_bytes()
    .into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let port = opts.port;
    let (tallies, elapsed) = runtime.block_on(async {
        let start = Instant::now();
        let end = start + Duration::from_secs(u64::from(opts.seconds));
        let slots: Vec<_> = (0..opts.conns)
            .map(|_| {
                let (connector, request) = (connector.clone(), Arc::clone(&request));
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while Instant::now() < end {
                        let began = Instant::now();
                        let done = tokio::time::timeout(
                            Duration::from_secs(10),
                            exchange(&connector, port, &request),
                        )
                        .await
                        .unwrap_or_else(|_| Err("no answer within 10 s".into()));
                        match done {
                            Ok(()) => tally.latencies.push(
                                u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX),
                            ),
                            Err(e) => {
                                tally.errors += 1;
                                tally.first_error.get_or_insert(e);
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        let mut tallies = Vec::new();
        for slot in slots {
            tallies.push(slot.await.map_err(|e| e.to_string())?);
        }
        Ok::<_, String>((tallies, start.elapsed().as_secs_f64()))
    })?;
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for tally in tallies {
        latencies.extend(tally.latencies);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    if let Some(e) = first_error {
        return Err(format!("{errors} requests failed, the first: {e}"));
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        let i = ((latencies.len() as f64 * p / 100.0).ceil() as usize).saturating_sub(1);
        latencies.get(i).copied().unwrap_or(0)
    };
    println!("  {} requests in {elapsed:.2}s", latencies.len());
    println!("Requests/sec: {:.2}", latencies.len() as f64 / elapsed);
    println!("PCT {} {} {}", pct(50.0), pct(99.0), pct(99.9));
    Ok(())
}

/// One connection: the handshake, the request, its answer (`200`, read to the end of the
/// length it declares), then the client's close (`close_notify`, then the socket's), as wrk
/// and curl close a `Connection: close` exchange.
async fn exchange(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    request: &[u8],
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(request)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = tls
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("closed before the answer ended".into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(status) = crate::client::whole_answer(&got)? {
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!("answer: {status:?}"));
            }
            break;
        }
    }
    // close_notify, then the socket's write side; the socket closes when dropped.
    let _ = tls.shutdown().await;
    Ok(())
}
