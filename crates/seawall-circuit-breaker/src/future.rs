//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify, SharedState};

use crate::breaker::Ticket;
use crate::error::CircuitOpen;
use crate::handle::Shared;

/// The right to make one call, from admission until its outcome is
/// recorded. Dropped unrecorded (a cancelled call), it gives a probe slot
/// back so a cancelled probe never holds the breaker half-open.
pub(crate) struct Permit<C: 'static> {
    shared: SharedState<Shared<C>>,
    ticket: Ticket,
    recorded: bool,
}

impl<C> Permit<C> {
    pub(crate) fn new(shared: SharedState<Shared<C>>, ticket: Ticket) -> Self {
        Self {
            shared,
            ticket,
            recorded: false,
        }
    }

    #[inline]
    fn finish<Res, Err>(&mut self, result: Result<&Res, &Err>)
    where
        C: Classify<Res, Err>,
    {
        if self.recorded {
            return;
        }
        // Classify first: if the classifier panics, the permit is dropped
        // unrecorded and a probe gives its slot back.
        let outcome = self.shared.classifier.classify(result);
        self.recorded = true;
        self.shared.breaker.record(&self.ticket, outcome);
    }
}

impl<C> Drop for Permit<C> {
    fn drop(&mut self) {
        if !self.recorded && self.ticket.is_probe() {
            self.shared.breaker.abandon(self.ticket.word());
        }
    }
}

impl<C> fmt::Debug for Permit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker) and
    /// [`KeyedCircuitBreaker`](crate::KeyedCircuitBreaker): the inner call,
    /// whose outcome it records, or a ready [`CircuitOpen`] error.
    pub struct ResponseFuture<F, C>
    where
        C: 'static,
    {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C>
    where
        C: 'static,
    {
        Called {
            #[pin]
            future: F,
            permit: Permit<C>,
        },
        Rejected {
            retry_after: Option<Duration>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, permit: Permit<C>) -> Self {
        Self {
            kind: Kind::Called { future, permit },
        }
    }

    pub(crate) fn rejected(retry_after: Option<Duration>) -> Self {
        Self {
            kind: Kind::Rejected { retry_after },
        }
    }

    /// For a called future, whether its permit holds leaked state.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn holds_static_state(&self) -> Option<bool> {
        match &self.kind {
            Kind::Called { permit, .. } => Some(permit.shared.is_static()),
            Kind::Rejected { .. } => None,
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { permit, .. } => f
                .debug_struct("ResponseFuture")
                .field("permit", permit)
                .finish_non_exhaustive(),
            Kind::Rejected { retry_after } => f
                .debug_struct("ResponseFuture")
                .field("rejected", &CircuitOpen::new(*retry_after))
                .finish(),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                permit.finish(result.as_ref());
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { retry_after } => {
                Poll::Ready(Err(Box::new(CircuitOpen::new(*retry_after))))
            }
        }
    }
}
