//! [`Guard`]: a condition on a request's headers or query, checked after the path matched,
//! and the usual ones ([`Matcher`]): header or query parameter present, equal, with a prefix,
//! matching a regex, each invertible.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Uri};
use regex::Regex;

/// A condition a request must meet for a guarded route (see
/// [`Mux::route_if`](crate::Mux::route_if)). Checked after method and path matched.
pub trait Guard: Send + Sync + 'static {
    /// Whether the request (its URI and headers) meets the condition.
    fn check(&self, uri: &Uri, headers: &HeaderMap) -> bool;
}

impl<F> Guard for F
where
    F: Fn(&Uri, &HeaderMap) -> bool + Send + Sync + 'static,
{
    fn check(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        self(uri, headers)
    }
}

/// Every guard of the list must hold (an empty list always holds).
impl Guard for Vec<Matcher> {
    fn check(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        self.iter().all(|m| m.check(uri, headers))
    }
}

/// A guard shared between routes.
pub type SharedGuard = Arc<dyn Guard>;

/// What a [`Matcher`] looks at.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A request header; with several lines, any line that passes the test passes.
    Header(HeaderName),
    /// A query parameter, its value percent-decoded; with several occurrences, any passes.
    Query(String),
}

/// How a [`Matcher`] tests the value.
#[derive(Clone)]
pub enum Test {
    /// Present, whatever its value (a query parameter without `=` is present and empty).
    Present,
    /// Equal, byte for byte.
    Exact(String),
    /// Starting with this text.
    Prefix(String),
    /// The regex finds a match somewhere in the value (anchor it with `^...$` for the whole).
    Regex(Regex),
}

impl fmt::Debug for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Present => f.write_str("Present"),
            Test::Exact(v) => f.debug_tuple("Exact").field(v).finish(),
            Test::Prefix(v) => f.debug_tuple("Prefix").field(v).finish(),
            Test::Regex(r) => f.debug_tuple("Regex").field(&r.as_str()).finish(),
        }
    }
}

/// One condition on a header or a query parameter.
///
/// ```
/// use http::{HeaderMap, Uri};
/// use router::{Guard, Matcher, Subject, Test};
///
/// let canary = Matcher::new(Subject::Header("x-canary".parse().unwrap()), Test::Exact("1".into()));
/// let mut headers = HeaderMap::new();
/// headers.insert("x-canary", "1".parse().unwrap());
/// assert!(canary.check(&Uri::from_static("/"), &headers));
///
/// let beta = Matcher::new(Subject::Query("beta".into()), Test::Present).inverted();
/// assert!(!beta.check(&Uri::from_static("/?beta"), &headers));
/// assert!(beta.check(&Uri::from_static("/?alpha=1"), &headers));
/// ```
#[derive(Debug, Clone)]
pub struct Matcher {
    subject: Subject,
    test: Test,
    invert: bool,
}

impl Matcher {
    /// A matcher that holds when `test` passes on `subject`.
    pub fn new(subject: Subject, test: Test) -> Self {
        Matcher {
            subject,
            test,
            invert: false,
        }
    }

    /// The same matcher, holding exactly when it would not.
    pub fn inverted(mut self) -> Self {
        self.invert = !self.invert;
        self
    }

    fn passes(&self, value: &[u8]) -> bool {
        match &self.test {
            Test::Present => true,
            Test::Exact(v) => value == v.as_bytes(),
            Test::Prefix(p) => value.starts_with(p.as_bytes()),
            Test::Regex(r) => std::str::from_utf8(value).is_ok_and(|s| r.is_match(s)),
        }
    }
}

impl Guard for Matcher {
    fn check(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        let hit = match &self.subject {
            Subject::Header(name) => headers
                .get_all(name)
                .iter()
                .any(|v| self.passes(v.as_bytes())),
            Subject::Query(name) => uri
                .query()
                .is_some_and(|q| query_values(q, name).any(|v| self.passes(&v))),
        };
        hit != self.invert
    }
}

/// The percent-decoded values of the parameter `name` in `query` (`a=1&b&a=2`).
fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = Cow<'q, [u8]>> + 'q {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (*decode(key) == *name.as_bytes()).then(|| decode(value))
    })
}

/// `%XX` escapes decoded; a broken escape is kept as text. `+` stays `+`. Text without `%`
/// is borrowed as it is.
fn decode(text: &str) -> Cow<'_, [u8]> {
    if !text.contains('%') {
        return Cow::Borrowed(text.as_bytes());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_tests() {
        let h = headers(&[("x-env", "staging"), ("x-env", "canary-2")]);
        let u = Uri::from_static("/");
        let m = |t| Matcher::new(Subject::Header("x-env".parse().unwrap()), t);
        assert!(m(Test::Present).check(&u, &h));
        assert!(m(Test::Exact("staging".into())).check(&u, &h));
        assert!(!m(Test::Exact("Staging".into())).check(&u, &h));
        assert!(m(Test::Prefix("canary".into())).check(&u, &h));
        assert!(m(Test::Regex(Regex::new(r"^canary-\d$").unwrap())).check(&u, &h));
        assert!(!m(Test::Regex(Regex::new(r"^prod").unwrap())).check(&u, &h));
        assert!(!m(Test::Present).inverted().check(&u, &h));
        assert!(m(Test::Present).inverted().check(&u, &HeaderMap::new()));
    }

    #[test]
    fn query_tests() {
        let h = HeaderMap::new();
        let m = |t| Matcher::new(Subject::Query("v".into()), t);
        let u = Uri::from_static("/p?a=1&v=two%20words&flag");
        assert!(m(Test::Exact("two words".into())).check(&u, &h));
        assert!(Matcher::new(Subject::Query("flag".into()), Test::Present).check(&u, &h));
        assert!(!Matcher::new(Subject::Query("fla".into()), Test::Present).check(&u, &h));
        assert!(!m(Test::Present).check(&Uri::from_static("/p"), &h));
        assert!(m(Test::Exact("%zz".into())).check(&Uri::from_static("/p?v=%zz"), &h));
        assert!(m(Test::Exact("a%".into())).check(&Uri::from_static("/p?v=a%"), &h));
        assert!(m(Test::Exact("x".into())).check(&Uri::from_static("/p?%76=x"), &h));
    }
}
