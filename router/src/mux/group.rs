//! [`Group`]: routes under a common prefix with layers of their own.

use http::Method;
use tower_layer::Layer;

use super::{Mux, Wrap, wrap_with};
use crate::error::InsertError;
use crate::route::{IntoRoute, Route};

/// Routes registered under a common prefix with shared layers, wrapped around each route
/// when it is registered. Layers added first run first; a layer applies to the routes
/// registered after it. Nested groups inherit their parent's layers.
///
/// ```
/// # use std::convert::Infallible;
/// # use http::{Request, Response};
/// # use router::{Body, Mux};
/// # let handler = tower::service_fn(|_: Request<()>| async {
/// #     Ok::<_, Infallible>(Response::new(Body::empty()))
/// # });
/// let mut mux = Mux::new();
/// let mut admin = mux.group("/admin");
/// admin.layer(tower::layer::util::Identity::new()); // an auth gate, say
/// admin.get("/*path", handler)?;
/// # Ok::<_, router::InsertError>(())
/// ```
pub struct Group<'m, B> {
    pub(super) mux: &'m mut Mux<B>,
    pub(super) prefix: String,
    pub(super) layers: Vec<Wrap<B>>,
}

impl<B: Send + 'static> Group<'_, B> {
    /// Adds a layer to the routes registered in this group from now on.
    pub fn layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: Layer<Route<B>> + Send + Sync + 'static,
        L::Service: IntoRoute<B>,
    {
        self.layers.push(wrap_with(layer));
        self
    }

    /// A nested group under `prefix`, starting with this group's layers.
    pub fn group(&mut self, prefix: &str) -> Group<'_, B> {
        Group {
            prefix: format!("{}{}", self.prefix, prefix.trim_end_matches('/')),
            layers: self.layers.clone(),
            mux: self.mux,
        }
    }

    fn wrap(&self, service: Route<B>) -> Route<B> {
        self.layers
            .iter()
            .rev()
            .fold(service, |svc, wrap| wrap(svc))
    }

    /// Registers `service` at `prefix + path` for each of `methods`.
    pub fn route<S: IntoRoute<B>>(
        &mut self,
        methods: impl IntoIterator<Item = Method>,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        let methods: Vec<Method> = methods.into_iter().collect();
        self.register(Some(&methods), path, service)
    }

    /// Registers `service` at `prefix + path` for every method.
    pub fn any<S: IntoRoute<B>>(
        &mut self,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        self.register(None, path, service)
    }

    fn register<S: IntoRoute<B>>(
        &mut self,
        methods: Option<&[Method]>,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        let route = self.wrap(service.into_route());
        let full = format!("{}{path}", self.prefix);
        self.mux.insert(methods, &full, route)?;
        Ok(self)
    }

    method_fns!("`prefix + path`");
}
