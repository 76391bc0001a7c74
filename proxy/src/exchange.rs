//! One request on its way to an upstream: the outbound request built once ([`prepare`]), the
//! attempts on the targets the balancer picks ([`Exchange::attempt`]), the one place a failed
//! attempt is logged, reported to passive health and turned into the next target or an
//! answer ([`Exchange::failed`]), and the response relayed ([`Exchange::relay`]).

use std::sync::Arc;
use std::time::Instant;

use balancer::{InFlight, Outcome, Picked};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::SizeHint;
use httpkit::{BoxError, LogIds, text_response};
use telemetry::clock;

use crate::ClientAddr;
use crate::forward::{Inner, RequestBody};
use crate::h2::{Failed, H2Conn, Reserved};
use crate::headers::{Forwarding, rewrite_request_headers};
use crate::metrics::{Attempt, Retry};
use crate::outgoing::{BodyProgress, Outgoing, Progress, Recording};
use crate::pool::{Carrier, Conn, ConnectError};
use crate::response::ProxyBody;
use crate::retry::RetryPolicy;
use crate::tap::BodyTap;
use crate::target::TargetAddr;
use crate::tunnel::TunnelGuard;
use crate::upstream::Upstream;
use crate::wire::Wire;

/// One request on its way through the attempts.
pub(crate) struct Exchange<B> {
    /// The outbound request; out while an attempt holds it.
    request: Option<Request<Outgoing<B>>>,
    /// The client's `Host`, for `preserve_host`.
    inbound_host: Option<HeaderValue>,
    /// How far the client's body got (`None` without a body).
    progress: Option<Arc<BodyProgress>>,
    /// The client's side of an upgrade it asked for, and what the tunnel must hold.
    pub(crate) upgrade: Option<(hyper::upgrade::OnUpgrade, Option<TunnelGuard>)>,
    /// The ids every line logged about this request names.
    pub(crate) ids: LogIds,
    /// When a failed attempt goes to the next target: the route's, or `None` for the
    /// default (no shared count touched per request).
    route_policy: Option<Arc<RetryPolicy>>,
    /// Attempts made so far.
    made: u32,
    /// The last answer with a status the policy retries, kept while the next target is
    /// tried: the answer if none is left. Boxed: it is rare, and the exchange lives in every
    /// request's future.
    pub(crate) held: Option<Box<Response<ProxyBody<B>>>>,
    /// A gRPC call's deadline, from its `grpc-timeout`.
    deadline: Option<tokio::time::Instant>,
}

/// How long a refused stream's pipe may take to hand the rest of the body back (it does as
/// soon as it sees the reset, which comes with the refusal).
const GIVE_BACK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest request body kept to send again on HTTP/2 when the upstream refuses a stream
/// unprocessed (a gRPC message is usually far smaller; Envoy keeps up to 1 MiB per request).
const REPLAY_LIMIT: usize = 64 * 1024;

/// The policy of requests that come without one.
static DEFAULT_POLICY: std::sync::LazyLock<RetryPolicy> =
    std::sync::LazyLock::new(RetryPolicy::default);

/// The outbound request: path and query (the request's own, which a router may have
/// rewritten), hop-by-hop headers out, `X-Forwarded-*` in, HTTP/1.1, and the body tracked.
/// `None` for a request without a path (an authority-form `CONNECT`).
pub(crate) fn prepare<B: RequestBody>(upstream: &Upstream, req: Request<B>) -> Option<Exchange<B>> {
    let settings = upstream.settings();
    let (mut parts, body) = req.into_parts();
    let ids = LogIds::of(&parts.extensions);
    let route_policy = parts.extensions.get::<Arc<RetryPolicy>>().cloned();
    if let Some(p) = &route_policy {
        p.record_request();
    }
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
        proto: if parts.extensions.get::<crate::ClientTls>().is_some() {
            "https"
        } else {
            "http"
        },
    };
    let deadline = httpkit::grpc::is_grpc(&parts.headers)
        .then(|| httpkit::grpc::timeout(&parts.headers))
        .flatten()
        .map(|t| crate::now() + t);
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
        // send a GET's as nothing at all. (Looked up here, for bodies only: no rewrite above
        // removes a `Content-Length`.)
        if !parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let progress = Arc::<BodyProgress>::default();
        (
            Outgoing::tracked(
                body,
                Arc::clone(&progress),
                hint,
                parts.extensions.remove::<BodyTap>(),
            ),
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
        ids,
        route_policy,
        made: 0,
        held: None,
        deadline,
    })
}

/// Why an attempt failed.
enum Failure {
    /// No connection could be made (nothing was sent).
    Connect(ConnectError),
    /// A new connection closed before the request could be written (nothing was sent).
    NotSent(BoxError),
    /// The exchange broke before a response head: reset, closed, malformed or oversized head.
    Broken(BoxError),
    /// A pooled connection broke before a response head (most likely the upstream closed it
    /// while idle), or an HTTP/2 upstream refused the stream, and the request could not be
    /// sent again.
    StaleNotRetried(BoxError),
    /// No response head within the response timeout.
    Timeout,
}

/// A copy of a request's head, to send it again after the upstream broke the exchange (or
/// refused it) before answering, and of its body when it had one and it was kept.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<(Arc<Recording>, SizeHint)>,
}

impl Replay {
    /// A bodiless request's (HTTP/1.1 sends again only those).
    fn of<B>(req: &Request<Outgoing<B>>) -> Option<Replay> {
        req.body().is_empty().then(|| Replay::head(req, None))
    }

    /// Any request's, its body copied as it is sent, up to [`REPLAY_LIMIT`].
    fn keeping<B>(req: &mut Request<Outgoing<B>>) -> Replay {
        let body = (!req.body().is_empty()).then(|| {
            let hint = req.body().hint();
            (req.body_mut().record(REPLAY_LIMIT), hint)
        });
        Replay::head(req, body)
    }

    fn head<B>(req: &Request<Outgoing<B>>, body: Option<(Arc<Recording>, SizeHint)>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        }
    }

    /// The request again; `None` when its body was not kept whole.
    fn into_request<B>(self) -> Option<Request<Outgoing<B>>> {
        self.resumed(None)
    }

    /// The request again, its body what was kept and then `rest` (what was not read yet);
    /// `None` when that does not make the body whole.
    fn resumed<B>(self, rest: Option<Outgoing<B>>) -> Option<Request<Outgoing<B>>> {
        let body = match (&self.body, rest) {
            (None, _) => Outgoing::empty(),
            (Some((recording, hint)), None) => recording.replay(*hint)?,
            (Some((recording, hint)), Some(rest)) => recording.resume(rest, *hint)?,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers;
        Some(req)
    }
}

/// After a failed send: answer (or `None`: the next target), or send this again.
// A value returned once per failed send, never stored: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Next<B> {
    Answer(Option<Response<ProxyBody<B>>>),
    Again(Request<Outgoing<B>>),
}

impl<B> Exchange<B> {
    /// A gRPC call's deadline, if it has one.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The retry policy in force.
    fn policy(&self) -> &RetryPolicy {
        self.route_policy.as_deref().unwrap_or(&DEFAULT_POLICY)
    }
}

impl<B: RequestBody> Exchange<B> {
    /// One attempt on `picked`: the response, or `None` to try the next target.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    pub(crate) fn attempt<'a>(
        &'a mut self,
        inner: &'a Inner<B>,
        picked: Picked<TargetAddr>,
    ) -> impl Future<Output = Option<Response<ProxyBody<B>>>> {
        // An `async` block, not an `async fn`: its arguments are held once (see
        // `attempt_wire`).
        async move {
            // In flight from the pick on: connecting is part of the load a target carries,
            // and least-request must see it.
            let in_flight = picked.state().start();
            let started = clock::now();
            self.made += 1;
            let bodiless = self.request.as_ref().is_some_and(|r| r.body().is_empty());
            // The wire's attempt, awaited after the block: the carrier it came in is gone by
            // then instead of held beside it.
            let on = {
                let carrier = match inner
                    .pool
                    .carrier(picked.value(), self.upgrade.is_some(), bodiless)
                    .await
                {
                    Ok(carrier) => carrier,
                    Err(e) => return self.failed(&inner.upstream, &picked, Failure::Connect(e)),
                };
                match carrier {
                    Carrier::Wire { wire, reused } => WireAttempt {
                        wire,
                        reused,
                        in_flight,
                        started,
                    },
                    // Boxed, as the HTTP/2 attempt below: their states would otherwise set the
                    // size of every request's future, which is moved into its box whole.
                    Carrier::H1(conn) => {
                        return Box::pin(self.attempt_h1(inner, picked, conn, in_flight, started))
                            .await;
                    }
                    Carrier::H2 {
                        conn,
                        stream,
                        reused,
                    } => {
                        let on = H2Attempt {
                            conn,
                            stream: Some(stream),
                            reused,
                            in_flight,
                            started,
                        };
                        return Box::pin(self.attempt_h2(inner, picked, on)).await;
                    }
                }
            };
            self.attempt_wire(inner, picked, on).await
        }
    }

    /// How long to wait for a response head: the response timeout, or less when a gRPC
    /// call's deadline comes first.
    fn head_timeout(&self, settings: &crate::Settings) -> std::time::Duration {
        match self.deadline {
            Some(d) => settings
                .response_timeout
                .min(d.saturating_duration_since(crate::now())),
            None => settings.response_timeout,
        }
    }

    /// A response head came (on any carrier): its wait and outcome are counted, and whether
    /// the route retries its status is decided (and logged): `true` when the answer is to be
    /// held while the next target is tried. `resends`: the request can be sent again.
    fn retries_answer(
        &self,
        upstream: &Upstream,
        picked: &Picked<TargetAddr>,
        started: Instant,
        status: StatusCode,
        resends: bool,
    ) -> bool {
        let metrics = picked.value().metrics();
        metrics.head_after(clock::now().saturating_duration_since(started));
        if self.policy().retries_status(status) && resends && self.policy().may_retry(self.made) {
            metrics.attempt(Attempt::ServerError);
            tracing::warn!(
                request_id = %self.ids.request(),
                trace_id = %self.ids.trace(),
                upstream = %upstream.name(),
                target = %picked.value(),
                status = status.as_u16(),
                retry = true,
                "upstream answered with a status the route retries"
            );
            return true;
        }
        metrics.attempt(if status.is_server_error() {
            Attempt::ServerError
        } else {
            Attempt::Ok
        });
        false
    }

    /// The attempt on an HTTP/1.1 connection of its own; a pooled one the upstream had
    /// closed is replaced once.
    async fn attempt_h1(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        mut conn: Conn<Outgoing<B>>,
        in_flight: InFlight,
        started: Instant,
    ) -> Option<Response<ProxyBody<B>>> {
        let upstream = &inner.upstream;
        let settings = upstream.settings();
        let mut req = self.outbound_to(picked.value(), settings.preserve_host)?;
        loop {
            let replay = Replay::of(&req).filter(|_| self.policy().resends(req.method()));
            let sent = tokio::time::timeout(
                self.head_timeout(settings),
                conn.link.sender.try_send_request(req),
            )
            .await;
            let error = match sent {
                Ok(Ok(res)) => {
                    if self.retries_answer(
                        upstream,
                        &picked,
                        started,
                        res.status(),
                        replay.is_some(),
                    ) {
                        self.request = replay.and_then(Replay::into_request);
                        self.held = Some(Box::new(self.relay(inner, picked, conn, in_flight, res)));
                        return None;
                    }
                    return Some(self.relay(inner, picked, conn, in_flight, res));
                }
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    if self.policy().retries_timeout() {
                        self.request = replay.and_then(Replay::into_request);
                    }
                    return self.timed_out(upstream, &picked);
                }
            };
            match self.after_error(upstream, &picked, conn.reused, error, replay) {
                Next::Answer(res) => return res,
                Next::Again(back) => {
                    req = back;
                    conn = match inner.pool.connect(picked.value()).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            self.request = Some(req);
                            return self.failed(upstream, &picked, Failure::Connect(e));
                        }
                    };
                }
            }
        }
    }

    /// The outbound request, taken out, with `Host` for `target`; `None` if an attempt
    /// holds it.
    fn outbound_to(
        &mut self,
        target: &TargetAddr,
        preserve_host: bool,
    ) -> Option<Request<Outgoing<B>>> {
        self.outbound_in_place(target, preserve_host)?;
        self.request.take()
    }

    /// The outbound request where it is, with `Host` for `target`; `None` if an attempt holds
    /// it. (A request is some 300 bytes: one whose head is only written is not moved.)
    fn outbound_in_place(
        &mut self,
        target: &TargetAddr,
        preserve_host: bool,
    ) -> Option<&Request<Outgoing<B>>> {
        let req = self.request.as_mut()?;
        let host = match (&self.inbound_host, preserve_host) {
            (Some(host), true) => host.clone(),
            _ => target.host_header().clone(),
        };
        req.headers_mut().insert(HOST, host);
        Some(req)
    }

    /// No response head in time: the upstream's fault (`504`), or the client's when it was
    /// the client's body the exchange waited for (`408`).
    fn timed_out(
        &mut self,
        upstream: &Upstream,
        picked: &Picked<TargetAddr>,
    ) -> Option<Response<ProxyBody<B>>> {
        if self.deadline.is_some_and(|d| d <= crate::now()) {
            // The client's own deadline: not the target's failure, and no time to try another.
            tracing::info!(
                request_id = %self.ids.request(),
                trace_id = %self.ids.trace(),
                upstream = %upstream.name(),
                target = %picked.value(),
                "the gRPC call's deadline passed before the upstream answered"
            );
            // A 504 is DEADLINE_EXCEEDED to a gRPC client already (httpkit::grpc::Code).
            return Some(text_response(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway Timeout\n",
            ));
        }
        if !self.waiting_for_client() {
            return self.failed(upstream, picked, Failure::Timeout);
        }
        tracing::info!(
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
            upstream = %upstream.name(),
            target = %picked.value(),
            timeout_ms = upstream.settings().response_timeout.as_millis() as u64,
            "the client did not send its body in time"
        );
        Some(text_response(
            StatusCode::REQUEST_TIMEOUT,
            "Request Timeout\n",
        ))
    }

    /// What to do after the exchange failed before a response head: the client's fault, the
    /// same request again on a new connection (a stale pooled one), or a failed attempt.
    fn after_error(
        &mut self,
        upstream: &Upstream,
        picked: &Picked<TargetAddr>,
        reused: bool,
        mut error: hyper::client::conn::TrySendError<Request<Outgoing<B>>>,
        replay: Option<Replay>,
    ) -> Next<B> {
        if let Some(res) = self.client_fault(upstream, picked.value(), error.error()) {
            return Next::Answer(Some(res));
        }
        let never_sent = error.take_message();
        let was_sent = never_sent.is_none();
        let hyper_error = error.into_error();
        if !reused {
            // Sent and broken on a fresh connection: the target's failure; sent again only
            // when the policy retries resets.
            let replay = replay.filter(|_| self.policy().retries_reset());
            let again = never_sent.or_else(|| replay.and_then(Replay::into_request));
            self.request = again;
            let failure = if was_sent {
                Failure::Broken(hyper_error.into())
            } else {
                Failure::NotSent(hyper_error.into())
            };
            return Next::Answer(self.failed(upstream, picked, failure));
        }
        // A pooled connection the upstream had closed (or closed as we wrote): not the
        // target's fault, and the upstream never answered. Once more on a new connection to
        // the same target, when the request can go again.
        let again = never_sent.or_else(|| replay.and_then(Replay::into_request));
        let Some(back) = again else {
            return Next::Answer(self.failed(
                upstream,
                picked,
                Failure::StaleNotRetried(hyper_error.into()),
            ));
        };
        tracing::debug!(
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
            upstream = %upstream.name(),
            target = %picked.value(),
            error = %crate::error_chain(&hyper_error),
            "pooled connection closed by the upstream; sending again on a new one"
        );
        upstream.metrics().retried(Retry::StaleConnection);
        Next::Again(back)
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
        error: &dyn std::error::Error,
    ) -> Option<Response<ProxyBody<B>>> {
        let (status, text) = match self.progress.as_ref().map(|p| p.get()) {
            Some(Progress::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n"),
            Some(Progress::Failed) => (StatusCode::BAD_REQUEST, "Bad Request\n"),
            _ => return None,
        };
        tracing::info!(
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
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
        let retry = self.request.is_some() && self.policy().may_retry(self.made);
        let (counts, error, message) = match &failure {
            Failure::Connect(e) => (true, e.to_string(), "upstream connect failed"),
            Failure::NotSent(e) => (
                true,
                crate::error_chain(&**e),
                "upstream connection closed before the request was sent",
            ),
            Failure::Broken(e) => (true, crate::error_chain(&**e), "upstream request failed"),
            // The upstream closed an idle connection: not a sign of a sick target.
            Failure::StaleNotRetried(e) => (
                false,
                crate::error_chain(&**e),
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
        picked.value().metrics().attempt(match failure {
            Failure::Connect(_) => Attempt::ConnectError,
            Failure::Timeout => Attempt::Timeout,
            Failure::NotSent(_) | Failure::Broken(_) | Failure::StaleNotRetried(_) => {
                Attempt::Reset
            }
        });
        tracing::warn!(
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
            upstream = %upstream.name(),
            target = %picked.value(),
            error = %error,
            retry,
            "{message}"
        );
        if retry {
            return None;
        }
        // An upstream's own answer beats one the gateway makes up.
        if let Some(held) = self.held.take() {
            return Some(*held);
        }
        Some(match failure {
            Failure::Timeout => text_response(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n"),
            _ => text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n"),
        })
    }
}

/// What an attempt on a [`Wire`] starts with.
struct WireAttempt {
    wire: Wire,
    reused: bool,
    in_flight: InFlight,
    started: Instant,
}

impl<B: RequestBody> Exchange<B> {
    /// The attempt of a request without a body on a [`Wire`], which this task drives: the
    /// head written, the response head read. A pooled wire the upstream had closed (the head
    /// could not be written, or no byte of an answer came) is replaced once.
    ///
    /// The request stays in `self.request` while the head is awaited, taken out where it
    /// may not go again, and the future is an `async` block that uses its arguments where
    /// they were passed: an `async fn` keeps each argument twice (as passed and bound), and
    /// every byte of this future is moved with the request's.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    fn attempt_wire<'a>(
        &'a mut self,
        inner: &'a Inner<B>,
        picked: Picked<TargetAddr>,
        mut on: WireAttempt,
    ) -> impl Future<Output = Option<Response<ProxyBody<B>>>> {
        async move {
            let upstream = &inner.upstream;
            let settings = upstream.settings();
            // In a block of its own: a local that was borrowed is kept in the future until its
            // scope ends, even moved out.
            // The request stays where the next attempt finds it, until this one is sure not
            // to leave it: only its head is written here.
            let (head, method) = {
                let req = self.outbound_in_place(picked.value(), settings.preserve_host)?;
                let mut head = Vec::new();
                crate::wire::head::encode_request(
                    &mut head,
                    req.method(),
                    req.uri(),
                    req.headers(),
                );
                (head, req.method().clone())
            };
            let resends = self.policy().resends(&method);
            loop {
                let exchanged = on
                    .wire
                    .exchange_within(
                        self.head_timeout(settings),
                        &head,
                        &method,
                        settings.max_response_header_bytes,
                    )
                    .await;
                let failed = match exchanged {
                    Some(Ok(response)) => {
                        let status = response.parts.status;
                        if self.retries_answer(upstream, &picked, on.started, status, resends) {
                            let held =
                                self.relay_wire(inner, picked, on.wire, on.in_flight, response);
                            self.held = Some(Box::new(held));
                            return None;
                        }
                        self.request = None;
                        return Some(self.relay_wire(
                            inner,
                            picked,
                            on.wire,
                            on.in_flight,
                            response,
                        ));
                    }
                    Some(Err(failed)) => failed,
                    None => {
                        if !(self.policy().retries_timeout() && resends) {
                            self.request = None;
                        }
                        return self.timed_out(upstream, &picked);
                    }
                };
                let stale = on.reused
                    && matches!(
                        failed,
                        crate::wire::Failed::NotSent(_) | crate::wire::Failed::NoAnswer(_)
                    );
                if !stale {
                    // On a new connection, or a response that started and broke: the target's
                    // failure. What was never written can go to the next target; the rest when
                    // the policy says so.
                    let not_sent = matches!(failed, crate::wire::Failed::NotSent(_));
                    if !(not_sent || (self.policy().retries_reset() && resends)) {
                        self.request = None;
                    }
                    let e: BoxError = Box::new(failed.into_error());
                    let failure = if not_sent {
                        Failure::NotSent(e)
                    } else {
                        Failure::Broken(e)
                    };
                    return self.failed(upstream, &picked, failure);
                }
                // A pooled connection the upstream had closed (or closed as we wrote): not the
                // target's fault. Once more on a new connection to the same target, when the
                // request can go again.
                let never_sent = matches!(failed, crate::wire::Failed::NotSent(_));
                let error = failed.into_error();
                if !(never_sent || resends) {
                    self.request = None;
                    return self.failed(
                        upstream,
                        &picked,
                        Failure::StaleNotRetried(Box::new(error)),
                    );
                }
                tracing::debug!(
                    request_id = %self.ids.request(),
                    trace_id = %self.ids.trace(),
                    upstream = %upstream.name(),
                    target = %picked.value(),
                    error = %error,
                    "pooled connection closed by the upstream; sending again on a new one"
                );
                upstream.metrics().retried(Retry::StaleConnection);
                match Box::pin(inner.pool.connect_wire(picked.value())).await {
                    Ok(Carrier::Wire { wire, reused }) => {
                        on.wire = wire;
                        on.reused = reused;
                    }
                    Ok(_) => {
                        self.request = None;
                        return None;
                    }
                    Err(e) => return self.failed(upstream, &picked, Failure::Connect(e)),
                }
            }
        }
    }
}

/// What an attempt on an HTTP/2 connection starts with.
pub(crate) struct H2Attempt {
    conn: H2Conn,
    /// The stream reserved on it for the next send.
    stream: Option<Reserved>,
    reused: bool,
    in_flight: InFlight,
    started: Instant,
}

impl<B: RequestBody> Exchange<B> {
    /// The attempt on a stream of an HTTP/2 connection. A stream the upstream refused
    /// unprocessed (or that could not be opened: the connection was going away) goes again on
    /// another connection, twice at most, when its body was kept whole.
    async fn attempt_h2(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        mut on: H2Attempt,
    ) -> Option<Response<ProxyBody<B>>> {
        let upstream = &inner.upstream;
        let settings = upstream.settings();
        let mut req = self.outbound_to(picked.value(), settings.preserve_host)?;
        let mut sends = 0;
        loop {
            sends += 1;
            let replay = Replay::keeping(&mut req);
            let stream = on.stream.take()?;
            let sent = tokio::time::timeout(
                self.head_timeout(settings),
                crate::h2::send(&on.conn, stream, picked.value(), req),
            )
            .await;
            let error = match sent {
                Ok(Ok(sent)) => {
                    let status = sent.response.status();
                    let resends = self.policy().resends(&replay.method);
                    if self.retries_answer(upstream, &picked, on.started, status, resends) {
                        let held = self.relay_h2(inner, picked, on.in_flight, sent);
                        self.request = replay.into_request();
                        self.held = Some(Box::new(held));
                        return None;
                    }
                    return Some(self.relay_h2(inner, picked, on.in_flight, sent));
                }
                Ok(Err(failed)) => failed,
                Err(_elapsed) => {
                    if self.policy().retries_timeout() && self.policy().resends(&replay.method) {
                        self.request = replay.into_request();
                    }
                    return self.timed_out(upstream, &picked);
                }
            };
            let Failed { error, rest } = error;
            if let Some(res) = self.client_fault(upstream, picked.value(), error.error()) {
                return Some(res);
            }
            let unprocessed = matches!(
                error,
                crate::h2::SendError::NotSent(_) | crate::h2::SendError::Refused(_)
            );
            if !unprocessed {
                if self.policy().retries_reset() && self.policy().resends(&replay.method) {
                    self.request = replay.into_request();
                }
                let e: BoxError = Box::new(error.into_error());
                return self.failed(upstream, &picked, Failure::Broken(e));
            }
            // Not processed by the upstream: safe to send again, whatever the method, with
            // the body as far as it was read and the rest of it as the pipe left it.
            if matches!(error, crate::h2::SendError::NotSent(_)) {
                on.conn.close();
            }
            let rest = match rest {
                Some(rest) => tokio::time::timeout(GIVE_BACK_WAIT, rest)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            let again = replay.resumed(rest);
            let Some(back) = again.filter(|_| sends < 3) else {
                let e: BoxError = Box::new(error.into_error());
                let failure = if on.reused {
                    Failure::StaleNotRetried(e)
                } else {
                    Failure::NotSent(e)
                };
                return self.failed(upstream, &picked, failure);
            };
            tracing::debug!(
                request_id = %self.ids.request(),
                trace_id = %self.ids.trace(),
                upstream = %upstream.name(),
                target = %picked.value(),
                error = %crate::error_chain(error.error()),
                "HTTP/2 stream refused unprocessed; sending again on another connection"
            );
            upstream.metrics().retried(Retry::Refused);
            req = back;
            match inner.pool.carrier(picked.value(), false, false).await {
                Ok(Carrier::H2 {
                    conn,
                    stream,
                    reused,
                }) => {
                    on.conn = conn;
                    on.stream = Some(stream);
                    on.reused = reused;
                }
                Ok(Carrier::H1(conn)) => {
                    self.request = Some(req);
                    return self
                        .attempt_h1(inner, picked, conn, on.in_flight, on.started)
                        .await;
                }
                // Only for bodiless requests, which this was not asked for.
                Ok(Carrier::Wire { .. }) => {
                    self.request = Some(req);
                    return self.failed(
                        upstream,
                        &picked,
                        Failure::NotSent("no HTTP/2 connection".into()),
                    );
                }
                Err(e) => {
                    self.request = Some(req);
                    return self.failed(upstream, &picked, Failure::Connect(e));
                }
            }
        }
    }
}
