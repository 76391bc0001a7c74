//! Rate limiting: token buckets per key ([`RateLimiter`], a fixed-size table) and the layer
//! that answers `429 Too Many Requests` ([`RateLimitLayer`]).
//!
//! Each key (a client address, an API key header, a path parameter: the caller's choice) has a
//! bucket of `burst` tokens that refills at `rate` per second; a request takes one token, and
//! a request that finds none gets `429` with `Retry-After` (seconds until a token is back).
//! Every response of the route carries the IETF draft fields `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is full again), and
//! `RateLimit-Policy` (`burst;w=seconds to refill it`).
//!
//! Memory is fixed when the limiter is made, whatever the number of keys: buckets live in a
//! table of `capacity` slots in sets of 8 (a key can sit only in its set). A new key takes the
//! set's least recently used slot. An evicted key that comes back starts with a full bucket,
//! so a key can exceed its limit only when at least 8 other keys hashed to its set were seen
//! since its last request; size the table above the number of keys active within one refill
//! time (`burst / rate`). Keys are hashed with a per-process random seed, so clients cannot aim
//! at one set to evict someone else's bucket.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response, StatusCode};
//! use middleware::{RateLimitLayer, RateLimiter};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // 1 request per second, bursts of 2, keyed by the `x-api-key` header.
//! let limiter = Arc::new(RateLimiter::new(1.0, 2, 1024));
//! let layer = RateLimitLayer::new(limiter, Arc::new(|req: &http::request::Parts, key: &mut middleware::rate_limit::KeyHasher| {
//!     if let Some(v) = req.headers.get("x-api-key") { key.write(v.as_bytes()) }
//! }));
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! }));
//! let req = || Request::get("/").header("x-api-key", "k1").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), StatusCode::OK);
//! assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), StatusCode::OK);
//! let res = svc.oneshot(req()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(res.headers()["ratelimit-remaining"], "0");
//! # }
//! ```

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use httpkit::{TextOr, text_response};
use pin_project_lite::pin_project;
use telemetry::Counter;
use telemetry::clock;
use tower_layer::Layer;
use tower_service::Service;

/// Slots per set: a key lives in one of the 8 slots of its set.
const WAYS: usize = 8;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The key's hash; 0 is an empty slot (a key hashing to 0 is stored as 1).
    key: u64,
    tokens: f64,
    /// Milliseconds since the limiter was made, at the last refill.
    at_ms: u64,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may pass (it took a token).
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Seconds until a token is available (0 when one is).
    pub retry_after_s: u64,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
}

/// Token buckets per key in a table of fixed size (see the [module docs](self)).
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens per millisecond.
    rate_ms: f64,
    burst: f64,
    sets: Box<[Mutex<[Bucket; WAYS]>]>,
    hasher: RandomState,
    start: Instant,
    /// Requests refused, for the metrics.
    limited: Arc<Counter>,
    /// Keys evicted to make room, for the metrics.
    evictions: AtomicU64,
}

impl RateLimiter {
    /// `rate` tokens per second (above 0), bursts of `burst` (at least 1), room for about
    /// `capacity` keys (rounded up to a power of two, at least 8).
    pub fn new(rate: f64, burst: u32, capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        RateLimiter {
            rate_ms: rate.max(f64::MIN_POSITIVE) / 1000.0,
            burst: f64::from(burst.max(1)),
            sets: (0..sets)
                .map(|_| Mutex::new([Bucket::default(); WAYS]))
                .collect(),
            hasher: RandomState::new(),
            start: clock::now(),
            limited: Arc::new(Counter::new()),
            evictions: AtomicU64::new(0),
        }
    }

    /// Counts refusals into `counter` (shared, say, by every limit of a gateway) instead of a
    /// counter of its own.
    pub fn counting(mut self, counter: Arc<Counter>) -> Self {
        self.limited = counter;
        self
    }

    /// How many keys the table holds at most.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Requests refused so far.
    pub fn limited(&self) -> &Arc<Counter> {
        &self.limited
    }

    /// Keys evicted so far to make room for others.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The hash of a key's bytes (seeded per limiter).
    pub fn hash_key(&self, key: &[u8]) -> u64 {
        let mut h = self.key_hasher();
        h.write(key);
        h.finish()
    }

    /// A hasher for a key written in pieces (the same hash as [`hash_key`](Self::hash_key)
    /// of the pieces joined), so a request's key never needs a buffer of its own.
    pub fn key_hasher(&self) -> KeyHasher {
        KeyHasher(self.hasher.build_hasher())
    }

    /// Takes a token for the key with hash `key`, now.
    pub fn check(&self, key: u64) -> Decision {
        let now = u64::try_from(
            clock::now()
                .saturating_duration_since(self.start)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        self.check_at(key, now)
    }

    /// Takes a token for `key` at `now_ms` milliseconds after the limiter was made (times
    /// that go backwards count as no time passing).
    pub fn check_at(&self, key: u64, now_ms: u64) -> Decision {
        let key = key.max(1);
        let set = &self.sets[(key as usize) & (self.sets.len() - 1)];
        let mut set = match set.lock() {
            Ok(guard) => guard,
            // A panic while holding this lock cannot leave a bucket half-written (plain
            // stores of plain values): the data is still good.
            Err(poisoned) => poisoned.into_inner(),
        };
        let slot = match set.iter().position(|b| b.key == key) {
            Some(i) => i,
            None => {
                let (i, victim) = set
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| if b.key == 0 { 0 } else { b.at_ms + 1 })
                    .map(|(i, b)| (i, *b))
                    .unwrap_or((0, Bucket::default()));
                if victim.key != 0 {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                set[i] = Bucket {
                    key,
                    tokens: self.burst,
                    at_ms: now_ms,
                };
                i
            }
        };
        let b = &mut set[slot];
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
        b.tokens = (b.tokens + elapsed * self.rate_ms).min(self.burst);
        b.at_ms = b.at_ms.max(now_ms);
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        } else {
            self.limited.inc();
        }
        let secs = |tokens: f64| (tokens.max(0.0) / self.rate_ms / 1000.0).ceil() as u64;
        Decision {
            allowed,
            remaining: b.tokens as u32,
            retry_after_s: if allowed { 0 } else { secs(1.0 - b.tokens) },
            reset_s: secs(self.burst - b.tokens),
        }
    }

    /// `RateLimit-Policy`: the burst and the seconds it takes to refill.
    fn policy(&self) -> HeaderValue {
        let window = (self.burst / self.rate_ms / 1000.0).ceil() as u64;
        HeaderValue::from_str(&format!("{};w={window}", self.burst as u64))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// Hashes a request's key as it is written (see [`RateLimiter::key_hasher`]).
pub struct KeyHasher(std::hash::DefaultHasher);

impl KeyHasher {
    /// Adds key bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        std::hash::Hasher::write(&mut self.0, bytes);
    }

    fn finish(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

/// Writes a request's key into the hasher (nothing written: the request shares the bucket of
/// every request without a key).
pub type KeyFn = Arc<dyn Fn(&http::request::Parts, &mut KeyHasher) + Send + Sync>;

/// Limits requests per key (see the [module docs](self)).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    key: KeyFn,
    limit: HeaderValue,
    policy: HeaderValue,
}

impl RateLimitLayer {
    /// The layer over `limiter`, keying requests with `key`.
    pub fn new(limiter: Arc<RateLimiter>, key: KeyFn) -> Self {
        RateLimitLayer {
            limit: HeaderValue::from(limiter.burst as u64),
            policy: limiter.policy(),
            limiter,
            key,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset`, `-Policy`.
const FIELDS: [HeaderName; 4] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
    HeaderName::from_static("ratelimit-policy"),
];

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TextOr<ResBody>>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let limiter = &self.layer.limiter;
        let mut key = limiter.key_hasher();
        (self.layer.key)(&parts, &mut key);
        let d = limiter.check(key.finish());
        let fields = [
            self.layer.limit.clone(),
            HeaderValue::from(d.remaining),
            HeaderValue::from(d.reset_s),
            self.layer.policy.clone(),
        ];
        if d.allowed {
            return RateLimitFuture::Pass {
                inner: self.inner.call(Request::from_parts(parts, body)),
                fields: Some(fields),
            };
        }
        tracing::info!(
            request_id = %httpkit::RequestId::logged(&parts.extensions),
            trace_id = %httpkit::TraceContext::logged(&parts.extensions),
            retry_after_s = d.retry_after_s,
            "request refused: rate limit"
        );
        let mut res = text_response(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(d.retry_after_s));
        write_fields(res.headers_mut(), fields);
        RateLimitFuture::Answer { res: Some(res) }
    }
}

/// The four `RateLimit-*` fields, in the order of [`FIELDS`].
fn write_fields(headers: &mut http::HeaderMap, values: [HeaderValue; 4]) {
    for (name, value) in FIELDS.into_iter().zip(values) {
        headers.insert(name, value);
    }
}

pin_project! {
    /// The response future of [`RateLimit`].
    #[project = RateLimitProj]
    // pin-project-lite takes no doc comments on enum fields; the variants say what they hold.
    #[allow(missing_docs)]
    pub enum RateLimitFuture<F, ResBody> {
        Pass { #[pin] inner: F, fields: Option<[HeaderValue; 4]> },
        Answer { res: Option<Response<TextOr<ResBody>>> },
    }
}

impl<F, ResBody, E> Future for RateLimitFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TextOr<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RateLimitProj::Pass { inner, fields } => {
                let mut res = std::task::ready!(inner.poll(cx))?;
                if let Some(values) = fields.take() {
                    write_fields(res.headers_mut(), values);
                }
                Poll::Ready(Ok(res.map(TextOr::inner)))
            }
            RateLimitProj::Answer { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
        }
    }
}
