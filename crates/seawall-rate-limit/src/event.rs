//! The limiter's events.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::event::{Event, Facts, Severity};

/// What happened to one request at a rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitEvent {
    /// Admitted without waiting.
    Allowed {
        /// The layer's name.
        layer: Arc<str>,
    },
    /// Admitted after waiting (wait mode).
    Waited {
        /// The layer's name.
        layer: Arc<str>,
        /// How long the request waited.
        waited: Duration,
    },
    /// Refused.
    Limited {
        /// The layer's name.
        layer: Arc<str>,
        /// The limit (key class) that refused.
        limit: Arc<str>,
        /// The `Retry-After` given.
        retry_after: Option<Duration>,
    },
    /// A fleet-wide decision could not reach Redis in time; the layer
    /// followed its [`OnBackendError`](crate::OnBackendError) policy.
    BackendUnavailable {
        /// The layer's name.
        layer: Arc<str>,
    },
}

impl Event for RateLimitEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::Allowed { .. } => "allowed",
            Self::Waited { .. } => "waited",
            Self::Limited { .. } => "limited",
            Self::BackendUnavailable { .. } => "backend_unavailable",
        }
    }

    fn layer(&self) -> &str {
        match self {
            Self::Allowed { layer }
            | Self::Waited { layer, .. }
            | Self::Limited { layer, .. }
            | Self::BackendUnavailable { layer } => layer,
        }
    }

    fn severity(&self) -> Severity {
        match self {
            Self::Allowed { .. } | Self::Waited { .. } => Severity::Debug,
            Self::Limited { .. } => Severity::Info,
            Self::BackendUnavailable { .. } => Severity::Warn,
        }
    }

    fn pattern(&self) -> &'static str {
        "rate_limit"
    }

    fn facts(&self) -> Facts {
        match self {
            Self::Limited { .. } => Facts::NONE.refusal(crate::RateLimited::KIND),
            _ => Facts::NONE,
        }
    }
}
