//! `[tls]`: HTTPS listeners, their certificates and protocol versions.

use serde::Deserialize;
use toml::Spanned;

use super::values;

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Addresses to serve HTTPS on, `IP:port` each (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(deserialize_with = "values::listen")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Certificates, chosen by the name the client asks for (SNI); the first is the default
    /// for clients that send no name or one no certificate covers.
    pub certificates: Spanned<Vec<Spanned<CertificateConfig>>>,
    /// The oldest protocol accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default = "default_min_version")]
    pub min_version: Spanned<String>,
    /// Client certificates (mutual TLS): `"required"` or `"optional"` (default: not asked
    /// for). Needs `client_ca_file`.
    #[serde(default)]
    pub client_auth: Option<Spanned<String>>,
    /// The PEM bundle of the CAs client certificates must chain to.
    #[serde(default)]
    pub client_ca_file: Option<Spanned<String>>,
    /// Answer every request on the plain listeners with a `308` to the same URL over HTTPS
    /// (default false).
    #[serde(default)]
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=N` on HTTPS responses, in seconds (default 0:
    /// none). Browsers then refuse plain HTTP to the host for that long.
    #[serde(default)]
    pub hsts_max_age_s: u32,
    /// A request header that carries the verified client certificate's subject upstream
    /// (`x-client-subject`); whatever a client sends in it is always removed first, on every
    /// listener.
    #[serde(default)]
    pub client_subject_header: Option<Spanned<String>>,
}

fn default_min_version() -> Spanned<String> {
    Spanned::new(0..0, "1.2".to_owned())
}

/// One certificate: a PEM chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The PEM file with the certificate, then its intermediates (relative paths are from the
    /// configuration file's directory).
    pub cert: String,
    /// The PEM file with its private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
}
