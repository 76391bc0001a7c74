//! The streaming bodies of the fault modes: a filler of `n` bytes, a reset after the head,
//! server-sent events.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;

use crate::Body;

/// `n` bytes of `x`, made 16 KiB at a time.
pub(crate) struct Filler(pub(crate) u64);

const CHUNK: &[u8] = &[b'x'; 16 * 1024];

impl http_body::Body for Filler {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(CHUNK.len() as u64) as usize;
        self.0 -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0)
    }
}

/// Lets the head go out, then fails: the server aborts the connection.
pub(crate) struct Reset(pub(crate) bool);

impl http_body::Body for Reset {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.0 {
            self.0 = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset=1: aborting after the head",
        ))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        // Promise a body, so the client knows it was cut.
        http_body::SizeHint::with_exact(1024)
    }
}

/// `n` server-sent events, `interval` apart (the first at once).
pub(crate) fn events(n: u64, interval: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if tx
                .send(Bytes::from(format!("id: {i}\ndata: event {i}\n\n")))
                .await
                .is_err()
            {
                return; // the client went away
            }
        }
    });
    BodyExt::boxed(Channel(rx))
}

struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}
