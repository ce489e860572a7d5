//! The response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderValue;
use pin_project_lite::pin_project;
use seawall_core::BoxError;

use crate::error::RateLimited;
use crate::headers::ResponseHeaders;

type SlowFuture<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<F, Res, H> {
        #[pin]
        state: State<F, Res>,
        _headers: PhantomData<fn() -> H>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Res> {
        // Admitted at once: the inner call, and the fields to write.
        Called {
            #[pin]
            fut: F,
            fields: Option<(HeaderValue, HeaderValue)>,
        },
        // Refused at once.
        Rejected {
            err: Option<RateLimited>,
        },
        // Waiting for its turn or for the shared backend: boxed, off the
        // hot path.
        Slow {
            fut: SlowFuture<Res>,
        },
    }
}

impl<F, Res, H> ResponseFuture<F, Res, H> {
    pub(crate) fn called(fut: F, fields: Option<(HeaderValue, HeaderValue)>) -> Self {
        Self {
            state: State::Called { fut, fields },
            _headers: PhantomData,
        }
    }

    pub(crate) fn rejected(err: RateLimited) -> Self {
        Self {
            state: State::Rejected { err: Some(err) },
            _headers: PhantomData,
        }
    }

    pub(crate) fn slow(fut: SlowFuture<Res>) -> Self {
        Self {
            state: State::Slow { fut },
            _headers: PhantomData,
        }
    }
}

impl<F, Res, H> fmt::Debug for ResponseFuture<F, Res, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Slow { .. } => "slow",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, E, Res, H> Future for ResponseFuture<F, Res, H>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    H: ResponseHeaders<Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, fields } => {
                let mut res = ready!(fut.poll(cx)).map_err(Into::into)?;
                if let Some((policy, state)) = fields.take() {
                    H::apply(&mut res, &policy, state);
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Rejected { err } => match err.take() {
                Some(err) => Poll::Ready(Err(Box::new(err))),
                None => panic!("ResponseFuture polled after completion"),
            },
            StateProj::Slow { fut } => fut.as_mut().poll(cx),
        }
    }
}
