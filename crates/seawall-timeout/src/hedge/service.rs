//! The hedge service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use seawall_core::{BoxError, Classify, Listener};
use seawall_retry::{Replay, Staged};
use tower_service::Service;

use crate::event::HedgeEvent;
use crate::hedge::future::{ReqOf, ResponseFuture};
use crate::hedge::layer::HedgeShared;
use crate::hedge::policy::{HedgePolicy, HedgeResponse};

/// A service whose slow calls are hedged by a [`HedgeLayer`](crate::HedgeLayer).
pub struct Hedge<S, P, C, L> {
    inner: S,
    shared: Arc<HedgeShared<P, C, L>>,
}

impl<S, P, C, L> Hedge<S, P, C, L> {
    pub(crate) fn new(inner: S, shared: Arc<HedgeShared<P, C, L>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, P, C, L> Clone for Hedge<S, P, C, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P, C, L> fmt::Debug for Hedge<S, P, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, C, L> Service<Req> for Hedge<S, P, C, L>
where
    P: HedgePolicy<Req> + HedgeResponse<S::Response>,
    S: Service<ReqOf<P, Req>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    L: Listener<HedgeEvent>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P, C, L>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (replay, hedgeable) = self.shared.policy.replay_for(&req);
        if hedgeable {
            self.shared.budget.deposit();
        }
        match replay.stage(req, hedgeable) {
            Staged::Ready {
                request,
                copy: Some(copy),
            } if hedgeable => {
                let primary = self.inner.call(request);
                // The clone is readied in the response future before a
                // hedge is sent through it.
                let svc = self.inner.clone();
                ResponseFuture::racing(primary, svc, replay, copy, self.shared.clone())
            }
            Staged::Ready { request, .. } => ResponseFuture::direct(self.inner.call(request)),
            Staged::Pending(pending) => {
                // The body must be read first: the ready service goes with
                // the future, a fresh clone stays (tower-service's advice).
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::staging(pending, svc, replay, hedgeable, self.shared.clone())
            }
        }
    }
}
