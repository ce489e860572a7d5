//! The circuit breaker service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use seawall_core::{BoxError, Classify, ErrorsFail};
use tower_service::Service;

use crate::future::{Permit, ResponseFuture};
use crate::handle::{Handle, Shared};

/// Stops calling a failing service and fails fast instead; see the
/// [crate documentation](crate).
///
/// Built by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer); every
/// service made by one layer (and every clone) shares one breaker.
pub struct CircuitBreaker<S, C = ErrorsFail> {
    inner: S,
    shared: Arc<Shared<C>>,
    admission: Admission<C>,
}

/// The decision `poll_ready` made for the next `call`.
///
/// A rejection keeps only its hint (the `CircuitOpen` is built when the
/// future is polled), so the enum stays small: it is written and moved on
/// every call.
enum Admission<C> {
    Undecided,
    Admitted(Permit<C>),
    Rejected(Option<Duration>),
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C>>) -> Self {
        Self {
            inner,
            shared,
            admission: Admission::Undecided,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C: Send + Sync + 'static> CircuitBreaker<S, C> {
    /// A handle on the breaker this service shares.
    pub fn handle(&self) -> Handle {
        Handle::new(self.shared.clone())
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared.breaker)
            .finish_non_exhaustive()
    }
}

// A clone must not carry the admission (and a probe slot) of the original.
impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            admission: Admission::Undecided,
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    // Inlined for the same reason as `Breaker::admit`: the permit is built
    // in place instead of being returned through memory.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn decide(&self) -> Admission<C> {
        match self.shared.breaker.admit() {
            Ok(ticket) => Admission::Admitted(Permit::new(self.shared.clone(), ticket)),
            Err(open) => Admission::Rejected(open.retry_after_hint()),
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Decide once per call, but decide again if the breaker changed state
        // while this service waited for the inner one.
        let decided = match &self.admission {
            Admission::Admitted(permit) => !permit.is_stale(),
            Admission::Undecided | Admission::Rejected(_) => false,
        };
        if !decided {
            self.admission = self.decide();
        }
        if let Admission::Rejected(_) = self.admission {
            // A call that will be rejected neither waits for nor touches the
            // inner service.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let admission = match mem::replace(&mut self.admission, Admission::Undecided) {
            // `call` without `poll_ready` breaks the `Service` contract; still
            // decide rather than panic.
            Admission::Undecided => self.decide(),
            decided => decided,
        };
        match admission {
            Admission::Admitted(permit) => ResponseFuture::called(self.inner.call(req), permit),
            Admission::Rejected(retry_after) => ResponseFuture::rejected(retry_after),
            // `decide` never answers `Undecided`; refusing is the safe reading.
            Admission::Undecided => ResponseFuture::rejected(None),
        }
    }
}
