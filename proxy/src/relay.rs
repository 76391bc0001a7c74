//! The upstream answered: its response goes to the client, or a tunnel starts.

use std::sync::Arc;

use balancer::{InFlight, Outcome, Picked};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use httpkit::{TextOr, text_response};

use crate::UpstreamTarget;
use crate::exchange::Exchange;
use crate::forward::{Inner, RequestBody};
use crate::headers::rewrite_response_headers;
use crate::outgoing::Outgoing;
use crate::pool::{Conn, announced_keep_alive};
use crate::response::{Back, ProxyBody, UpstreamBody};
use crate::target::TargetAddr;
use crate::tunnel;

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
        let origin = UpstreamTarget {
            upstream: Arc::clone(upstream.name_arc()),
            target: picked.value().clone(),
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some((client_side, guard)) = self.upgrade.take() else {
                tracing::warn!(
                    request_id = %self.id(),
                    upstream = %upstream.name(),
                    target = %picked.value(),
                    "upstream switched protocols without being asked"
                );
                return text_response(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
            };
            tunnel::spawn(
                client_side,
                hyper::upgrade::on(&mut res),
                in_flight,
                guard,
                self.request_id.clone(),
            );
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
                    request_id = %self.id(),
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
        let health = (Arc::clone(upstream), picked);
        let body = UpstreamBody::new(body, in_flight, health, back, self.request_id.take());
        Response::from_parts(head, TextOr::inner(body))
    }
}
