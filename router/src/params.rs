//! Route parameters, recovered from the matched path without allocating.
//!
//! Parameters span whole segments, so a route knows at registration which segment each of its
//! parameters captures. Lookup therefore records nothing: a [`Params`] is just the path and the
//! route's description, and values are sliced out of the path when asked for. Any number of
//! parameters costs the same (nothing) during lookup.

use std::fmt;
use std::iter::FusedIterator;

/// What a registered route captures: its pattern and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pattern: Box<str>,
    names: Box<[Box<str>]>,
    segments: Box<[u32]>,
    catch_all: bool,
}

impl RouteInfo {
    pub(crate) fn new(pattern: &str, names: &[&str], segments: &[u32], catch_all: bool) -> Self {
        RouteInfo {
            pattern: pattern.into(),
            names: names.iter().map(|n| Box::<str>::from(*n)).collect(),
            segments: segments.into(),
            catch_all,
        }
    }

    /// The pattern the route was registered with, e.g. `/users/:id`.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The parameter names, in order.
    pub fn param_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// Whether the route has no parameters.
    pub fn has_params(&self) -> bool {
        !self.names.is_empty()
    }
}

/// The parameters of a matched route: ordered `(name, value)` pairs borrowed from the route
/// (`'r`) and from the request path (`'p`).
///
/// ```
/// let mut router = router::Router::new();
/// router.insert("/repos/:owner/:repo/*rest", ()).unwrap();
/// let m = router.at("/repos/rust-lang/rust/tree/master").unwrap();
/// assert_eq!(m.params.get("owner"), Some("rust-lang"));
/// assert_eq!(m.params.get("rest"), Some("/tree/master"));
/// let pairs: Vec<_> = m.params.iter().collect();
/// assert_eq!(pairs[1], ("repo", "rust"));
/// ```
#[derive(Clone, Copy)]
pub struct Params<'r, 'p> {
    info: &'r RouteInfo,
    path: &'p str,
}

impl<'r, 'p> Params<'r, 'p> {
    pub(crate) fn new(info: &'r RouteInfo, path: &'p str) -> Self {
        Params { info, path }
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.info.names.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.info.names.is_empty()
    }

    /// The value of the parameter called `name`, if the route has one.
    ///
    /// A catch-all's value keeps its leading slash: `/static/*path` on `/static/css/app.css`
    /// gives `/css/app.css`, and on `/static/` gives `/`.
    pub fn get(&self, name: &str) -> Option<&'p str> {
        let index = self.info.names.iter().position(|n| **n == *name)?;
        let segment = self.info.segments[index];
        let start = segment_start(self.path.as_bytes(), 1, 1, segment)?;
        if self.info.catch_all && index + 1 == self.info.names.len() {
            self.path.get(start - 1..)
        } else {
            self.path
                .get(start..segment_end(self.path.as_bytes(), start))
        }
    }

    /// The parameters in the order they appear in the route.
    pub fn iter(&self) -> ParamsIter<'r, 'p> {
        ParamsIter {
            info: self.info,
            path: self.path,
            next: 0,
            pos: 1,
            segment: 1,
        }
    }
}

impl<'r, 'p> IntoIterator for Params<'r, 'p> {
    type Item = (&'r str, &'p str);
    type IntoIter = ParamsIter<'r, 'p>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Params<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Params<'_, '_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Iterator over `(name, value)` pairs of a [`Params`]; walks the path once.
#[derive(Debug, Clone)]
pub struct ParamsIter<'r, 'p> {
    info: &'r RouteInfo,
    path: &'p str,
    next: usize,
    pos: usize,
    segment: u32,
}

impl<'r, 'p> Iterator for ParamsIter<'r, 'p> {
    type Item = (&'r str, &'p str);

    fn next(&mut self) -> Option<Self::Item> {
        let name = self.info.names.get(self.next)?;
        let target = self.info.segments[self.next];
        let bytes = self.path.as_bytes();
        self.pos = segment_start(bytes, self.pos, self.segment, target)?;
        self.segment = target;
        let last = self.next + 1 == self.info.names.len();
        self.next += 1;
        let value = if last && self.info.catch_all {
            self.path.get(self.pos - 1..)?
        } else {
            self.path.get(self.pos..segment_end(bytes, self.pos))?
        };
        Some((&**name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.info.names.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for ParamsIter<'_, '_> {}
impl FusedIterator for ParamsIter<'_, '_> {}

/// Offset of segment `target`, scanning forward from `pos`, the offset of segment `segment`.
/// Segment `k` starts just past the `k`-th slash. Returns `None` only if the path has fewer
/// segments, which cannot happen for a path the route matched.
fn segment_start(path: &[u8], mut pos: usize, mut segment: u32, target: u32) -> Option<usize> {
    while segment < target {
        pos += path.get(pos..)?.iter().position(|&b| b == b'/')? + 1;
        segment += 1;
    }
    Some(pos)
}

fn segment_end(path: &[u8], start: usize) -> usize {
    match path.get(start..) {
        Some(rest) => start + rest.iter().position(|&b| b == b'/').unwrap_or(rest.len()),
        None => path.len(),
    }
}
