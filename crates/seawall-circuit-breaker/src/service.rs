//! The circuit breaker service.

use std::fmt;
use std::mem;
use std::task::{Context, Poll};
use std::time::Duration;

use seawall_core::{BoxError, Classify, ErrorsFail, SharedState};
use tower_service::Service;

use crate::future::{Permit, ResponseFuture};
use crate::handle::{Handle, Shared};

/// Stops calling a failing service and fails fast instead; see the
/// [crate documentation](crate).
///
/// Built by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer); every
/// service made by one layer (and every clone) shares one breaker.
pub struct CircuitBreaker<S, C: 'static = ErrorsFail> {
    inner: S,
    slot: Slot<C>,
}

/// The shared breaker and the decision `poll_ready` made for the next
/// `call`.
///
/// An admission is kept as the bare state word it was made under, one
/// `u64` written by `poll_ready` and read back by `call`: moving a whole
/// permit through the service (written in pieces, read back as one wide
/// copy) cost a store-forwarding stall per call. The response future's
/// permit (with its reference on the breaker) is made in `call`.
struct Slot<C: 'static> {
    shared: SharedState<Shared<C>>,
    /// The state word of the admitted next call, or [`NONE`].
    admitted: u64,
    /// A probe's admission time (it holds a probe slot from then on).
    probe_at: u64,
    /// `poll_ready` refused the next call, with this hint.
    rejected: bool,
    retry_after: Option<Duration>,
}

/// No admission. Never a real state word: its tag (7) is not a state's.
const NONE: u64 = u64::MAX;

impl<C> Slot<C> {
    fn new(shared: SharedState<Shared<C>>) -> Self {
        Self {
            shared,
            admitted: NONE,
            probe_at: NONE,
            rejected: false,
            retry_after: None,
        }
    }

    /// Drops an admission that will not be used, giving a probe slot back.
    fn release(&mut self) {
        let word = mem::replace(&mut self.admitted, NONE);
        if word != NONE {
            self.shared.breaker.abandon(word, self.probe_at);
        }
    }
}

// An admitted probe that is never called (the service is dropped, or the
// admission went stale) gives its slot back.
impl<C> Drop for Slot<C> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: SharedState<Shared<C>>) -> Self {
        Self {
            inner,
            slot: Slot::new(shared),
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
        Handle::from_state(self.slot.shared.clone())
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.slot.shared.breaker)
            .finish_non_exhaustive()
    }
}

// A clone must not carry the admission (and a probe slot) of the original.
impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            slot: Slot::new(self.slot.shared.clone()),
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
        let slot = &mut self.slot;
        // Decide once per call, but decide again if the breaker changed state
        // while this service waited for the inner one.
        if slot.admitted != NONE {
            if !slot.shared.breaker.is_stale(slot.admitted) {
                return self.inner.poll_ready(cx).map_err(Into::into);
            }
            slot.release();
        }
        match slot.shared.breaker.admit() {
            Ok((word, probe_at)) => {
                slot.admitted = word;
                slot.probe_at = probe_at;
                slot.rejected = false;
                self.inner.poll_ready(cx).map_err(Into::into)
            }
            Err(open) => {
                slot.rejected = true;
                slot.retry_after = open.retry_after_hint();
                // A call that will be rejected neither waits for nor touches
                // the inner service.
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let slot = &mut self.slot;
        let mut word = mem::replace(&mut slot.admitted, NONE);
        let mut probe_at = slot.probe_at;
        if word == NONE {
            if mem::take(&mut slot.rejected) {
                return ResponseFuture::rejected(slot.retry_after);
            }
            // `call` without `poll_ready` breaks the `Service` contract;
            // still decide rather than panic.
            match slot.shared.breaker.admit() {
                Ok(admitted) => (word, probe_at) = admitted,
                Err(open) => return ResponseFuture::rejected(open.retry_after_hint()),
            }
        }
        let ticket = slot.shared.breaker.ticket(word, probe_at);
        let permit = Permit::new(slot.shared.clone(), ticket);
        ResponseFuture::called(self.inner.call(req), permit)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Waker;

    use tower::{service_fn, Layer};

    use super::*;
    use crate::{CircuitBreakerLayer, State};

    fn leaf(n: u32) -> std::future::Ready<Result<u32, BoxError>> {
        std::future::ready(Ok(n))
    }

    #[tokio::test(start_paused = true)]
    async fn services_and_futures_of_a_leaked_layer_hold_a_plain_reference() {
        let counted = CircuitBreakerLayer::new();
        let mut svc = counted.layer(service_fn(leaf));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = svc.call(1);
        assert!(!svc.slot.shared.is_static());
        assert_eq!(fut.holds_static_state(), Some(false));
        drop(fut);

        let earlier = counted.handle();
        let leaked = counted.leak();
        let mut svc = leaked.layer(service_fn(leaf)).clone();
        assert!(svc.slot.shared.is_static());
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = svc.call(2);
        assert_eq!(fut.holds_static_state(), Some(true));
        assert!(matches!(pin!(fut).poll(&mut cx), Poll::Ready(Ok(2))));

        // Handles from before the leak, from the leaked layer and from its
        // service all steer one breaker.
        svc.handle().force_open();
        assert_eq!(earlier.state(), State::ForcedOpen);
        assert_eq!(leaked.handle().state(), State::ForcedOpen);
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert_eq!(svc.call(3).holds_static_state(), None, "rejected");
    }
}
