//! The response future.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use seawall_core::BoxError;
use tokio::time::Sleep;

pin_project! {
    /// Response future of [`Chaos`](crate::Chaos): the inner call, after
    /// any injected latency; or the injected error, answer or hang.
    pub struct ResponseFuture<F, T> {
        // The inner call, when it was made. A plain field, so the inner
        // future is built in place when no fault fires.
        #[pin]
        inner: Option<F>,
        // Only when a fault fired: boxed, so only those calls pay for the
        // timer and the outcome.
        injected: Option<Pin<Box<Injected<T>>>>,
    }
}

pin_project! {
    struct Injected<T> {
        #[pin]
        sleep: Option<Sleep>,
        then: Then<T>,
    }
}

/// What happens after the injected latency.
pub(crate) enum Then<T> {
    /// The inner call proceeds.
    Call,
    /// The call fails.
    Fail(BoxError),
    /// The call is answered.
    Answer(T),
    /// The call never completes.
    Hang,
    /// The failure or answer was returned.
    Done,
}

impl<F, T> ResponseFuture<F, T> {
    #[inline]
    pub(crate) fn passthrough(inner: F) -> Self {
        Self {
            inner: Some(inner),
            injected: None,
        }
    }

    /// A call that gets a fault: `inner` (if the call was made) runs after
    /// `delay`, unless `then` ends it.
    pub(crate) fn injected(inner: Option<F>, delay: Duration, then: Then<T>) -> Self {
        let sleep = (!delay.is_zero()).then(|| tokio::time::sleep(delay));
        Self {
            inner,
            injected: Some(Box::pin(Injected { sleep, then })),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(injected) = this.injected.as_mut() {
            let mut injected = injected.as_mut().project();
            if let Some(sleep) = injected.sleep.as_mut().as_pin_mut() {
                ready!(sleep.poll(cx));
                injected.sleep.set(None);
            }
            match mem::replace(injected.then, Then::Done) {
                Then::Call => *injected.then = Then::Call,
                Then::Fail(err) => return Poll::Ready(Err(err)),
                Then::Answer(res) => return Poll::Ready(Ok(res)),
                // Nothing will wake a hanging call: whatever drops it
                // (a timeout, a closed connection) has its own waker.
                Then::Hang => {
                    *injected.then = Then::Hang;
                    return Poll::Pending;
                }
                Then::Done => return Poll::Pending,
            }
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => Poll::Pending,
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.injected.as_deref().map(|i| &i.then) {
            None | Some(Then::Call) => "call",
            Some(Then::Fail(_)) => "fail",
            Some(Then::Answer(_)) => "answer",
            Some(Then::Hang) => "hang",
            Some(Then::Done) => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field(
                "delayed",
                &self.injected.as_deref().is_some_and(|i| i.sleep.is_some()),
            )
            .finish_non_exhaustive()
    }
}
