//! The layer's events.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::event::{Event, Severity};

use crate::error::FaultKind;

/// A [`ChaosLayer`](crate::ChaosLayer) injected a fault into a call.
///
/// Sent to the layer's [`Listener`](seawall_core::Listener) once per fault
/// that fires, at the moment of the call.
#[derive(Debug, Clone)]
pub struct ChaosEvent {
    pub(crate) layer: Arc<str>,
    pub(crate) fault: Arc<str>,
    pub(crate) kind: FaultKind,
    pub(crate) delay: Option<Duration>,
}

impl ChaosEvent {
    /// The name of the fault (or `"header"` for a header-triggered fault).
    pub fn fault(&self) -> &str {
        &self.fault
    }

    /// What the fault does.
    pub const fn fault_kind(&self) -> FaultKind {
        self.kind
    }

    /// The latency added, for a latency fault.
    pub const fn delay(&self) -> Option<Duration> {
        self.delay
    }
}

impl Event for ChaosEvent {
    fn kind(&self) -> &'static str {
        "fault_injected"
    }

    fn layer(&self) -> &str {
        &self.layer
    }

    fn severity(&self) -> Severity {
        Severity::Debug
    }

    fn pattern(&self) -> &'static str {
        "chaos"
    }
}
