//! `[[routes]]`: what is matched, where it goes, and the gate in front. The tables a route's
//! keys hold are in `matching.rs` (what else must match), `actions.rs` (where it goes and what
//! changes on the way) and `policies.rs` (limits, compression, CORS, retries, mirroring).

use serde::Deserialize;
use toml::Spanned;

use super::actions::{
    HeadersConfig, RedirectConfig, RespondConfig, RewriteConfig, SplitConfig, StickyConfig,
};
use super::matching::MatchConfig;
use super::policies::{CompressConfig, CorsConfig, MirrorConfig, RateLimitConfig, RetryConfig};
use super::{defaults, values};

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The pattern: static text, `:name`, a final `*name`. It must be in normalized form
    /// (requests are normalized before routing: no `.` or `..` segments, no escaped unreserved
    /// characters, upper-case escapes), or it could never match.
    pub path: Spanned<String>,
    /// Methods (default `["GET"]`; `"*"` for any). Standard methods only, unless also listed
    /// in `extension_methods`.
    #[serde(default = "defaults::methods")]
    pub methods: Spanned<Vec<Spanned<String>>>,
    /// Methods outside RFC 9110 that this route accepts (`PURGE`, `PROPFIND`...), listed in
    /// `methods` too. Guards against typos such as `GETT` being taken as a method.
    #[serde(default)]
    pub extension_methods: Vec<String>,
    /// Host names the route answers for: exact (`api.example.com`) or wildcard
    /// (`*.example.com`). Default: every host that no route names.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Header and query conditions, all of which must hold (default none).
    #[serde(default)]
    pub matches: Vec<Spanned<MatchConfig>>,
    /// The upstream's name. Exactly one of `upstream`, `split`, `redirect`, `respond`.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// Several upstreams with weights (a canary split).
    #[serde(default)]
    pub split: Option<Spanned<Vec<Spanned<SplitConfig>>>>,
    /// With `split`: the same cookie or header value always goes to the same upstream.
    #[serde(default)]
    pub sticky: Option<Spanned<StickyConfig>>,
    /// Answer with a redirect, without an upstream.
    #[serde(default)]
    pub redirect: Option<Spanned<RedirectConfig>>,
    /// Answer with a fixed response, without an upstream.
    #[serde(default)]
    pub respond: Option<Spanned<RespondConfig>>,
    /// The path the upstream sees: a new prefix for the catch-all's suffix, or a regex
    /// replacement on the whole path (instead of `strip_prefix`).
    #[serde(default)]
    pub rewrite: Option<Spanned<RewriteConfig>>,
    /// Request headers set, added or removed before forwarding.
    #[serde(default)]
    pub request_headers: Option<Spanned<HeadersConfig>>,
    /// Response headers set, added or removed on the way back.
    #[serde(default)]
    pub response_headers: Option<Spanned<HeadersConfig>>,
    /// Token-bucket rate limit per client, header or path parameter.
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimitConfig>>,
    /// Response compression by `Accept-Encoding`.
    #[serde(default)]
    pub compress: Option<Spanned<CompressConfig>>,
    /// CORS headers and preflight answers.
    #[serde(default)]
    pub cors: Option<Spanned<CorsConfig>>,
    /// Which failures are retried, how often, within which budget.
    #[serde(default)]
    pub retry: Option<Spanned<RetryConfig>>,
    /// A copy of the requests to a shadow upstream.
    #[serde(default)]
    pub mirror: Option<Spanned<MirrorConfig>>,
    /// Forward only the catch-all suffix (`/static/x.png` -> `/x.png`) when the route has one
    /// (default true); false forwards the full path.
    #[serde(default = "defaults::yes")]
    pub strip_prefix: bool,
    /// A deadline for the whole exchange, then `503` (default none: only the upstream's
    /// own timeouts).
    #[serde(default, deserialize_with = "values::optional_timeout_ms")]
    pub timeout_ms: Option<u64>,
    /// An auth gate (default none).
    #[serde(default)]
    pub auth: Option<Spanned<AuthConfig>>,
}

/// A route's `auth = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The header that must carry a secret (e.g. `X-Admin-Token`).
    #[serde(default)]
    pub header: Option<String>,
    /// Require `Authorization: Bearer <secret>` instead.
    #[serde(default)]
    pub bearer: bool,
    /// The secrets, inline (keep them out of files in production).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// An environment variable holding the secrets, comma-separated.
    #[serde(default)]
    pub secrets_env: Option<String>,
}
