//! Where a route goes: one upstream, a weighted split over several, a redirect, or a fixed
//! answer. Each is checked against the file and built once into a service.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use balancer::Split;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, LOCATION};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use httpkit::Body;
use proxy::Proxy;
use router::{IntoRoute, PathParams, Route};
use tower::Service;

use super::GatewayBody;
use super::routes::catch_all_name;
use crate::config::{ConfigError, RedirectConfig, RespondConfig, RouteConfig, Source};

/// What a route does with a request, built.
pub(super) struct Target<B> {
    /// The service at the bottom of the route's stack.
    pub(super) service: Route<B>,
    /// How it reads in the route table: `api`, `stable 95% / canary 5%`, `redirect 301 ...`.
    pub(super) describe: String,
    /// Whether it forwards (path rewrites, retries and mirroring mean something).
    pub(super) forwards: bool,
}

/// The route's target: exactly one of `upstream`, `split`, `redirect`, `respond`.
pub(super) fn build<B: GatewayBody>(
    route: &RouteConfig,
    proxies: &BTreeMap<String, Proxy<B>>,
    source: &Source,
) -> Result<Target<B>, ConfigError> {
    if route.sticky.is_some() && route.split.is_none() {
        let span = route.sticky.as_ref().map(|s| s.span()).unwrap_or_default();
        return Err(source.error(span, Some("sticky"), "`sticky` goes with `split`"));
    }
    match (
        &route.upstream,
        &route.split,
        &route.redirect,
        &route.respond,
    ) {
        (Some(name), None, None, None) => {
            let proxy = find(proxies, name.get_ref(), name.span(), "upstream", source)?;
            Ok(Target {
                service: proxy_route(proxy),
                describe: name.get_ref().clone(),
                forwards: true,
            })
        }
        (None, Some(split), None, None) => split_target(route, split, proxies, source),
        (None, None, Some(r), None) => {
            let redirect = redirect(route, r.get_ref())
                .map_err(|message| source.error(r.span(), Some("redirect"), message))?;
            Ok(Target {
                describe: format!("redirect {}", redirect.describe()),
                service: redirect.into_route(),
                forwards: false,
            })
        }
        (None, None, None, Some(r)) => {
            let respond = respond(r.get_ref())
                .map_err(|message| source.error(r.span(), Some("respond"), message))?;
            Ok(Target {
                describe: format!("respond {}", respond.status.as_u16()),
                service: respond.into_route(),
                forwards: false,
            })
        }
        _ => {
            let spans = [
                route.upstream.as_ref().map(|u| u.span()),
                route.split.as_ref().map(|s| s.span()),
                route.redirect.as_ref().map(|r| r.span()),
                route.respond.as_ref().map(|r| r.span()),
            ];
            let span = spans
                .into_iter()
                .flatten()
                .nth(1)
                .unwrap_or(route.path.span());
            Err(source.error(
                span,
                Some("upstream"),
                "a route needs exactly one of `upstream`, `split`, `redirect` or `respond`",
            ))
        }
    }
}

fn find<'p, B>(
    proxies: &'p BTreeMap<String, Proxy<B>>,
    name: &str,
    span: std::ops::Range<usize>,
    key: &str,
    source: &Source,
) -> Result<&'p Proxy<B>, ConfigError> {
    proxies.get(name).ok_or_else(|| {
        source.error(
            span,
            Some(key),
            format!(
                "no upstream named `{name}` (known: {})",
                proxies.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// `proxy` as a route: its future boxed once, by the route.
fn proxy_route<B: GatewayBody>(proxy: &Proxy<B>) -> Route<B> {
    let proxy = proxy.clone();
    Route::from_fn(move |req| proxy.forward(req))
}

/// The most a split weight can be: shares stay exact in 64-bit sums.
const MAX_WEIGHT: u32 = 1_000_000;

fn split_target<B: GatewayBody>(
    route: &RouteConfig,
    split: &toml::Spanned<Vec<toml::Spanned<crate::config::SplitConfig>>>,
    proxies: &BTreeMap<String, Proxy<B>>,
    source: &Source,
) -> Result<Target<B>, ConfigError> {
    let mut routes = Vec::new();
    for entry in split.get_ref() {
        let e = entry.get_ref();
        if e.weight > MAX_WEIGHT {
            return Err(source.error(
                entry.span(),
                Some("split.weight"),
                format!(
                    "{} is out of range: a weight is 0 to {MAX_WEIGHT}",
                    e.weight
                ),
            ));
        }
        let proxy = find(proxies, &e.upstream, entry.span(), "split.upstream", source)?;
        routes.push(proxy_route(proxy));
    }
    let choice = Split::new(
        split
            .get_ref()
            .iter()
            .map(|e| (e.get_ref().upstream.as_str(), e.get_ref().weight)),
    )
    .map_err(|e| source.error(split.span(), Some("split"), e.to_string()))?;
    let sticky = match &route.sticky {
        None => None,
        Some(s) => {
            let span = s.span();
            let s = s.get_ref();
            Some(match (&s.cookie, &s.header) {
                (Some(c), None) if !c.is_empty() => StickyBy::Cookie(c.clone()),
                (None, Some(h)) => StickyBy::Header(h.parse().map_err(|_| {
                    source.error(
                        span.clone(),
                        Some("sticky.header"),
                        format!("`{h}` is not a header name"),
                    )
                })?),
                _ => {
                    return Err(source.error(
                        span,
                        Some("sticky"),
                        "give exactly one of `cookie = \"...\"` or `header = \"...\"`",
                    ));
                }
            })
        }
    };
    let total = choice.total() as f64;
    let mut describe = choice
        .names()
        .iter()
        .zip(choice.weights())
        .map(|(n, &w)| format!("{n} {:.3}%", f64::from(w) * 100.0 / total))
        .map(|s| s.replace(".000%", "%"))
        .collect::<Vec<_>>()
        .join(" / ");
    if let Some(by) = &sticky {
        describe.push_str(&match by {
            StickyBy::Cookie(c) => format!(" (sticky by cookie {c})"),
            StickyBy::Header(h) => format!(" (sticky by header {h})"),
        });
    }
    let service = SplitService {
        inner: Arc::new(SplitInner {
            choice,
            routes,
            sticky,
        }),
    };
    Ok(Target {
        service: service.into_route(),
        describe,
        forwards: true,
    })
}

/// What keeps a client on one side of a split.
enum StickyBy {
    Cookie(String),
    Header(HeaderName),
}

struct SplitInner<B> {
    choice: Split,
    routes: Vec<Route<B>>,
    sticky: Option<StickyBy>,
}

/// Sends each request to one of the split's upstreams.
struct SplitService<B> {
    inner: Arc<SplitInner<B>>,
}

impl<B> Clone for SplitService<B> {
    fn clone(&self) -> Self {
        SplitService {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: Send + 'static> Service<Request<B>> for SplitService<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = router::RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = &*self.inner;
        let key = inner.sticky.as_ref().and_then(|by| match by {
            StickyBy::Cookie(name) => cookie(req.headers(), name),
            StickyBy::Header(name) => req.headers().get(name).map(HeaderValue::as_bytes),
        });
        let i = match key {
            Some(key) => inner.choice.pick_sticky(key),
            // No key (first visit): a random side, by weight.
            None => inner.choice.pick_random(),
        };
        let mut route = inner.routes[i].clone();
        route.call(req)
    }
}

/// The value of cookie `name` in the request's `Cookie` lines.
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|line| {
        line.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
    })
}

/// A redirect, its parts checked.
#[derive(Clone)]
struct Redirect {
    status: StatusCode,
    scheme: Option<String>,
    host: Option<String>,
    path: Option<String>,
    /// A new prefix for the catch-all named here.
    prefix: Option<(String, Arc<str>)>,
    keep_query: bool,
}

fn redirect(route: &RouteConfig, c: &RedirectConfig) -> Result<Redirect, String> {
    let status = match c.status {
        301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(c.status).map_err(|e| e.to_string())?,
        other => {
            return Err(format!(
                "status {other}: a redirect is 301, 302, 303, 307 or 308"
            ));
        }
    };
    if c.scheme.is_none() && c.host.is_none() && c.path.is_none() && c.prefix.is_none() {
        return Err(
            "a redirect needs a target: at least one of `scheme`, `host`, `path`, `prefix`".into(),
        );
    }
    if let Some(s) = &c.scheme
        && s != "http"
        && s != "https"
    {
        return Err(format!("scheme `{s}`: `http` or `https`"));
    }
    if let Some(h) = &c.host
        && (h.parse::<http::uri::Authority>().is_err() || h.contains('@') || h.is_empty())
    {
        return Err(format!(
            "host `{h}` is not a host name (with an optional port)"
        ));
    }
    for p in [&c.path, &c.prefix].into_iter().flatten() {
        if !p.starts_with('/')
            || p.starts_with("//")
            || http::uri::PathAndQuery::try_from(p.as_str()).is_err()
            || p.contains('?')
        {
            return Err(format!(
                "`{p}` is not a path: it starts with one `/` and has no query"
            ));
        }
    }
    if c.path.is_some() && c.prefix.is_some() {
        return Err("give `path` or `prefix`, not both".into());
    }
    let prefix = match &c.prefix {
        None => None,
        Some(p) => {
            let Some(name) = catch_all_name(route.path.get_ref()) else {
                return Err("`prefix` replaces what comes before the catch-all: the route's path needs one (`/old/*rest`)".into());
            };
            Some((p.trim_end_matches('/').to_owned(), Arc::from(name)))
        }
    };
    Ok(Redirect {
        status,
        scheme: c.scheme.clone(),
        host: c.host.clone(),
        path: c.path.clone(),
        prefix,
        keep_query: c.keep_query,
    })
}

impl Redirect {
    fn describe(&self) -> String {
        let mut to = String::new();
        if let Some(s) = &self.scheme {
            to.push_str(s);
            to.push_str("://");
        }
        if let Some(h) = &self.host {
            if self.scheme.is_none() {
                to.push_str("//");
            }
            to.push_str(h);
        }
        match (&self.path, &self.prefix) {
            (Some(p), _) => to.push_str(p),
            (_, Some((p, name))) => to.push_str(&format!("{p}/*{name}")),
            _ => to.push_str("(same path)"),
        }
        format!("{} {to}", self.status.as_u16())
    }

    fn location<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let suffix = self.prefix.as_ref().map(|(p, name)| {
            let rest = req
                .extensions()
                .get::<PathParams>()
                .and_then(|params| params.get(name))
                .unwrap_or("/");
            format!("{p}{rest}")
        });
        let path = match (&self.path, suffix) {
            (Some(p), _) => p.clone(),
            (None, Some(s)) => s,
            (None, None) => req.uri().path().to_owned(),
        };
        let mut out = String::new();
        if self.scheme.is_some() || self.host.is_some() {
            let host = match &self.host {
                Some(h) => h.as_str(),
                None => req
                    .uri()
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))?,
            };
            out.push_str(self.scheme.as_deref().unwrap_or("http"));
            out.push_str("://");
            out.push_str(host);
        } else if path.starts_with("//") {
            // A path-only Location that a browser reads as another host: never.
            return None;
        }
        out.push_str(&path);
        if let (true, Some(q)) = (self.keep_query, req.uri().query()) {
            out.push('?');
            out.push_str(q);
        }
        HeaderValue::from_str(&out).ok()
    }
}

impl<B> Service<Request<B>> for Redirect {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(location) = self.location(&req) else {
            // No Host to redirect to (HTTP/1.0 without one), or a path that would leave the
            // origin.
            return ready(Ok(httpkit::text_response(
                StatusCode::BAD_REQUEST,
                "Bad Request: no place to redirect to\n",
            )));
        };
        let mut res = Response::new(Body::empty());
        *res.status_mut() = self.status;
        res.headers_mut().insert(LOCATION, location);
        ready(Ok(res))
    }
}

/// A fixed answer.
#[derive(Clone)]
struct Respond {
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
}

fn respond(c: &RespondConfig) -> Result<Respond, String> {
    let status = StatusCode::from_u16(c.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| format!("status {}: 200 to 999", c.status))?;
    let content_type = HeaderValue::from_str(&c.content_type)
        .map_err(|_| format!("content_type `{}` is not a header value", c.content_type))?;
    Ok(Respond {
        status,
        body: Bytes::from(c.body.clone()),
        content_type,
    })
}

impl<B> Service<Request<B>> for Respond {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(Body::from(self.body.clone()));
        *res.status_mut() = self.status;
        res.headers_mut()
            .insert(CONTENT_TYPE, self.content_type.clone());
        ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_by_name() {
        let mut h = http::HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; session=xyz; b=2"));
        h.append(COOKIE, HeaderValue::from_static("late=3"));
        assert_eq!(cookie(&h, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "late"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "sess"), None);
    }
}
