//! [`Proxy`]: the tower service that forwards a request to an [`Upstream`] and streams the
//! response back.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use balancer::{Attempts, InFlight, Picked};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, TE, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use crate::headers::{Forwarding, rewrite_request_headers, rewrite_response_headers};
use crate::pool::Pool;
use crate::upstream::{TargetAddr, Upstream};

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's address, put in the request's extensions by the server; used for
/// `X-Forwarded-For` and trusted-proxy checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The path to send upstream instead of the request's own (a router puts the catch-all
/// suffix here: `/static/*path` forwards `/static/css/app.css` as `/css/app.css`). Empty
/// becomes `/`. The query string is always the request's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath(pub Box<str>);

/// Held for as long as an upgraded connection (a WebSocket) is tunnelled: a server that waits
/// for its connections on shutdown puts one in the request's extensions and so waits for the
/// tunnels too, which outlive the HTTP connection they came from.
#[derive(Clone)]
pub struct TunnelGuard(pub Arc<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for TunnelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelGuard")
    }
}

/// Which upstream and target served a response; in the response's extensions, for the access
/// log. Displays as the target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The target that answered.
    pub target: TargetAddr,
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.upstream, self.target)
    }
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

impl<B> Proxy<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A proxy to `upstream`, with a connection pool of its own.
    pub fn new(upstream: Upstream) -> Self {
        let settings = upstream.settings();
        let pool = Pool::new(
            settings.pool_max_idle_per_target,
            settings.pool_idle_timeout,
            settings.connect_timeout,
        );
        Proxy {
            inner: Arc::new(Inner {
                upstream: Arc::new(upstream),
                pool,
            }),
        }
    }

    /// The upstream this proxy forwards to.
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }
}

impl<B> Service<Request<B>> for Proxy<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
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

fn short<B>(status: StatusCode, text: &'static str) -> Response<ProxyBody<B>> {
    let mut res = Response::new(ProxyBody(Kind::Short(Some(Bytes::from_static(
        text.as_bytes(),
    )))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

async fn forward<B>(inner: &Inner<B>, req: Request<B>) -> Response<ProxyBody<B>>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let upstream = &inner.upstream;
    let settings = upstream.settings();
    let (mut parts, body) = req.into_parts();
    let request_id = RequestIdText(parts.headers.get("x-request-id").cloned());

    // The outbound path and query, decided once.
    // The request's own path and query are reused as they are (a reference-count bump);
    // only a ForwardPath makes a new one.
    let path_and_query = match (
        parts.extensions.get::<ForwardPath>(),
        parts.uri.path_and_query(),
    ) {
        (None, Some(own)) => Ok(own.clone()),
        (forward, _) => {
            let path = match forward {
                Some(ForwardPath(p)) if p.is_empty() => "/",
                Some(ForwardPath(p)) => p,
                None => "/",
            };
            match parts.uri.query() {
                Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
                None => PathAndQuery::try_from(path),
            }
        }
    };
    let Ok(path_and_query) = path_and_query else {
        return short(StatusCode::BAD_REQUEST, "Bad Request\n");
    };

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
    let found = rewrite_request_headers(&mut parts.headers, &forwarding, &settings.trusted_proxies);
    if found.te_trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    // An upgrade (WebSocket) the server can hand over: forward the request for it, and tunnel
    // if the upstream switches protocols.
    let client_upgrade = match &found.upgrade {
        Some(protocol) => parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .map(|on| (on, protocol.clone())),
        None => None,
    };
    if let Some((_, protocol)) = &client_upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol.clone());
    }
    let mut client_upgrade = client_upgrade.map(|(on, _)| on);
    let mut tunnel_guard = match client_upgrade {
        Some(_) => parts.extensions.remove::<TunnelGuard>(),
        None => None,
    };

    // The request is built once: connecting is a step of its own, and a request hyper could
    // not write on a stale pooled connection comes back whole, so no attempt copies it.
    let size_hint = body.size_hint();
    let progress = (!body.is_end_stream()).then(Arc::<BodyProgress>::default);
    let mut out = Request::new(match &progress {
        Some(p) => Outgoing::tracked(body, Arc::clone(p), size_hint),
        None => Outgoing::empty(),
    });
    *out.method_mut() = parts.method;
    *out.uri_mut() = Uri::from(path_and_query);
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = std::mem::take(&mut parts.headers);
    let mut out = Some(out);

    let pool = &inner.pool;
    let mut attempts = Attempts::new();
    'targets: while let Some(picked) = upstream.balancer().next_attempt(&mut attempts) {
        let target = picked.value().clone();
        let mut conn = match pool.checkout(&target) {
            Some(conn) => conn,
            None => match connect(pool, upstream, &picked, &request_id).await {
                Some(conn) => conn,
                None => continue 'targets,
            },
        };
        let Some(mut req) = out.take() else {
            break 'targets;
        };
        let host = match (&inbound_host, settings.preserve_host) {
            (Some(host), true) => host.clone(),
            _ => target.host_header().clone(),
        };
        req.headers_mut().insert(HOST, host);

        let in_flight = picked.state().start();
        let outcome = loop {
            let outcome =
                tokio::time::timeout(settings.response_timeout, conn.sender.try_send_request(req))
                    .await;
            match outcome {
                Ok(Err(mut e)) if conn.reused => match e.take_message() {
                    // The pooled connection had closed before the request was written: the
                    // same request, on a new connection to the same target.
                    Some(back) => {
                        req = back;
                        conn = match connect(pool, upstream, &picked, &request_id).await {
                            Some(conn) => conn,
                            None => {
                                out = Some(req);
                                continue 'targets;
                            }
                        };
                    }
                    None => break Ok(Err(e)),
                },
                other => break other,
            }
        };
        match outcome {
            Ok(Ok(mut res)) => {
                upstream.balancer().report(&picked, true);
                let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
                if switching {
                    let Some(client_side) = client_upgrade.take() else {
                        tracing::warn!(
                            upstream = %upstream.name(),
                            target = %target,
                            request_id = %request_id,
                            "upstream switched protocols without being asked"
                        );
                        return short(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
                    };
                    let upstream_side = hyper::upgrade::on(&mut res);
                    tokio::spawn(tunnel(
                        client_side,
                        upstream_side,
                        in_flight,
                        request_id.clone(),
                        tunnel_guard.take(),
                    ));
                    let (mut head, _) = res.into_parts();
                    rewrite_response_headers(&mut head.headers, true);
                    head.extensions.insert(UpstreamTarget {
                        upstream: Arc::clone(upstream.name_arc()),
                        target,
                    });
                    return Response::from_parts(head, ProxyBody(Kind::Short(None)));
                }
                let (mut head, body) = res.into_parts();
                rewrite_response_headers(&mut head.headers, switching);
                head.extensions.insert(UpstreamTarget {
                    upstream: Arc::clone(upstream.name_arc()),
                    target,
                });
                let mut proxied = ProxyBody(Kind::Upstream {
                    body,
                    _in_flight: in_flight,
                    health: Some(BodyHealth {
                        upstream: Arc::clone(upstream),
                        picked,
                        request_id,
                    }),
                    back: Some((pool.clone(), conn.sender)),
                });
                // A response without a body (204, 304, HEAD, length 0) ends here.
                proxied.checkin_if_done();
                return Response::from_parts(head, proxied);
            }
            Err(_elapsed) => {
                if progress
                    .as_ref()
                    .is_some_and(|p| p.get() == Progress::WaitingForClient)
                {
                    // The upstream is waiting for the rest of the body; so are we.
                    tracing::info!(
                        upstream = %upstream.name(),
                        target = %target,
                        request_id = %request_id,
                        timeout_ms = settings.response_timeout.as_millis() as u64,
                        "the client did not send its body in time"
                    );
                    return short(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n");
                }
                upstream.balancer().report(&picked, false);
                tracing::warn!(
                    upstream = %upstream.name(),
                    target = %target,
                    request_id = %request_id,
                    timeout_ms = settings.response_timeout.as_millis() as u64,
                    "upstream did not answer in time"
                );
                return short(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n");
            }
            Ok(Err(mut e)) => {
                if let Some(back) = e.take_message() {
                    // Never written (a new connection that closed at once): the request can
                    // go to the next target.
                    out = Some(back);
                    upstream.balancer().report(&picked, false);
                    tracing::warn!(
                        upstream = %upstream.name(),
                        target = %target,
                        request_id = %request_id,
                        error = %error_chain(e.error()),
                        retry = true,
                        "upstream connection closed before the request was sent"
                    );
                    continue 'targets;
                }
                let error = e.into_error();
                // The client's body broke the exchange: its fault, not the upstream's.
                let client_fault = match progress.as_ref().map(|p| p.get()) {
                    Some(Progress::TooLarge) => {
                        Some((StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n"))
                    }
                    Some(Progress::Failed) => Some((StatusCode::BAD_REQUEST, "Bad Request\n")),
                    _ => None,
                };
                if let Some((status, text)) = client_fault {
                    tracing::info!(
                        upstream = %upstream.name(),
                        target = %target,
                        request_id = %request_id,
                        error = %error_chain(&error),
                        status = status.as_u16(),
                        "the client's request body failed"
                    );
                    return short(status, text);
                }
                upstream.balancer().report(&picked, false);
                tracing::warn!(
                    upstream = %upstream.name(),
                    target = %target,
                    request_id = %request_id,
                    error = %error_chain(&error),
                    retry = false,
                    "upstream request failed"
                );
                return short(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
            }
        }
    }
    tracing::error!(
        upstream = %upstream.name(),
        request_id = %request_id,
        tried = attempts.len(),
        "no upstream target answered"
    );
    short(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
}

/// A new connection to the picked target; a failure is logged, reported to passive health,
/// and leaves the request free for the next target.
async fn connect<B>(
    pool: &Pool<Outgoing<B>>,
    upstream: &Upstream,
    picked: &Picked<TargetAddr>,
    request_id: &RequestIdText,
) -> Option<crate::pool::Conn<Outgoing<B>>>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    match pool.connect(picked.value()).await {
        Ok(conn) => Some(conn),
        Err(error) => {
            upstream.balancer().report(picked, false);
            tracing::warn!(
                upstream = %upstream.name(),
                target = %picked.value(),
                request_id = %request_id,
                error = %error,
                retry = true,
                "upstream connect failed"
            );
            None
        }
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections until
/// either side closes. The target's in-flight count lasts as long as the tunnel.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _in_flight: InFlight,
    request_id: RequestIdText,
    _guard: Option<TunnelGuard>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::warn!(request_id = %request_id, error = %error, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(request_id = %request_id, error = %error, "tunnel closed with an error");
    }
}

/// The request's `X-Request-Id` for log lines (`-` without one): a reference-counted copy of
/// the header value, so a request pays no allocation for it.
#[derive(Clone)]
struct RequestIdText(Option<HeaderValue>);

impl fmt::Display for RequestIdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"))
    }
}

/// An error and its sources, `: `-separated (hyper's errors say the most in their sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// How far the client's request body got, as the attempt that owns it last saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Progress {
    /// Not polled yet.
    NotStarted = 0,
    /// The last poll waited for the client.
    WaitingForClient = 1,
    /// The last poll returned data: any wait now is the upstream's.
    Flowing = 2,
    /// All of it was sent.
    Done = 3,
    /// The client sent more than the server's body limit.
    TooLarge = 4,
    /// The client's body failed (malformed chunked framing, the client went away).
    Failed = 5,
}

/// How far the client's body got, shared between the body as sent upstream and the proxy's
/// future, so a failure the client caused is not blamed on the upstream.
#[derive(Default)]
struct BodyProgress(AtomicU8);

impl BodyProgress {
    fn set(&self, p: Progress) {
        self.0.store(p as u8, Ordering::Relaxed);
    }

    fn get(&self) -> Progress {
        match self.0.load(Ordering::Relaxed) {
            0 => Progress::NotStarted,
            1 => Progress::WaitingForClient,
            2 => Progress::Flowing,
            3 => Progress::Done,
            4 => Progress::TooLarge,
            _ => Progress::Failed,
        }
    }
}

/// The request body as sent upstream: empty, or the client's body, with its progress
/// recorded so that a failure the client causes is told apart from the upstream's. The request
/// is built once; hyper hands it back whole when it could not be written, so the body never
/// needs to move between attempts.
pub struct Outgoing<B> {
    body: Option<(B, Arc<BodyProgress>)>,
    hint: SizeHint,
}

impl<B> Outgoing<B> {
    fn empty() -> Self {
        Outgoing {
            body: None,
            hint: SizeHint::with_exact(0),
        }
    }

    fn tracked(body: B, progress: Arc<BodyProgress>, hint: SizeHint) -> Self {
        Outgoing {
            body: Some((body, progress)),
            hint,
        }
    }
}

impl<B> http_body::Body for Outgoing<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some((body, progress)) = &mut self.get_mut().body else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx).map_err(Into::into);
        progress.set(match &polled {
            Poll::Pending => Progress::WaitingForClient,
            Poll::Ready(Some(Ok(_))) => Progress::Flowing,
            Poll::Ready(None) => Progress::Done,
            Poll::Ready(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                Progress::TooLarge
            }
            Poll::Ready(Some(Err(_))) => Progress::Failed,
        });
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|(b, _)| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// The response body: the upstream's, streamed as it arrives (its in-flight count ends when
/// the body is done or dropped, and its connection goes back to the pool when the body
/// ends), or a short text the proxy answered itself. `B` is the request body type.
pub struct ProxyBody<B>(Kind<B>);

enum Kind<B> {
    Upstream {
        body: Incoming,
        _in_flight: InFlight,
        /// Taken when the body fails, to report the target.
        health: Option<BodyHealth>,
        /// The connection, back to the pool once the body has ended.
        back: Option<Back<B>>,
    },
    Short(Option<Bytes>),
}

/// A connection on its way back to the pool.
type Back<B> = (Pool<Outgoing<B>>, SendRequest<Outgoing<B>>);

/// What a response body needs to report its target when the upstream breaks off mid-body
/// (a reset, a body shorter than its `Content-Length`): that is a failed exchange too.
struct BodyHealth {
    upstream: Arc<Upstream>,
    picked: Picked<TargetAddr>,
    request_id: RequestIdText,
}

impl<B> ProxyBody<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Returns the connection to the pool if the upstream's body has ended.
    fn checkin_if_done(&mut self) {
        if let Kind::Upstream {
            body, health, back, ..
        } = &mut self.0
        {
            checkin_if_done(body, health.as_ref(), back);
        }
    }
}

/// Gives the connection back once the body it carries has ended (not after a failure: then
/// `health` was taken to report it).
fn checkin_if_done<B>(body: &Incoming, health: Option<&BodyHealth>, back: &mut Option<Back<B>>)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if let (true, Some(h)) = (http_body::Body::is_end_stream(body), health) {
        if let Some((pool, sender)) = back.take() {
            pool.checkin(h.picked.value(), sender);
        }
    }
}

impl<B> fmt::Debug for ProxyBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Upstream { .. } => "ProxyBody(upstream)",
            Kind::Short(_) => "ProxyBody(short)",
        })
    }
}

impl<B> http_body::Body for ProxyBody<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Upstream {
                body, health, back, ..
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(None) | Poll::Ready(Some(Ok(_))) = &polled {
                    checkin_if_done(body, health.as_ref(), back);
                }
                if let Poll::Ready(Some(Err(error))) = &polled {
                    if let Some(h) = health.take() {
                        h.upstream.balancer().report(&h.picked, false);
                        tracing::warn!(
                            upstream = %h.upstream.name(),
                            target = %h.picked.value(),
                            request_id = %h.request_id,
                            error = %error_chain(error),
                            "upstream response body failed"
                        );
                    }
                }
                polled
            }
            Kind::Short(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Short(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Short(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
        }
    }
}
