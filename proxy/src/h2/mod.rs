//! HTTP/2 to upstreams, on the `h2` crate: multiplexed connections per target, shared by the
//! requests in flight ([`conn`]), one request's send with its body piped under flow control
//! ([`send`]), and the response body as the proxy streams it ([`body`]).
//!
//! A connection carries as many streams as the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! allows; the pool opens another when every connection is full. A connection that received
//! a GOAWAY takes no new stream; its streams in flight finish. A stream the upstream refused
//! unprocessed (above the GOAWAY's last stream id, or reset with `REFUSED_STREAM`) goes again
//! on another connection, body included when it was small enough to keep a copy
//! ([`crate::outgoing`]). PINGs every `h2_ping_interval` find a connection that went silent.

pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod send;

pub(crate) use body::H2Body;
pub(crate) use conn::{H2Conn, Reserved, StreamSlot};
pub(crate) use send::{Failed, SendError, send};
