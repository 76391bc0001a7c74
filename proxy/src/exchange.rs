//! One request on its way to an upstream: the outbound request built once ([`prepare`]), the
//! attempts on the targets the balancer picks ([`Exchange::attempt`]), the one place a failed
//! attempt is logged, reported to passive health and turned into the next target or an
//! answer ([`Exchange::failed`]), and the response relayed ([`Exchange::relay`]).

use std::sync::Arc;
use std::time::Instant;

use balancer::{Outcome, Picked};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use httpkit::{LogIds, text_response};

use crate::ClientAddr;
use crate::forward::{Inner, RequestBody};
use crate::headers::{Forwarding, rewrite_request_headers};
use crate::metrics::{Attempt, Retry};
use crate::outgoing::{BodyProgress, Outgoing, Progress};
use crate::pool::ConnectError;
use crate::response::ProxyBody;
use crate::retry::RetryPolicy;
use crate::tap::BodyTap;
use crate::target::TargetAddr;
use crate::tunnel::TunnelGuard;
use crate::upstream::Upstream;

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
    /// tried: the answer if none is left.
    pub(crate) held: Option<Response<ProxyBody<B>>>,
}

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

/// After a failed send: answer (or `None`: the next target), or send this again.
// A value returned once per failed send, never stored: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Next<B> {
    Answer(Option<Response<ProxyBody<B>>>),
    Again(Request<Outgoing<B>>),
}

impl<B> Exchange<B> {
    /// The retry policy in force.
    fn policy(&self) -> &RetryPolicy {
        self.route_policy.as_deref().unwrap_or(&DEFAULT_POLICY)
    }
}

impl<B: RequestBody> Exchange<B> {
    /// One attempt on `picked`: the response, or `None` to try the next target.
    pub(crate) async fn attempt(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
    ) -> Option<Response<ProxyBody<B>>> {
        let upstream = &inner.upstream;
        let settings = upstream.settings();
        // In flight from the pick on: connecting is part of the load a target carries, and
        // least-request must see it.
        let in_flight = picked.state().start();
        let started = Instant::now();
        self.made += 1;
        let mut conn = match inner.pool.get(picked.value()).await {
            Ok(conn) => conn,
            Err(e) => return self.failed(upstream, &picked, Failure::Connect(e)),
        };
        let mut req = self.outbound_to(picked.value(), settings.preserve_host)?;
        loop {
            let replay = Replay::of(&req).filter(|_| self.policy().resends(req.method()));
            let sent = tokio::time::timeout(
                settings.response_timeout,
                conn.link.sender.try_send_request(req),
            )
            .await;
            let error = match sent {
                Ok(Ok(res)) => {
                    let metrics = picked.value().metrics();
                    metrics.head_after(started.elapsed());
                    if self.policy().retries_status(res.status())
                        && replay.is_some()
                        && self.policy().may_retry(self.made)
                    {
                        metrics.attempt(Attempt::ServerError);
                        tracing::warn!(
                            request_id = %self.ids.request(),
                            trace_id = %self.ids.trace(),
                            upstream = %upstream.name(),
                            target = %picked.value(),
                            status = res.status().as_u16(),
                            retry = true,
                            "upstream answered with a status the route retries"
                        );
                        self.request = replay.map(Replay::into_request);
                        self.held = Some(self.relay(inner, picked, conn, in_flight, res));
                        return None;
                    }
                    metrics.attempt(if res.status().is_server_error() {
                        Attempt::ServerError
                    } else {
                        Attempt::Ok
                    });
                    return Some(self.relay(inner, picked, conn, in_flight, res));
                }
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    if self.policy().retries_timeout() {
                        self.request = replay.map(Replay::into_request);
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

    /// The outbound request, with `Host` for `target`; `None` if an attempt holds it.
    fn outbound_to(
        &mut self,
        target: &TargetAddr,
        preserve_host: bool,
    ) -> Option<Request<Outgoing<B>>> {
        let mut req = self.request.take()?;
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
            let again = never_sent.or_else(|| replay.map(Replay::into_request));
            self.request = again;
            let failure = if was_sent {
                Failure::Broken(hyper_error)
            } else {
                Failure::NotSent(hyper_error)
            };
            return Next::Answer(self.failed(upstream, picked, failure));
        }
        // A pooled connection the upstream had closed (or closed as we wrote): not the
        // target's fault, and the upstream never answered. Once more on a new connection to
        // the same target, when the request can go again.
        let again = never_sent.or_else(|| replay.map(Replay::into_request));
        let Some(back) = again else {
            return Next::Answer(self.failed(
                upstream,
                picked,
                Failure::StaleNotRetried(hyper_error),
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
        error: &hyper::Error,
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
            return Some(held);
        }
        Some(match failure {
            Failure::Timeout => text_response(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n"),
            _ => text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n"),
        })
    }
}
