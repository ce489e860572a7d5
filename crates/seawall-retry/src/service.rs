use std::fmt;
use std::marker::PhantomData;
use std::mem;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use seawall_core::{BoxError, Classify, Listener, SharedState};
use tokio::time::Instant;
use tower_service::Service;

use crate::event::RetryEvent;
use crate::future::ResponseFuture;
use crate::layer::Config;
use crate::replay::{ReadHint, Replay};

/// A service that retries failed requests; made by
/// [`JitterRetryLayer`](crate::JitterRetryLayer).
pub struct JitterRetry<S, P, C, L, R>
where
    P: 'static,
    C: 'static,
    L: 'static,
{
    inner: S,
    bank: Bank<P, C, L>,
    _rng: PhantomData<fn() -> R>,
}

/// First attempts pay into the retry budget in batches: one shared atomic
/// add per `BATCH` calls of a long-lived service instead of one per call.
/// What is not yet paid in is paid when the service is dropped, so the
/// budget only ever lags behind (fewer tokens, never more) by less than a
/// batch per live service.
const BATCH: u32 = 16;

struct Bank<P: 'static, C: 'static, L: 'static> {
    config: SharedState<Config<P, C, L>>,
    unbanked: u32,
}

impl<P, C, L> Bank<P, C, L> {
    #[inline]
    fn deposit(&mut self) {
        if let Some(budget) = &self.config.budget {
            self.unbanked += 1;
            if self.unbanked >= BATCH {
                budget.deposit_many(self.unbanked);
                self.unbanked = 0;
            }
        }
    }
}

impl<P, C, L> Drop for Bank<P, C, L> {
    fn drop(&mut self) {
        if let (Some(budget), n @ 1..) = (&self.config.budget, self.unbanked) {
            budget.deposit_many(n);
        }
    }
}

impl<S, P, C, L, R> JitterRetry<S, P, C, L, R> {
    pub(crate) fn new(inner: S, config: SharedState<Config<P, C, L>>) -> Self {
        Self {
            inner,
            bank: Bank {
                config,
                unbanked: 0,
            },
            _rng: PhantomData,
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

    /// Consumes the retry service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P, C, L, R> Clone for JitterRetry<S, P, C, L, R> {
    fn clone(&self) -> Self {
        // A clone starts with nothing unbanked, so no deposit is counted
        // twice.
        Self {
            inner: self.inner.clone(),
            bank: Bank {
                config: self.bank.config.clone(),
                unbanked: 0,
            },
            _rng: PhantomData,
        }
    }
}

impl<S: fmt::Debug, P, C, L, R> fmt::Debug for JitterRetry<S, P, C, L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterRetry")
            .field("inner", &self.inner)
            .field("config", &self.bank.config)
            .finish()
    }
}

impl<S, P, C, L, R, Req> Service<Req> for JitterRetry<S, P, C, L, R>
where
    P: Replay<Req> + ReadHint<S::Response>,
    S: Service<P::Request> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    L: Listener<RetryEvent>,
    R: RngCore + SeedableRng,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, P, C, L, R, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // The readied service goes into the future; the clone left behind
        // must be polled ready again before its own call.
        let clone = self.inner.clone();
        let service = mem::replace(&mut self.inner, clone);
        self.bank.deposit();
        let config = &self.bank.config;
        // The clock is read only when a deadline needs it.
        let deadline = config.deadline.and_then(deadline_from_now);
        let staged = config.replay.stage(req, config.max_attempts > 1);
        ResponseFuture::new(service, config, deadline, staged)
    }
}

/// The deadline of a request made now. Out of line, like every rarely
/// taken branch of `call`: a small `call` is one the compiler inlines and
/// builds the response future of in place.
#[inline(never)]
fn deadline_from_now(deadline: Duration) -> Option<Instant> {
    Instant::now().checked_add(deadline)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{JitterRetryLayer, RetryBudget};
    use std::convert::Infallible;
    use tower::{service_fn, Layer, ServiceExt};

    #[tokio::test]
    async fn deposits_are_banked_in_batches_and_flushed_on_drop() {
        let budget = RetryBudget::builder()
            .ratio(1.0)
            .min_per_sec(0)
            .max_tokens(1000)
            .build()
            .unwrap();
        let layer = JitterRetryLayer::builder()
            .budget(budget.clone())
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(|r: u8| async move { Ok::<_, Infallible>(r) }));
        for _ in 0..BATCH + 3 {
            svc.ready().await.unwrap().call(1).await.unwrap();
        }
        assert_eq!(budget.tokens(), BATCH, "one full batch paid in");
        let clone = svc.clone();
        drop(clone);
        assert_eq!(budget.tokens(), BATCH, "a clone carries nothing unbanked");
        drop(svc);
        assert_eq!(budget.tokens(), BATCH + 3, "the rest paid in on drop");
    }
}
