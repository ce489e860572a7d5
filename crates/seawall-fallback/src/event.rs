//! The events a fallback layer emits.

use std::sync::Arc;

use seawall_core::event::{Event, Severity};

use crate::tier::{CauseKind, Tier};

/// What a [`FallbackLayer`](crate::FallbackLayer) reports to its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackEvent {
    /// A tier answered in place of the inner service.
    Served {
        /// The layer's name.
        layer: Arc<str>,
        /// The tier that answered.
        tier: Tier,
        /// Why the layer fired.
        cause: CauseKind,
    },
    /// A tier panicked — its function, its service or its future, or the
    /// last-known-good key function (while serving or recording). The
    /// panic was caught: a failing call went on to the next tier; a
    /// successful one passed through unrecorded.
    TierPanicked {
        /// The layer's name.
        layer: Arc<str>,
        /// The tier that panicked.
        tier: Tier,
    },
    /// Every tier came up empty; the original failure was returned.
    Exhausted {
        /// The layer's name.
        layer: Arc<str>,
        /// Why the layer fired.
        cause: CauseKind,
    },
}

impl Event for FallbackEvent {
    fn kind(&self) -> &'static str {
        match self {
            FallbackEvent::Served { .. } => "fallback_served",
            FallbackEvent::Exhausted { .. } => "fallback_exhausted",
            FallbackEvent::TierPanicked { .. } => "fallback_tier_panicked",
        }
    }

    fn layer(&self) -> &str {
        match self {
            FallbackEvent::Served { layer, .. }
            | FallbackEvent::Exhausted { layer, .. }
            | FallbackEvent::TierPanicked { layer, .. } => layer,
        }
    }

    fn severity(&self) -> Severity {
        Severity::Warn
    }

    fn pattern(&self) -> &'static str {
        "fallback"
    }
}
