//! [`Front`]: what every request meets on arrival, whichever server read it (hyper, or the
//! inline HTTP/1.1 server): its hop's connection options dropped, the client's address and
//! TLS facts attached, a plain request redirected to HTTPS where asked, HSTS on the way out.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use httpkit::Body;
use proxy::{ClientAddr, ClientTls, TunnelGuard};
use tower::ServiceExt;

use super::conn::{ConnState, Waiting};
use super::{Limits, ServedBody};
use crate::reload::LiveService;

/// What a TLS connection tells its requests.
pub(super) struct TlsInfo {
    /// The verified client certificate's subject, if one was presented.
    pub(super) subject: Option<http::HeaderValue>,
}

/// One connection's front door (see the [module docs](self)). It lives as long as its
/// connection, idle or not: what is the same for every connection of a listener is read
/// through the listener's shared [`Limits`], not copied here.
pub(super) struct Front {
    peer: SocketAddr,
    /// Boxed: a plain connection carries no room for it.
    tls: Option<Box<TlsInfo>>,
    service: LiveService<ServedBody>,
    limits: Arc<Limits>,
    state: Arc<ConnState>,
}

impl Front {
    pub(super) fn new(
        peer: SocketAddr,
        tls: Option<TlsInfo>,
        service: LiveService<ServedBody>,
        limits: &Arc<Limits>,
        state: &Arc<ConnState>,
    ) -> Front {
        Front {
            peer,
            tls: tls.map(Box::new),
            service,
            limits: Arc::clone(limits),
            state: Arc::clone(state),
        }
    }

    /// The connection's state.
    pub(super) fn state(&self) -> &ConnState {
        &self.state
    }

    /// The response to `req`, which counts as waiting for its head until it is made.
    pub(super) fn call(
        &self,
        mut req: Request<ServedBody>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static + use<> {
        self.state.first_request(req.version());
        // Connection options belong to this hop: gone on receipt, before any middleware looks
        // (RFC 9110 §7.6.1), so that an auth gate sees what the upstream will see.
        httpkit::hop_by_hop::consume_connection_options(req.headers_mut());
        req.extensions_mut().insert(ClientAddr(self.peer));
        if let Some(name) = &self.limits.client_subject_header {
            // Only the gateway says who the client's certificate names.
            req.headers_mut().remove(name);
            if let Some(subject) = self.tls.as_ref().and_then(|t| t.subject.clone()) {
                req.headers_mut().insert(name.clone(), subject);
            }
        }
        if self.tls.is_some() {
            req.extensions_mut().insert(ClientTls);
        }
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(TunnelGuard(
                Arc::clone(&self.state) as Arc<dyn Any + Send + Sync>
            ));
        }
        let redirect = match (&self.tls, self.limits.redirect_to_https) {
            (None, Some(port)) => Some(https_redirect(&req, port)),
            _ => None,
        };
        let hsts = self.limits.hsts.clone().filter(|_| self.tls.is_some());
        let service = self.service.clone();
        let waiting = Waiting::new(&self.state);
        async move {
            if let Some(answer) = redirect {
                drop(waiting);
                return answer;
            }
            let mut res = service
                .oneshot(req)
                .await
                .unwrap_or_else(|never| match never {});
            drop(waiting);
            if let Some(value) = hsts {
                res.headers_mut()
                    .entry(http::header::STRICT_TRANSPORT_SECURITY)
                    .or_insert(value);
            }
            res
        }
    }
}

/// `308` to the request's URL over HTTPS on `port` (its host without the port it came on);
/// `400` when the request names no usable host.
fn https_redirect<B>(req: &Request<B>, port: u16) -> Response<Body> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            let a = h.parse::<http::uri::Authority>().ok()?;
            Some(a.host().to_owned())
        })
        .filter(|h| !h.is_empty() && !h.contains(['@', '/', '\\']));
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = host.and_then(|host| {
        let at = if port == 443 {
            host
        } else {
            format!("{host}:{port}")
        };
        http::HeaderValue::from_str(&format!("https://{at}{path}")).ok()
    });
    let Some(location) = location else {
        return httpkit::text_response(http::StatusCode::BAD_REQUEST, "Bad Request: Host\n");
    };
    let mut res = Response::new(Body::empty());
    *res.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    res.headers_mut().insert(http::header::LOCATION, location);
    res
}
