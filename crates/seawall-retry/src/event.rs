//! The events a retry layer emits.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::event::{Event, Facts, Severity};

/// Why a retry is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// The inner service returned an error the classifier calls a failure.
    Error,
    /// The inner service returned a response the classifier calls a failure
    /// (e.g. a 503).
    Response,
    /// A seawall layer below refused the request (e.g. `"circuit_open"`).
    Rejection(&'static str),
}

/// Why a layer stopped retrying and returned the last failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_attempts` attempts were made.
    MaxAttempts,
    /// The next retry would start after the total deadline.
    Deadline,
    /// The server (or a rejection) asked for a delay longer than `max_delay`.
    HintTooLong,
}

/// An event of a [`JitterRetryLayer`](crate::JitterRetryLayer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RetryEvent {
    /// A failed attempt will be retried after `delay`.
    RetryScheduled {
        /// The layer's name.
        layer: Arc<str>,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// How long the layer waits before the next attempt.
        delay: Duration,
        /// What failed.
        cause: RetryCause,
        /// The delay the server or a rejection asked for, if any.
        hint: Option<Duration>,
        /// Tokens left in the retry budget after this retry's withdrawal,
        /// when the layer has a budget.
        budget_tokens: Option<u32>,
    },
    /// A request failed and will not be retried any more.
    RetriesExhausted {
        /// The layer's name.
        layer: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// Why retrying stopped.
        reason: GiveUpReason,
    },
    /// A retry was refused because the retry budget is empty.
    BudgetExhausted {
        /// The layer's name.
        layer: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// Tokens left in the budget (fewer than one retry costs).
        budget_tokens: Option<u32>,
    },
}

impl Event for RetryEvent {
    fn kind(&self) -> &'static str {
        match self {
            RetryEvent::RetryScheduled { .. } => "retry_scheduled",
            RetryEvent::RetriesExhausted { .. } => "retries_exhausted",
            RetryEvent::BudgetExhausted { .. } => "budget_exhausted",
        }
    }

    fn layer(&self) -> &str {
        match self {
            RetryEvent::RetryScheduled { layer, .. }
            | RetryEvent::RetriesExhausted { layer, .. }
            | RetryEvent::BudgetExhausted { layer, .. } => layer,
        }
    }

    fn severity(&self) -> Severity {
        match self {
            RetryEvent::RetryScheduled { .. } => Severity::Debug,
            RetryEvent::RetriesExhausted { .. } | RetryEvent::BudgetExhausted { .. } => {
                Severity::Warn
            }
        }
    }

    fn pattern(&self) -> &'static str {
        "retry"
    }

    fn facts(&self) -> Facts {
        match self {
            // The attempt that failed is `attempt`; the one scheduled is next.
            RetryEvent::RetryScheduled {
                attempt,
                budget_tokens,
                ..
            } => {
                let facts = Facts::NONE.attempt(attempt.saturating_add(1));
                match budget_tokens {
                    Some(tokens) => facts.budget(f64::from(*tokens)),
                    None => facts,
                }
            }
            RetryEvent::BudgetExhausted { budget_tokens, .. } => match budget_tokens {
                Some(tokens) => Facts::NONE.budget(f64::from(*tokens)),
                None => Facts::NONE,
            },
            RetryEvent::RetriesExhausted { .. } => Facts::NONE,
        }
    }
}
