//! HTTPS listeners: certificates from PEM files chosen by SNI, ALPN `h2` and `http/1.1`, a
//! minimum protocol version, and certificates reloaded without a restart (on SIGHUP and when
//! their files change). rustls with the `ring` provider: it builds with a C compiler alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, Source};

/// How often certificate files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// A certificate's files, resolved against the configuration's directory.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificates being served, swapped whole on reload.
pub struct Certificates {
    files: Vec<Files>,
    current: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What `[tls]` builds: the acceptor for the HTTPS listeners and the certificates behind it.
#[derive(Clone)]
pub struct TlsServer {
    /// Accepts TLS on a client connection.
    pub acceptor: TlsAcceptor,
    /// The certificates, for reloading.
    pub certificates: Arc<Certificates>,
    /// The header that carries a verified client certificate's subject upstream.
    pub subject_header: Option<http::HeaderName>,
}

/// The subject of a client's certificate as RFC 4514 text (`CN=svc,O=Example`), when it is
/// a valid header value.
pub fn subject_of(der: &CertificateDer<'_>) -> Option<http::HeaderValue> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    http::HeaderValue::from_str(&cert.subject().to_string()).ok()
}

/// Client certificate checking for `[tls]`: `None` when not asked for.
fn client_verifier(
    tls: &crate::config::Tls,
    source: &Source,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, ConfigError> {
    let Some(mode) = &tls.client_auth else {
        if let Some(f) = &tls.client_ca_file {
            return Err(source.error(
                f.span(),
                Some("tls.client_ca_file"),
                "set `client_auth = \"required\"` or `\"optional\"` too, or the CAs are never used",
            ));
        }
        return Ok(None);
    };
    let required = match mode.get_ref().as_str() {
        "required" => true,
        "optional" => false,
        other => {
            return Err(source.error(
                mode.span(),
                Some("tls.client_auth"),
                format!("`{other}`: \"required\" or \"optional\""),
            ));
        }
    };
    let Some(file) = &tls.client_ca_file else {
        return Err(source.error(
            mode.span(),
            Some("tls.client_ca_file"),
            "client certificates need `client_ca_file`, the CAs they must chain to",
        ));
    };
    let err = |m: String| source.error(file.span(), Some("tls.client_ca_file"), m);
    let path = source.resolve(file.get_ref());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
    {
        let cert = cert.map_err(|e| err(format!("{}: not a PEM bundle: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            err(format!(
                "{}: a CA certificate is not usable: {e}",
                path.display()
            ))
        })?;
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider::default_provider()),
    );
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map(Some)
        .map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Reads one certificate chain and its key, and checks that they belong together.
fn load(files: &Files) -> Result<Arc<CertifiedKey>, String> {
    let cert = &files.cert;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = &files.key;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    let signing = provider::sign::any_supported_type(&der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "the key in {} does not match the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

impl Certificates {
    fn load_all(&self) -> Result<Vec<Arc<CertifiedKey>>, String> {
        self.files.iter().map(load).collect()
    }

    /// Reads every file again; on success the next handshakes use the new certificates
    /// (established connections keep theirs); on failure the old ones stay, and the error
    /// (naming the file) is returned.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = self.load_all()?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// The newest modification time among the files (`None` if one cannot be read).
    fn modified(&self) -> Option<SystemTime> {
        self.files
            .iter()
            .flat_map(|f| [&f.cert, &f.key])
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .try_fold(SystemTime::UNIX_EPOCH, |newest, t| Some(newest.max(t?)))
    }
}

/// Picks the certificate for a client's SNI: the first that is valid for the name, else the
/// first of all.
#[derive(Debug)]
struct BySni(Arc<Certificates>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let all = self.0.current.load();
        // One certificate answers every name: nothing to match.
        if all.len() == 1 {
            return all.first().cloned();
        }
        let by_name = hello.server_name().and_then(|sni| {
            let name = ServerName::try_from(sni).ok()?;
            all.iter().find(|ck| {
                ck.end_entity_cert().is_ok_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        by_name.or_else(|| all.first()).cloned()
    }
}

/// ring's suites with AES-128-GCM (SHA-256) first. Clients list AES-256-GCM (SHA-384) first;
/// both are strong, and SHA-256 runs on the CPU's SHA extensions while ring's SHA-384 does not:
/// a profile of full handshakes spent 13 % of the gateway's CPU in SHA-512 blocks. Go's
/// crypto/tls and Cloudflare order AES-128 first for the same reason.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..provider::default_provider()
    }
}

/// Builds `[tls]`, if present: every file read and checked now, so that `--check` and
/// start-up report a missing file, an unreadable PEM or a key that does not match its
/// certificate with the entry's place in the configuration.
pub fn build(config: &Config, source: &Source) -> Result<Option<TlsServer>, ConfigError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let entries = tls.certificates.get_ref();
    if entries.is_empty() {
        return Err(source.error(
            tls.certificates.span(),
            Some("tls.certificates"),
            "HTTPS needs at least one certificate: `certificates = [{ cert = \"...\", key = \"...\" }]`",
        ));
    }
    let mut files = Vec::new();
    let mut loaded = Vec::new();
    for entry in entries {
        let f = Files {
            cert: source.resolve(&entry.get_ref().cert),
            key: source.resolve(&entry.get_ref().key),
        };
        loaded.push(load(&f).map_err(|m| source.error(entry.span(), Some("tls.certificates"), m))?);
        files.push(f);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.get_ref().as_str() {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        other => {
            return Err(source.error(
                tls.min_version.span(),
                Some("tls.min_version"),
                format!("`{other}`: \"1.2\" or \"1.3\" (older versions are not offered)"),
            ));
        }
    };
    let certificates = Arc::new(Certificates {
        files,
        current: ArcSwap::from_pointee(loaded),
    });
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| {
            source.error(
                tls.min_version.span(),
                Some("tls.min_version"),
                e.to_string(),
            )
        })?;
    let builder = match client_verifier(tls, source)? {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(BySni(Arc::clone(&certificates))));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order of cipher suites, not the client's (see `server_provider`).
    server.ignore_client_order = true;
    // Session tickets, as nginx and Caddy send by default: a returning client resumes
    // without a full handshake. rustls's ticketer rotates its keys every 6 hours.
    server.ticketer = provider::Ticketer::new().map_err(|e| {
        source.error(
            tls.certificates.span(),
            Some("tls"),
            format!("session tickets: {e}"),
        )
    })?;
    let subject_header = match &tls.client_subject_header {
        None => None,
        Some(h) => Some(h.get_ref().parse::<http::HeaderName>().map_err(|_| {
            source.error(
                h.span(),
                Some("tls.client_subject_header"),
                format!("`{}` is not a header name", h.get_ref()),
            )
        })?),
    };
    Ok(Some(TlsServer {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        certificates,
        subject_header,
    }))
}

/// Reloads the certificates on SIGHUP and when their files change, until dropped (abort the
/// handle). File reads run off the runtime's worker threads; handshakes never wait for them.
pub fn watch(certificates: Arc<Certificates>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = certificates.modified();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = signalled => "SIGHUP",
                _ = tokio::time::sleep(WATCH_EVERY) => {
                    let now = certificates.modified();
                    if now == seen || now.is_none() {
                        continue;
                    }
                    seen = now;
                    "a certificate file changed"
                }
            };
            let c = Arc::clone(&certificates);
            match tokio::task::spawn_blocking(move || c.reload()).await {
                Ok(Ok(())) => tracing::info!(reason = why, "certificates reloaded"),
                Ok(Err(error)) => tracing::error!(
                    reason = why,
                    %error,
                    "certificate reload failed; serving the previous certificates"
                ),
                Err(error) => tracing::error!(%error, "certificate reload failed"),
            }
        }
    })
}
