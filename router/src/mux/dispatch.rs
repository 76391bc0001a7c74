//! The routing step: path normalization, the tree lookup, and what a miss gets (`OPTIONS`,
//! a trailing-slash redirect, `405`, `404`).

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{ALLOW, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use httpkit::{Body, text_response};
use tower_service::Service;

use super::PathParams;
use super::service::{MuxFuture, State};
use super::site::Site;
use crate::host::Hosts;
use crate::normalize::normalize_path;
use crate::route::Route;

pub(super) struct Table<B> {
    pub(super) sites: Vec<Site<B>>,
    pub(super) hosts: Hosts<usize>,
    pub(super) not_found: Option<Route<B>>,
    pub(super) method_not_allowed: Option<Route<B>>,
    pub(super) auto_options: bool,
    pub(super) redirect_trailing_slash: bool,
    pub(super) normalize_paths: bool,
}

/// The routing step itself, wrapped by the `pre` layers.
pub(super) struct Dispatch<B>(pub(super) Arc<Table<B>>);

impl<B> Clone for Dispatch<B> {
    fn clone(&self) -> Self {
        Dispatch(Arc::clone(&self.0))
    }
}

impl<B: Send + 'static> Service<Request<B>> for Dispatch<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = MuxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> MuxFuture {
        dispatch(&self.0, req)
    }
}

pub(super) fn dispatch<B: Send + 'static>(table: &Table<B>, mut req: Request<B>) -> MuxFuture {
    if table.normalize_paths && !req.uri().path().is_empty() {
        match normalize_path(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(path)) => {
                if set_path(&mut req, path).is_none() {
                    return ready(text_response(
                        StatusCode::BAD_REQUEST,
                        "Bad Request: path\n",
                    ));
                }
            }
            Err(_) => {
                return ready(text_response(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: path\n",
                ));
            }
        }
    }
    let site = if table.hosts.is_empty() {
        &table.sites[0]
    } else {
        &table.sites[site_of(&table.hosts, &req)]
    };
    let found = match site.routes.at(req.method(), req.uri().path()) {
        Ok(m) => Some((*m.value, m.route_info())),
        Err(_) => None,
    };
    if let Some((slot, info)) = found {
        let Some(route) = site.slots[slot].pick(&req) else {
            return not_found(table, req);
        };
        if info.has_params()
            && let Some(path) = req.uri().path_and_query().cloned()
        {
            req.extensions_mut().insert(PathParams {
                info: Arc::clone(info),
                path,
            });
        }
        return MuxFuture(State::Route(route.call_ref(req)));
    }
    miss(table, site, req)
}

/// The site for the request's host: the URI's authority (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1 target, which RFC 9112 says wins over `Host`), else the `Host`
/// header; the default site (0) for any other host or none.
fn site_of<B>(hosts: &Hosts<usize>, req: &Request<B>) -> usize {
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    };
    host.and_then(|h| {
        // An authority may carry `user@`; a host name never does.
        let h = h.rsplit('@').next().unwrap_or(h);
        hosts.get(h).copied()
    })
    .unwrap_or(0)
}

/// Replaces the request's path with `path` (an empty one becomes `/`), keeping its query,
/// scheme and authority. `None`, and the request untouched, when `path` is not valid in a URI.
/// The new URI keeps `path`'s own buffer (the query appended to it): no copy of it is made.
///
/// ```
/// let mut req = http::Request::get("/static/css/app.css?v=3").body(()).unwrap();
/// router::set_path(&mut req, "/css/app.css".to_owned()).unwrap();
/// assert_eq!(req.uri(), "/css/app.css?v=3");
/// router::set_path(&mut req, String::new()).unwrap();
/// assert_eq!(req.uri(), "/?v=3");
/// assert!(router::set_path(&mut req, "/a b".to_owned()).is_none());
/// assert_eq!(req.uri(), "/?v=3");
/// // An absolute-form URI keeps its scheme and authority.
/// let mut req = http::Request::get("http://example.com/a?x=1").body(()).unwrap();
/// router::set_path(&mut req, "/b".to_owned()).unwrap();
/// assert_eq!(req.uri(), "http://example.com/b?x=1");
/// ```
pub fn set_path<B>(req: &mut Request<B>, mut path: String) -> Option<()> {
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    // From a `String`: its buffer becomes the path's `Bytes` as it is.
    let pq = PathAndQuery::try_from(path).ok()?;
    if req.uri().scheme().is_none() && req.uri().authority().is_none() {
        // Origin form, as nearly every request comes: the path and query are the whole URI.
        *req.uri_mut() = http::Uri::from(pq);
        return Some(());
    }
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = http::Uri::from_parts(parts).ok()?;
    Some(())
}

/// Whether a browser could read `location` (a redirect to a path of ours) as another origin:
/// `//host`, `/\host`, `/%5Chost`, `/%2F%2Fhost`, or anything with a backslash, control
/// character or white space, which browsers strip or turn into slashes.
fn leaves_the_origin(location: &str) -> bool {
    let escaped = |code: &[u8]| {
        location
            .as_bytes()
            .get(1..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(code))
    };
    !location.starts_with('/')
        || location.starts_with("//")
        || escaped(b"%5c")
        || escaped(b"%2f")
        || location
            .bytes()
            .any(|b| b == b'\\' || b.is_ascii_control() || b == b' ')
}

/// No route for this method: OPTIONS answer, trailing-slash redirect, 405 or 404.
fn miss<B: Send + 'static>(table: &Table<B>, site: &Site<B>, req: Request<B>) -> MuxFuture {
    let method = req.method();
    let path = req.uri().path();
    let mut allowed = if path == "*" && *method == Method::OPTIONS {
        site.routes.methods()
    } else {
        site.routes.allowed(path)
    };
    if table.auto_options && !allowed.is_empty() && !allowed.contains(&Method::OPTIONS) {
        allowed.push(Method::OPTIONS);
    }
    let allow = (!allowed.is_empty()).then(|| allow_header(&allowed));

    if *method == Method::OPTIONS
        && table.auto_options
        && let Some(allow) = &allow
    {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        res.headers_mut().insert(ALLOW, allow.clone());
        return ready(res);
    }
    if table.redirect_trailing_slash
        && *method != Method::CONNECT
        && let Some(res) = trailing_slash_redirect(site, &req)
    {
        return ready(res);
    }
    if let Some(allow) = allow {
        return match &table.method_not_allowed {
            Some(route) => MuxFuture(State::AddAllow(route.call_ref(req), Some(allow))),
            None => {
                let mut res = text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
                res.headers_mut().insert(ALLOW, allow);
                ready(res)
            }
        };
    }
    not_found(table, req)
}

fn not_found<B: Send + 'static>(table: &Table<B>, req: Request<B>) -> MuxFuture {
    match &table.not_found {
        Some(route) => MuxFuture(State::Route(route.call_ref(req))),
        None => ready(text_response(StatusCode::NOT_FOUND, "Not Found\n")),
    }
}

fn allow_header(methods: &[Method]) -> HeaderValue {
    let list = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    // Method names are tokens, always valid header text.
    HeaderValue::from_str(&list).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn trailing_slash_redirect<B: Send + 'static>(
    site: &Site<B>,
    req: &Request<B>,
) -> Option<Response<Body>> {
    let path = req.uri().path();
    let other = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        Some(_) => return None,
        None => format!("{path}/"),
    };
    // `//host/...` or `/\host/...` in a Location would send the client to another host.
    if leaves_the_origin(&other) || site.routes.at(req.method(), &other).is_err() {
        return None;
    }
    let location = match req.uri().query() {
        Some(q) => format!("{other}?{q}"),
        None => other,
    };
    let status = if *req.method() == Method::GET || *req.method() == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(LOCATION, HeaderValue::from_str(&location).ok()?);
    Some(res)
}

fn ready(res: Response<Body>) -> MuxFuture {
    MuxFuture(State::Ready(Some(res)))
}
