//! A route's policies, checked and built: rate limit, compression, CORS.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use middleware::rate_limit::{KeyFn, KeyHasher};
use middleware::{RateLimitLayer, RateLimiter};
use proxy::ClientAddr;
use router::{IntoRoute, PathParams, Route};
use tower::Layer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::Predicate;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{
    CompressConfig, ConfigError, CorsConfig, RateLimitConfig, RouteConfig, Source,
};

/// The most keys a rate limit may hold: 16 Mi slots, about 400 MiB. Beyond it a value is a
/// typo.
const MAX_KEYS: usize = 1 << 24;

/// The route's rate limit layer and its note; `None` without one.
pub(super) fn rate_limit(
    route: &RouteConfig,
    limited: &Arc<telemetry::Counter>,
    source: &Source,
) -> Result<Option<(RateLimitLayer, String)>, ConfigError> {
    let Some(c) = &route.rate_limit else {
        return Ok(None);
    };
    let span = c.span();
    let err = |key: &str, message: String| source.error(span.clone(), Some(key), message);
    let c: &RateLimitConfig = c.get_ref();
    if !(c.rate > 0.0 && c.rate <= 1e9) {
        return Err(err(
            "rate_limit.rate",
            format!("{}: requests per second, above 0", c.rate),
        ));
    }
    let burst = c.burst.unwrap_or(c.rate.ceil() as u32).max(1);
    if c.burst == Some(0) {
        return Err(err(
            "rate_limit.burst",
            "0: a bucket holds at least 1".into(),
        ));
    }
    if c.max_keys == 0 || c.max_keys > MAX_KEYS {
        return Err(err(
            "rate_limit.max_keys",
            format!("{}: 1 to {MAX_KEYS}", c.max_keys),
        ));
    }
    let key: KeyFn = match c.key.split_once(':') {
        None if c.key == "client" => {
            Arc::new(|parts: &http::request::Parts, key: &mut KeyHasher| {
                if let Some(ClientAddr(addr)) = parts.extensions.get::<ClientAddr>() {
                    match addr.ip() {
                        std::net::IpAddr::V4(ip) => key.write(&ip.octets()),
                        std::net::IpAddr::V6(ip) => key.write(&ip.octets()),
                    }
                }
            })
        }
        Some(("header", name)) => {
            let name: HeaderName = name
                .parse()
                .map_err(|_| err("rate_limit.key", format!("`{name}` is not a header name")))?;
            Arc::new(move |parts: &http::request::Parts, key: &mut KeyHasher| {
                if let Some(v) = parts.headers.get(&name) {
                    key.write(v.as_bytes());
                }
            })
        }
        Some(("param", name)) => {
            let pattern = route.path.get_ref();
            let has = pattern
                .split('/')
                .any(|seg| seg.strip_prefix([':', '*']) == Some(name));
            if !has {
                return Err(err(
                    "rate_limit.key",
                    format!("the route's path `{pattern}` has no parameter `{name}`"),
                ));
            }
            let name: Arc<str> = Arc::from(name);
            Arc::new(move |parts: &http::request::Parts, key: &mut KeyHasher| {
                if let Some(v) = parts
                    .extensions
                    .get::<PathParams>()
                    .and_then(|p| p.get(&name))
                {
                    key.write(v.as_bytes());
                }
            })
        }
        _ => {
            return Err(err(
                "rate_limit.key",
                format!("`{}`: `client`, `header:NAME` or `param:NAME`", c.key),
            ));
        }
    };
    let limiter =
        Arc::new(RateLimiter::new(c.rate, burst, c.max_keys).counting(Arc::clone(limited)));
    let note = format!("rate limit {}/s burst {burst} by {}", c.rate, c.key);
    Ok(Some((RateLimitLayer::new(limiter, key), note)))
}

/// Which responses are compressed: an allowed content type, never `text/event-stream`, at
/// least `min` bytes when the length is known.
#[derive(Clone)]
struct Compressible {
    types: Arc<[String]>,
    min: u16,
}

impl Predicate for Compressible {
    fn should_compress<B: http_body::Body>(&self, res: &http::Response<B>) -> bool {
        let Some(ct) = res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let ct = ct.trim_start().as_bytes();
        // Case-insensitive prefixes, without a lower-cased copy per response.
        let starts = |prefix: &[u8]| {
            ct.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        if starts(b"text/event-stream") {
            return false;
        }
        self.types.iter().any(|t| starts(t.as_bytes()))
            && tower_http::compression::predicate::SizeAbove::new(u64::from(self.min))
                .should_compress(res)
    }
}

/// The route's compression, as a wrapper for its stack and a note; `None` without it.
pub(super) fn compress(
    route: &RouteConfig,
    source: &Source,
) -> Result<Option<(Compress, String)>, ConfigError> {
    let Some(c) = &route.compress else {
        return Ok(None);
    };
    let span = c.span();
    let c: &CompressConfig = c.get_ref();
    let (mut gzip, mut br, mut zstd) = (false, false, false);
    for a in &c.algorithms {
        match a.as_str() {
            "gzip" => gzip = true,
            "br" => br = true,
            "zstd" => zstd = true,
            other => {
                return Err(source.error(
                    span,
                    Some("compress.algorithms"),
                    format!("`{other}`: `gzip`, `br` or `zstd`"),
                ));
            }
        }
    }
    if c.algorithms.is_empty() || c.types.is_empty() {
        return Err(source.error(
            span,
            Some("compress"),
            "give at least one algorithm and one content type (or leave the keys out)",
        ));
    }
    let predicate = Compressible {
        types: c.types.iter().map(|t| t.to_ascii_lowercase()).collect(),
        min: c.min_bytes,
    };
    let layer = CompressionLayer::new()
        .gzip(gzip)
        .br(br)
        .zstd(zstd)
        .no_deflate()
        .compress_when(predicate);
    let note = format!("compress {} from {} B", c.algorithms.join(","), c.min_bytes);
    Ok(Some((Compress(layer), note)))
}

/// A route's compression.
#[derive(Clone)]
pub(super) struct Compress(CompressionLayer<Compressible>);

impl Compress {
    /// `route` behind the compression.
    pub(super) fn wrap<B: Send + 'static>(&self, route: Route<B>) -> Route<B> {
        self.0.layer(route).into_route()
    }
}

/// The route's CORS layer, the methods a preflight needs registered, and a note; `None`
/// without it.
pub(super) fn cors(
    route: &RouteConfig,
    route_methods: Option<&[Method]>,
    source: &Source,
) -> Result<Option<(CorsLayer, String)>, ConfigError> {
    let Some(c) = &route.cors else {
        return Ok(None);
    };
    let span = c.span();
    let err = |key: &str, message: String| source.error(span.clone(), Some(key), message);
    let c: &CorsConfig = c.get_ref();
    if c.origins.is_empty() {
        return Err(err(
            "cors.origins",
            "list the origins allowed, or `[\"*\"]` for any".into(),
        ));
    }
    let any_origin = c.origins.iter().any(|o| o == "*");
    if any_origin && c.origins.len() > 1 {
        return Err(err(
            "cors.origins",
            "`\"*\"` means any origin: list it alone".into(),
        ));
    }
    if any_origin && c.credentials {
        return Err(err(
            "cors.credentials",
            "browsers refuse credentials with `Access-Control-Allow-Origin: *`: list the origins"
                .into(),
        ));
    }
    let origin = if any_origin {
        AllowOrigin::any()
    } else {
        let mut list = Vec::new();
        for o in &c.origins {
            let valid = o.parse::<http::Uri>().is_ok_and(|u| {
                u.scheme().is_some() && u.host().is_some() && u.path() == "/" && !o.ends_with('/')
            });
            if !valid {
                return Err(err(
                    "cors.origins",
                    format!(
                        "`{o}` is not an origin: scheme, host and optional port (`https://app.example.com`)"
                    ),
                ));
            }
            list.push(
                HeaderValue::from_str(o)
                    .map_err(|_| err("cors.origins", format!("`{o}` is not an origin")))?,
            );
        }
        AllowOrigin::list(list)
    };
    let methods: Vec<Method> = if c.methods.is_empty() {
        match route_methods {
            Some(m) => m.to_vec(),
            None => vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ],
        }
    } else {
        c.methods
            .iter()
            .map(|m| {
                m.to_ascii_uppercase()
                    .parse::<Method>()
                    .map_err(|_| err("cors.methods", format!("`{m}` is not a method")))
            })
            .collect::<Result<_, _>>()?
    };
    let names = |list: &[String], key: &str| -> Result<Vec<HeaderName>, ConfigError> {
        list.iter()
            .map(|h| {
                h.parse::<HeaderName>()
                    .map_err(|_| err(key, format!("`{h}` is not a header name")))
            })
            .collect()
    };
    let layer = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(names(&c.headers, "cors.headers")?)
        .expose_headers(names(&c.expose_headers, "cors.expose_headers")?)
        .allow_credentials(c.credentials)
        .max_age(Duration::from_secs(u64::from(c.max_age_s)));
    let note = format!("cors {}", c.origins.join(","));
    Ok(Some((layer, note)))
}
