use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify};
use tokio::time::Instant;
use tower_service::Service;

use crate::error::Refusal;
use crate::pool::{Permit, Waiter};
use crate::priority::Priority;

pin_project! {
    /// Response future of [`Bulkhead`](crate::Bulkhead): waits for a permit
    /// if needed, runs the call holding it, and gives the permit back when
    /// the call completes, fails, panics or is dropped.
    pub struct ResponseFuture<F, S, Req, C> {
        // The running call. A plain field rather than an enum variant, so
        // the inner future is built in place on the happy path.
        #[pin]
        future: Option<F>,
        permit: Option<Permit>,
        // Waiting for a permit, or refused: boxed, so only those requests
        // pay for it.
        other: Option<Box<Other<S, Req>>>,
        // Only with an adaptive limit: what it needs to sample the call.
        sampling: Option<Sampling<C>>,
    }
}

enum Other<S, Req> {
    Waiting(Waiting<S, Req>),
    Refused(Option<BoxError>),
}

pub(crate) struct Sampling<C> {
    classifier: C,
    /// Set when the call starts, after any wait for a permit.
    started: Option<Instant>,
}

struct Waiting<S, Req> {
    waiter: Waiter,
    call: Option<(S, Req)>,
    priority: Option<Priority>,
}

impl<F, S, Req, C> ResponseFuture<F, S, Req, C> {
    /// A call started with `permit`; `sampling` comes from
    /// [`Sampling::start`], taken before the inner call so that building
    /// the inner future counts towards the latency (and so the inner future
    /// is written straight into place).
    #[inline]
    pub(crate) fn called(future: F, permit: Permit, sampling: Option<Sampling<C>>) -> Self {
        Self {
            future: Some(future),
            permit: Some(permit),
            other: None,
            sampling,
        }
    }

    pub(crate) fn waiting(
        waiter: Waiter,
        service: S,
        req: Req,
        priority: Option<Priority>,
        classifier: Option<C>,
    ) -> Self {
        Self {
            future: None,
            permit: None,
            other: Some(Box::new(Other::Waiting(Waiting {
                waiter,
                call: Some((service, req)),
                priority,
            }))),
            sampling: classifier.map(|classifier| Sampling {
                classifier,
                started: None,
            }),
        }
    }

    #[cold]
    pub(crate) fn refused(refusal: Refusal) -> Self {
        Self {
            future: None,
            permit: None,
            other: Some(Box::new(Other::Refused(Some(refusal.into_box())))),
            sampling: None,
        }
    }
}

impl<S, Req> Waiting<S, Req> {
    /// Waits for the permit, then starts the call.
    fn poll_start(&mut self, cx: &mut Context<'_>) -> Poll<Result<(S::Future, Permit), BoxError>>
    where
        S: Service<Req>,
    {
        let permit = match ready!(self.waiter.poll(cx)) {
            Ok(permit) => permit,
            Err(reason) => {
                let refusal = self.waiter.shared().refuse(reason, self.priority);
                return Poll::Ready(Err(refusal.into_box()));
            }
        };
        let Some((mut service, req)) = self.call.take() else {
            // Unreachable: the call is taken only here, and the state
            // changes right after.
            let refusal = self
                .waiter
                .shared()
                .refuse(crate::RejectReason::Full, self.priority);
            return Poll::Ready(Err(refusal.into_box()));
        };
        // `service` was readied by `poll_ready` before it moved into this
        // future.
        Poll::Ready(Ok((service.call(req), permit)))
    }
}

impl<C> Sampling<C> {
    /// Starts the clock for an adaptive limit; `None` without one.
    #[inline]
    pub(crate) fn start(classifier: Option<C>) -> Option<Self> {
        classifier.map(|classifier| Self {
            classifier,
            started: Some(Instant::now()),
        })
    }

    /// Feeds the finished call to the adaptive limit and gives the permit
    /// back at once.
    #[cold]
    fn record<T, E>(&self, permit: &mut Option<Permit>, result: &Result<T, E>)
    where
        C: Classify<T, E>,
    {
        if let (Some(started), Some(permit)) = (self.started, permit.take()) {
            permit.record(started, self.classifier.classify(result.as_ref()));
        }
    }
}

impl<F, S, Req, C, T, E> Future for ResponseFuture<F, S, Req, C>
where
    F: Future<Output = Result<T, E>>,
    S: Service<Req, Response = T, Error = E, Future = F>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The happy path, small enough to inline into the caller: the call
        // is running. Waiting and refusals are handled out of line.
        let this = self.as_mut().project();
        if let Some(future) = this.future.as_pin_mut() {
            let result = ready!(future.poll(cx));
            if let Some(sampling) = this.sampling.as_ref() {
                sampling.record(this.permit, &result);
            }
            // Given back on completion, not when the caller gets round to
            // dropping this future.
            *this.permit = None;
            return Poll::Ready(result.map_err(Into::into));
        }
        self.poll_other(cx)
    }
}

impl<F, S, Req, C, T, E> ResponseFuture<F, S, Req, C>
where
    F: Future<Output = Result<T, E>>,
    S: Service<Req, Response = T, Error = E, Future = F>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    /// Waiting for a permit (then starting the call), or refused.
    #[cold]
    #[inline(never)]
    fn poll_other(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, BoxError>> {
        let mut this = self.as_mut().project();
        let started = match this.other.as_deref_mut() {
            Some(Other::Waiting(waiting)) => ready!(waiting.poll_start(cx)),
            Some(Other::Refused(error)) => {
                return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                    "bulkhead response future polled after completion".into()
                })))
            }
            None => return Poll::Ready(Err("bulkhead response future has no call".into())),
        };
        match started {
            Ok((future, permit)) => {
                *this.other = None;
                *this.permit = Some(permit);
                if let Some(sampling) = this.sampling.as_mut() {
                    sampling.started = Some(Instant::now());
                }
                this.future.set(Some(future));
                self.poll(cx)
            }
            Err(error) => {
                *this.other = Some(Box::new(Other::Refused(None)));
                Poll::Ready(Err(error))
            }
        }
    }
}

impl<F, S, Req, C> fmt::Debug for ResponseFuture<F, S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (&self.future, self.other.as_deref()) {
            (Some(_), _) => "called",
            (None, Some(Other::Waiting(_))) => "waiting",
            (None, _) => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
