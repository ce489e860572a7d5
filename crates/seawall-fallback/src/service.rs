//! The [`Fallback`] service.

use std::fmt;
use std::task::{Context, Poll};

use seawall_core::{BoxError, Classify, Listener, SharedState};
use tower_service::Service;

use crate::chain::Shared;
use crate::event::FallbackEvent;
use crate::future::ResponseFuture;
use crate::mode::{Capture, Mode, Respond};

/// Replaces failed calls of the inner service with degraded answers; built
/// by [`FallbackLayer`](crate::FallbackLayer).
pub struct Fallback<S, M: Mode, C: 'static, L: 'static> {
    inner: S,
    shared: SharedState<Shared<M, C, L>>,
}

impl<S, M: Mode, C, L> Fallback<S, M, C, L> {
    pub(crate) fn new(inner: S, shared: SharedState<Shared<M, C, L>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &SharedState<Shared<M, C, L>> {
        &self.shared
    }
}

impl<S: Clone, M: Mode, C, L> Clone for Fallback<S, M, C, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, M: Mode, C, L> fmt::Debug for Fallback<S, M, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("name", &self.shared.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, M, C, L> Service<Req> for Fallback<S, M, C, L>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    M: Capture<Req> + Respond<S::Response>,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
    L: Listener<FallbackEvent>,
{
    type Response = <M as Respond<S::Response>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Self::Response, M, C, L>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // Captured before the inner service consumes the request, and only
        // when a tier will read it, so a value-only fallback costs nothing.
        let shared = self.shared.clone();
        if shared.needs_info {
            let info = shared.mode.capture(&req);
            ResponseFuture::new(self.inner.call(req), shared, Some(info))
        } else {
            ResponseFuture::new(self.inner.call(req), shared, None)
        }
    }
}
