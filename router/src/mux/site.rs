//! One virtual host's routes ([`Site`]), the candidates registered at one method and pattern
//! ([`Slot`]), and [`HostRoutes`], the registration handle for a named host.

use std::collections::HashMap;

use http::{Method, Request};

use super::Mux;
use crate::error::InsertError;
use crate::guard::SharedGuard;
use crate::method::MethodRouter;
use crate::route::{IntoRoute, Route};

/// What is registered at one method and pattern: guarded candidates, tried in the order they
/// were registered, then the route without conditions, if any.
pub(super) struct Slot<B> {
    guarded: Vec<(SharedGuard, Route<B>)>,
    plain: Option<Route<B>>,
}

impl<B> Slot<B> {
    /// The route this request goes to; `None` when every candidate has a guard and none holds.
    #[inline]
    pub(super) fn pick(&self, req: &Request<B>) -> Option<&Route<B>> {
        if self.guarded.is_empty() {
            return self.plain.as_ref();
        }
        self.guarded
            .iter()
            .find(|(guard, _)| guard.check(req.uri(), req.headers()))
            .map(|(_, route)| route)
            .or(self.plain.as_ref())
    }
}

/// The routes of one virtual host (or of every other host, the default site).
pub(super) struct Site<B> {
    pub(super) routes: MethodRouter<usize>,
    pub(super) slots: Vec<Slot<B>>,
    /// Where each `(method, pattern)` already has a slot (registration only).
    index: HashMap<(Option<Method>, String), usize>,
}

impl<B> Site<B> {
    pub(super) fn new() -> Self {
        Site {
            routes: MethodRouter::new(),
            slots: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Done registering: the tree's lookup layout built, the registration index dropped.
    pub(super) fn seal(&mut self) {
        self.routes.prepare();
        self.index = HashMap::new();
    }

    /// Registers `route` at `path` for `methods` (`None`: any), behind `guard` if given.
    /// Either every method is registered or, on error, none is.
    pub(super) fn insert(
        &mut self,
        methods: Option<&[Method]>,
        path: &str,
        guard: Option<SharedGuard>,
        route: Route<B>,
    ) -> Result<(), InsertError> {
        let keys: Vec<Option<Method>> = match methods {
            None => vec![None],
            Some(list) => list.iter().cloned().map(Some).collect(),
        };
        let conflict = || InsertError::Conflict {
            route: path.to_owned(),
            existing: path.to_owned(),
        };
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].contains(key) {
                return Err(conflict());
            }
            match self.index.get(&(key.clone(), path.to_owned())) {
                Some(&slot) if guard.is_none() && self.slots[slot].plain.is_some() => {
                    return Err(conflict());
                }
                Some(_) => {}
                None => self.routes.check(key.as_ref(), path)?,
            }
        }
        for key in keys {
            let slot = match self.index.get(&(key.clone(), path.to_owned())) {
                Some(&slot) => slot,
                None => {
                    let slot = self.slots.len();
                    self.routes.insert(key.as_ref(), path, slot)?;
                    self.slots.push(Slot {
                        guarded: Vec::new(),
                        plain: None,
                    });
                    self.index.insert((key, path.to_owned()), slot);
                    slot
                }
            };
            let slot = &mut self.slots[slot];
            match &guard {
                Some(g) => slot.guarded.push((SharedGuard::clone(g), route.clone())),
                None => slot.plain = Some(route.clone()),
            }
        }
        Ok(())
    }
}

/// The routes of one host name, from [`Mux::host`]: requests whose `Host` (or `:authority`)
/// is this name see these routes and no others.
pub struct HostRoutes<'m, B> {
    pub(super) mux: &'m mut Mux<B>,
    pub(super) site: usize,
}

impl<B: Send + 'static> HostRoutes<'_, B> {
    /// Registers `service` at `path` for each of `methods` on this host.
    pub fn route<S: IntoRoute<B>>(
        &mut self,
        methods: impl IntoIterator<Item = Method>,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        let methods: Vec<Method> = methods.into_iter().collect();
        self.mux.sites[self.site].insert(Some(&methods), path, None, service.into_route())?;
        Ok(self)
    }

    /// Registers `service` at `path` for every method on this host.
    pub fn any<S: IntoRoute<B>>(
        &mut self,
        path: &str,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        self.mux.sites[self.site].insert(None, path, None, service.into_route())?;
        Ok(self)
    }

    /// Like [`Mux::route_if`], on this host.
    pub fn route_if<S: IntoRoute<B>>(
        &mut self,
        methods: Option<&[Method]>,
        path: &str,
        guard: SharedGuard,
        service: S,
    ) -> Result<&mut Self, InsertError> {
        self.mux.sites[self.site].insert(methods, path, Some(guard), service.into_route())?;
        Ok(self)
    }

    method_fns!("`path` on this host");
}
