//! The radix tree behind [`Router`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::error::{InsertError, MatchError};
use crate::lookup::Lookup;
use crate::params::{Params, RouteInfo};
use crate::pattern::{self, Piece};

pub(crate) const NONE: u32 = u32::MAX;

/// One node of the tree. Nodes live in one `Vec` and point at each other by index.
#[derive(Clone)]
pub(crate) struct Node {
    /// Literal bytes this node matches; empty for a parameter node (which matches one
    /// non-empty segment) and for the root.
    pub(crate) prefix: Box<[u8]>,
    /// First byte of each static child, parallel to `children`.
    pub(crate) indices: Vec<u8>,
    pub(crate) children: Vec<u32>,
    /// The `:param` child, or `NONE`. Only nodes whose path ends in `/` have one.
    pub(crate) param: u32,
    /// Route whose `*catchall` hangs here, or `NONE`. Only nodes whose path ends in `/`.
    pub(crate) catch_all: u32,
    /// Route that ends exactly here, or `NONE`.
    pub(crate) value: u32,
}

impl Node {
    fn new(prefix: &[u8]) -> Self {
        Node {
            prefix: prefix.into(),
            indices: Vec::new(),
            children: Vec::new(),
            param: NONE,
            catch_all: NONE,
            value: NONE,
        }
    }
}

struct Entry<T> {
    info: Arc<RouteInfo>,
    value: T,
}

/// A path router: a radix tree of route patterns mapping to values of type `T`.
///
/// Patterns are absolute paths made of static text, `:name` segments (one non-empty segment) and
/// an optional final `*name` catch-all (the rest of the path, leading slash included). When
/// several routes match, static text wins over a parameter, and a parameter over a catch-all, at
/// every segment; a branch that dead-ends falls back to the next candidate.
///
/// Lookup allocates nothing, whatever the number of parameters.
///
/// ```
/// use router::Router;
///
/// let mut router = Router::new();
/// router.insert("/users/list", "list").unwrap();
/// router.insert("/users/:id", "user").unwrap();
/// router.insert("/static/*path", "static").unwrap();
///
/// assert_eq!(*router.at("/users/list").unwrap().value, "list");
/// let m = router.at("/users/listx").unwrap();
/// assert_eq!((*m.value, m.params.get("id")), ("user", Some("listx")));
/// let m = router.at("/static/css/app.css").unwrap();
/// assert_eq!(m.params.get("path"), Some("/css/app.css"));
/// assert!(router.at("/nope").is_err());
///
/// // Conflicts are errors that name both routes, and leave the router as it was.
/// let err = router.insert("/users/:name", "again").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "route `/users/:name` conflicts with the already registered route `/users/:id`"
/// );
/// ```
pub struct Router<T> {
    nodes: Vec<Node>,
    routes: Vec<Entry<T>>,
    shapes: HashMap<Box<str>, u32>,
    /// The layout lookups walk, built on the first lookup after a change.
    lookup: OnceLock<Lookup>,
}

/// A successful lookup: the route's value and its parameters.
#[derive(Debug)]
pub struct Match<'r, 'p, V> {
    /// The value registered with the route.
    pub value: V,
    /// The route's parameters, read from the path.
    pub params: Params<'r, 'p>,
    info: &'r Arc<RouteInfo>,
}

impl<'r, V> Match<'r, '_, V> {
    /// The matched route's pattern, e.g. `/users/:id`.
    pub fn route(&self) -> &'r str {
        self.info.pattern()
    }

    /// The matched route's description, shareable beyond the router's borrow.
    pub fn route_info(&self) -> &'r Arc<RouteInfo> {
        self.info
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Router<T> {
    /// An empty router.
    pub fn new() -> Self {
        Router {
            nodes: vec![Node::new(b"")],
            routes: Vec::new(),
            shapes: HashMap::new(),
            lookup: OnceLock::new(),
        }
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route is registered.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Registers `route` with `value`.
    ///
    /// Fails, leaving the router untouched, when the pattern is malformed or matches exactly the
    /// same paths as a registered route (parameter names aside).
    pub fn insert(&mut self, route: &str, value: T) -> Result<(), InsertError> {
        let parsed = self.parse_new(route)?;
        // From here on nothing can fail: the tree is only ever grown.
        let id = self.routes.len() as u32;
        let mut node = 0;
        for piece in &parsed.pieces {
            match piece {
                Piece::Static(text) => node = self.insert_static(node, text),
                Piece::Param => {
                    if self.nodes[node].param == NONE {
                        self.nodes[node].param = self.push(Node::new(b""));
                    }
                    node = self.nodes[node].param as usize;
                }
                Piece::CatchAll => {}
            }
        }
        if parsed.catch_all {
            self.nodes[node].catch_all = id;
        } else {
            self.nodes[node].value = id;
        }
        self.routes.push(Entry {
            info: Arc::new(RouteInfo::new(
                route,
                &parsed.names,
                &parsed.segments,
                parsed.catch_all,
            )),
            value,
        });
        self.shapes.insert(parsed.shape.into_boxed_str(), id);
        self.lookup = OnceLock::new();
        Ok(())
    }

    /// Whether [`insert`](Self::insert) would accept `route`, without inserting it.
    pub fn check(&self, route: &str) -> Result<(), InsertError> {
        self.parse_new(route).map(drop)
    }

    fn parse_new<'a>(&self, route: &'a str) -> Result<pattern::Parsed<'a>, InsertError> {
        let parsed = pattern::parse(route)?;
        if let Some(&existing) = self.shapes.get(parsed.shape.as_str()) {
            return Err(InsertError::Conflict {
                route: route.to_owned(),
                existing: self.routes[existing as usize].info.pattern().to_owned(),
            });
        }
        Ok(parsed)
    }

    fn push(&mut self, node: Node) -> u32 {
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    /// Walks (and extends) static text from `node`; returns the node where `text` ends.
    fn insert_static(&mut self, mut node: usize, mut text: &[u8]) -> usize {
        loop {
            let prefix = &self.nodes[node].prefix;
            let common = prefix.iter().zip(text).take_while(|(a, b)| a == b).count();
            if common < prefix.len() {
                self.split(node, common);
            }
            text = &text[common..];
            let Some(&first) = text.first() else {
                return node;
            };
            let n = &self.nodes[node];
            if let Some(i) = n.indices.iter().position(|&b| b == first) {
                node = n.children[i] as usize;
                continue;
            }
            let child = self.push(Node::new(text));
            let n = &mut self.nodes[node];
            n.indices.push(first);
            n.children.push(child);
            return child as usize;
        }
    }

    /// Cuts `node`'s prefix at `at`; the tail and everything below move to a new child.
    fn split(&mut self, node: usize, at: usize) {
        let n = &mut self.nodes[node];
        let tail = Node {
            prefix: n.prefix[at..].into(),
            indices: std::mem::take(&mut n.indices),
            children: std::mem::take(&mut n.children),
            param: std::mem::replace(&mut n.param, NONE),
            catch_all: std::mem::replace(&mut n.catch_all, NONE),
            value: std::mem::replace(&mut n.value, NONE),
        };
        let first = tail.prefix[0];
        n.prefix = n.prefix[..at].into();
        let child = self.push(tail);
        let n = &mut self.nodes[node];
        n.indices.push(first);
        n.children.push(child);
    }

    /// Finds the route matching `path`.
    pub fn at<'r, 'p>(&'r self, path: &'p str) -> Result<Match<'r, 'p, &'r T>, MatchError> {
        let id = self.find(path).ok_or(MatchError::NotFound)?;
        let entry = &self.routes[id as usize];
        Ok(Match {
            value: &entry.value,
            params: Params::new(&entry.info, path),
            info: &entry.info,
        })
    }

    /// Like [`at`](Self::at), with mutable access to the value.
    pub fn at_mut<'r, 'p>(
        &'r mut self,
        path: &'p str,
    ) -> Result<Match<'r, 'p, &'r mut T>, MatchError> {
        let id = self.find(path).ok_or(MatchError::NotFound)?;
        let entry = &mut self.routes[id as usize];
        Ok(Match {
            value: &mut entry.value,
            params: Params::new(&entry.info, path),
            info: &entry.info,
        })
    }

    /// Builds the lookup layout now rather than on the first lookup, so that no lookup
    /// allocates. [`Mux::into_service`](crate::Mux::into_service) calls this.
    pub fn prepare(&self) {
        self.lookup.get_or_init(|| Lookup::compile(&self.nodes));
    }

    /// Whether some route matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    #[inline]
    fn find(&self, path: &str) -> Option<u32> {
        self.lookup
            .get_or_init(|| Lookup::compile(&self.nodes))
            .find(path.as_bytes())
    }

    /// The registered routes, in insertion order.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = (&str, &T)> {
        self.routes.iter().map(|e| (e.info.pattern(), &e.value))
    }
}

impl<T: fmt::Debug> fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.routes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[&str]) -> Router<usize> {
        let mut r = Router::new();
        for (i, route) in routes.iter().enumerate() {
            r.insert(route, i).unwrap();
        }
        r
    }

    fn hit<'p>(r: &Router<usize>, path: &'p str) -> Option<(&'static str, Vec<(String, &'p str)>)> {
        let _ = path;
        let m = r.at(path).ok()?;
        let route: &'static str = Box::leak(m.route().to_owned().into_boxed_str());
        Some((
            route,
            m.params
                .iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn static_param_catch_all_priority_with_backtracking() {
        let r = router(&[
            "/users/list",
            "/users/:id",
            "/users/:id/posts",
            "/users/list/archive",
            "/*rest",
            "/files/*path",
            "/files/readme",
        ]);
        assert_eq!(hit(&r, "/users/list").unwrap().0, "/users/list");
        assert_eq!(hit(&r, "/users/listx").unwrap().0, "/users/:id");
        assert_eq!(hit(&r, "/users/li").unwrap().0, "/users/:id");
        // `list` is static but `/users/list/posts` only exists through `:id`.
        let (route, params) = hit(&r, "/users/list/posts").unwrap();
        assert_eq!(route, "/users/:id/posts");
        assert_eq!(params, vec![("id".to_owned(), "list")]);
        assert_eq!(
            hit(&r, "/users/list/archive").unwrap().0,
            "/users/list/archive"
        );
        // Nothing under /users matches: the root catch-all takes it.
        let (route, params) = hit(&r, "/users/1/comments").unwrap();
        assert_eq!(route, "/*rest");
        assert_eq!(params, vec![("rest".to_owned(), "/users/1/comments")]);
        assert_eq!(hit(&r, "/files/readme").unwrap().0, "/files/readme");
        let (route, params) = hit(&r, "/files/readme2").unwrap();
        assert_eq!(route, "/files/*path");
        assert_eq!(params, vec![("path".to_owned(), "/readme2")]);
        assert_eq!(hit(&r, "/").unwrap().1[0].1, "/");
    }

    #[test]
    fn catch_all_keeps_its_slash_and_matches_empty_suffix() {
        let r = router(&["/static/*path"]);
        let (_, p) = hit(&r, "/static/css/app.css").unwrap();
        assert_eq!(p[0].1, "/css/app.css");
        let (_, p) = hit(&r, "/static/").unwrap();
        assert_eq!(p[0].1, "/");
        assert!(hit(&r, "/static").is_none());
        assert!(hit(&r, "/staticx/a").is_none());
    }

    #[test]
    fn params_never_empty_and_stop_at_slash() {
        let r = router(&["/a/:x", "/a/:x/b/:y"]);
        assert!(hit(&r, "/a/").is_none());
        assert!(hit(&r, "/a//b/c").is_none());
        assert!(hit(&r, "/a/1/b/").is_none());
        assert_eq!(
            hit(&r, "/a/1/b/2").unwrap().1,
            vec![("x".to_owned(), "1"), ("y".to_owned(), "2")]
        );
    }

    #[test]
    fn different_param_names_at_one_position_coexist() {
        let r = router(&["/users/:id", "/users/:user_id/posts/:post"]);
        assert_eq!(hit(&r, "/users/7").unwrap().1[0].0, "id");
        let (_, p) = hit(&r, "/users/7/posts/9").unwrap();
        assert_eq!(p[0], ("user_id".to_owned(), "7"));
        assert_eq!(p[1], ("post".to_owned(), "9"));
    }

    #[test]
    fn many_params() {
        let r = router(&["/:a/:b/:c/:d/:e/:f/*g"]);
        let m = r.at("/1/2/3/4/5/6/7/8").unwrap();
        let values: Vec<_> = m.params.iter().map(|(_, v)| v).collect();
        assert_eq!(values, ["1", "2", "3", "4", "5", "6", "/7/8"]);
        assert_eq!(m.params.get("e"), Some("5"));
        assert_eq!(m.params.get("g"), Some("/7/8"));
        assert_eq!(m.params.get("z"), None);
        assert_eq!(m.params.len(), 7);
    }

    #[test]
    fn conflicts_name_both_routes_and_leave_the_tree_alone() {
        let mut r = router(&["/users/:id", "/static/*path", "/a/b"]);
        let before: Vec<_> = ["/users/1", "/static/x", "/a/b", "/a/c"]
            .iter()
            .map(|p| r.at(p).map(|m| *m.value).ok())
            .collect();
        for (route, existing) in [
            ("/users/:name", "/users/:id"),
            ("/static/*file", "/static/*path"),
            ("/a/b", "/a/b"),
        ] {
            assert_eq!(
                r.insert(route, 99),
                Err(InsertError::Conflict {
                    route: route.to_owned(),
                    existing: existing.to_owned()
                })
            );
        }
        assert!(r.insert("/a/:x/*", 99).is_err());
        let after: Vec<_> = ["/users/1", "/static/x", "/a/b", "/a/c"]
            .iter()
            .map(|p| r.at(p).map(|m| *m.value).ok())
            .collect();
        assert_eq!(before, after);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn splitting_keeps_existing_routes() {
        let r = router(&["/authorizations", "/applications/:id", "/a", "/auth", "/"]);
        for (path, route) in [
            ("/authorizations", "/authorizations"),
            ("/applications/1", "/applications/:id"),
            ("/a", "/a"),
            ("/auth", "/auth"),
            ("/", "/"),
        ] {
            assert_eq!(hit(&r, path).unwrap().0, route, "{path}");
        }
        assert!(hit(&r, "/au").is_none());
        assert!(hit(&r, "").is_none());
    }
}
