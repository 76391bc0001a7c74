//! [`Route`]: a type-erased, cheaply cloned service, the unit the [`Mux`](crate::Mux) stores.

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower_service::Service;

use httpkit::{Body, BoxError};

type BoxFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

trait Erased<B>: Send + Sync {
    fn call(&self, req: Request<B>) -> RouteFuture;

    /// The route behind the edits and the edits, in the order they run, when this route is
    /// a route's edits (see [`Route::edit_request`]).
    fn edits(&self) -> Option<(&Route<B>, &[Edit<B>])> {
        None
    }
}

/// One change made to a request in place (see [`Route::edit_request`]).
type Edit<B> = Arc<dyn Fn(&mut Request<B>) + Send + Sync>;

struct Erase<S>(S);

impl<S, B, ResBody> Erased<B> for Erase<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    fn call(&self, req: Request<B>) -> RouteFuture {
        // tower services take `&mut self`: each request gets its own clone (for most services
        // a few reference-count increments).
        let mut svc = self.0.clone();
        // Most services are ready at once: then the call is made here and only its future is
        // boxed, without the clone and the request beside it. The waker is a no-op: a service
        // that is not ready is asked again, with the task's, inside the future.
        match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => RouteFuture(Box::pin(Called {
                inner: svc.call(req),
            })),
            Poll::Ready(Err(e)) => {
                RouteFuture(Box::pin(std::future::ready(error_response(e.into()))))
            }
            Poll::Pending => RouteFuture(Box::pin(async move {
                if let Err(e) = poll_fn(|cx| svc.poll_ready(cx)).await {
                    return error_response(e.into());
                }
                match svc.call(req).await {
                    Ok(res) => res.map(Body::new),
                    Err(e) => error_response(e.into()),
                }
            })),
        }
    }
}

pin_project_lite::pin_project! {
    /// A called service's response, its body erased and an error answered `500`.
    struct Called<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody, E> Future for Called<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        self.project().inner.poll(cx).map(|res| match res {
            Ok(res) => res.map(Body::new),
            Err(e) => error_response(e.into()),
        })
    }
}

/// A route made from a function (see [`Route::from_fn`]).
struct FromFn<F>(F);

impl<B, F, Fut, ResBody> Erased<B> for FromFn<F>
where
    F: Fn(Request<B>) -> Fut + Send + Sync,
    Fut: Future<Output = Response<ResBody>> + Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    fn call(&self, req: Request<B>) -> RouteFuture {
        RouteFuture(Box::pin(BodyErased {
            inner: (self.0)(req),
        }))
    }
}

pin_project_lite::pin_project! {
    /// `F`'s response with its body erased. Written by hand rather than as an `async` block,
    /// which would move `F` (a proxy's future is a few KiB) once more on its first poll.
    struct BodyErased<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody> Future for BodyErased<F>
where
    F: Future<Output = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        self.project().inner.poll(cx).map(|res| res.map(Body::new))
    }
}

/// A route behind changes to its requests (see [`Route::edit_request`]): all of a route's
/// edits in one level, each made in place, so that a request is moved once on its way through
/// them however many there are.
struct Edited<B> {
    inner: Route<B>,
    edits: Box<[Edit<B>]>,
}

impl<B: Send + 'static> Erased<B> for Edited<B> {
    fn call(&self, mut req: Request<B>) -> RouteFuture {
        for edit in &self.edits {
            edit(&mut req);
        }
        self.inner.0.call(req)
    }

    fn edits(&self) -> Option<(&Route<B>, &[Edit<B>])> {
        Some((&self.inner, &self.edits))
    }
}

/// A service error reached the router: answer 500, and say why in the log.
fn error_response(error: BoxError) -> Response<Body> {
    tracing::error!(%error, "route service failed");
    httpkit::text_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

/// A tower service that a [`Mux`](crate::Mux) can register: any `Service<Request<B>>` that is
/// `Clone + Send + Sync + 'static`, with a `Send` future, errors that convert to [`BoxError`]
/// (they become `500` responses) and a response body of [`Bytes`] chunks. Implemented for every
/// such service; there is nothing to implement by hand.
pub trait IntoRoute<B>: Send + Sync + 'static {
    /// Erases the service into a [`Route`].
    fn into_route(self) -> Route<B>;
}

impl<S, B, ResBody> IntoRoute<B> for S
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    fn into_route(self) -> Route<B> {
        Route::new(self)
    }
}

/// A type-erased service from `Request<B>` to `Response<Body>` that never fails.
///
/// Any tower service with a `Clone + Send + Sync` implementation can become a `Route`; its
/// errors become `500 Internal Server Error` responses (and an error log line), and its response
/// body is wrapped in [`Body`]. Cloning a `Route` is one reference-count increment.
pub struct Route<B>(Arc<dyn Erased<B>>);

impl<B> Clone for Route<B> {
    fn clone(&self) -> Self {
        Route(Arc::clone(&self.0))
    }
}

impl<B> fmt::Debug for Route<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Route")
    }
}

impl<B: Send + 'static> Route<B> {
    /// Erases `service`. A `Route` passed in is returned as it is.
    pub fn new<S, ResBody>(service: S) -> Self
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        if let Some(route) = (&service as &dyn Any).downcast_ref::<Route<B>>() {
            return route.clone();
        }
        Route(Arc::new(Erase(service)))
    }

    /// A route that answers each request with the response `f`'s future resolves to: one
    /// allocation per request (the future, boxed once), where a tower service whose own
    /// future is already boxed costs two.
    ///
    /// ```
    /// use http::{Request, Response};
    /// use router::Route;
    /// use tower::{Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut route = Route::from_fn(|req: Request<()>| {
    ///     let path = req.uri().path().to_owned();
    ///     async move { Response::new(path) }
    /// });
    /// let req = Request::builder().uri("/hello").body(()).unwrap();
    /// let res = route.ready().await.unwrap().call(req).await.unwrap();
    /// let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    /// assert_eq!(body.to_bytes(), "/hello");
    /// # }
    /// ```
    pub fn from_fn<F, Fut, ResBody>(f: F) -> Self
    where
        F: Fn(Request<B>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<ResBody>> + Send + 'static,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        Route(Arc::new(FromFn(f)))
    }

    /// `self` behind `f`, a change made in place to each request before it is called (a path
    /// rewrite, an extension put in): unlike a tower `MapRequest` layer erased into a route of
    /// its own, it adds no future and no allocation to a request, and the edits of one route,
    /// however many, make one level that moves the request once. An edit added later runs
    /// earlier, as an outer layer would.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use router::Route;
    /// use tower::{Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let echo = service_fn(|req: Request<()>| async move {
    ///     Ok::<_, Infallible>(Response::new(req.uri().path().to_owned()))
    /// });
    /// let mut route = Route::new(echo)
    ///     .edit_request(|req: &mut Request<()>| {
    ///         let path = format!("{}/edited", req.uri().path());
    ///         *req.uri_mut() = path.parse().unwrap();
    ///     })
    ///     .edit_request(|req: &mut Request<()>| *req.uri_mut() = "/rewritten".parse().unwrap());
    /// let res = route.ready().await.unwrap().call(Request::new(())).await.unwrap();
    /// let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    /// assert_eq!(body.to_bytes(), "/rewritten/edited");
    /// # }
    /// ```
    pub fn edit_request<F>(self, f: F) -> Route<B>
    where
        F: Fn(&mut Request<B>) + Send + Sync + 'static,
    {
        let f: Edit<B> = Arc::new(f);
        if let Some((inner, edits)) = self.0.edits() {
            // Already a route's edits: one level more of them, not one more level.
            let edits = std::iter::once(f).chain(edits.iter().cloned()).collect();
            return Route(Arc::new(Edited {
                inner: inner.clone(),
                edits,
            }));
        }
        Route(Arc::new(Edited {
            inner: self,
            edits: Box::new([f]),
        }))
    }

    /// Calls the service without cloning the `Route`.
    pub(crate) fn call_ref(&self, req: Request<B>) -> RouteFuture {
        self.0.call(req)
    }
}

impl<B: Send + 'static> Service<Request<B>> for Route<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> RouteFuture {
        self.0.call(req)
    }
}

/// The response future of a [`Route`].
pub struct RouteFuture(BoxFuture);

impl Future for RouteFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

impl fmt::Debug for RouteFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouteFuture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body::Body as _;

    /// Edits added one after another make one level over the same route, and run outermost
    /// (last added) first.
    #[test]
    fn a_routes_edits_make_one_level_and_run_last_added_first() {
        let inner: Route<()> = Route::from_fn(|req: Request<()>| {
            let order = req
                .headers()
                .get_all("x-edit")
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
                .join(",");
            async move { Response::new(order) }
        });
        let tag = |name: &'static str| {
            move |req: &mut Request<()>| {
                req.headers_mut()
                    .append("x-edit", HeaderValue::from_static(name));
            }
        };
        let route = inner
            .clone()
            .edit_request(tag("first"))
            .edit_request(tag("second"))
            .edit_request(tag("third"));
        let Some((behind, edits)) = route.0.edits() else {
            panic!("a route of edits");
        };
        assert!(Arc::ptr_eq(&behind.0, &inner.0), "one level over the route");
        assert_eq!(edits.len(), 3);
        let mut answer = route.call_ref(Request::new(()));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Ok(res)) = Pin::new(&mut answer).poll(&mut cx) else {
            panic!("ready at once");
        };
        let mut body = res.into_body();
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("one frame");
        };
        assert_eq!(
            frame.into_data().ok(),
            Some(Bytes::from("third,second,first"))
        );
    }
}
