//! The events a circuit breaker emits.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::event::{Event, Facts, Severity};
use seawall_core::Outcome;

use crate::State;

/// Something a circuit breaker did, sent to the layer's
/// [`Listener`](seawall_core::Listener).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use seawall_circuit_breaker::{CircuitBreakerEvent, CircuitBreakerLayer, EventKind, State};
/// use seawall_core::event::FnListener;
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let layer = CircuitBreakerLayer::builder()
///     .name("payments")
///     .listener(FnListener::new(move |e: &CircuitBreakerEvent| {
///         log.lock().unwrap().push(*e.kind());
///     }))
///     .build()
///     .unwrap();
/// layer.handle().force_open();
/// assert_eq!(
///     *seen.lock().unwrap(),
///     vec![EventKind::StateTransition { from: State::Closed, to: State::ForcedOpen }]
/// );
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerEvent {
    layer: Arc<str>,
    key: Option<Arc<str>>,
    kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The breaker moved from one state to another.
    StateTransition {
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
    },
    /// A call was refused with [`CircuitOpen`](crate::CircuitOpen).
    CallRejected {
        /// The state that refused it.
        state: State,
    },
    /// The failure rate of the window reached the threshold (the breaker
    /// trips right after).
    FailureRateExceeded {
        /// The failure rate, in `[0, 1]`.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// The slow-call rate of the window reached the threshold (the breaker
    /// trips right after).
    SlowCallRateExceeded {
        /// The slow-call rate, in `[0, 1]`.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// So many failures in a row that the breaker trips.
    ConsecutiveFailuresExceeded {
        /// Failures in a row.
        failures: u64,
    },
    /// A call the breaker let through finished. Built only when the
    /// listener is enabled.
    CallRecorded {
        /// How the classifier judged it (`Ignore` for a refusal of a
        /// seawall layer below, which the breaker does not count).
        outcome: Outcome,
        /// From the call to its outcome, when the breaker timed the call.
        latency: Option<Duration>,
    },
    /// The fleet's shared state moved this breaker (feature `redis`, see
    /// `FleetSync`): a trip or a half-open verdict published by the fleet.
    /// Comes right after the `StateTransition` it caused.
    FleetStateApplied {
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// The fleet's epoch of the decision (grows with every fleet
        /// state change).
        fleet_epoch: u64,
    },
}

impl CircuitBreakerEvent {
    pub(crate) fn new(layer: Arc<str>, key: Option<Arc<str>>, kind: EventKind) -> Self {
        Self { layer, key, kind }
    }

    /// What happened.
    pub fn kind(&self) -> &EventKind {
        &self.kind
    }

    /// In keyed mode, the key (its `Debug` form) of the breaker that emitted
    /// the event.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl Event for CircuitBreakerEvent {
    fn kind(&self) -> &'static str {
        match self.kind {
            EventKind::StateTransition { .. } => "state_transition",
            EventKind::CallRejected { .. } => "call_rejected",
            EventKind::FailureRateExceeded { .. } => "failure_rate_exceeded",
            EventKind::SlowCallRateExceeded { .. } => "slow_call_rate_exceeded",
            EventKind::ConsecutiveFailuresExceeded { .. } => "consecutive_failures_exceeded",
            EventKind::CallRecorded { .. } => "call_recorded",
            EventKind::FleetStateApplied { .. } => "fleet_state_applied",
        }
    }

    fn layer(&self) -> &str {
        &self.layer
    }

    fn severity(&self) -> Severity {
        match self.kind {
            EventKind::StateTransition { to, .. } if to.is_open() => Severity::Warn,
            EventKind::StateTransition { .. } | EventKind::FleetStateApplied { .. } => {
                Severity::Info
            }
            EventKind::CallRejected { .. } | EventKind::CallRecorded { .. } => Severity::Debug,
            _ => Severity::Warn,
        }
    }

    fn pattern(&self) -> &'static str {
        "circuit_breaker"
    }

    fn facts(&self) -> Facts {
        match self.kind {
            EventKind::StateTransition { from, to }
            | EventKind::FleetStateApplied { from, to, .. } => {
                Facts::NONE.transition(from.as_str(), to.as_str())
            }
            EventKind::CallRejected { .. } => Facts::NONE.refusal(crate::CircuitOpen::KIND),
            EventKind::CallRecorded { outcome, latency } => {
                let facts = Facts::NONE.outcome(match outcome {
                    Outcome::Success => "success",
                    Outcome::Failure => "failure",
                    Outcome::Ignore => "ignored",
                });
                match latency {
                    Some(latency) => facts.latency(latency),
                    None => facts,
                }
            }
            _ => Facts::NONE,
        }
    }
}

/// A listener with its type erased, present only when the listener wants
/// events: the engine then builds no event at all for `NoopListener`.
pub(crate) type Emitter = Arc<dyn Fn(&CircuitBreakerEvent) + Send + Sync>;

pub(crate) fn emitter<L>(listener: L) -> Option<Emitter>
where
    L: seawall_core::Listener<CircuitBreakerEvent>,
{
    if L::ENABLED {
        Some(Arc::new(move |e: &CircuitBreakerEvent| {
            listener.on_event(e);
        }))
    } else {
        None
    }
}
