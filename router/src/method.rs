//! Per-method routing: one tree per HTTP method.

use http::Method;

use crate::error::{InsertError, MatchError};
use crate::tree::{Match, Router};

/// The methods with a tree of their own, in the order they are listed in `Allow`.
const STANDARD: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

fn standard_index(method: &Method) -> Option<usize> {
    // Most frequent first; `Method` equality on standard methods is a discriminant compare.
    STANDARD.iter().position(|m| m == method)
}

/// Routes keyed by method and path: one radix tree per method, plus one for routes that accept
/// any method.
///
/// A separate tree per method keeps each lookup on a smaller tree, and lets a method fall back
/// along its own routes: with `GET /users/:id` and `POST /users/new`, `GET /users/new` reaches
/// the `GET` route instead of stopping at a path that has no `GET`.
///
/// Lookup order for a request: the method's own tree; for `HEAD`, then the `GET` tree (a `GET`
/// handler answers `HEAD`, and the server drops the body); then the any-method tree.
///
/// ```
/// use http::Method;
/// use router::MethodRouter;
///
/// let mut routes = MethodRouter::new();
/// routes.insert(Some(&Method::GET), "/users/:id", "show").unwrap();
/// routes.insert(Some(&Method::POST), "/users", "create").unwrap();
/// routes.insert(None, "/health", "health").unwrap();
///
/// assert_eq!(*routes.at(&Method::GET, "/users/7").unwrap().value, "show");
/// assert_eq!(*routes.at(&Method::HEAD, "/users/7").unwrap().value, "show");
/// assert_eq!(*routes.at(&Method::DELETE, "/health").unwrap().value, "health");
/// assert!(routes.at(&Method::DELETE, "/users/7").is_err());
/// assert_eq!(routes.allowed(&"/users/7"), vec![Method::GET, Method::HEAD]);
/// ```
pub struct MethodRouter<T> {
    standard: [Router<T>; 9],
    extension: Vec<(Method, Router<T>)>,
    any: Router<T>,
}

impl<T> Default for MethodRouter<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> MethodRouter<T> {
    /// An empty router.
    pub fn new() -> Self {
        MethodRouter {
            standard: std::array::from_fn(|_| Router::new()),
            extension: Vec::new(),
            any: Router::new(),
        }
    }

    /// Registers `route` for `method`, or for every method when `method` is `None`.
    pub fn insert(
        &mut self,
        method: Option<&Method>,
        route: &str,
        value: T,
    ) -> Result<(), InsertError> {
        let tree = match method {
            None => &mut self.any,
            Some(m) => match standard_index(m) {
                Some(i) => &mut self.standard[i],
                None => match self.extension.iter().position(|(e, _)| e == m) {
                    Some(i) => &mut self.extension[i].1,
                    None => {
                        self.extension.push((m.clone(), Router::new()));
                        let last = self.extension.len() - 1;
                        &mut self.extension[last].1
                    }
                },
            },
        };
        tree.insert(route, value)
    }

    /// Builds every tree's lookup layout now (see [`Router::prepare`]).
    pub fn prepare(&self) {
        self.standard.iter().for_each(Router::prepare);
        self.extension.iter().for_each(|(_, t)| t.prepare());
        self.any.prepare();
    }

    /// Whether [`insert`](Self::insert) would accept `route` for `method`, without inserting.
    pub fn check(&self, method: Option<&Method>, route: &str) -> Result<(), InsertError> {
        match method {
            None => self.any.check(route),
            Some(m) => match self.tree(m) {
                Some(tree) => tree.check(route),
                None => Router::<T>::new().check(route),
            },
        }
    }

    fn tree(&self, method: &Method) -> Option<&Router<T>> {
        match standard_index(method) {
            Some(i) => Some(&self.standard[i]),
            None => self
                .extension
                .iter()
                .find(|(e, _)| e == method)
                .map(|(_, t)| t),
        }
    }

    /// Finds the route for `method` and `path` (see the type's docs for the fallback order).
    pub fn at<'r, 'p>(
        &'r self,
        method: &Method,
        path: &'p str,
    ) -> Result<Match<'r, 'p, &'r T>, MatchError> {
        if let Some(tree) = self.tree(method)
            && let Ok(m) = tree.at(path)
        {
            return Ok(m);
        }
        if *method == Method::HEAD
            && let Ok(m) = self.standard[0].at(path)
        {
            return Ok(m);
        }
        self.any.at(path)
    }

    /// Whether a route for exactly `method` (no fallback) is registered at `path`.
    pub fn has_own_route(&self, method: &Method, path: &str) -> bool {
        self.tree(method).is_some_and(|t| t.matches(path))
    }

    /// The methods that have a route matching `path`, in a stable order (`HEAD` included when
    /// `GET` matches). If an any-method route matches, that is every registered method.
    pub fn allowed(&self, path: &str) -> Vec<Method> {
        let any = self.any.matches(path);
        let mut out: Vec<Method> = STANDARD
            .iter()
            .zip(&self.standard)
            .filter(|(m, t)| {
                any || t.matches(path) || (**m == Method::HEAD && self.standard[0].matches(path))
            })
            .map(|(m, _)| m.clone())
            .collect();
        out.extend(
            self.extension
                .iter()
                .filter(|(_, t)| any || t.matches(path))
                .map(|(m, _)| m.clone()),
        );
        out
    }

    /// Every method that has at least one route (HEAD included when GET has one).
    pub fn methods(&self) -> Vec<Method> {
        let any = !self.any.is_empty();
        let get = !self.standard[0].is_empty();
        let mut out: Vec<Method> = STANDARD
            .iter()
            .zip(&self.standard)
            .filter(|(m, t)| any || !t.is_empty() || (**m == Method::HEAD && get))
            .map(|(m, _)| m.clone())
            .collect();
        out.extend(self.extension.iter().map(|(m, _)| m.clone()));
        out
    }

    /// Every route as `(method, pattern, value)`; `None` for any-method routes.
    pub fn routes(&self) -> impl Iterator<Item = (Option<&Method>, &str, &T)> {
        let standard = STANDARD
            .iter()
            .zip(&self.standard)
            .flat_map(|(m, t)| t.routes().map(move |(p, v)| (Some(m), p, v)));
        let extension = self
            .extension
            .iter()
            .flat_map(|(m, t)| t.routes().map(move |(p, v)| (Some(m), p, v)));
        let any = self.any.routes().map(|(p, v)| (None, p, v));
        standard.chain(extension).chain(any)
    }
}
