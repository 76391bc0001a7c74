//! Plain-text answers: [`text_response`] and [`TextOr`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

/// A `text/plain` response with `status` and `text`: every answer the gateway makes itself
/// (`404`, `403`, `502`...) is made here.
pub fn text_response<T: From<Bytes>>(status: StatusCode, text: &'static str) -> Response<T> {
    let mut res = Response::new(T::from(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pin_project! {
    /// Either an inner body, passed on as it is, or a short text answered instead: the
    /// response body of a layer (or a proxy) that sometimes answers by itself. Neither side
    /// is boxed.
    #[project = TextOrProj]
    #[derive(Debug)]
    // pin-project-lite takes no doc comments on enum fields; the variants say what they hold.
    #[allow(missing_docs)]
    pub enum TextOr<B> {
        /// The inner service's body, in `body`.
        Inner { #[pin] body: B },
        /// A short answer, in `text` until sent.
        Text { text: Option<Bytes> },
    }
}

impl<B> TextOr<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        TextOr::Inner { body }
    }
}

impl<B> From<Bytes> for TextOr<B> {
    fn from(text: Bytes) -> Self {
        TextOr::Text { text: Some(text) }
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for TextOr<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            TextOrProj::Inner { body } => body.poll_frame(cx),
            TextOrProj::Text { text } => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TextOr::Inner { body } => body.is_end_stream(),
            TextOr::Text { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TextOr::Inner { body } => body.size_hint(),
            TextOr::Text { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
