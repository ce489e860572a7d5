use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rand::{RngCore, SeedableRng};
use seawall_core::{rejection, BoxError, Classify, Listener, SharedState};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::backoff::Delays;
use crate::budget::RetryBudget;
use crate::error::{AttemptTimeout, DeadlineExceeded};
use crate::event::{GiveUpReason, RetryCause, RetryEvent};
use crate::layer::Config;
use crate::replay::{Attempt, ReadHint, Replay, Staged};

pin_project! {
    /// The response future of [`JitterRetry`](crate::JitterRetry).
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, P, C, L, R, Req>
    where
        P: Replay<Req>,
        P: 'static,
        C: 'static,
        L: 'static,
        S: Service<P::Request>,
    {
        #[pin]
        state: State<P::Pending, S::Future>,
        service: S,
        copy: Option<P::Copy>,
        config: SharedState<Config<P, C, L>>,
        deadline: Option<Instant>,
        // Boxed and created only when needed (a retry, or an attempt
        // timeout), so the success path carries eight bytes for it and
        // neither reads the clock nor seeds an RNG.
        retrying: Option<Pin<Box<Retrying<R>>>>,
        _req: PhantomData<fn(Req)>,
    }
}

pin_project! {
    /// What a request carries once it needs more than one plain attempt.
    struct Retrying<R> {
        attempt: u32,
        schedule: Option<(Delays, R)>,
        // While an attempt runs, its end: the attempt timeout or the
        // deadline, whichever comes first. Between attempts, the backoff;
        // then, while the service readies, the deadline. One phase at a
        // time, so one timer serves them all.
        #[pin]
        timer: Sleep,
    }
}

impl<R> Retrying<R> {
    /// Sets the timer `after` from now, creating the retry state if needed.
    fn arm(slot: &mut Option<Pin<Box<Self>>>, after: Duration) -> Pin<&mut Self> {
        Self::arm_at(
            slot,
            Instant::now().checked_add(after).unwrap_or_else(far_future),
        )
    }

    /// Sets the timer to go off at `at`, creating the retry state if needed.
    fn arm_at(slot: &mut Option<Pin<Box<Self>>>, at: Instant) -> Pin<&mut Self> {
        let fresh = slot.is_none();
        let retrying = slot.get_or_insert_with(|| {
            Box::pin(Retrying {
                attempt: 1,
                schedule: None,
                timer: tokio::time::sleep_until(at),
            })
        });
        if !fresh {
            retrying.as_mut().project().timer.reset(at);
        }
        retrying.as_mut()
    }
}

/// When an attempt starting now must end: after the attempt timeout, and
/// never past the deadline. `None` if neither is set.
fn attempt_end(timeout: Option<Duration>, deadline: Option<Instant>) -> Option<Instant> {
    match (timeout, deadline) {
        (None, deadline) => deadline,
        (Some(timeout), deadline) => {
            let end = Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(far_future);
            Some(deadline.map_or(end, |deadline| deadline.min(end)))
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, SF> {
        Staging { #[pin] fut: F },
        Calling { #[pin] fut: SF },
        Waiting,
        Readying,
        Done,
    }
}

impl<S, P, C, L, R, Req> fmt::Debug for ResponseFuture<S, P, C, L, R, Req>
where
    P: Replay<Req>,
    S: Service<P::Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Staging { .. } => "staging",
            State::Calling { .. } => "calling",
            State::Waiting => "waiting",
            State::Readying => "readying",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.retrying.as_ref().map_or(1, |r| r.attempt))
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Calls the inner service; with an attempt timeout or a deadline, arms the
/// timer, which the `Calling` state then polls alongside the attempt.
#[inline]
fn start<S: Service<Req>, Req, F, R>(
    service: &mut S,
    request: Req,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    retrying: &mut Option<Pin<Box<Retrying<R>>>>,
) -> State<F, S::Future> {
    if let Some(end) = attempt_end(timeout, deadline) {
        Retrying::arm_at(retrying, end);
    }
    State::Calling {
        fut: service.call(request),
    }
}

/// Arms the timer of a first attempt that has an attempt timeout or a
/// deadline. Out of line, so that the success path of a layer with neither
/// stays small enough to inline.
#[cold]
#[inline(never)]
fn arm_first_attempt<R>(
    retrying: &mut Option<Pin<Box<Retrying<R>>>>,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) {
    if let Some(end) = attempt_end(timeout, deadline) {
        Retrying::arm_at(retrying, end);
    }
}

/// Polls the attempt timer of a `Calling` state whose attempt is pending, if
/// the attempt has one (an attempt timeout or a deadline): when it goes off,
/// the attempt failed with [`AttemptTimeout`], or, if the deadline has come,
/// the request with [`DeadlineExceeded`].
#[inline(never)]
fn attempt_timer<R>(
    retrying: &mut Option<Pin<Box<Retrying<R>>>>,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<BoxError> {
    if timeout.is_none() && deadline.is_none() {
        return Poll::Pending;
    }
    match retrying.as_mut() {
        Some(retrying) => {
            ready!(retrying.as_mut().project().timer.poll(cx));
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                Poll::Ready(Box::new(DeadlineExceeded::new()))
            } else {
                Poll::Ready(Box::new(AttemptTimeout::new()))
            }
        }
        None => Poll::Pending,
    }
}

/// Polls the deadline timer while the request body is read or the inner
/// service readies: `Ready` once the deadline has passed.
#[inline(never)]
fn deadline_timer<R>(
    retrying: &mut Option<Pin<Box<Retrying<R>>>>,
    deadline: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match (retrying.as_mut(), deadline) {
        (Some(retrying), Some(_)) => retrying.as_mut().project().timer.poll(cx),
        _ => Poll::Pending,
    }
}

/// About thirty years from now, as tokio itself uses for "never".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl<S, P, C, L, R, Req> ResponseFuture<S, P, C, L, R, Req>
where
    P: Replay<Req>,
    S: Service<P::Request>,
{
    #[inline]
    pub(crate) fn new(
        mut service: S,
        config: &SharedState<Config<P, C, L>>,
        deadline: Option<Instant>,
        staged: Staged<P::Request, P::Copy, P::Pending>,
    ) -> Self {
        match staged {
            Staged::Ready { request, copy } => {
                // The inner call comes first, while nothing that needs
                // dropping on unwind (the `Arc`, the timer) is held yet,
                // which leaves the compiler free to write the inner future
                // straight into its place rather than move it there.
                let fut = service.call(request);
                let config = config.clone();
                let mut retrying = None;
                if config.attempt_timeout.is_some() || deadline.is_some() {
                    arm_first_attempt(&mut retrying, config.attempt_timeout, deadline);
                }
                Self {
                    state: State::Calling { fut },
                    service,
                    copy,
                    config,
                    deadline,
                    retrying,
                    _req: PhantomData,
                }
            }
            Staged::Pending(fut) => {
                // Reading the body counts against the deadline too.
                let mut retrying = None;
                if let Some(deadline) = deadline {
                    Retrying::arm_at(&mut retrying, deadline);
                }
                Self {
                    state: State::Staging { fut },
                    service,
                    copy: None,
                    config: config.clone(),
                    deadline,
                    retrying,
                    _req: PhantomData,
                }
            }
        }
    }
}

impl<S, P, C, L, R, Req> Future for ResponseFuture<S, P, C, L, R, Req>
where
    P: Replay<Req> + ReadHint<S::Response>,
    S: Service<P::Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    L: Listener<RetryEvent>,
    R: RngCore + SeedableRng,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The success path: a plain attempt answers, one classification, no
        // clock, no RNG, no budget withdrawal. Everything else is out of
        // line, so this part inlines into the caller.
        let result = match this.state.as_mut().project() {
            StateProj::Calling { fut } => match fut.poll(cx) {
                Poll::Ready(result) => result.map_err(Into::into),
                Poll::Pending => Err(ready!(attempt_timer(
                    this.retrying,
                    this.config.attempt_timeout,
                    *this.deadline,
                    cx
                ))),
            },
            _ => return poll_slow(this, cx, None),
        };
        if this.copy.is_none()
            || !this
                .config
                .classifier
                .classify(result.as_ref())
                .is_failure()
        {
            this.state.set(State::Done);
            return Poll::Ready(result);
        }
        poll_slow(this, cx, Some(result))
    }
}

/// Everything but a plain attempt's success: staging, attempt timeouts,
/// backoff, readiness and the decision to retry (`failed` is a failure the
/// fast path already classified).
#[inline(never)]
fn poll_slow<S, P, C, L, R, Req>(
    mut this: ResponseFutureProj<'_, S, P, C, L, R, Req>,
    cx: &mut Context<'_>,
    mut failed: Option<Result<S::Response, BoxError>>,
) -> Poll<Result<S::Response, BoxError>>
where
    P: Replay<Req> + ReadHint<S::Response>,
    S: Service<P::Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    L: Listener<RetryEvent>,
    R: RngCore + SeedableRng,
{
    loop {
        let result = if let Some(result) = failed.take() {
            result
        } else {
            match this.state.as_mut().project() {
                StateProj::Staging { fut } => {
                    let Poll::Ready(staged) = fut.poll(cx) else {
                        ready!(deadline_timer(this.retrying, *this.deadline, cx));
                        this.state.set(State::Done);
                        return Poll::Ready(Err(cut(this.config, 0)));
                    };
                    match staged {
                        Ok((request, copy)) => {
                            *this.copy = copy;
                            // Still holds the readiness granted before `call`.
                            let next = start(
                                this.service,
                                request,
                                this.config.attempt_timeout,
                                *this.deadline,
                                this.retrying,
                            );
                            this.state.set(next);
                            continue;
                        }
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Calling { fut } => match fut.poll(cx) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending => Err(ready!(attempt_timer(
                        this.retrying,
                        this.config.attempt_timeout,
                        *this.deadline,
                        cx
                    ))),
                },
                StateProj::Waiting => {
                    if let Some(retrying) = this.retrying.as_mut() {
                        ready!(retrying.as_mut().project().timer.poll(cx));
                    }
                    readying(&mut this.state, *this.deadline, this.retrying);
                    continue;
                }
                StateProj::Readying => {
                    let Poll::Ready(ready) = this.service.poll_ready(cx) else {
                        ready!(deadline_timer(this.retrying, *this.deadline, cx));
                        this.state.set(State::Done);
                        let made = this.retrying.as_ref().map_or(1, |r| r.attempt) - 1;
                        return Poll::Ready(Err(cut(this.config, made)));
                    };
                    if let Err(e) = ready {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(copy) = this.copy.as_ref() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err("retry without a request copy".into()));
                    };
                    let attempt = this.retrying.as_ref().map_or(1, |r| r.attempt);
                    let request = this.config.replay.replay(copy, Attempt::new(attempt));
                    let next = start(
                        this.service,
                        request,
                        this.config.attempt_timeout,
                        *this.deadline,
                        this.retrying,
                    );
                    this.state.set(next);
                    continue;
                }
                StateProj::Done => {
                    return Poll::Ready(Err("retry future polled after completion".into()));
                }
            }
        };

        if this.copy.is_none()
            || !this
                .config
                .classifier
                .classify(result.as_ref())
                .is_failure()
        {
            this.state.set(State::Done);
            return Poll::Ready(result);
        }
        if let Some(delay) = decide(this.config, &result, *this.deadline, this.retrying) {
            drop(result);
            // A zero delay (constant zero backoff) must not wait for a
            // timer tick.
            if delay.is_zero() {
                readying(&mut this.state, *this.deadline, this.retrying);
            } else {
                this.state.set(State::Waiting);
            }
        } else {
            this.state.set(State::Done);
            return Poll::Ready(result);
        }
    }
}

/// Moves to `Readying`, with the timer set to the deadline, if any, so that
/// waiting for the inner service's readiness cannot outlast it.
fn readying<F, SF, R>(
    state: &mut Pin<&mut State<F, SF>>,
    deadline: Option<Instant>,
    retrying: &mut Option<Pin<Box<Retrying<R>>>>,
) {
    if let Some(deadline) = deadline {
        Retrying::arm_at(retrying, deadline);
    }
    state.set(State::Readying);
}

/// The deadline passed outside an attempt (reading the body, or waiting for
/// readiness before a retry) after `attempts` attempts: reports it and
/// builds the error.
#[cold]
fn cut<P, C, L: Listener<RetryEvent>>(config: &Config<P, C, L>, attempts: u32) -> BoxError {
    if L::ENABLED {
        config.listener.on_event(&RetryEvent::RetriesExhausted {
            layer: config.name.clone(),
            attempts,
            reason: GiveUpReason::Deadline,
        });
    }
    Box::new(DeadlineExceeded::new())
}

/// Whether to retry a failed attempt: if so, the delay, with the timer set
/// to it and the attempt number advanced.
#[cold]
fn decide<P, C, L, R, Res>(
    config: &Config<P, C, L>,
    result: &Result<Res, BoxError>,
    deadline: Option<Instant>,
    retrying: &mut Option<Pin<Box<Retrying<R>>>>,
) -> Option<Duration>
where
    P: ReadHint<Res>,
    L: Listener<RetryEvent>,
    R: RngCore + SeedableRng,
{
    let attempt = retrying.as_ref().map_or(1, |r| r.attempt);
    let give_up = |reason| {
        if L::ENABLED {
            config.listener.on_event(&RetryEvent::RetriesExhausted {
                layer: config.name.clone(),
                attempts: attempt,
                reason,
            });
        }
        None
    };
    if matches!(result, Err(e) if e.is::<DeadlineExceeded>()) {
        return give_up(GiveUpReason::Deadline);
    }
    if attempt >= config.max_attempts {
        return give_up(GiveUpReason::MaxAttempts);
    }
    let (hint, cause) = match result {
        Ok(res) => (config.replay.hint(res), RetryCause::Response),
        Err(e) => match rejection::find(&**e) {
            Some(r) => (r.retry_after(), RetryCause::Rejection(r.kind())),
            None => (None, RetryCause::Error),
        },
    };
    // `Duration::MAX` is how a hint says "do not retry" (a negative gRPC
    // pushback, a `Retry-After` beyond any sane delay): it ends retrying even
    // when `max_delay` is itself unbounded, instead of waiting for ever.
    if hint.is_some_and(|h| h == Duration::MAX || h > config.max_delay) {
        return give_up(GiveUpReason::HintTooLong);
    }
    let mut state = Retrying::arm(retrying, Duration::ZERO).project();
    let (schedule, rng) = state.schedule.get_or_insert_with(|| {
        (
            Delays::new(config.backoff, config.jitter, config.max_delay),
            R::seed_from_u64(config.next_seed()),
        )
    });
    let delay = schedule.next_delay(rng).max(hint.unwrap_or_default());
    if let Some(deadline) = deadline {
        // A retry that would start at the deadline would be cut at once.
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|end| end >= deadline)
        {
            return give_up(GiveUpReason::Deadline);
        }
    }
    if let Some(budget) = &config.budget {
        if !budget.withdraw() {
            if L::ENABLED {
                config.listener.on_event(&RetryEvent::BudgetExhausted {
                    layer: config.name.clone(),
                    attempts: attempt,
                    budget_tokens: Some(budget.tokens()),
                });
            }
            return None;
        }
    }
    if L::ENABLED {
        config.listener.on_event(&RetryEvent::RetryScheduled {
            layer: config.name.clone(),
            attempt,
            delay,
            cause,
            hint,
            budget_tokens: config.budget.as_ref().map(RetryBudget::tokens),
        });
    }
    let at = Instant::now().checked_add(delay).unwrap_or_else(far_future);
    state.timer.as_mut().reset(at);
    *state.attempt += 1;
    Some(delay)
}
#[cfg(test)]
mod tests {
    use crate::{CloneRequest, ErrorsFail, ResponseFuture};
    use std::convert::Infallible;
    use std::future::Ready;

    type Leaf = tower::util::ServiceFn<fn([u64; 4]) -> Ready<Result<[u64; 4], Infallible>>>;

    /// The success path moves this future at least once; past 128 bytes the
    /// move becomes a `memmove` call, measurably slower. Everything only a
    /// retry needs lives behind one box.
    #[test]
    fn the_future_stays_small() {
        type F = ResponseFuture<
            Leaf,
            CloneRequest,
            ErrorsFail,
            seawall_core::NoopListener,
            rand::rngs::SmallRng,
            [u64; 4],
        >;
        assert!(
            std::mem::size_of::<F>() <= 128,
            "{}",
            std::mem::size_of::<F>()
        );
    }

    #[cfg(not(loom))]
    #[test]
    fn futures_of_a_leaked_layer_hold_a_plain_reference() {
        use crate::JitterRetryLayer;
        use tower::{Layer, Service};

        fn leaf(req: [u64; 4]) -> Ready<Result<[u64; 4], Infallible>> {
            std::future::ready(Ok(req))
        }
        let layer = JitterRetryLayer::builder().build().unwrap();
        let mut counted = layer.layer(tower::service_fn(leaf as fn(_) -> _));
        assert!(!counted.call([0u64; 4]).config.is_static());

        let mut leaked = layer.leak().layer(tower::service_fn(leaf as fn(_) -> _));
        assert!(leaked.call([0u64; 4]).config.is_static());
        assert!(leaked.clone().call([0u64; 4]).config.is_static());
    }
}
