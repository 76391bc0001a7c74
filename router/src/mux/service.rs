//! [`MuxService`] and its future.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::ALLOW;
use http::{HeaderValue, Request, Response};
use httpkit::Body;
use tower_service::Service;

use super::dispatch::{Dispatch, dispatch};
use crate::route::{Route, RouteFuture};

/// The router as a cloneable tower `Service`, made by [`Mux::into_service`](crate::Mux::into_service).
pub struct MuxService<B>(pub(super) Inner<B>);

pub(super) enum Inner<B> {
    Direct(Dispatch<B>),
    Layered(Route<B>),
}

impl<B> Clone for MuxService<B> {
    fn clone(&self) -> Self {
        MuxService(match &self.0 {
            Inner::Direct(d) => Inner::Direct(d.clone()),
            Inner::Layered(r) => Inner::Layered(r.clone()),
        })
    }
}

impl<B> fmt::Debug for MuxService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MuxService")
    }
}

impl<B: Send + 'static> Service<Request<B>> for MuxService<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = MuxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> MuxFuture {
        self.call_ref(req)
    }
}

impl<B: Send + 'static> MuxService<B> {
    /// [`Service::call`] through a shared reference: a holder of the router behind an `Arc`
    /// (a swappable configuration) routes without cloning it per request.
    pub fn call_ref(&self, req: Request<B>) -> MuxFuture {
        match &self.0 {
            Inner::Direct(Dispatch(table)) => dispatch(table, req),
            Inner::Layered(route) => MuxFuture(State::Route(route.call_ref(req))),
        }
    }
}

/// The response future of [`MuxService`].
pub struct MuxFuture(pub(super) State);

pub(super) enum State {
    Ready(Option<Response<Body>>),
    Route(RouteFuture),
    AddAllow(RouteFuture, Option<HeaderValue>),
}

impl Future for MuxFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            State::Ready(res) => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
            State::Route(fut) => Pin::new(fut).poll(cx),
            State::AddAllow(fut, allow) => {
                let Poll::Ready(Ok(mut res)) = Pin::new(fut).poll(cx) else {
                    return Poll::Pending;
                };
                if let Some(allow) = allow.take() {
                    res.headers_mut().entry(ALLOW).or_insert(allow);
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

impl fmt::Debug for MuxFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MuxFuture")
    }
}
