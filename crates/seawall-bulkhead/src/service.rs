use std::fmt;
use std::mem;
use std::task::{ready, Context, Poll};

use seawall_core::{BoxError, Classify, ErrorsFail, SharedState};
use tower_service::Service;

use crate::event::RejectReason;
use crate::future::{ResponseFuture, Sampling};
use crate::pool::{Acquire, Permit, QueueBound, Shared, Waiter};
use crate::priority::{NoPriority, Prioritize, Priority};

/// A service behind a bulkhead; built by [`BulkheadLayer`](crate::BulkheadLayer).
///
/// By default `poll_ready` readies the inner service and then reserves a
/// permit if one is free (lock-free); it never waits for the pool. A request
/// that finds the pool full waits inside its response future instead
/// (bounded by `max_queue` and `max_wait`). In back-pressure mode
/// `poll_ready` waits for the permit. Either way the permit moves into the
/// response future.
pub struct Bulkhead<S, P = NoPriority, C = ErrorsFail> {
    inner: S,
    shared: SharedState<Shared>,
    prioritize: P,
    classifier: C,
    backpressure: bool,
    /// The permit reserved by `poll_ready`: always in back-pressure mode,
    /// when one is free in the default mode.
    reserved: Option<Permit>,
    /// Back-pressure mode: the place in the queue `poll_ready` waits in.
    waiting: Option<Waiter>,
    /// Back-pressure mode: `poll_ready` gave up waiting; `call` refuses.
    refused: Option<RejectReason>,
}

impl<S, P, C> Bulkhead<S, P, C> {
    pub(crate) fn new(
        inner: S,
        shared: SharedState<Shared>,
        prioritize: P,
        classifier: C,
        backpressure: bool,
    ) -> Self {
        Self {
            inner,
            shared,
            prioritize,
            classifier,
            backpressure,
            reserved: None,
            waiting: None,
            refused: None,
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

    /// The inner service; a reserved permit is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, C> Bulkhead<S, P, C> {
    /// Starts the call holding `permit`.
    #[inline]
    fn start<Req>(
        &mut self,
        req: Req,
        permit: Permit,
        classifier: Option<C>,
    ) -> ResponseFuture<S::Future, S, Req, C>
    where
        S: Service<Req>,
    {
        // The clock (adaptive limits only) starts before the inner call, so
        // building the inner future counts, and the inner future is written
        // straight into place.
        let sampling = Sampling::start(classifier);
        ResponseFuture::called(self.inner.call(req), permit, sampling)
    }

    /// No permit reserved: take one, queue, or refuse. Out of line, so that
    /// the happy path's `call` stays small.
    #[cold]
    #[inline(never)]
    fn call_slow<Req>(
        &mut self,
        req: Req,
        class: Priority,
        priority: Option<Priority>,
        classifier: Option<C>,
    ) -> ResponseFuture<S::Future, S, Req, C>
    where
        S: Service<Req> + Clone,
    {
        match Shared::acquire(&self.shared, class, QueueBound::Configured) {
            Acquire::Acquired(permit) => self.start(req, permit, classifier),
            Acquire::Queued(waiter) => {
                // The ready service goes into the future to be called once a
                // permit arrives; a fresh clone stays behind for the next
                // `poll_ready` (see tower-service's notes on cloning).
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(waiter, ready, req, priority, classifier)
            }
            Acquire::Refused(reason) => {
                ResponseFuture::refused(self.shared.refuse(reason, priority))
            }
        }
    }
}

/// A clone shares the pool but holds no permit and no place in the queue:
/// capacity reserved by one handle must never be duplicated.
impl<S: Clone, P: Clone, C: Clone> Clone for Bulkhead<S, P, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.shared.clone(),
            self.prioritize.clone(),
            self.classifier.clone(),
            self.backpressure,
        )
    }
}

impl<S: fmt::Debug, P: fmt::Debug, C> fmt::Debug for Bulkhead<S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("pool", self.shared.name())
            .field("prioritize", &self.prioritize)
            .field("backpressure", &self.backpressure)
            .field("reserved", &self.reserved.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, P, C, Req> Service<Req> for Bulkhead<S, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Prioritize<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.backpressure {
            // Never waits for the pool: a request that finds it full waits
            // inside its response future. Once the inner service is ready, a
            // permit that happens to be free is reserved for the coming
            // `call`, as `ConcurrencyLimit` does; none is held while the
            // inner service is not ready.
            ready!(self.inner.poll_ready(cx)).map_err(Into::into)?;
            if self.reserved.is_none() {
                self.reserved = Shared::try_acquire(&self.shared, Priority::Critical);
            }
            return Poll::Ready(Ok(()));
        }
        if self.reserved.is_none() && self.refused.is_none() {
            let waiter = match self.waiting.as_mut() {
                Some(waiter) => waiter,
                None => {
                    match Shared::acquire(&self.shared, Priority::Critical, QueueBound::Unbounded) {
                        Acquire::Acquired(permit) => {
                            self.reserved = Some(permit);
                            return self.inner.poll_ready(cx).map_err(Into::into);
                        }
                        Acquire::Refused(reason) => {
                            self.refused = Some(reason);
                            return Poll::Ready(Ok(()));
                        }
                        Acquire::Queued(waiter) => self.waiting.insert(waiter),
                    }
                }
            };
            match waiter.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(permit)) => self.reserved = Some(permit),
                // Ready, so that `call` can refuse: an `Err` here would tell
                // tower the service is dead.
                Poll::Ready(Err(reason)) => self.refused = Some(reason),
            }
            self.waiting = None;
            if self.refused.is_some() {
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let priority = if P::ENABLED {
            Some(self.prioritize.priority(&req))
        } else {
            None
        };
        let class = priority.unwrap_or(Priority::Critical);
        let classifier = self.shared.is_adaptive().then(|| self.classifier.clone());

        if self.backpressure {
            if let Some(reason) = self.refused.take() {
                return ResponseFuture::refused(self.shared.refuse(reason, priority));
            }
            let permit = match self.reserved.take() {
                Some(permit) => permit,
                // `call` without a successful `poll_ready` breaks the
                // `Service` contract; refuse rather than exceed the limit.
                None => match Shared::try_acquire(&self.shared, Priority::Critical) {
                    Some(permit) => permit,
                    None => {
                        return ResponseFuture::refused(
                            self.shared.refuse(RejectReason::Full, priority),
                        )
                    }
                },
            };
            if class != Priority::Critical && self.shared.over_share(class, permit.before()) {
                drop(permit);
                return ResponseFuture::refused(self.shared.refuse(RejectReason::Shed, priority));
            }
            return self.start(req, permit, classifier);
        }

        if let Some(permit) = self.reserved.take() {
            if class == Priority::Critical || !self.shared.over_share(class, permit.before()) {
                return self.start(req, permit, classifier);
            }
            // Reserved before the class was known, and past its share: give
            // it back and queue (or be refused) like any request of the class.
            drop(permit);
        }
        self.call_slow(req, class, priority, classifier)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{ready, Ready};

    use tower_layer::Layer;

    use super::*;
    use crate::BulkheadLayer;

    #[derive(Clone)]
    struct Leaf;

    impl Service<u32> for Leaf {
        type Response = u32;
        type Error = Infallible;
        type Future = Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            ready(Ok(n))
        }
    }

    #[test]
    fn services_of_a_leaked_layer_hold_a_plain_reference() {
        let layer = BulkheadLayer::builder().build().unwrap();
        let earlier = layer.clone();
        let leaked = layer.leak();
        assert!(!earlier.layer(Leaf).shared.is_static());
        let svc = leaked.layer(Leaf);
        assert!(svc.shared.is_static());
        assert!(svc.clone().shared.is_static());
        assert!(leaked.clone().layer(Leaf).shared.is_static());
        assert!(BulkheadLayer::new(leaked.pool().clone())
            .layer(Leaf)
            .shared
            .is_static());
        assert!(leaked.leak().layer(Leaf).shared.is_static(), "idempotent");
    }
}
