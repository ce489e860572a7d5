//! The middleware.

use std::fmt;
use std::marker::PhantomData;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use seawall_core::event::Listener;
use seawall_core::BoxError;
use tower::ServiceExt;
use tower_service::Service;

use crate::error::RateLimited;
use crate::event::RateLimitEvent;
use crate::future::ResponseFuture;
use crate::headers::{ResponseHeaders, StateWriter};
use crate::layer::{Cost, Mode, Shared};
use crate::limit::{decide, Decide, Decision};

/// A rate-limited service. Made by [`RateLimitLayer`](crate::RateLimitLayer).
///
/// `poll_ready` is the inner service's: a refusal never makes the service
/// unready (axum and every tower stack stay usable); it is the response
/// future that fails with [`RateLimited`]. An admitted request is passed to
/// the inner service at once; in wait mode a limited request waits inside
/// its response future, on a clone of the inner service, and decides again
/// when its wait is over.
pub struct RateLimit<S, D, C, H, Li> {
    inner: S,
    shared: Arc<Shared<D, C, Li>>,
    _headers: PhantomData<fn() -> H>,
}

impl<S, D, C, H, Li> RateLimit<S, D, C, H, Li> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<D, C, Li>>) -> Self {
        Self {
            inner,
            shared,
            _headers: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, D, C, H, Li> Clone for RateLimit<S, D, C, H, Li> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            _headers: PhantomData,
        }
    }
}

impl<S: fmt::Debug, D, C, H, Li> fmt::Debug for RateLimit<S, D, C, H, Li> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// One decision's answer, with the `RateLimit` field value when wanted.
pub(crate) struct Answer {
    pub(crate) decision: Decision,
    pub(crate) state: Option<HeaderValue>,
    /// The decision could not be made by the shared backend.
    pub(crate) backend_failed: bool,
}

impl<D, C, Li> Shared<D, C, Li>
where
    Li: Listener<RateLimitEvent>,
{
    pub(crate) fn decide_local<Req>(
        &self,
        req: &Req,
        cost: u64,
        fields: bool,
        fallback: bool,
    ) -> Answer
    where
        D: Decide<Req>,
    {
        let now = self.now();
        if fields {
            let mut writer = StateWriter::default();
            let decision = decide(
                &self.limits,
                req,
                now,
                cost,
                fallback,
                Some(&mut |view| writer.push(view, now)),
            );
            Answer {
                decision,
                state: Some(writer.finish()),
                backend_failed: false,
            }
        } else {
            Answer {
                decision: decide(&self.limits, req, now, cost, fallback, None),
                state: None,
                backend_failed: false,
            }
        }
    }

    #[cfg(feature = "redis")]
    fn backend_failed<Req>(
        &self,
        policy: crate::fleet::Failed,
        req: &Req,
        cost: u64,
        fields: bool,
    ) -> Answer
    where
        D: Decide<Req>,
    {
        if Li::ENABLED {
            self.listener.on_event(&RateLimitEvent::BackendUnavailable {
                layer: self.name.clone(),
            });
        }
        let mut answer = match policy {
            crate::fleet::Failed::Open => Answer {
                decision: Decision::Admit,
                state: None,
                backend_failed: true,
            },
            crate::fleet::Failed::Closed => Answer {
                decision: Decision::Refuse {
                    wait: None,
                    limit: 0,
                },
                state: None,
                backend_failed: true,
            },
            crate::fleet::Failed::Local => self.decide_local(req, cost, fields, true),
        };
        answer.backend_failed = true;
        answer
    }

    /// The refusal. `backend_failed`: refused by the fail-closed policy, not
    /// by a limit (so no `retry_after` does not mean "never").
    pub(crate) fn limited(
        &self,
        wait: Option<u64>,
        limit: usize,
        state: Option<HeaderValue>,
        backend_failed: bool,
    ) -> RateLimited {
        let name = self
            .names
            .get(limit)
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        let retry_after = wait.map(Duration::from_nanos);
        if Li::ENABLED {
            self.listener.on_event(&RateLimitEvent::Limited {
                layer: self.name.clone(),
                limit: name.clone(),
                retry_after,
            });
        }
        let mut err = RateLimited::new(retry_after, name);
        if wait.is_none() && !backend_failed {
            err = err.never();
        }
        match (&self.policy, state) {
            (Some(policy), Some(state)) => err.with_fields(policy.clone(), state),
            _ => err,
        }
    }

    #[cfg(feature = "redis")]
    fn uses_backend(&self) -> bool {
        self.redis.is_some()
    }

    #[cfg(not(feature = "redis"))]
    #[allow(clippy::unused_self)]
    fn uses_backend(&self) -> bool {
        false
    }
}

impl<S, D, C, H, Li, Req> Service<Req> for RateLimit<S, D, C, H, Li>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    S::Response: Send + 'static,
    Req: Send + 'static,
    D: Decide<Req>,
    C: Cost<Req>,
    H: ResponseHeaders<S::Response>,
    Li: Listener<RateLimitEvent>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let cost = self.shared.cost.cost(&req);
        if self.shared.uses_backend() {
            return self.slow(req, cost, None);
        }
        let answer = self.shared.decide_local(&req, cost, H::ENABLED, false);
        match answer.decision {
            Decision::Admit => {
                if Li::ENABLED {
                    self.shared.listener.on_event(&RateLimitEvent::Allowed {
                        layer: self.shared.name.clone(),
                    });
                }
                let fields = match (&self.shared.policy, answer.state) {
                    (Some(policy), Some(state)) => Some((policy.clone(), state)),
                    _ => None,
                };
                ResponseFuture::called(self.inner.call(req), fields)
            }
            Decision::Refuse {
                wait: Some(wait), ..
            } if matches!(self.shared.mode, Mode::Wait(max) if Duration::from_nanos(wait) <= max) => {
                self.slow(req, cost, Some(wait))
            }
            Decision::Refuse { wait, limit } => {
                ResponseFuture::rejected(self.shared.limited(wait, limit, answer.state, false))
            }
        }
    }
}

impl<S, D, C, H, Li> RateLimit<S, D, C, H, Li> {
    /// A request decided inside its response future: waiting, or asking the
    /// shared backend.
    fn slow<Req>(
        &mut self,
        req: Req,
        cost: u64,
        first_wait: Option<u64>,
    ) -> ResponseFuture<S::Future, S::Response, H>
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        S::Response: Send + 'static,
        Req: Send + 'static,
        D: Decide<Req>,
        C: Cost<Req>,
        H: ResponseHeaders<S::Response>,
        Li: Listener<RateLimitEvent>,
    {
        let clone = self.inner.clone();
        let svc = mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::slow(Box::pin(async move {
            let start = tokio::time::Instant::now();
            let deadline = match shared.mode {
                Mode::Wait(max) => Some(start + max),
                Mode::Reject => None,
            };
            let mut pending = first_wait;
            let answer = loop {
                if let Some(wait) = pending {
                    tokio::time::sleep(Duration::from_nanos(wait)).await;
                }
                #[cfg(feature = "redis")]
                let answer = if let Some(redis) = &shared.redis {
                    // The keys are made before the await: no borrow of the
                    // request is held across it, so requests need not be
                    // `Sync`.
                    let keys = redis.keys(&shared.limits, &req, shared.max_key_bytes);
                    // A call made while waiting may not outlast the wait's
                    // bound.
                    let bound = pending.and(deadline);
                    match redis
                        .decide(keys, &shared.names, cost, H::ENABLED, bound)
                        .await
                    {
                        Ok(answer) => answer,
                        Err(policy) => shared.backend_failed(policy, &req, cost, H::ENABLED),
                    }
                } else {
                    shared.decide_local(&req, cost, H::ENABLED, false)
                };
                #[cfg(not(feature = "redis"))]
                let answer = shared.decide_local(&req, cost, H::ENABLED, false);
                match answer.decision {
                    Decision::Admit => break answer,
                    Decision::Refuse {
                        wait: Some(wait), ..
                    } if deadline.is_some_and(|d| {
                        tokio::time::Instant::now() + Duration::from_nanos(wait) <= d
                    }) =>
                    {
                        pending = Some(wait);
                    }
                    Decision::Refuse { wait, limit } => {
                        return Err(Box::new(shared.limited(
                            wait,
                            limit,
                            answer.state,
                            answer.backend_failed,
                        )) as BoxError);
                    }
                }
            };
            if Li::ENABLED && !answer.backend_failed {
                let waited = start.elapsed();
                let event = if waited.is_zero() {
                    RateLimitEvent::Allowed {
                        layer: shared.name.clone(),
                    }
                } else {
                    RateLimitEvent::Waited {
                        layer: shared.name.clone(),
                        waited,
                    }
                };
                shared.listener.on_event(&event);
            }
            let mut res = svc.oneshot(req).await.map_err(Into::into)?;
            if let (Some(policy), Some(state)) = (&shared.policy, answer.state) {
                H::apply(&mut res, policy, state);
            }
            Ok(res)
        }))
    }
}
