//! [`BodyTap`]: a copy of a request's body as it goes upstream, for a mirror. The copy shares
//! the body's buffers (no bytes are copied), is bounded by a limit, and is abandoned when
//! the body goes over it or never finishes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

struct Collecting {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    done: oneshot::Sender<Bytes>,
}

/// The sending side: put in a request's extensions, it is taken by the proxy that forwards
/// the request, which hands it every data frame it sends upstream.
#[derive(Clone)]
pub struct BodyTap(Arc<Mutex<Option<Collecting>>>);

impl std::fmt::Debug for BodyTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyTap")
    }
}

/// The receiving side: resolves to the whole body once the request's body was sent upstream
/// in full, or to `None` when it went over the limit, failed or was never sent.
#[derive(Debug)]
pub struct TapReceiver(oneshot::Receiver<Bytes>);

impl BodyTap {
    /// A tap keeping up to `limit` bytes.
    pub fn new(limit: usize) -> (BodyTap, TapReceiver) {
        let (done, rx) = oneshot::channel();
        let tap = BodyTap(Arc::new(Mutex::new(Some(Collecting {
            chunks: Vec::new(),
            len: 0,
            limit,
            done,
        }))));
        (tap, TapReceiver(rx))
    }

    fn with(&self, f: impl FnOnce(&mut Option<Collecting>)) {
        // Never contended: one body polls it. A poisoned lock only means a panic elsewhere
        // mid-frame; the copy is then abandoned.
        match self.0.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }

    /// A data frame went upstream.
    pub(crate) fn data(&self, bytes: &Bytes) {
        self.with(|slot| {
            let over = slot.as_ref().is_some_and(|c| c.len + bytes.len() > c.limit);
            if over {
                *slot = None;
            } else if let Some(c) = slot {
                c.len += bytes.len();
                c.chunks.push(bytes.clone());
            }
        });
    }

    /// The body ended: the copy is complete.
    pub(crate) fn end(&self) {
        self.with(|slot| {
            if let Some(c) = slot.take() {
                let body = match c.chunks.len() {
                    0 => Bytes::new(),
                    1 => c.chunks.into_iter().next().unwrap_or_default(),
                    _ => {
                        let mut all = BytesMut::with_capacity(c.len);
                        c.chunks.iter().for_each(|b| all.extend_from_slice(b));
                        all.freeze()
                    }
                };
                let _ = c.done.send(body);
            }
        });
    }

    /// The body failed: the copy is abandoned.
    pub(crate) fn abandon(&self) {
        self.with(|slot| *slot = None);
    }
}

impl Future for TapReceiver {
    type Output = Option<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}
