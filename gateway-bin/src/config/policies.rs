//! A route's policies: rate limit, compression, CORS, retries, mirroring.

use serde::Deserialize;

/// A route's `rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second each key may make, on average (above 0).
    pub rate: f64,
    /// How many may come at once (default: `rate` rounded up, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What a key is: `client` (the client's address, default), `header:NAME` or
    /// `param:NAME` (a route parameter).
    #[serde(default = "default_key")]
    pub key: String,
    /// Room for this many keys (default 65,536; about 25 bytes each). When more keys are
    /// active at once, the least recently seen lose their buckets.
    #[serde(default = "default_keys")]
    pub max_keys: usize,
}

fn default_key() -> String {
    "client".to_owned()
}

fn default_keys() -> usize {
    65_536
}

/// A route's `compress` (`compress = {}` for the defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Encodings offered, by preference when the client rates them equally (default
    /// `["zstd", "br", "gzip"]`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Responses declaring fewer bytes than this are sent as they are (default 1024).
    #[serde(default = "default_min_bytes")]
    pub min_bytes: u16,
    /// Content types compressed, by prefix (default: text, JSON, JavaScript, XML, SVG,
    /// WebAssembly).
    #[serde(default = "default_types")]
    pub types: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    ["zstd", "br", "gzip"].map(String::from).to_vec()
}

fn default_min_bytes() -> u16 {
    1024
}

fn default_types() -> Vec<String> {
    [
        "text/",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/wasm",
        "image/svg+xml",
        "application/problem+json",
    ]
    .map(String::from)
    .to_vec()
}

/// A route's `cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`https://app.example.com`), or `["*"]` for any.
    pub origins: Vec<String>,
    /// Methods a preflight may ask for (default: the route's methods).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for (default none beyond the safelisted ones).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers the browser may read (default none beyond the safelisted ones).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow credentials (cookies, `Authorization`); not with `origins = ["*"]`.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache the preflight answer, in seconds (default 600).
    #[serde(default = "default_max_age")]
    pub max_age_s: u32,
}

fn default_max_age() -> u32 {
    600
}

/// A route's `retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included (1 to 10; default 2; 1 turns retries off).
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// Methods that may be retried once sent (default the idempotent ones: GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE). A request that never reached the upstream (connect failure) is
    /// always retried.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Failures retried: `connect`, `reset` (closed before any response byte), `timeout`,
    /// and statuses `502`, `503`, `504` (default `["connect", "reset", "502", "503"]`).
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Retries may be at most this percentage of the route's requests over 10 s (default
    /// 20)...
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
    /// ...plus this many per second, so a quiet route can still retry (default 3).
    #[serde(default = "default_min_per_s")]
    pub min_per_s: u32,
}

fn default_tries() -> u32 {
    2
}

fn default_retry_on() -> Vec<String> {
    ["connect", "reset", "502", "503"]
        .map(String::from)
        .to_vec()
}

fn default_budget_percent() -> u32 {
    20
}

fn default_min_per_s() -> u32 {
    3
}

/// A route's `mirror`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The shadow upstream's name.
    pub upstream: String,
    /// Share of requests copied, in percent (default 100).
    #[serde(default = "default_percent")]
    pub percent: f64,
    /// Requests with a larger body are not copied (default 65,536 bytes).
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: usize,
    /// Copies in flight at most; beyond it copies are dropped (default 64).
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
}

fn default_percent() -> f64 {
    100.0
}

fn default_mirror_body() -> usize {
    64 * 1024
}

fn default_mirror_in_flight() -> usize {
    64
}
