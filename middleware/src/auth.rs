//! An auth gate: the request must carry one of the configured secrets, in a header
//! (`X-Admin-Token: ...`) or as a bearer token (`Authorization: Bearer ...`). Otherwise the
//! client gets `403` and the inner service is not called.
//!
//! Secrets are compared in constant time (the time depends on the secret's length, never on
//! how much of it the request got right), and every configured secret is compared, so the
//! time does not tell which one matched either. Values are compared byte for byte: no case
//! folding, no trimming beyond what HTTP itself strips. A header sent twice is refused.
//!
//! There is no default secret: they come from configuration or the environment.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use middleware::{AuthLayer, Secrets};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gate = AuthLayer::header("x-admin-token", Secrets::new(["letmein"])?)?;
//! let svc = ServiceBuilder::new().layer(gate).service(service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! }));
//!
//! let denied = svc.clone().oneshot(Request::new(())).await?;
//! assert_eq!(denied.status(), StatusCode::FORBIDDEN);
//! let req = Request::builder().header("x-admin-token", "letmein").body(())?;
//! assert_eq!(svc.oneshot(req).await?.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderName, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use httpkit::TextOr;
use telemetry::Counter;

use crate::answer::{AnswerOr, answer, pass};

/// Why an auth gate could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No secret was given: the gate would refuse everything.
    #[error("no secret configured")]
    NoSecrets,
    /// A secret is empty, or has characters a header value cannot carry.
    #[error("secret #{0} is empty or not valid in an HTTP header")]
    BadSecret(usize),
    /// The header name is not a valid HTTP header name.
    #[error("`{0}` is not a valid header name")]
    BadHeaderName(String),
    /// The environment variable is not set (or not valid UTF-8).
    #[error("environment variable `{0}` is not set")]
    MissingEnv(String),
}

/// The accepted secrets. `Debug` never shows them.
#[derive(Clone)]
pub struct Secrets(Arc<[Box<[u8]>]>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// At least one non-empty secret of visible ASCII (what a header value can carry).
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Result<Self, AuthError> {
        let list: Vec<Box<[u8]>> = secrets
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let bytes = s.as_ref().as_bytes();
                let visible = bytes.iter().all(|b| b.is_ascii_graphic());
                if bytes.is_empty() || !visible {
                    Err(AuthError::BadSecret(i))
                } else {
                    Ok(Box::from(bytes))
                }
            })
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(AuthError::NoSecrets);
        }
        Ok(Secrets(list.into()))
    }

    /// Secrets from the environment variable `var`: one, or several separated by commas.
    pub fn from_env(var: &str) -> Result<Self, AuthError> {
        let value = std::env::var(var).map_err(|_| AuthError::MissingEnv(var.to_owned()))?;
        Self::new(value.split(',').map(str::trim))
    }

    /// Whether `candidate` equals one of the secrets, in time independent of its content.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mut any = 0u8;
        for secret in self.0.iter() {
            any |= constant_time_eq(secret, candidate) as u8;
        }
        any == 1
    }
}

/// Compares in time that depends only on `secret.len()`.
fn constant_time_eq(secret: &[u8], candidate: &[u8]) -> bool {
    let mut diff = (secret.len() != candidate.len()) as u8;
    for (i, s) in secret.iter().enumerate() {
        let c = candidate.get(i).copied().unwrap_or(!*s);
        diff |= s ^ c;
    }
    // Keep the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

#[derive(Debug, Clone)]
enum Scheme {
    Header(HeaderName),
    Bearer,
}

/// Requires a secret on every request (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    scheme: Scheme,
    secrets: Secrets,
    denials: Option<Arc<Counter>>,
}

impl AuthLayer {
    /// Counts every request refused in `denials`.
    pub fn count_denials(mut self, denials: Arc<Counter>) -> Self {
        self.denials = Some(denials);
        self
    }

    /// The header `name` must equal one of `secrets`.
    pub fn header(name: &str, secrets: Secrets) -> Result<Self, AuthError> {
        let name = HeaderName::try_from(name).map_err(|_| AuthError::BadHeaderName(name.into()))?;
        Ok(AuthLayer {
            scheme: Scheme::Header(name),
            secrets,
            denials: None,
        })
    }

    /// `Authorization: Bearer <token>` must carry one of `tokens` (the scheme name is
    /// case-insensitive, as HTTP says; the token is not).
    pub fn bearer(tokens: Secrets) -> Self {
        AuthLayer {
            scheme: Scheme::Bearer,
            secrets: tokens,
            denials: None,
        }
    }

    fn allows<B>(&self, req: &Request<B>) -> bool {
        let name = match &self.scheme {
            Scheme::Header(name) => name,
            Scheme::Bearer => &AUTHORIZATION,
        };
        let mut values = req.headers().get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let value = value.as_bytes();
        let candidate = match self.scheme {
            Scheme::Header(_) => value,
            Scheme::Bearer => {
                let Some((scheme, token)) = value.split_at_checked(6) else {
                    return false;
                };
                if !scheme.eq_ignore_ascii_case(b"bearer") || !token.starts_with(b" ") {
                    return false;
                }
                token.trim_ascii_start()
            }
        };
        self.secrets.matches(candidate)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TextOr<ResBody>>;
    type Error = S::Error;
    type Future = AnswerOr<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.layer.allows(&req) {
            pass(self.inner.call(req))
        } else {
            if let Some(denials) = &self.layer.denials {
                denials.inc();
            }
            tracing::info!(
                request_id = %httpkit::RequestId::logged(req.extensions()),
                trace_id = %httpkit::TraceContext::logged(req.extensions()),
                path = %crate::text::escape_controls(req.uri().path()),
                "auth gate: forbidden"
            );
            answer(StatusCode::FORBIDDEN, "Forbidden\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"letmein", b"letmein"));
        assert!(!constant_time_eq(b"letmein", b"letmeiN"));
        assert!(!constant_time_eq(b"letmein", b"letmei"));
        assert!(!constant_time_eq(b"letmein", b"letmeinn"));
        assert!(!constant_time_eq(b"letmein", b""));
        // A candidate whose missing byte would equal the complement still fails on length.
        assert!(!constant_time_eq(b"ab", b"a"));
    }

    #[test]
    fn secrets_are_validated_and_redacted() {
        assert_eq!(
            Secrets::new(Vec::<&str>::new()).unwrap_err(),
            AuthError::NoSecrets
        );
        assert_eq!(
            Secrets::new(["ok", ""]).unwrap_err(),
            AuthError::BadSecret(1)
        );
        assert_eq!(
            Secrets::new(["sp ace"]).unwrap_err(),
            AuthError::BadSecret(0)
        );
        let s = Secrets::new(["a", "bc"]).unwrap();
        assert!(s.matches(b"bc") && s.matches(b"a") && !s.matches(b"b"));
        assert!(!format!("{s:?}").contains("bc"));
    }
}
