//! The tier chain: what runs once a call has failed.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use seawall_core::{BoxError, Listener, SharedState};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::event::FallbackEvent;
use crate::last_known_good::Slot;
use crate::mode::{Mode, Respond};
use crate::tier::{Cause, CauseKind, Degraded, Rejections, Tier};

pub(crate) type FunctionTier<M> =
    Arc<dyn Fn(&<M as Mode>::Info, &Cause<'_>) -> Option<<M as Mode>::Stored> + Send + Sync>;

pub(crate) enum Stage<M: Mode> {
    LastKnownGood(Arc<dyn Slot<M::Info, M::Stored>>),
    Alternative(BoxCloneSyncService<M::Info, M::Alternative, BoxError>),
    Function(FunctionTier<M>),
    Value(M::Stored),
}

impl<M: Mode> Stage<M> {
    pub(crate) fn tier(&self) -> Tier {
        match self {
            Stage::LastKnownGood(_) => Tier::LastKnownGood,
            Stage::Alternative(_) => Tier::Alternative,
            Stage::Function(_) => Tier::Function,
            Stage::Value(_) => Tier::Value,
        }
    }
}

/// Everything a layer's services share; one `Arc` per layer.
pub(crate) struct Shared<M: Mode, C, L> {
    pub(crate) name: Arc<str>,
    pub(crate) mode: M,
    pub(crate) classifier: C,
    pub(crate) listener: L,
    pub(crate) rejections: Rejections,
    pub(crate) stages: Box<[Stage<M>]>,
    pub(crate) last_known_good: Option<Arc<dyn Slot<M::Info, M::Stored>>>,
    /// `true` when some tier reads the request info, so `call` captures it.
    pub(crate) needs_info: bool,
}

/// What the inner service produced that the layer is replacing.
pub(crate) enum Original<Res> {
    Error(BoxError),
    Response(Res),
}

impl<M: Mode, C, L: Listener<FallbackEvent>> Shared<M, C, L> {
    pub(crate) fn emit(&self, event: impl FnOnce(Arc<str>) -> FallbackEvent) {
        if L::ENABLED {
            self.listener.on_event(&event(self.name.clone()));
        }
    }
}

/// Tries each tier in order; returns the original failure if none answers.
///
/// Each tier runs user code (a key function, a service, a function, a
/// value's `Clone`): a panic in it is caught, reported, and the next tier
/// tried, so one broken tier never takes the answer of the others down.
pub(crate) async fn run<M, C, L, Res>(
    shared: SharedState<Shared<M, C, L>>,
    info: Option<M::Info>,
    original: Original<Res>,
) -> Result<<M as Respond<Res>>::Response, BoxError>
where
    M: Respond<Res>,
    L: Listener<FallbackEvent>,
{
    let status = match &original {
        Original::Response(res) => shared.mode.status(res),
        Original::Error(_) => None,
    };
    let cause_kind = cause_of(&original, status).kind();
    for stage in &*shared.stages {
        let Some(info) = info.as_ref() else {
            // Only value tiers run without request info (`needs_info` is
            // false only when every tier is a value).
            if let Stage::Value(value) = stage {
                match guarded(|| value.clone()) {
                    Ok(value) => {
                        return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                            m.serve(value, Degraded::new(Tier::Value))
                        }));
                    }
                    Err(Panicked) => panicked(&shared, stage.tier()),
                }
            }
            continue;
        };
        let answer = match stage {
            Stage::LastKnownGood(slot) => {
                let usable = |stored: &M::Stored| shared.mode.usable(stored, info);
                match guarded(|| slot.recall(info, &usable)) {
                    // Not in this process: ask the shared store, if any.
                    Ok(None) => match guarded(|| slot.recall_shared(info)) {
                        Ok(Some(read)) => Guarded::new(read)
                            .await
                            .map(|found| found.filter(|(value, _)| usable(value))),
                        other => other.map(|_| None),
                    },
                    other => other,
                }
                .map(|found| {
                    found.map(|(value, age)| (value, Degraded::aged(Tier::LastKnownGood, age)))
                })
            }
            Stage::Alternative(svc) => {
                let call = Guarded::new(async {
                    let res = svc.clone().oneshot(info.clone()).await.ok()?;
                    shared.mode.alternative_usable(&res).then_some(res)
                });
                match call.await {
                    Ok(Some(res)) => {
                        return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                            m.serve_alternative(res, Degraded::new(Tier::Alternative))
                        }));
                    }
                    Ok(None) => Ok(None),
                    Err(Panicked) => Err(Panicked),
                }
            }
            Stage::Function(f) => guarded(|| {
                f(info, &cause_of(&original, status))
                    .map(|value| (value, Degraded::new(Tier::Function)))
            }),
            Stage::Value(value) => guarded(|| Some((value.clone(), Degraded::new(Tier::Value)))),
        };
        match answer {
            Ok(Some((value, degraded))) => {
                return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                    m.serve(value, degraded)
                }));
            }
            Ok(None) => {}
            Err(Panicked) => panicked(&shared, stage.tier()),
        }
    }
    shared.emit(|layer| FallbackEvent::Exhausted {
        layer,
        cause: cause_kind,
    });
    match original {
        Original::Error(err) => Err(err),
        Original::Response(res) => Ok(M::pass(res)),
    }
}

/// A tier panicked; the panic was caught.
struct Panicked;

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Panicked)
}

fn panicked<M: Mode, C, L: Listener<FallbackEvent>>(shared: &Shared<M, C, L>, tier: Tier) {
    shared.emit(|layer| FallbackEvent::TierPanicked { layer, tier });
}

pin_project! {
    /// Polls a tier's future, turning a panic into [`Panicked`]. Once it
    /// has panicked, the future is dropped, never polled again.
    struct Guarded<F> {
        #[pin]
        fut: F,
    }
}

impl<F> Guarded<F> {
    fn new(fut: F) -> Self {
        Self { fut }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

fn cause_of<Res>(original: &Original<Res>, status: Option<http::StatusCode>) -> Cause<'_> {
    match original {
        Original::Error(err) => Cause::error(err),
        Original::Response(_) => Cause::response(status),
    }
}

fn served<M, C, L, T>(
    shared: &Shared<M, C, L>,
    tier: Tier,
    cause: CauseKind,
    build: impl FnOnce(&M) -> T,
) -> T
where
    M: Mode,
    L: Listener<FallbackEvent>,
{
    shared.emit(|layer| FallbackEvent::Served { layer, tier, cause });
    build(&shared.mode)
}
