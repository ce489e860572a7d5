//! The response future.

use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use seawall_core::{rejection, BoxError, Classify, Outcome, SharedState};

use crate::breaker::Ticket;
use crate::error::{CircuitOpen, KeyedRegistryFull};
use crate::handle::Shared;
use crate::keyed::InFlight;

/// The right to make one call, from admission until its outcome is
/// recorded. Dropped unrecorded (a cancelled call), it gives a probe slot
/// back so a cancelled probe never holds the breaker half-open.
pub(crate) struct Permit<C: 'static> {
    shared: SharedState<Shared<C>>,
    ticket: Ticket,
    recorded: bool,
    /// Keyed mode: the call counted in flight on its key, so the registry
    /// keeps the key's breaker until the outcome is recorded (dropped after
    /// `Drop::drop`, hence after any recording).
    in_flight: Option<InFlight>,
}

impl<C> Permit<C> {
    pub(crate) fn new(shared: SharedState<Shared<C>>, ticket: Ticket) -> Self {
        Self {
            shared,
            ticket,
            recorded: false,
            in_flight: None,
        }
    }

    /// Holds a keyed call's in-flight guard until the permit is dropped.
    pub(crate) fn in_flight(mut self, call: InFlight) -> Self {
        self.in_flight = Some(call);
        self
    }

    #[inline]
    fn succeeded<Res, Err>(&mut self, response: &Res)
    where
        C: Classify<Res, Err>,
    {
        if self.recorded {
            return;
        }
        // Classify first: if the classifier panics, the permit is dropped
        // unrecorded and a probe gives its slot back.
        let outcome = self.shared.classifier.classify(Ok(response));
        self.record(outcome);
    }

    /// The classifier's verdict on an error, if the permit still has to
    /// record one. If the classifier panics, the permit is dropped
    /// unrecorded and a probe gives its slot back.
    fn classify_error<Res, Err>(&self, err: &Err) -> Option<Outcome>
    where
        C: Classify<Res, Err>,
    {
        (!self.recorded).then(|| self.shared.classifier.classify(Err(err)))
    }

    /// Records an error. A seawall refusal raised inside the breaker (a
    /// full bulkhead, a rate limit, an inner breaker) says nothing about the
    /// dependency, which it never reached: it is ignored unless the layer
    /// was built with `count_inner_rejections(true)`, which makes it a
    /// failure whatever the classifier said. A rejection that reports a
    /// failure below the layer (`Rejected::failure`, e.g. the idempotency
    /// layer's `HandlerPanicked`) is not a refusal: the classifier decides.
    fn failed(&mut self, classified: Option<Outcome>, boxed: &BoxError) {
        let Some(classified) = classified else {
            return;
        };
        let outcome = if rejection::find_refusal(&**boxed).is_some() {
            if self.shared.breaker.counts_inner_rejections() {
                Outcome::Failure
            } else {
                Outcome::Ignore
            }
        } else {
            classified
        };
        self.record(outcome);
    }

    #[inline]
    fn record(&mut self, outcome: Outcome) {
        self.recorded = true;
        self.shared.breaker.record(&self.ticket, outcome);
    }

    /// The inner call panicked: the dependency failed.
    #[cold]
    #[inline(never)]
    fn panicked(&mut self) {
        if !self.recorded {
            self.record(Outcome::Failure);
        }
    }
}

impl<C> Drop for Permit<C> {
    fn drop(&mut self) {
        if !self.recorded && self.ticket.is_probe() {
            self.shared.breaker.abandon_probe(&self.ticket);
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
        Refused {
            full: KeyedRegistryFull,
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

    pub(crate) fn refused(full: KeyedRegistryFull) -> Self {
        Self {
            kind: Kind::Refused { full },
        }
    }

    /// For a called future, whether its permit holds leaked state.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn holds_static_state(&self) -> Option<bool> {
        match &self.kind {
            Kind::Called { permit, .. } => Some(permit.shared.is_static()),
            Kind::Rejected { .. } | Kind::Refused { .. } => None,
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
            Kind::Refused { full } => f
                .debug_struct("ResponseFuture")
                .field("refused", full)
                .finish(),
        }
    }
}

#[cold]
#[inline(never)]
fn fail<C, T, E>(permit: &mut Permit<C>, err: E) -> BoxError
where
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    // `Into<BoxError>` consumes the error, so the classifier sees it first;
    // the rejection check then looks at the boxed form, which is returned
    // anyway.
    let classified = permit.classify_error::<T, E>(&err);
    let boxed: BoxError = err.into();
    permit.failed(classified, &boxed);
    boxed
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
                // A panicking inner call is a failure of the dependency:
                // record it, then let the panic go on.
                let polled = match panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(polled) => polled,
                    Err(payload) => {
                        permit.panicked();
                        panic::resume_unwind(payload)
                    }
                };
                match ready!(polled) {
                    Ok(response) => {
                        permit.succeeded::<T, E>(&response);
                        Poll::Ready(Ok(response))
                    }
                    Err(err) => Poll::Ready(Err(fail(permit, err))),
                }
            }
            KindProj::Rejected { retry_after } => {
                Poll::Ready(Err(Box::new(CircuitOpen::new(*retry_after))))
            }
            KindProj::Refused { full } => Poll::Ready(Err(Box::new(*full))),
        }
    }
}
