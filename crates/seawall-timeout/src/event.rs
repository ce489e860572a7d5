//! The events the two layers emit.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::event::{Event, Facts, Severity};

/// An event of an [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TimeoutEvent {
    /// A call ran out of time and was dropped.
    TimedOut {
        /// The layer's name.
        layer: Arc<str>,
        /// The timeout that elapsed.
        timeout: Duration,
        /// The adaptive threshold at the start of the call.
        threshold: Duration,
        /// `true` when the request's own, shorter deadline applied.
        carried: bool,
    },
}

impl Event for TimeoutEvent {
    fn kind(&self) -> &'static str {
        match self {
            TimeoutEvent::TimedOut { .. } => "timed_out",
        }
    }

    fn layer(&self) -> &str {
        match self {
            TimeoutEvent::TimedOut { layer, .. } => layer,
        }
    }

    fn severity(&self) -> Severity {
        Severity::Warn
    }

    fn pattern(&self) -> &'static str {
        "timeout"
    }

    fn facts(&self) -> Facts {
        match self {
            TimeoutEvent::TimedOut { timeout, .. } => {
                Facts::NONE.outcome("failure").latency(*timeout)
            }
        }
    }
}

/// An event of a [`HedgeLayer`](crate::HedgeLayer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HedgeEvent {
    /// One more attempt was sent because the others were slower than the
    /// hedge delay.
    HedgeSent {
        /// The layer's name.
        layer: Arc<str>,
        /// The attempt sent (2 for the first hedge).
        attempt: u32,
        /// The delay after which it was sent.
        delay: Duration,
    },
    /// A hedge was due but the hedge budget was empty.
    BudgetExhausted {
        /// The layer's name.
        layer: Arc<str>,
        /// Whole tokens left in the budget.
        tokens: u32,
    },
}

impl Event for HedgeEvent {
    fn kind(&self) -> &'static str {
        match self {
            HedgeEvent::HedgeSent { .. } => "hedge_sent",
            HedgeEvent::BudgetExhausted { .. } => "budget_exhausted",
        }
    }

    fn layer(&self) -> &str {
        match self {
            HedgeEvent::HedgeSent { layer, .. } | HedgeEvent::BudgetExhausted { layer, .. } => {
                layer
            }
        }
    }

    fn severity(&self) -> Severity {
        match self {
            HedgeEvent::HedgeSent { .. } => Severity::Debug,
            HedgeEvent::BudgetExhausted { .. } => Severity::Warn,
        }
    }

    fn pattern(&self) -> &'static str {
        "hedge"
    }

    fn facts(&self) -> Facts {
        match self {
            HedgeEvent::HedgeSent { attempt, .. } => Facts::NONE.attempt(*attempt),
            HedgeEvent::BudgetExhausted { tokens, .. } => Facts::NONE.budget(f64::from(*tokens)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_pattern_and_facts() {
        let e = TimeoutEvent::TimedOut {
            layer: "db".into(),
            timeout: Duration::from_millis(30),
            threshold: Duration::from_millis(40),
            carried: true,
        };
        assert_eq!(
            (e.kind(), e.layer(), e.pattern()),
            ("timed_out", "db", "timeout")
        );
        assert_eq!(e.facts().latency, Some(Duration::from_millis(30)));
        assert_eq!(e.facts().outcome, Some("failure"));
        let h = HedgeEvent::HedgeSent {
            layer: "db".into(),
            attempt: 2,
            delay: Duration::from_millis(5),
        };
        assert_eq!((h.kind(), h.pattern()), ("hedge_sent", "hedge"));
        assert_eq!(h.facts().attempt, Some(2));
        let b = HedgeEvent::BudgetExhausted {
            layer: "db".into(),
            tokens: 0,
        };
        assert_eq!(b.facts().budget, Some(0.0));
        assert_eq!(b.severity(), Severity::Warn);
    }
}
