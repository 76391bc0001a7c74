//! Request metrics: [`MetricsLayer`] counts every request by method and status class and
//! times it to the end of its response body, in the series of the route that served it;
//! [`RouteMetricsLayer`] names that series at the route.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use middleware::{MetricsLayer, RequestMetrics, RouteMetricsLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let unmatched = Arc::new(RequestMetrics::new());
//! let api = Arc::new(RequestMetrics::new());
//! let route = RouteMetricsLayer::new(Arc::clone(&api)).layer(service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! }));
//! let svc = MetricsLayer::new(Arc::clone(&unmatched)).layer(route);
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! drop(res); // the request is counted when its body is done with
//! assert_eq!(api.count("GET", "2xx"), 1);
//! assert_eq!(unmatched.total(), 0);
//! # }
//! ```
//!
//! How the route's series reaches the outer layer without a per-request allocation: a route's
//! service is called inside the poll of the outer layer's future (routers call it on that
//! future's first poll, or right away), so [`RouteMetricsLayer`] leaves its series in a
//! thread-local slot that the outer future empties right after each poll of its inner future.
//! A request no route took (a `404`, a `405`, a refusal before routing) is counted in the
//! outer layer's own series.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::sync::atomic::{AtomicU64, Ordering};
use telemetry::clock;

use telemetry::{Histogram, LATENCY_BUCKETS, Stripes};
use tower_layer::Layer;
use tower_service::Service;

/// The method label of a request: its method when standard, `other` for any extension.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// The status-class labels. A request whose client left before its response is counted as
/// `4xx` (the access log's `499`, as nginx logs it).
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn class_slot(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// The series of one route (or of the requests no route took): requests by method and status
/// class, and their durations, from the request's arrival to the end of its response body.
///
/// The counts are one block per stripe (see [`telemetry::Stripes`]): a thread counting a
/// request touches its own cache lines only.
#[derive(Debug)]
pub struct RequestMetrics {
    requests: Stripes<Counts>,
    duration: Histogram,
}

/// Requests by method and status class.
type Counts = [[AtomicU64; CLASSES.len()]; METHODS.len()];

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics {
    /// Empty series, timed with [`LATENCY_BUCKETS`].
    pub fn new() -> Self {
        RequestMetrics {
            requests: Stripes::default(),
            duration: Histogram::new(LATENCY_BUCKETS),
        }
    }

    fn record(&self, method: usize, class: usize, start: Instant) {
        if let Some(c) = self.requests.local().get(method).and_then(|m| m.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.duration
            .observe(clock::now().saturating_duration_since(start));
    }

    /// Requests counted with this method label and status class (labels as in [`METHODS`]
    /// and [`CLASSES`]; `0` for any other).
    pub fn count(&self, method: &str, class: &str) -> u64 {
        let m = METHODS.iter().position(|x| *x == method);
        let c = CLASSES.iter().position(|x| *x == class);
        match (m, c) {
            (Some(m), Some(c)) => self.sum(m, c),
            _ => 0,
        }
    }

    fn sum(&self, method: usize, class: usize) -> u64 {
        self.requests
            .iter()
            .map(|counts| counts[method][class].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Every `(method, class, count)` counted at least once.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        METHODS.iter().enumerate().flat_map(move |(m, method)| {
            CLASSES.iter().enumerate().filter_map(move |(c, class)| {
                let n = self.sum(m, c);
                (n > 0).then_some((*method, *class, n))
            })
        })
    }

    /// All requests counted.
    pub fn total(&self) -> u64 {
        (0..METHODS.len())
            .flat_map(|m| (0..CLASSES.len()).map(move |c| (m, c)))
            .map(|(m, c)| self.sum(m, c))
            .fold(0, u64::wrapping_add)
    }

    /// Requests answered `5xx`.
    pub fn server_errors(&self) -> u64 {
        (0..METHODS.len())
            .map(|m| self.sum(m, 4))
            .fold(0, u64::wrapping_add)
    }

    /// Their durations.
    pub fn duration(&self) -> &Histogram {
        &self.duration
    }
}

thread_local! {
    /// The series named by the route whose service was called during the current poll.
    static ROUTE: RefCell<Option<Arc<RequestMetrics>>> = const { RefCell::new(None) };
}

/// Counts and times every request (see the [module docs](self)); the outermost layer of a
/// server's stack, so that it sees the status the client gets.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    unmatched: Arc<RequestMetrics>,
}

impl MetricsLayer {
    /// Requests no route names are counted in `unmatched`.
    pub fn new(unmatched: Arc<RequestMetrics>) -> Self {
        MetricsLayer { unmatched }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            inner,
            unmatched: Arc::clone(&self.unmatched),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    unmatched: Arc<RequestMetrics>,
}

impl<S, B, ResBody> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_slot(req.method());
        let start = clock::now();
        take_route();
        let inner = self.inner.call(req);
        // A service that calls its route right away has named it already.
        let route = take_route();
        MetricsFuture {
            inner,
            pending: Some(Pending {
                method,
                start,
                named: route.is_some(),
                series: route.unwrap_or_else(|| Arc::clone(&self.unmatched)),
            }),
        }
    }
}

fn name_route(series: &Arc<RequestMetrics>) {
    let series = Arc::clone(series);
    ROUTE.with(|r| *r.borrow_mut() = Some(series));
}

fn take_route() -> Option<Arc<RequestMetrics>> {
    ROUTE.with(|r| r.borrow_mut().take())
}

/// A request on its way: where it will be counted, and since when.
struct Pending {
    method: usize,
    start: Instant,
    series: Arc<RequestMetrics>,
    /// Whether a route named the series (then no later poll looks again).
    named: bool,
}

pin_project_lite::pin_project! {
    /// The response future of [`Metrics`]. Dropped before the response (the client left),
    /// it counts the request as `4xx`.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for MetricsFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().pending.take() {
                p.series.record(p.method, 3, p.start);
            }
        }
    }
}

impl<F, ResBody, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let looking = this.pending.as_ref().is_some_and(|p| !p.named);
        if looking {
            // Whatever is in the slot was left by another poll: not this request's route.
            take_route();
        }
        let polled = this.inner.poll(cx);
        if let Some(p) = this.pending.as_mut().filter(|_| looking)
            && let Some(route) = take_route()
        {
            p.series = route;
            p.named = true;
        }
        let res = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                if let Some(p) = this.pending.take() {
                    p.series.record(p.method, 4, p.start);
                }
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(res)) => res,
        };
        let record = this.pending.take().map(|p| Record {
            class: class_slot(res.status().as_u16()),
            method: p.method,
            start: p.start,
            series: p.series,
        });
        Poll::Ready(Ok(res.map(|inner| MeteredBody { inner, record })))
    }
}

/// Counted when the body is done with: sent whole, failed, or dropped.
struct Record {
    method: usize,
    class: usize,
    start: Instant,
    series: Arc<RequestMetrics>,
}

pin_project_lite::pin_project! {
    /// The response body of [`Metrics`]: the inner body, unchanged; the request is counted
    /// and timed when this is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(r) = this.project().record.take() {
                r.series.record(r.method, r.class, r.start);
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Names the series a route's requests are counted in, for the [`MetricsLayer`] outside.
#[derive(Debug, Clone)]
pub struct RouteMetricsLayer {
    series: Arc<RequestMetrics>,
}

impl RouteMetricsLayer {
    /// The route's requests go to `series`.
    pub fn new(series: Arc<RequestMetrics>) -> Self {
        RouteMetricsLayer { series }
    }

    /// Names this layer's series for the request being called now, as [`RouteMetrics`] does
    /// on each call: for a router that changes a request on its way to the route without a
    /// service (and a future) of its own, such as `router::Route::edit_request`. Call it
    /// where the service would be called, within the [`Metrics`] service's call or a poll of
    /// its future.
    pub fn name_request(&self) {
        name_route(&self.series);
    }
}

impl<S> Layer<S> for RouteMetricsLayer {
    type Service = RouteMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteMetrics {
            inner,
            series: Arc::clone(&self.series),
        }
    }
}

/// The service made by [`RouteMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RouteMetrics<S> {
    inner: S,
    series: Arc<RequestMetrics>,
}

impl<S, B> Service<Request<B>> for RouteMetrics<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        name_route(&self.series);
        self.inner.call(req)
    }
}
