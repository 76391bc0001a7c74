//! [`Proxy`]: the tower service that forwards a request to an [`Upstream`] and streams the
//! response back. One request goes through three steps: [`prepare`] (the outbound request,
//! built once), attempts on the targets the balancer picks ([`Exchange::attempt`]), and
//! [`Exchange::relay`] of the response. Every failed attempt goes through one place,
//! [`Exchange::failed`], which logs it, reports it to passive health and decides between
//! the next target and an answer to the client.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use balancer::{Attempts, InFlight, Outcome, Picked};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use tower_service::Service;

use crate::headers::{Forwarding, rewrite_request_headers, rewrite_response_headers};
use crate::outgoing::{BodyProgress, Outgoing, Progress};
use crate::pool::{Conn, ConnectError, Pool, announced_keep_alive};
use crate::response::{Back, ProxyBody, UpstreamBody};
use crate::target::TargetAddr;
use crate::tunnel::{self, TunnelGuard};
use crate::upstream::Upstream;
use crate::{ClientAddr, UpstreamTarget};
use httpkit::{BoxError, TextOr, text_response};

/// A request body the proxy can forward.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// Forwards requests to an upstream (see the [crate docs](crate)).
pub struct Proxy<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Proxy {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> fmt::Debug for Proxy<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.upstream)
            .finish()
    }
}

struct Inner<B> {
    upstream: Arc<Upstream>,
    pool: Pool<Outgoing<B>>,
}

impl<B: RequestBody> Proxy<B> {
    /// A proxy to `upstream`, with a connection pool of its own.
    pub fn new(upstream: Upstream) -> Self {
        let pool = Pool::new(upstream.settings());
        Proxy {
            inner: Arc::new(Inner {
                upstream: Arc::new(upstream),
                pool,
            }),
        }
    }
}

impl<B> Proxy<B> {
    /// The upstream this proxy forwards to.
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// Idle upstream connections in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.inner.pool.idle_count()
    }

    pub(crate) fn upstream_arc(&self) -> &Arc<Upstream> {
        &self.inner.upstream
    }

    pub(crate) fn pool(&self) -> &Pool<Outgoing<B>> {
        &self.inner.pool
    }
}

impl<B: RequestBody> Service<Request<B>> for Proxy<B> {
    type Response = Response<ProxyBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody<B>>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(forward(&inner, req).await) })
    }
}

async fn forward<B: RequestBody>(inner: &Inner<B>, req: Request<B>) -> Response<ProxyBody<B>> {
    let Some(mut exchange) = prepare(&inner.upstream, req) else {
        return text_response(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    let mut attempts = Attempts::new();
    while let Some(picked) = inner.upstream.balancer().next_attempt(&mut attempts) {
        if let Some(res) = exchange.attempt(inner, picked).await {
            return res;
        }
    }
    let upstream = inner.upstream.name();
    if attempts.is_empty() {
        tracing::error!(
            upstream,
            "no target available: every target is marked down or failing its health checks"
        );
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
    }
    tracing::error!(
        upstream,
        tried = attempts.len(),
        "no upstream target answered"
    );
    text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
}

/// One request on its way through the attempts.
struct Exchange<B> {
    /// The outbound request; out while an attempt holds it.
    request: Option<Request<Outgoing<B>>>,
    /// The client's `Host`, for `preserve_host`.
    inbound_host: Option<HeaderValue>,
    /// How far the client's body got (`None` without a body).
    progress: Option<Arc<BodyProgress>>,
    /// The client's side of an upgrade it asked for, and what the tunnel must hold.
    upgrade: Option<(hyper::upgrade::OnUpgrade, Option<TunnelGuard>)>,
}

/// The outbound request: path and query (the request's own, which a router may have
/// rewritten), hop-by-hop headers out, `X-Forwarded-*` in, HTTP/1.1, and the body tracked.
/// `None` for a request without a path (an authority-form `CONNECT`).
fn prepare<B: RequestBody>(upstream: &Upstream, req: Request<B>) -> Option<Exchange<B>> {
    let settings = upstream.settings();
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().cloned()?;
    let inbound_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let forwarding = Forwarding {
        client: parts.extensions.get::<ClientAddr>().map(|c| c.0.ip()),
        host: inbound_host.clone(),
        proto: "http",
    };
    let declared_length = parts.headers.contains_key(CONTENT_LENGTH);
    let found = rewrite_request_headers(&mut parts.headers, &forwarding, &settings.trusted_proxies);
    if found.te_trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    // An upgrade (WebSocket) the server can hand over: forward the request for it, and tunnel
    // if the upstream switches protocols.
    let upgrade = match &found.upgrade {
        Some(protocol) => match parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
            Some(on) => {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(UPGRADE, protocol.clone());
                Some((on, parts.extensions.remove::<TunnelGuard>()))
            }
            None => None,
        },
        None => None,
    };
    let hint = body.size_hint();
    let (outgoing, progress) = if body.is_end_stream() {
        (Outgoing::empty(), None)
    } else {
        // A body without a declared length goes as chunked whatever the method: hyper would
        // send a GET's as nothing at all.
        if !declared_length {
            parts
                .headers
                .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let progress = Arc::<BodyProgress>::default();
        (
            Outgoing::tracked(body, Arc::clone(&progress), hint),
            Some(progress),
        )
    };
    let mut out = Request::new(outgoing);
    *out.method_mut() = parts.method;
    *out.uri_mut() = Uri::from(path_and_query);
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = parts.headers;
    Some(Exchange {
        request: Some(out),
        inbound_host,
        progress,
        upgrade,
    })
}

/// Why an attempt failed.
enum Failure {
    /// No connection could be made (nothing was sent).
    Connect(ConnectError),
    /// A new connection closed before the request could be written (nothing was sent).
    NotSent(hyper::Error),
    /// The exchange broke before a response head: reset, closed, malformed or oversized head.
    Broken(hyper::Error),
    /// A pooled connection broke before a response head (most likely the upstream closed it
    /// while idle), and the request could not be sent again.
    StaleNotRetried(hyper::Error),
    /// No response head within the response timeout.
    Timeout,
}

/// A copy of a bodiless request's head, to send it again after the upstream broke the
/// exchange before answering.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of<B>(req: &Request<Outgoing<B>>) -> Option<Replay> {
        req.body().is_empty().then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn into_request<B>(self) -> Request<Outgoing<B>> {
        let mut req = Request::new(Outgoing::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Methods that may be sent twice (RFC 9110 9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<B: RequestBody> Exchange<B> {
    /// One attempt on `picked`: the response, or `None` to try the next target.
    async fn attempt(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
    ) -> Option<Response<ProxyBody<B>>> {
        let upstream = &inner.upstream;
        let settings = upstream.settings();
        let target = picked.value();
        // In flight from the pick on: connecting is part of the load a target carries, and
        // least-request must see it.
        let in_flight = picked.state().start();
        let mut pooled = inner.pool.checkout(target);
        if let Some(conn) = &mut pooled {
            if !conn.wait_ready().await {
                pooled = None;
            }
        }
        let mut conn = match pooled {
            Some(conn) => conn,
            None => match inner.pool.connect(target).await {
                Ok(conn) => conn,
                Err(e) => return self.failed(upstream, &picked, Failure::Connect(e)),
            },
        };
        let mut req = self.request.take()?;
        let host = match (&self.inbound_host, settings.preserve_host) {
            (Some(host), true) => host.clone(),
            _ => target.host_header().clone(),
        };
        req.headers_mut().insert(HOST, host);
        loop {
            let replay = Replay::of(&req);
            let method_idempotent = idempotent(req.method());
            let sent = tokio::time::timeout(
                settings.response_timeout,
                conn.link.sender.try_send_request(req),
            )
            .await;
            let mut error = match sent {
                Ok(Ok(res)) => return Some(self.relay(inner, picked, conn, in_flight, res)),
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    if self.waiting_for_client() {
                        tracing::info!(
                            upstream = %upstream.name(),
                            target = %target,
                            timeout_ms = settings.response_timeout.as_millis() as u64,
                            "the client did not send its body in time"
                        );
                        return Some(text_response(
                            StatusCode::REQUEST_TIMEOUT,
                            "Request Timeout\n",
                        ));
                    }
                    return self.failed(upstream, &picked, Failure::Timeout);
                }
            };
            if let Some(res) = self.client_fault(upstream, target, error.error()) {
                return Some(res);
            }
            let never_sent = error.take_message();
            let was_sent = never_sent.is_none();
            let again = never_sent.or_else(|| {
                replay
                    .filter(|_| method_idempotent)
                    .map(Replay::into_request)
            });
            let hyper_error = error.into_error();
            if !conn.reused {
                self.request = again;
                let failure = if was_sent {
                    Failure::Broken(hyper_error)
                } else {
                    Failure::NotSent(hyper_error)
                };
                return self.failed(upstream, &picked, failure);
            }
            // A pooled connection the upstream had closed (or closed as we wrote): not the
            // target's fault, and the upstream never answered. Once more on a new
            // connection to the same target, when the request can go again.
            let Some(back) = again else {
                return self.failed(upstream, &picked, Failure::StaleNotRetried(hyper_error));
            };
            tracing::debug!(
                upstream = %upstream.name(),
                target = %target,
                error = %crate::error_chain(&hyper_error),
                "pooled connection closed by the upstream; sending again on a new one"
            );
            req = back;
            conn = match inner.pool.connect(target).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.request = Some(req);
                    return self.failed(upstream, &picked, Failure::Connect(e));
                }
            };
        }
    }

    /// Whether the attempt was waiting for the client's body, not the upstream.
    fn waiting_for_client(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|p| p.get() == Progress::WaitingForClient)
    }

    /// The answer when the client's body broke the exchange: its fault, not the upstream's.
    fn client_fault(
        &self,
        upstream: &Upstream,
        target: &TargetAddr,
        error: &hyper::Error,
    ) -> Option<Response<ProxyBody<B>>> {
        let (status, text) = match self.progress.as_ref().map(|p| p.get()) {
            Some(Progress::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n"),
            Some(Progress::Failed) => (StatusCode::BAD_REQUEST, "Bad Request\n"),
            _ => return None,
        };
        tracing::info!(
            upstream = %upstream.name(),
            target = %target,
            error = %crate::error_chain(error),
            status = status.as_u16(),
            "the client's request body failed"
        );
        Some(text_response(status, text))
    }

    /// Logs a failed attempt and reports it to passive health; `None` when the request can
    /// go to the next target (it is back in `self.request`), else the answer.
    fn failed(
        &mut self,
        upstream: &Upstream,
        picked: &Picked<TargetAddr>,
        failure: Failure,
    ) -> Option<Response<ProxyBody<B>>> {
        let retry = self.request.is_some();
        let (counts, error, message) = match &failure {
            Failure::Connect(e) => (true, e.to_string(), "upstream connect failed"),
            Failure::NotSent(e) => (
                true,
                crate::error_chain(e),
                "upstream connection closed before the request was sent",
            ),
            Failure::Broken(e) => (true, crate::error_chain(e), "upstream request failed"),
            // The upstream closed an idle connection: not a sign of a sick target.
            Failure::StaleNotRetried(e) => (
                false,
                crate::error_chain(e),
                "pooled upstream connection closed; the request cannot be sent again",
            ),
            Failure::Timeout => (
                true,
                format!(
                    "no response head within {} ms",
                    upstream.settings().response_timeout.as_millis()
                ),
                "upstream did not answer in time",
            ),
        };
        if counts {
            upstream.balancer().report(picked, Outcome::Failure);
        }
        tracing::warn!(
            upstream = %upstream.name(),
            target = %picked.value(),
            error = %error,
            retry,
            "{message}"
        );
        if retry {
            return None;
        }
        Some(match failure {
            Failure::Timeout => text_response(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n"),
            _ => text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n"),
        })
    }

    /// The upstream answered: its response for the client (or the start of a tunnel).
    fn relay(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        conn: Conn<Outgoing<B>>,
        in_flight: InFlight,
        mut res: Response<hyper::body::Incoming>,
    ) -> Response<ProxyBody<B>> {
        let upstream = &inner.upstream;
        upstream.balancer().report(&picked, Outcome::Success);
        let origin = UpstreamTarget {
            upstream: Arc::clone(upstream.name_arc()),
            target: picked.value().clone(),
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some((client_side, guard)) = self.upgrade.take() else {
                tracing::warn!(
                    upstream = %upstream.name(),
                    target = %picked.value(),
                    "upstream switched protocols without being asked"
                );
                return text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
            };
            tunnel::spawn(client_side, hyper::upgrade::on(&mut res), in_flight, guard);
            // The connection's task finishes the hand-over of its socket to the tunnel.
            conn.link.detach();
            let (mut head, _) = res.into_parts();
            rewrite_response_headers(&mut head.headers, true);
            head.extensions.insert(origin);
            return Response::from_parts(head, TextOr::Text { text: None });
        }
        let (mut head, body) = res.into_parts();
        let keep_for = announced_keep_alive(&head.headers);
        // Both framings (RFC 9112 6.3): the body was read as chunked; the length goes, and a
        // connection that spoke like this is not trusted with another request.
        let mut reusable = true;
        if head.headers.contains_key(TRANSFER_ENCODING)
            && head.headers.remove(CONTENT_LENGTH).is_some()
        {
            reusable = false;
            tracing::warn!(
                upstream = %upstream.name(),
                target = %picked.value(),
                "upstream response with both Content-Length and Transfer-Encoding; length dropped, connection not reused"
            );
        }
        rewrite_response_headers(&mut head.headers, false);
        head.extensions.insert(origin);
        // The connection stays with the body either way: its task reads the body.
        let back = Back {
            pool: inner.pool.clone(),
            link: conn.link,
            keep_for,
            reusable,
        };
        let body = UpstreamBody::new(body, in_flight, (Arc::clone(upstream), picked), back);
        Response::from_parts(head, TextOr::inner(body))
    }
}
