//! The response body of the layers that can answer by themselves.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header::CONTENT_TYPE};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or a short text the layer answered with itself
    /// (a `403`, `500` or `503`).
    pub struct Body<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Short { text: Option<Bytes> },
    }
}

impl<B> Body<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Body {
            kind: Kind::Inner { body },
        }
    }

    /// A short body of static text.
    pub fn short(text: &'static str) -> Self {
        Body {
            kind: Kind::Short {
                text: Some(Bytes::from_static(text.as_bytes())),
            },
        }
    }
}

/// A plain-text response the layer sends itself.
pub(crate) fn short_response<B>(status: StatusCode, text: &'static str) -> Response<Body<B>> {
    let mut res = Response::new(Body::short(text));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Body<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Short { text } => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Short { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Short { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
