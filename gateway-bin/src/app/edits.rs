//! What changes on the way through a route: the path the upstream sees (`strip_prefix`,
//! `rewrite`) and the request and response headers (`request_headers`, `response_headers`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use httpkit::Body;
use proxy::ClientAddr;
use regex::Regex;
use router::{IntoRoute, PathParams, Route, RouteFuture};
use tower::Service;

use super::routes::catch_all_name;
use crate::config::{ConfigError, HeadersConfig, RouteConfig, Source};

/// How the upstream's path is made from the request's.
#[derive(Clone)]
enum PathRule {
    /// The catch-all's suffix, after `prefix` (empty for `strip_prefix`).
    Suffix { name: Arc<str>, prefix: Arc<str> },
    /// A regex replacement over the whole path.
    Regex { regex: Regex, replace: Arc<str> },
}

/// The route's path rule: `rewrite` if given, else `strip_prefix` with a catch-all, else none.
/// Also how it reads in the route table.
pub(super) fn path_rule(
    route: &RouteConfig,
    source: &Source,
) -> Result<Option<(PathLayer, String)>, ConfigError> {
    let pattern = route.path.get_ref();
    let Some(rewrite) = &route.rewrite else {
        return Ok(route
            .strip_prefix
            .then(|| catch_all_name(pattern))
            .flatten()
            .map(|name| {
                let rule = PathRule::Suffix {
                    name: Arc::from(name),
                    prefix: Arc::from(""),
                };
                (PathLayer(rule), String::new())
            }));
    };
    let err = |message: String| source.error(rewrite.span(), Some("rewrite"), message);
    let r = rewrite.get_ref();
    let (rule, describe) = match (&r.prefix, &r.regex, &r.replace) {
        (Some(prefix), None, None) => {
            let Some(name) = catch_all_name(pattern) else {
                return Err(err(
                    "`prefix` goes before the catch-all's suffix: the route's path needs one (`/api/v1/*rest`)".into(),
                ));
            };
            if !prefix.starts_with('/')
                || http::uri::PathAndQuery::try_from(prefix.as_str()).is_err()
                || prefix.contains('?')
            {
                return Err(err(format!(
                    "`{prefix}` is not a path prefix: it starts with `/` and has no query"
                )));
            }
            let prefix = prefix.trim_end_matches('/');
            (
                PathRule::Suffix {
                    name: Arc::from(name),
                    prefix: Arc::from(prefix),
                },
                format!("rewrite {pattern} -> {prefix}/*{name}"),
            )
        }
        (None, Some(regex), Some(replace)) => {
            let compiled = Regex::new(regex).map_err(|e| {
                source.error(
                    rewrite.span(),
                    Some("rewrite.regex"),
                    format!("`{regex}` does not compile: {e}"),
                )
            })?;
            (
                PathRule::Regex {
                    regex: compiled,
                    replace: Arc::from(replace.as_str()),
                },
                format!("rewrite /{regex}/ -> {replace}"),
            )
        }
        _ => {
            return Err(err(
                "give `prefix = \"/v1\"`, or `regex` with `replace`".into()
            ));
        }
    };
    Ok(Some((PathLayer(rule), describe)))
}

/// Sets the path the upstream sees (see [`path_rule`]).
#[derive(Clone)]
pub(super) struct PathLayer(PathRule);

impl PathLayer {
    /// `route` behind the rewrite.
    pub(super) fn wrap<B: Send + 'static>(&self, route: Route<B>) -> Route<B> {
        let rule = self.0.clone();
        route.edit_request(move |req: &mut Request<B>| rewrite_path(&rule, req))
    }
}

fn rewrite_path<B>(rule: &PathRule, req: &mut Request<B>) {
    let Some(path) = new_path(rule, req) else {
        return;
    };
    // A replacement that is not a valid path leaves the request's own (logged: the config's
    // regex made it). The request is untouched then, so the path is made again for the line.
    if router::set_path(req, path).is_none() {
        tracing::warn!(
            request_id = %httpkit::RequestId::logged(req.extensions()),
            path = %new_path(rule, req).unwrap_or_default(),
            "path rewrite gave an invalid path; forwarding the original"
        );
    }
}

/// The path `rule` gives `req`, if it changes it.
fn new_path<B>(rule: &PathRule, req: &Request<B>) -> Option<String> {
    match rule {
        PathRule::Suffix { name, prefix } => {
            let suffix = req.extensions().get::<PathParams>()?.get(name)?;
            // Room for the query `set_path` appends, so that one buffer holds the URI.
            let query = req.uri().query().map_or(0, |q| q.len() + 1);
            let mut path = String::with_capacity(prefix.len() + suffix.len() + query);
            path.push_str(prefix);
            path.push_str(suffix);
            Some(path)
        }
        PathRule::Regex { regex, replace } => {
            match regex.replace(req.uri().path(), replace.as_ref()) {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(p) => Some(p),
            }
        }
    }
}

/// Headers a route may never touch beside the hop-by-hop ones (`httpkit::hop_by_hop`):
/// framing, and what the gateway itself sets for forwarding and tracing.
const PROTECTED: [&str; 9] = [
    "content-length",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// One piece of a header value template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    ClientIp,
    RequestId,
    Host,
    Param(String),
}

/// A header value: fixed, or rendered per request from variables.
#[derive(Debug, Clone)]
enum Value {
    Fixed(HeaderValue),
    Template(Vec<Part>),
}

fn parse_template(text: &str) -> Result<Value, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        lit.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            lit.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(format!(
                "`{text}`: a lone `}}` (write `}}}}` for a literal one)"
            ));
        }
        let Some(end) = tail.find('}') else {
            return Err(format!(
                "`{text}`: `{{` without its `}}` (write `{{{{` for a literal one)"
            ));
        };
        let var = &tail[1..end];
        let part = match var {
            "client_ip" => Part::ClientIp,
            "request_id" => Part::RequestId,
            "host" => Part::Host,
            _ => match var.strip_prefix("param.") {
                Some(name) if !name.is_empty() => Part::Param(name.to_owned()),
                _ => {
                    return Err(format!(
                        "`{{{var}}}` is not a variable: `{{client_ip}}`, `{{request_id}}`, `{{host}}` or `{{param.NAME}}`"
                    ));
                }
            },
        };
        if !lit.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut lit)));
        }
        parts.push(part);
        rest = &tail[end + 1..];
    }
    lit.push_str(rest);
    if parts.is_empty() {
        return HeaderValue::from_str(&lit)
            .map(Value::Fixed)
            .map_err(|_| format!("`{text}` is not a header value"));
    }
    if !lit.is_empty() {
        parts.push(Part::Text(lit));
    }
    if let Some(Part::Text(t)) = parts
        .iter()
        .find(|p| matches!(p, Part::Text(t) if HeaderValue::from_str(t).is_err()))
    {
        return Err(format!("`{t}` is not header value text"));
    }
    Ok(Value::Template(parts))
}

/// What a request lends to templates.
/// Only what the route's templates use is taken (nothing for fixed values).
#[derive(Default)]
struct Vars {
    client_ip: Option<String>,
    request_id: Option<String>,
    host: Option<String>,
    params: Option<PathParams>,
}

/// Which variables a route's templates use, found once when the route is built.
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    client_ip: bool,
    request_id: bool,
    host: bool,
    params: bool,
}

impl Needs {
    fn of(edits: &Edits) -> Needs {
        let mut needs = Needs::default();
        for (_, value) in edits.set.iter().chain(&edits.add) {
            let Value::Template(parts) = value else {
                continue;
            };
            for part in parts {
                match part {
                    Part::Text(_) => {}
                    Part::ClientIp => needs.client_ip = true,
                    Part::RequestId => needs.request_id = true,
                    Part::Host => needs.host = true,
                    Part::Param(_) => needs.params = true,
                }
            }
        }
        needs
    }

    fn or(self, other: Needs) -> Needs {
        Needs {
            client_ip: self.client_ip || other.client_ip,
            request_id: self.request_id || other.request_id,
            host: self.host || other.host,
            params: self.params || other.params,
        }
    }
}

impl Vars {
    fn of<B>(req: &Request<B>, needs: Needs) -> Vars {
        Vars {
            client_ip: needs
                .client_ip
                .then(|| req.extensions().get::<ClientAddr>())
                .flatten()
                .map(|c| c.0.ip().to_string()),
            request_id: needs
                .request_id
                .then(|| httpkit::RequestId::logged(req.extensions()).to_owned()),
            host: needs.host.then(|| host_of(req)).flatten(),
            params: needs
                .params
                .then(|| req.extensions().get::<PathParams>().cloned())
                .flatten(),
        }
    }

    /// The value, or `None` when a variable has no value here (the header is then left
    /// out) or the result is not a header value.
    fn render(&self, value: &Value) -> Option<HeaderValue> {
        let parts = match value {
            Value::Fixed(v) => return Some(v.clone()),
            Value::Template(parts) => parts,
        };
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::ClientIp => out.push_str(self.client_ip.as_deref()?),
                Part::RequestId => out.push_str(self.request_id.as_deref()?),
                Part::Host => out.push_str(self.host.as_deref()?),
                Part::Param(name) => out.push_str(self.params.as_ref()?.get(name)?),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// The request's host without its port: the URI's authority, else `Host`.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.host().to_owned());
    }
    let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
    Some(h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned())
}

/// One side's edits, checked.
#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn parse(c: &HeadersConfig) -> Result<Edits, String> {
        let name = |n: &str| -> Result<HeaderName, String> {
            let name: HeaderName = n
                .parse()
                .map_err(|_| format!("`{n}` is not a header name"))?;
            if PROTECTED.contains(&name.as_str())
                || httpkit::hop_by_hop::is_hop_by_hop(name.as_str().as_bytes())
            {
                return Err(format!(
                    "`{n}` is the gateway's to set (framing, hop-by-hop, forwarding or tracing): a route cannot change it"
                ));
            }
            Ok(name)
        };
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| Ok((name(k)?, parse_template(v)?)))
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Edits {
            remove: c.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            set: pairs(&c.set)?,
            add: pairs(&c.add)?,
        })
    }

    /// Applies the edits to `headers`, variables from `vars`.
    fn apply(&self, headers: &mut HeaderMap, vars: &Vars) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            match vars.render(value) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, value) in &self.add {
            if let Some(v) = vars.render(value) {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The route's header edits as a wrapper for its stack; `None` without any. Also the notes
/// for the route table.
pub(super) fn header_edits(
    route: &RouteConfig,
    source: &Source,
) -> Result<Option<(HeaderEdits, Vec<String>)>, ConfigError> {
    let side = |c: &Option<toml::Spanned<HeadersConfig>>,
                key: &str|
     -> Result<Option<Arc<Edits>>, ConfigError> {
        match c {
            None => Ok(None),
            Some(c) => {
                let edits =
                    Edits::parse(c.get_ref()).map_err(|m| source.error(c.span(), Some(key), m))?;
                Ok((!edits.is_empty()).then(|| Arc::new(edits)))
            }
        }
    };
    let request = side(&route.request_headers, "request_headers")?;
    let response = side(&route.response_headers, "response_headers")?;
    if request.is_none() && response.is_none() {
        return Ok(None);
    }
    let mut notes = Vec::new();
    for (what, edits) in [("request", &request), ("response", &response)] {
        if let Some(e) = edits {
            notes.push(format!(
                "{what} headers: {}",
                e.remove.len() + e.set.len() + e.add.len()
            ));
        }
    }
    let needs = [&request, &response]
        .into_iter()
        .flatten()
        .fold(Needs::default(), |n, e| n.or(Needs::of(e)));
    Ok(Some((
        HeaderEdits {
            request,
            response,
            needs,
        },
        notes,
    )))
}

/// A route's request and response header edits.
#[derive(Clone)]
pub(super) struct HeaderEdits {
    request: Option<Arc<Edits>>,
    response: Option<Arc<Edits>>,
    /// The variables either side's templates use.
    needs: Needs,
}

impl HeaderEdits {
    /// `route` behind the edits.
    pub(super) fn wrap<B: Send + 'static>(&self, route: Route<B>) -> Route<B> {
        EditService {
            edits: self.clone(),
            inner: route,
        }
        .into_route()
    }
}

struct EditService<B> {
    edits: HeaderEdits,
    inner: Route<B>,
}

impl<B> Clone for EditService<B> {
    fn clone(&self) -> Self {
        EditService {
            edits: self.edits.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<B: Send + 'static> Service<Request<B>> for EditService<B> {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = EditFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> EditFuture {
        let vars = Vars::of(&req, self.edits.needs);
        if let Some(edits) = &self.edits.request {
            edits.apply(req.headers_mut(), &vars);
        }
        let response = self.edits.response.clone().map(|e| (e, vars));
        EditFuture {
            inner: self.inner.call(req),
            response,
        }
    }
}

/// The response future of the header edits: the response side applied when the head comes.
struct EditFuture {
    inner: RouteFuture,
    response: Option<(Arc<Edits>, Vars)>,
}

impl Future for EditFuture {
    type Output = Result<Response<Body>, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut res) = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let Some((edits, vars)) = self.response.take() {
            edits.apply(res.headers_mut(), &vars);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert!(matches!(parse_template("plain").unwrap(), Value::Fixed(_)));
        let Value::Template(parts) =
            parse_template("ip={client_ip}; id={request_id} {{x}} u={param.id}").unwrap()
        else {
            panic!("a template");
        };
        assert_eq!(
            parts,
            vec![
                Part::Text("ip=".into()),
                Part::ClientIp,
                Part::Text("; id=".into()),
                Part::RequestId,
                Part::Text(" {x} u=".into()),
                Part::Param("id".into()),
            ]
        );
        for bad in ["{nope}", "{param.}", "a{b", "a}b", "bad\nvalue"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protected_names_are_refused() {
        for name in [
            "Connection",
            "host",
            "X-Forwarded-For",
            "x-request-id",
            "traceparent",
            "tracestate",
            "content-length",
        ] {
            let c = HeadersConfig {
                set: [(name.to_owned(), "x".to_owned())].into(),
                ..HeadersConfig::default()
            };
            assert!(Edits::parse(&c).is_err(), "{name}");
        }
        let c = HeadersConfig {
            remove: vec!["server".into()],
            ..HeadersConfig::default()
        };
        assert!(Edits::parse(&c).is_ok());
    }
}
