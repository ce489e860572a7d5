//! The hedge layer's response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify, Listener};
use seawall_retry::{Attempt, Replay};
use tokio::time::Instant;
use tower_service::Service;

use crate::event::HedgeEvent;
use crate::hedge::layer::HedgeShared;
use crate::hedge::policy::{HedgePolicy, HedgeResponse};
use crate::timer::LazySleep;

/// The request type the inner service receives.
pub(crate) type ReqOf<P, Req> = <<P as HedgePolicy<Req>>::Replay as Replay<Req>>::Request;
type CopyOf<P, Req> = <<P as HedgePolicy<Req>>::Replay as Replay<Req>>::Copy;
type PendingOf<P, Req> = <<P as HedgePolicy<Req>>::Replay as Replay<Req>>::Pending;

pin_project! {
    /// The response future of a [`Hedge`](crate::Hedge) service.
    ///
    /// Dropping it drops every attempt in flight.
    pub struct ResponseFuture<S, Req, P, C, L>
    where
        P: HedgePolicy<Req>,
        S: Service<ReqOf<P, Req>>,
    {
        #[pin]
        state: State<
            S::Future,
            PendingOf<P, Req>,
            S,
            P::Replay,
            CopyOf<P, Req>,
            Arc<HedgeShared<P, C, L>>,
            Result<S::Response, S::Error>,
        >,
        _request: PhantomData<fn() -> Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Pd, S, R, Cp, Sh, O> {
        // Not hedged: the inner call, as it is.
        Direct { #[pin] fut: F },
        // Reading the request body before the first attempt.
        Staging {
            #[pin] pending: Pd,
            svc: Option<S>,
            replay: Option<R>,
            hedgeable: bool,
            shared: Option<Sh>,
        },
        // The first attempt in flight, hedges sent when it is slow.
        Racing {
            #[pin] primary: Primary<F>,
            #[pin] timer: LazySleep,
            race: Race<S, R, Cp, F, Sh, O>,
        },
        Done,
    }
}

pin_project! {
    #[project = PrimaryProj]
    enum Primary<F> {
        Running { #[pin] fut: F },
        Finished,
    }
}

struct Race<S, R, Cp, F, Sh, O> {
    svc: S,
    replay: R,
    copy: Cp,
    shared: Sh,
    /// Hedges in flight, boxed: only a request that is already slow pays
    /// for the allocation.
    hedges: Vec<(Pin<Box<F>>, Instant)>,
    sent: u32,
    /// A hedge is due and paid for; waiting for the inner service's
    /// readiness.
    launching: bool,
    /// No more hedges for this request (budget empty, service failed).
    stopped: bool,
    /// The answer returned if no attempt succeeds: the last one that did
    /// not win, unless it only said another attempt was in flight.
    held: Option<O>,
}

impl<S, Req, P, C, L> fmt::Debug for ResponseFuture<S, Req, P, C, L>
where
    P: HedgePolicy<Req>,
    S: Service<ReqOf<P, Req>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Direct { .. } => "direct",
            State::Staging { .. } => "staging",
            State::Racing { .. } => "racing",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, C, L> ResponseFuture<S, Req, P, C, L>
where
    P: HedgePolicy<Req>,
    S: Service<ReqOf<P, Req>>,
{
    pub(crate) fn direct(fut: S::Future) -> Self {
        Self {
            state: State::Direct { fut },
            _request: PhantomData,
        }
    }

    pub(crate) fn staging(
        pending: PendingOf<P, Req>,
        svc: S,
        replay: P::Replay,
        hedgeable: bool,
        shared: Arc<HedgeShared<P, C, L>>,
    ) -> Self {
        Self {
            state: State::Staging {
                pending,
                svc: Some(svc),
                replay: Some(replay),
                hedgeable,
                shared: Some(shared),
            },
            _request: PhantomData,
        }
    }

    pub(crate) fn racing(
        primary: S::Future,
        svc: S,
        replay: P::Replay,
        copy: CopyOf<P, Req>,
        shared: Arc<HedgeShared<P, C, L>>,
    ) -> Self {
        Self {
            state: racing(primary, svc, replay, copy, shared),
            _request: PhantomData,
        }
    }
}

/// A [`State`] holding the layer's shared state.
type SharedState<F, Pd, S, R, Cp, P, C, L, O> =
    State<F, Pd, S, R, Cp, Arc<HedgeShared<P, C, L>>, O>;

fn racing<F, Pd, S, R, Cp, P, C, L, O>(
    primary: F,
    svc: S,
    replay: R,
    copy: Cp,
    shared: Arc<HedgeShared<P, C, L>>,
) -> SharedState<F, Pd, S, R, Cp, P, C, L, O> {
    State::Racing {
        primary: Primary::Running { fut: primary },
        timer: LazySleep::new(),
        race: Race {
            svc,
            replay,
            copy,
            shared,
            hedges: Vec::new(),
            sent: 0,
            launching: false,
            stopped: false,
            held: None,
        },
    }
}

fn deadline(now: Instant, delay: Duration) -> Instant {
    // Delays are validated to at most a day; saturate rather than panic.
    now.checked_add(delay)
        .unwrap_or_else(|| now + crate::estimator::MAX_SETTING)
}

impl<S, Req, P, C, L> Future for ResponseFuture<S, Req, P, C, L>
where
    P: HedgePolicy<Req> + HedgeResponse<S::Response>,
    S: Service<ReqOf<P, Req>>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    L: Listener<HedgeEvent>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Direct { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Staging {
                    pending,
                    svc,
                    replay,
                    hedgeable,
                    shared,
                } => {
                    let (request, copy) = match pending.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(prepared)) => prepared,
                    };
                    let hedgeable = *hedgeable;
                    let (Some(mut svc), Some(replay), Some(shared)) =
                        (svc.take(), replay.take(), shared.take())
                    else {
                        state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let fut = svc.call(request);
                    match copy {
                        Some(copy) if hedgeable => {
                            state.set(racing(fut, svc, replay, copy, shared));
                        }
                        _ => state.set(State::Direct { fut }),
                    }
                }
                StateProj::Racing {
                    primary,
                    timer,
                    race,
                } => {
                    let result = race.poll::<Req>(primary, timer, cx);
                    if result.is_ready() {
                        state.set(State::Done);
                    }
                    return result;
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> BoxError {
    "hedged request polled after completion".into()
}

impl<S, R, Cp, F, P, C, L, T, E> Race<S, R, Cp, F, Arc<HedgeShared<P, C, L>>, Result<T, E>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    P: HedgeResponse<T>,
    C: Classify<T, E>,
    L: Listener<HedgeEvent>,
{
    fn poll<Req>(
        &mut self,
        mut primary: Pin<&mut Primary<F>>,
        mut timer: Pin<&mut LazySleep>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, BoxError>>
    where
        S: Service<R::Request, Future = F, Response = T, Error = E>,
        R: Replay<Req, Copy = Cp>,
    {
        loop {
            if let PrimaryProj::Running { fut } = primary.as_mut().project() {
                if let Poll::Ready(out) = fut.poll(cx) {
                    primary.set(Primary::Finished);
                    if let Some(done) = self.settle(out, timer.start(), None) {
                        return Poll::Ready(done);
                    }
                }
            }
            let mut i = 0;
            while i < self.hedges.len() {
                if let Poll::Ready(out) = self.hedges[i].0.as_mut().poll(cx) {
                    let (_, start) = self.hedges.swap_remove(i);
                    let primary_start = if matches!(*primary, Primary::Running { .. }) {
                        timer.start()
                    } else {
                        None
                    };
                    if let Some(done) = self.settle(out, Some(start), primary_start) {
                        return Poll::Ready(done);
                    }
                } else {
                    i += 1;
                }
            }
            if matches!(*primary, Primary::Finished) && self.hedges.is_empty() {
                // No attempt succeeded: the answer held is the request's. A
                // failure is not hedged (that is a retry's job).
                return Poll::Ready(match self.held.take() {
                    Some(out) => out.map_err(Into::into),
                    None => Err(polled_after_completion()),
                });
            }
            if !self.poll_hedge(timer.as_mut(), cx) {
                return Poll::Pending;
            }
        }
    }

    /// An attempt finished: `Some` answer if it wins, `None` if it is held
    /// while the others go on (the caller returns the held answer once
    /// every attempt has finished).
    ///
    /// Only a success wins: a failure, an outcome the classifier ignores,
    /// or an answer saying another attempt is in flight (`409` / `425`
    /// with [`HttpRequests`](crate::HttpRequests)) is held. Of the answers
    /// held, the last one is returned, except that an in-flight answer
    /// never replaces another one: it says nothing of the request's fate.
    fn settle(
        &mut self,
        out: Result<T, E>,
        start: Option<Instant>,
        primary_running: Option<Instant>,
    ) -> Option<Result<T, BoxError>> {
        let outcome = self.shared.classifier.classify(out.as_ref());
        let in_flight = matches!(&out, Ok(res) if self.shared.policy.in_flight(res));
        if !outcome.is_success() || in_flight {
            self.hold(out, in_flight);
            return None;
        }
        if let Some(estimator) = self.shared.estimator() {
            let Some(start) = start else {
                // The first attempt answered on its first poll: the
                // caller did not wait and nothing could be hedged, so it is
                // not a sample (as zero, a wall of such answers would drag
                // the delay of the calls that do wait to the floor).
                return Some(out.map_err(Into::into));
            };
            let now = Instant::now();
            estimator.record(now, now.saturating_duration_since(start));
            // The attempts that lost are cancelled before they answer:
            // leaving them out would show the estimator only the fast
            // part of the distribution. Their elapsed time is a lower
            // bound of their latency and already above the hedge delay,
            // so counting it keeps them above the percentile, where
            // they belong.
            if let Some(primary) = primary_running {
                estimator.record(now, now.saturating_duration_since(primary));
            }
            for (_, started) in &self.hedges {
                estimator.record(now, now.saturating_duration_since(*started));
            }
        }
        Some(out.map_err(Into::into))
    }

    /// Keeps an answer that did not win, to return it if no attempt
    /// succeeds: the last one, unless it only says another attempt is in
    /// flight and another answer is already held. Off the path of a first
    /// attempt that succeeds.
    #[cold]
    #[inline(never)]
    fn hold(&mut self, out: Result<T, E>, in_flight: bool) {
        if !(in_flight && self.held.is_some()) {
            self.held = Some(out);
        }
    }

    /// Moves the hedging along: `true` when a hedge was just sent (and must
    /// be polled), `false` when there is nothing to do until woken.
    fn poll_hedge<Req>(&mut self, mut timer: Pin<&mut LazySleep>, cx: &mut Context<'_>) -> bool
    where
        S: Service<R::Request, Future = F, Response = T, Error = E>,
        R: Replay<Req, Copy = Cp>,
    {
        if self.stopped || self.sent >= self.shared.max_hedges {
            return false;
        }
        if !self.launching {
            let shared = &self.shared;
            let armed = timer.as_mut().poll_elapsed(cx, || {
                // The caller starts waiting: the hedge delay counts from
                // here, and a due refresh of the estimate happens here.
                let now = Instant::now();
                (now, deadline(now, shared.delay(now)))
            });
            if armed.is_pending() {
                return false;
            }
            if !self.shared.budget.withdraw() {
                self.stopped = true;
                if L::ENABLED {
                    self.shared.listener.on_event(&HedgeEvent::BudgetExhausted {
                        layer: self.shared.name.clone(),
                        tokens: self.shared.budget.tokens(),
                    });
                }
                return false;
            }
            self.launching = true;
        }
        match self.svc.poll_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => {
                // The clone cannot take a hedge; the attempts in flight
                // go on, and their answer is the request's.
                self.stopped = true;
                return false;
            }
            Poll::Ready(Ok(())) => {}
        }
        self.launching = false;
        self.sent += 1;
        let request = self.replay.replay(&self.copy, Attempt::new(self.sent + 1));
        let now = Instant::now();
        let fut = self.svc.call(request);
        self.hedges.push((Box::pin(fut), now));
        let delay = self.shared.delay(now);
        if L::ENABLED {
            self.shared.listener.on_event(&HedgeEvent::HedgeSent {
                layer: self.shared.name.clone(),
                attempt: self.sent + 1,
                delay,
            });
        }
        timer.as_mut().reset(deadline(now, delay));
        true
    }
}
