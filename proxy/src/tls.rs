//! [`UpstreamTls`]: how an upstream's `https://` targets are reached: rustls (ring provider),
//! certificates verified against the Mozilla roots (`webpki-roots`, the same everywhere) or a
//! CA bundle of the operator's, the target's host name as SNI and as the name verified
//! (unless overridden), ALPN `http/1.1`.

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

/// TLS to an upstream's `https://` targets (see the [module docs](self)).
///
/// ```
/// let tls = proxy::UpstreamTls::new(None, None, false).unwrap();
/// assert!(!tls.is_insecure());
/// assert!(proxy::UpstreamTls::new(Some(b"not a PEM"), None, false).is_err());
/// ```
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    insecure: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
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
        let mut config = if insecure_skip_verify {
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
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|_| format!("`{n}` is not a DNS name or an IP address"))
            })
            .transpose()?;
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            insecure: insecure_skip_verify,
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
        self.connector.connect(name, tcp).await
    }
}

/// Accepts any certificate (`insecure_skip_verify`); signatures are still checked, so the
/// peer holds the key of the certificate it showed.
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
