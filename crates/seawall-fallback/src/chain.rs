//! The tier chain: what runs once a call has failed.

use std::sync::Arc;

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
    fn emit(&self, event: impl FnOnce(Arc<str>) -> FallbackEvent) {
        if L::ENABLED {
            self.listener.on_event(&event(self.name.clone()));
        }
    }
}

/// Tries each tier in order; returns the original failure if none answers.
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
                return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                    m.serve(value.clone(), Degraded::new(Tier::Value))
                }));
            }
            continue;
        };
        match stage {
            Stage::LastKnownGood(slot) => {
                if let Some((value, age)) = slot.recall(info) {
                    let degraded = Degraded::aged(Tier::LastKnownGood, age);
                    return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                        m.serve(value, degraded)
                    }));
                }
            }
            Stage::Alternative(svc) => {
                if let Ok(res) = svc.clone().oneshot(info.clone()).await {
                    if shared.mode.alternative_usable(&res) {
                        return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                            m.serve_alternative(res, Degraded::new(Tier::Alternative))
                        }));
                    }
                }
            }
            Stage::Function(f) => {
                if let Some(value) = f(info, &cause_of(&original, status)) {
                    return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                        m.serve(value, Degraded::new(Tier::Function))
                    }));
                }
            }
            Stage::Value(value) => {
                return Ok(served(&shared, stage.tier(), cause_kind, |m| {
                    m.serve(value.clone(), Degraded::new(Tier::Value))
                }));
            }
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
