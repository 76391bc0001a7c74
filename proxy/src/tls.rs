//! [`UpstreamTls`]: how an upstream's `https://` targets are reached: rustls (ring provider),
//! certificates verified against the Mozilla roots (`webpki-roots`, the same everywhere) or a
//! CA bundle of the operator's, the target's host name as SNI and as the name verified
//! (unless overridden), ALPN `http/1.1`, `h2` or both, as the upstream's `protocol` says.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::target::TargetAddr;

/// TLS to an upstream's `https://` targets (see the [crate docs](crate)).
///
/// ```
/// let tls = proxy::UpstreamTls::new(None, None, false).unwrap();
/// assert!(!tls.is_insecure());
/// assert!(proxy::UpstreamTls::new(Some(b"not a PEM"), None, false).is_err());
/// ```
#[derive(Clone)]
pub struct UpstreamTls {
    /// By the ALPN protocols offered: [`Alpn`] as index.
    connectors: Arc<[TlsConnector; 3]>,
    server_name: Option<ServerName<'static>>,
    insecure: bool,
    /// A hash of the CA bundle (zero: the Mozilla roots), so that two configurations with
    /// different bundles at the same path compare different.
    roots: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Certificates verified against `ca_pem` (a PEM bundle) or, without it, the Mozilla
    /// roots; `server_name` replaces the target's host name as SNI and as the name checked;
    /// `insecure_skip_verify` accepts any certificate (for tests and emergencies only: the
    /// connection is then open to anyone in the path).
    pub fn new(
        ca_pem: Option<&[u8]>,
        server_name: Option<&str>,
        insecure_skip_verify: bool,
    ) -> Result<UpstreamTls, String> {
        let provider = Arc::new(provider::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = if insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match ca_pem {
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Some(pem) => {
                    for cert in CertificateDer::pem_slice_iter(pem) {
                        let cert =
                            cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
                    }
                    if roots.is_empty() {
                        return Err("no certificate in the CA bundle".into());
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = config.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        let connectors = [
            with_alpn(&[b"http/1.1"]),
            with_alpn(&[b"h2"]),
            with_alpn(&[b"h2", b"http/1.1"]),
        ];
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|_| format!("`{n}` is not a DNS name or an IP address"))
            })
            .transpose()?;
        Ok(UpstreamTls {
            connectors: Arc::new(connectors),
            server_name,
            insecure: insecure_skip_verify,
            roots: ca_pem.map_or(0, |pem| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                pem.hash(&mut h);
                h.finish() | 1
            }),
        })
    }

    /// Whether certificates go unverified.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The TLS handshake with `target` on `tcp`.
    pub(crate) async fn connect(
        &self,
        target: &TargetAddr,
        tcp: TcpStream,
        alpn: Alpn,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(target.host_name().to_owned()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("`{}` is not a name TLS can ask for", target.host_name()),
                )
            })?,
        };
        self.connectors[alpn as usize].connect(name, tcp).await
    }
}

/// Accepts any certificate (`insecure_skip_verify`); signatures are still checked, so the
/// peer holds the key of the certificate it showed.
/// The application protocols offered in the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `http/1.1` alone.
    Http1 = 0,
    /// `h2` alone.
    H2 = 1,
    /// `h2`, then `http/1.1`: the upstream chooses.
    Both = 2,
}

/// Whether the upstream agreed on `h2`.
pub(crate) fn agreed_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS for upstreams that set nothing: the Mozilla roots, the target's name. Made once.
pub(crate) fn default_upstream_tls() -> Option<Arc<UpstreamTls>> {
    static DEFAULT: std::sync::LazyLock<Option<Arc<UpstreamTls>>> =
        std::sync::LazyLock::new(|| UpstreamTls::new(None, None, false).ok().map(Arc::new));
    DEFAULT.clone()
}
