//! The upstream answered (on HTTP/1.1 or an HTTP/2 stream): its response goes to the client,
//! or a tunnel starts.

use std::sync::Arc;

use balancer::{InFlight, Outcome, Picked};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use httpkit::{TextOr, text_response};

use crate::exchange::Exchange;
use crate::forward::{Inner, RequestBody};
use crate::h2::H2Body;
use crate::h2::send::Sent;
use crate::headers::rewrite_response_headers;
use crate::outgoing::Outgoing;
use crate::pool::{Conn, announced_keep_alive};
use crate::response::{Back, ProxyBody, Received, UpstreamBody};
use crate::target::TargetAddr;
use crate::tunnel;
use crate::wire::{self, Wire};
use crate::{Upstream, UpstreamTarget};

impl<B: RequestBody> Exchange<B> {
    /// The upstream answered: its response for the client (or the start of a tunnel).
    pub(crate) fn relay(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        conn: Conn<Outgoing<B>>,
        in_flight: InFlight,
        mut res: Response<hyper::body::Incoming>,
    ) -> Response<ProxyBody<B>> {
        let upstream = &inner.upstream;
        upstream.balancer().report(&picked, Outcome::Success);
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return self.relay_h1_body(inner, picked, conn, in_flight, res);
        }
        let Some((client_side, guard)) = self.upgrade.take() else {
            return self.unasked_switch(upstream, &picked);
        };
        tunnel::spawn(
            client_side,
            hyper::upgrade::on(&mut res),
            in_flight,
            guard,
            self.ids.clone(),
        );
        // The connection's task finishes the hand-over of its socket to the tunnel.
        conn.link.detach();
        let (mut head, _) = res.into_parts();
        rewrite_response_headers(&mut head.headers, true);
        tag(upstream, &picked, &mut head);
        Response::from_parts(head, TextOr::Text { text: None })
    }

    /// The upstream answered on a [`Wire`]: the body is read from it as the client takes it.
    pub(crate) fn relay_wire(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        wire: Wire,
        in_flight: InFlight,
        head: wire::Head,
    ) -> Response<ProxyBody<B>> {
        let upstream = &inner.upstream;
        upstream.balancer().report(&picked, Outcome::Success);
        let wire::Head {
            mut parts,
            framing,
            keep_alive,
        } = head;
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // Wires carry no upgrade requests.
            return self.unasked_switch(upstream, &picked);
        }
        let keep_for = announced_keep_alive(&parts.headers);
        let reusable = keep_alive
            && framing != wire::head::Framing::Eof
            && !self.both_framings(upstream, &picked, &mut parts.headers);
        let back = Back {
            pool: inner.pool.clone(),
            link: None,
            keep_for,
            reusable,
        };
        let body = wire::WireBody::new(wire, wire::decode::Decoder::new(framing));
        self.deliver(
            inner,
            picked,
            in_flight,
            parts,
            Received::Wire(body),
            Some(back),
        )
    }

    /// A `101` to a request that asked for no upgrade: logged, and a `502`.
    fn unasked_switch(
        &self,
        upstream: &crate::upstream::Upstream,
        picked: &Picked<TargetAddr>,
    ) -> Response<ProxyBody<B>> {
        tracing::warn!(
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
            upstream = %upstream.name(),
            target = %picked.value(),
            "upstream switched protocols without being asked"
        );
        text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
    }

    /// Both framings (RFC 9112 6.3): the body is read as chunked; the length goes, and a
    /// connection that spoke like this is not trusted with another request. Whether it did.
    fn both_framings(
        &self,
        upstream: &crate::upstream::Upstream,
        picked: &Picked<TargetAddr>,
        headers: &mut http::HeaderMap,
    ) -> bool {
        if !(headers.contains_key(TRANSFER_ENCODING) && headers.remove(CONTENT_LENGTH).is_some()) {
            return false;
        }
        tracing::warn!(
            request_id = %self.ids.request(),
            trace_id = %self.ids.trace(),
            upstream = %upstream.name(),
            target = %picked.value(),
            "upstream response with both Content-Length and Transfer-Encoding; length dropped, connection not reused"
        );
        true
    }

    /// An HTTP/1.1 response with a body (or none) to stream.
    fn relay_h1_body(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        conn: Conn<Outgoing<B>>,
        in_flight: InFlight,
        res: Response<hyper::body::Incoming>,
    ) -> Response<ProxyBody<B>> {
        let upstream = &inner.upstream;
        let (mut head, body) = res.into_parts();
        let keep_for = announced_keep_alive(&head.headers);
        let reusable = !self.both_framings(upstream, &picked, &mut head.headers);
        // The connection stays with the body either way: its task reads the body.
        let back = Back {
            pool: inner.pool.clone(),
            link: Some(conn.link),
            keep_for,
            reusable,
        };
        self.deliver(
            inner,
            picked,
            in_flight,
            head,
            Received::H1(body),
            Some(back),
        )
    }

    /// The upstream answered on an HTTP/2 stream.
    pub(crate) fn relay_h2(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        in_flight: InFlight,
        sent: Sent,
    ) -> Response<ProxyBody<B>> {
        inner.upstream.balancer().report(&picked, Outcome::Success);
        let (head, recv) = sent.response.into_parts();
        let length = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = Received::H2(H2Body::new(recv, length, sent.slot));
        self.deliver(inner, picked, in_flight, head, body, None)
    }

    /// The response for the client: the head rewritten, the body streamed (back to the pool
    /// at its end when `back` says so), cut at a gRPC call's deadline.
    fn deliver(
        &mut self,
        inner: &Inner<B>,
        picked: Picked<TargetAddr>,
        in_flight: InFlight,
        mut head: http::response::Parts,
        body: Received,
        back: Option<Back<B>>,
    ) -> Response<ProxyBody<B>> {
        let upstream = &inner.upstream;
        rewrite_response_headers(&mut head.headers, false);
        head.version = http::Version::HTTP_11;
        tag(upstream, &picked, &mut head);
        // An event stream's events go out as they come; other bodies may be coalesced.
        let coalesce = !head
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let health = (Arc::clone(upstream), picked);
        let ids = std::mem::take(&mut self.ids);
        let mut body = UpstreamBody::new(body, in_flight, health, back, ids, coalesce);
        if let Some(deadline) = self.deadline() {
            body = body.with_deadline(deadline);
        }
        Response::from_parts(head, TextOr::inner(body))
    }
}

/// Names the target that answered in the response's extensions (an [`UpstreamTarget`]), when
/// the upstream's settings ask for it.
fn tag(upstream: &Upstream, picked: &Picked<TargetAddr>, head: &mut http::response::Parts) {
    if upstream.settings().tag_responses {
        head.extensions.insert(UpstreamTarget {
            upstream: Arc::clone(upstream.name_arc()),
            target: picked.value().clone(),
        });
    }
}
