//! [`Front`]: what every request meets on arrival, whichever server read it (hyper, or the
//! inline HTTP/1.1 server): its hop's connection options dropped, the client's address and
//! TLS facts attached, a plain request redirected to HTTPS where asked, HSTS on the way out.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use httpkit::Body;
use proxy::{ClientAddr, ClientTls, TunnelGuard};
use router::MuxFuture;

use super::conn::{ConnState, Waiting};
use super::{Limits, ServedBody};
use crate::reload::LiveService;

/// An empty `Extensions` with room for what the layers of a proxied request put there (the
/// client's address, request id, trace context, path parameters, forwarding policy: five, and
/// room for two more): each request's starts as a clone of it, one allocation of the right
/// size, where inserting one by one into an empty one allocates at the first and moves them
/// all to a larger table at the fourth.
static ROOMY_EXTENSIONS: std::sync::LazyLock<http::Extensions> = std::sync::LazyLock::new(|| {
    /// Distinct types to take the room with, one per slot.
    #[derive(Clone)]
    struct Slot<const N: usize>;
    let mut extensions = http::Extensions::new();
    extensions.insert(Slot::<0>);
    extensions.insert(Slot::<1>);
    extensions.insert(Slot::<2>);
    extensions.insert(Slot::<3>);
    extensions.insert(Slot::<4>);
    extensions.insert(Slot::<5>);
    extensions.insert(Slot::<6>);
    // Emptied, its table keeps its size; so does every clone.
    extensions.clear();
    extensions
});

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

    /// What every connection of the listener is served with.
    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The connection's state.
    pub(super) fn state(&self) -> &ConnState {
        &self.state
    }

    /// The connection's state, shared.
    pub(super) fn shared_state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// The response to `req`, which counts as waiting for its head until it is made.
    pub(super) fn call(&self, mut req: Request<ServedBody>) -> Answer {
        self.state.first_request(req.version());
        // Connection options belong to this hop: gone on receipt, before any middleware looks
        // (RFC 9110 §7.6.1), so that an auth gate sees what the upstream will see.
        httpkit::hop_by_hop::consume_connection_options(req.headers_mut());
        let mut extensions = ROOMY_EXTENSIONS.clone();
        extensions.extend(std::mem::take(req.extensions_mut()));
        *req.extensions_mut() = extensions;
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
        if let (None, Some(port)) = (&self.tls, self.limits.redirect_to_https) {
            return Answer::Made {
                res: Some(https_redirect(&req, port)),
            };
        }
        Answer::Routed {
            waiting: Some(Waiting::new(&self.state)),
            hsts: self.tls.as_ref().and_then(|_| self.limits.hsts.clone()),
            call: self.service.call_ref(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response to a request [`Front::call`] took: made on arrival (a redirect to
    /// HTTPS), or the routes' (with HSTS added). Written by hand rather than as an `async`
    /// block, which would keep the request twice in its state (as taken, and moved into the
    /// call) and be moved whole once more on its first poll.
    #[project = AnswerProj]
    pub(super) enum Answer {
        /// Made on arrival; `None` once given.
        Made { res: Option<Response<Body>> },
        /// The routes' answer, on its way; the request counts as waiting until it comes.
        Routed {
            #[pin]
            call: MuxFuture,
            waiting: Option<Waiting>,
            hsts: Option<http::HeaderValue>,
        },
    }
}

impl Future for Answer {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        match self.project() {
            AnswerProj::Made { res } => Poll::Ready(res.take().unwrap_or_else(|| {
                // Only a future polled after it ended gets here.
                httpkit::text_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error\n",
                )
            })),
            AnswerProj::Routed {
                call,
                waiting,
                hsts,
            } => {
                let mut res = ready!(call.poll(cx)).unwrap_or_else(|never| match never {});
                drop(waiting.take());
                if let Some(value) = hsts.take() {
                    res.headers_mut()
                        .entry(http::header::STRICT_TRANSPORT_SECURITY)
                        .or_insert(value);
                }
                Poll::Ready(res)
            }
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
