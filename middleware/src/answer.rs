//! The response future of a layer that either answers by itself (a refusal) or passes the
//! request on: [`AnswerOr`], with neither side boxed.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Response, StatusCode};
use httpkit::{TextOr, text_response};
use pin_project_lite::pin_project;

pin_project! {
    /// The layer's own short answer, or the inner service's response with its body passed on
    /// in [`TextOr`].
    #[project = AnswerOrProj]
    // pin-project-lite takes no doc comments on enum fields; the variants say what they hold.
    #[allow(missing_docs)]
    pub enum AnswerOr<F, ResBody, E> {
        /// Passed on: the inner service's future, in `inner`.
        Pass { #[pin] inner: F },
        /// Answered by the layer, in `answer`.
        Answer { answer: Ready<Result<Response<TextOr<ResBody>>, E>> },
    }
}

/// Passes the request on: `inner` is the inner service's future.
pub(crate) fn pass<F, ResBody, E>(inner: F) -> AnswerOr<F, ResBody, E> {
    AnswerOr::Pass { inner }
}

/// Answers with a short text.
pub(crate) fn answer<F, ResBody, E>(
    status: StatusCode,
    text: &'static str,
) -> AnswerOr<F, ResBody, E> {
    answer_with(text_response(status, text))
}

/// Answers with `res`.
pub(crate) fn answer_with<F, ResBody, E>(
    res: Response<TextOr<ResBody>>,
) -> AnswerOr<F, ResBody, E> {
    AnswerOr::Answer {
        answer: ready(Ok(res)),
    }
}

impl<F, ResBody, E> Future for AnswerOr<F, ResBody, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TextOr<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerOrProj::Pass { inner } => inner
                .poll(cx)
                .map(|out| out.map(|res| res.map(TextOr::inner))),
            AnswerOrProj::Answer { answer } => Pin::new(answer).poll(cx),
        }
    }
}
