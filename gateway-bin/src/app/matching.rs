//! A route's `hosts` and `matches` checked and turned into what the router takes: host names
//! and a [`router::Guard`].

use std::sync::Arc;

use router::{Matcher, SharedGuard, Subject, Test};
use toml::Spanned;

use crate::config::{ConfigError, MatchConfig, RouteConfig, Source};

/// The route's host names, checked (the router refuses what is not a host name; this says
/// where).
pub(super) fn hosts(route: &RouteConfig, source: &Source) -> Result<Vec<String>, ConfigError> {
    let mut seen = router::Hosts::new();
    for h in &route.hosts {
        seen.insert(h.get_ref(), ())
            .map_err(|e| source.error(h.span(), Some("hosts"), e.to_string()))?;
    }
    Ok(route.hosts.iter().map(|h| h.get_ref().clone()).collect())
}

/// The route's conditions as one guard; `None` without any.
pub(super) fn guard(
    route: &RouteConfig,
    source: &Source,
) -> Result<Option<SharedGuard>, ConfigError> {
    if route.matches.is_empty() {
        return Ok(None);
    }
    let matchers = route
        .matches
        .iter()
        .map(|m| matcher(m, source))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Arc::new(matchers)))
}

fn matcher(m: &Spanned<MatchConfig>, source: &Source) -> Result<Matcher, ConfigError> {
    let err = |key: &str, message: String| source.error(m.span(), Some(key), message);
    let c = m.get_ref();
    let subject = match (&c.header, &c.query) {
        (Some(h), None) => Subject::Header(
            h.parse()
                .map_err(|_| err("matches.header", format!("`{h}` is not a header name")))?,
        ),
        (None, Some(q)) if !q.is_empty() => Subject::Query(q.clone()),
        _ => {
            return Err(err(
                "matches",
                "give exactly one of `header = \"...\"` or `query = \"...\"`".into(),
            ));
        }
    };
    let test = match (&c.exact, &c.prefix, &c.regex) {
        (None, None, None) => Test::Present,
        (Some(v), None, None) => Test::Exact(v.clone()),
        (None, Some(p), None) => Test::Prefix(p.clone()),
        (None, None, Some(r)) => Test::Regex(
            regex::Regex::new(r)
                .map_err(|e| err("matches.regex", format!("`{r}` does not compile: {e}")))?,
        ),
        _ => {
            return Err(err(
                "matches",
                "give at most one of `exact`, `prefix` or `regex` (none: the value must be present)"
                    .into(),
            ));
        }
    };
    let matcher = Matcher::new(subject, test);
    Ok(if c.invert {
        matcher.inverted()
    } else {
        matcher
    })
}

/// How the route's conditions read in the route table (`header x-env = "canary"`).
pub(super) fn describe(route: &RouteConfig) -> Vec<String> {
    route
        .matches
        .iter()
        .map(|m| {
            let c = m.get_ref();
            let subject = match (&c.header, &c.query) {
                (Some(h), _) => format!("header {h}"),
                (_, Some(q)) => format!("query {q}"),
                _ => String::new(),
            };
            let test = match (&c.exact, &c.prefix, &c.regex) {
                (Some(v), _, _) => format!(" = {v:?}"),
                (_, Some(p), _) => format!(" ^= {p:?}"),
                (_, _, Some(r)) => format!(" ~ /{r}/"),
                _ => " present".to_owned(),
            };
            let not = if c.invert { "not " } else { "" };
            format!("{not}{subject}{test}")
        })
        .collect()
}
