//! The adaptive timeout service.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use seawall_core::{BoxError, Classify, Listener};
use tokio::time::Instant;
use tower_service::Service;

use crate::deadline::CarriedDeadline;
use crate::event::TimeoutEvent;
use crate::timeout::future::ResponseFuture;
use crate::timeout::layer::TimeoutShared;

/// A service timed out by an [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer).
pub struct AdaptiveTimeout<S, C, D, L> {
    inner: S,
    shared: Arc<TimeoutShared<C, D, L>>,
}

impl<S, C, D, L> AdaptiveTimeout<S, C, D, L> {
    pub(crate) fn new(inner: S, shared: Arc<TimeoutShared<C, D, L>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, C, D, L> Clone for AdaptiveTimeout<S, C, D, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C, D, L> fmt::Debug for AdaptiveTimeout<S, C, D, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveTimeout")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, D, L> Service<Req> for AdaptiveTimeout<S, C, D, L>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    D: CarriedDeadline<Req>,
    L: Listener<TimeoutEvent>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, D, L>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // The clock is read here only for a request that carries a
        // deadline; otherwise when the call first returns `Pending`.
        let read = Cell::new(None);
        let clock = || {
            let now = Instant::now();
            read.set(Some(now));
            now
        };
        let remaining = self.shared.deadlines.remaining(&req, &clock);
        let threshold = self.shared.estimator.cached();
        let (timeout, carried) = match remaining {
            Some(left) if left < threshold => (left, true),
            _ => (threshold, false),
        };
        let fut = self.inner.call(req);
        ResponseFuture::new(
            fut,
            read.get(),
            timeout,
            threshold,
            carried,
            self.shared.clone(),
        )
    }
}
