use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use seawall_core::BoxError;

use crate::body::ResponseBody;

type Running<B> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`](crate::Idempotency).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        // A request the layer does not handle: no allocation, no store.
        Passthrough { #[pin] fut: F },
        // The layer's own answer, decided in `call`.
        Ready { res: Option<Response<ResponseBody<B>>> },
        // Claim, handler and completion; boxed once per keyed request,
        // which also does store I/O.
        Running { fut: Running<B> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn passthrough(fut: F) -> Self {
        Self {
            state: State::Passthrough { fut },
        }
    }

    pub(crate) fn ready(res: Response<ResponseBody<B>>) -> Self {
        Self {
            state: State::Ready { res: Some(res) },
        }
    }

    pub(crate) fn running(fut: Running<B>) -> Self {
        Self {
            state: State::Running { fut },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "passthrough",
            State::Ready { .. } => "ready",
            State::Running { .. } => "running",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { fut } => {
                let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                Poll::Ready(Ok(res.map(ResponseBody::inner)))
            }
            StateProj::Ready { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Ready(Err("response future polled after completion".into())),
            },
            StateProj::Running { fut } => fut.as_mut().poll(cx),
        }
    }
}
