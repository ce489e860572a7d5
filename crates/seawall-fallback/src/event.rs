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
        }
    }

    fn layer(&self) -> &str {
        match self {
            FallbackEvent::Served { layer, .. } | FallbackEvent::Exhausted { layer, .. } => layer,
        }
    }

    fn severity(&self) -> Severity {
        Severity::Warn
    }
}
