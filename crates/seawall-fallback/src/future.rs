//! The response future of [`Fallback`](crate::Fallback).

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use seawall_core::{rejection, BoxError, Classify, Listener, Outcome, SharedState};

use crate::chain::{self, Original, Shared};
use crate::event::FallbackEvent;
use crate::mode::{Mode, Respond};
use crate::tier::Tier;

type Falling<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Fallback`](crate::Fallback).
    ///
    /// While the inner call succeeds it only polls the inner future; once it
    /// fails, it runs the tiers in a boxed future.
    pub struct ResponseFuture<F, T, M, C, L>
    where
        M: Mode,
        C: 'static,
        L: 'static,
    {
        #[pin]
        state: State<F, T, M, C, L>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T, M, C, L>
    where
        M: Mode,
        C: 'static,
        L: 'static,
    {
        Called {
            #[pin]
            fut: F,
            // Held until the future is dropped; only the failure path
            // clones it, into the tier chain.
            shared: SharedState<Shared<M, C, L>>,
            info: Option<M::Info>,
        },
        Falling {
            fut: Falling<T>,
        },
    }
}

impl<F, T, M: Mode, C, L> ResponseFuture<F, T, M, C, L> {
    pub(crate) fn new(fut: F, shared: SharedState<Shared<M, C, L>>, info: Option<M::Info>) -> Self {
        Self {
            state: State::Called { fut, shared, info },
        }
    }
}

impl<F, T, Res, E, M, C, L> Future for ResponseFuture<F, T, M, C, L>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Res: Send + 'static,
    M: Respond<Res, Response = T>,
    C: Classify<Res, BoxError> + Send + Sync + 'static,
    L: Listener<FallbackEvent>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The success path: one classification and the response passed on.
        // Everything else (recording, judging an error, the tiers) is out
        // of line, so this part inlines into the caller.
        let result = match self.as_mut().project().state.project() {
            StateProj::Falling { fut } => return fut.as_mut().poll(cx),
            StateProj::Called { fut, shared, .. } => match ready!(fut.poll(cx)) {
                Ok(res) => {
                    let outcome = shared.classifier.classify(Ok(&res));
                    let pass = match outcome {
                        Outcome::Success => shared.last_known_good.is_none(),
                        Outcome::Ignore => true,
                        Outcome::Failure => false,
                    };
                    if pass {
                        return Poll::Ready(Ok(M::pass(res)));
                    }
                    Ok((outcome, res))
                }
                Err(err) => Err(err.into()),
            },
        };
        self.settle(cx, result)
    }
}

impl<F, T, M: Mode, C, L> ResponseFuture<F, T, M, C, L> {
    /// The inner call's result, once it is more than a response to pass
    /// on: a success to record, a failing response, or an error.
    #[inline(never)]
    fn settle<Res>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        result: Result<(Outcome, Res), BoxError>,
    ) -> Poll<Result<T, BoxError>>
    where
        Res: Send + 'static,
        M: Respond<Res, Response = T>,
        C: Classify<Res, BoxError> + Send + Sync + 'static,
        L: Listener<FallbackEvent>,
    {
        let (shared, info, original) = match self.as_mut().project().state.project() {
            // Only a `Called` future settles; a `Falling` one has nothing
            // to add to the chain it runs.
            StateProj::Falling { fut } => return fut.as_mut().poll(cx),
            StateProj::Called { shared, info, .. } => match result {
                Ok((Outcome::Success, res)) => {
                    return Poll::Ready(Ok(record(shared, res, info.as_ref())));
                }
                Ok((Outcome::Ignore, res)) => return Poll::Ready(Ok(M::pass(res))),
                Ok((Outcome::Failure, res)) => {
                    (shared.clone(), info.take(), Original::Response(res))
                }
                Err(err) => match judge(shared, err) {
                    Ok(original) => (shared.clone(), info.take(), original),
                    Err(err) => return Poll::Ready(Err(err)),
                },
            },
        };
        let mut fut = begin(shared, info, original);
        let poll = fut.as_mut().poll(cx);
        self.project().state.set(State::Falling { fut });
        poll
    }
}

/// Decides whether an error fires the fallback: a seawall rejection by the
/// rejection filter, anything else by the classifier. `Err` passes it on.
fn judge<M, C, L, Res>(shared: &Shared<M, C, L>, err: BoxError) -> Result<Original<Res>, BoxError>
where
    M: Mode,
    C: Classify<Res, BoxError>,
{
    let fires = match rejection::find(&*err) {
        Some(rejected) => shared.rejections.matches(rejected.kind()),
        None => shared.classifier.classify(Err(&err)).is_failure(),
    };
    if fires {
        Ok(Original::Error(err))
    } else {
        Err(err)
    }
}

/// Starts the tier chain; kept out of line so the success path stays small.
#[cold]
#[inline(never)]
fn begin<M, C, L, Res>(
    shared: SharedState<Shared<M, C, L>>,
    info: Option<M::Info>,
    original: Original<Res>,
) -> Falling<<M as Respond<Res>>::Response>
where
    Res: Send + 'static,
    M: Respond<Res>,
    C: Send + Sync + 'static,
    L: Listener<FallbackEvent>,
{
    Box::pin(chain::run(shared, info, original))
}

/// Passes a success on, recording it for the last-known-good tier when the
/// mode allows it for this request and the key function gives a key.
#[inline(never)]
fn record<M, C, L, Res>(
    shared: &Shared<M, C, L>,
    res: Res,
    info: Option<&M::Info>,
) -> <M as Respond<Res>>::Response
where
    M: Respond<Res>,
    L: Listener<FallbackEvent>,
{
    let (Some(slot), Some(info)) = (&shared.last_known_good, info) else {
        return M::pass(res);
    };
    if !shared.mode.storable(info, slot.key_includes_principal()) {
        return M::pass(res);
    }
    // The key function is the user's code: a panic in it costs this copy,
    // not the response.
    match catch_unwind(AssertUnwindSafe(|| slot.recorder(info))) {
        Ok(Some(recorder)) => shared.mode.record(res, info, recorder),
        Ok(None) => M::pass(res),
        Err(_) => {
            shared.emit(|layer| FallbackEvent::TierPanicked {
                layer,
                tier: Tier::LastKnownGood,
            });
            M::pass(res)
        }
    }
}

impl<F, T, M: Mode, C, L> fmt::Debug for ResponseFuture<F, T, M, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Falling { .. } => "falling back",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
