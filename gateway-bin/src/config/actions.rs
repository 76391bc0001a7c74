//! Where a route goes and what changes on the way: a weighted split, a redirect, a direct
//! answer, the path the upstream sees, header edits.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One entry of a route's `split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The upstream's name.
    pub upstream: String,
    /// Its share, relative to the others' (0 to 1,000,000; 0 sends it nothing).
    pub weight: u32,
}

/// A split's stickiness: exactly one of `cookie` or `header`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// The cookie whose value picks the upstream.
    #[serde(default)]
    pub cookie: Option<String>,
    /// The header whose value picks the upstream.
    #[serde(default)]
    pub header: Option<String>,
}

/// A route's `redirect`: each part given replaces the request's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// A host name, with a port if needed.
    #[serde(default)]
    pub host: Option<String>,
    /// A new path, whole.
    #[serde(default)]
    pub path: Option<String>,
    /// A new prefix for the catch-all's suffix (`/old/*rest` with `prefix = "/new"`:
    /// `/old/a/b` goes to `/new/a/b`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// 301, 302, 303, 307 or 308 (default 301).
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Keep the request's query (default true).
    #[serde(default = "super::defaults::yes")]
    pub keep_query: bool,
}

fn default_redirect_status() -> u16 {
    301
}

/// A route's `respond`: a fixed answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// The status (default 200).
    #[serde(default = "default_respond_status")]
    pub status: u16,
    /// The body (default empty).
    #[serde(default)]
    pub body: String,
    /// The `Content-Type` (default `text/plain; charset=utf-8`).
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_respond_status() -> u16 {
    200
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_owned()
}

/// A route's `rewrite`: `prefix`, or `regex` with `replace`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// The upstream sees this prefix followed by the catch-all's suffix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// A regex over the whole path...
    #[serde(default)]
    pub regex: Option<String>,
    /// ...replaced by this (`$1`, `${name}` for captures).
    #[serde(default)]
    pub replace: Option<String>,
}

/// Header edits, applied in the order remove, set, add. Values may hold `{client_ip}`,
/// `{request_id}`, `{host}` and `{param.NAME}` (a route parameter).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers set, replacing any value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers added beside any value already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}
