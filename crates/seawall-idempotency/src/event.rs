//! Events of the idempotency layer.

use std::sync::Arc;

use seawall_core::event::{Event, Facts, Severity};

/// Something the idempotency layer did with a request.
#[derive(Debug, Clone)]
pub struct IdempotencyEvent {
    layer: Arc<str>,
    kind: IdempotencyEventKind,
}

/// What happened, in an [`IdempotencyEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdempotencyEventKind {
    /// The request claimed its key and the handler runs.
    Claimed,
    /// A stored response was replayed.
    Replayed,
    /// The key was in flight: 409 (after waiting, in wait mode).
    InFlight,
    /// The key was used before with another request: 422.
    Mismatch,
    /// The key header was missing where required, or malformed: 400.
    KeyRefused,
    /// The request body was over the limit: 413.
    BodyTooLarge,
    /// The request body did not arrive within the body timeout: 408.
    BodyTimedOut,
    /// The handler's response was stored.
    Stored,
    /// The handler's response was stored without its body, which was over
    /// the size cap.
    StoredWithoutBody,
    /// The completion was refused: the claim's lease had ended and another
    /// request may have taken the key over.
    Fenced,
    /// The claim was given up (handler error, a status the policy does not
    /// keep, a panic), so a retry runs the handler again. Emitted once the
    /// release was attempted: if the store failed it, the key frees when its
    /// lease ends.
    Released,
    /// The store failed; the request got 503 (fail-closed).
    StoreUnavailable,
    /// The store had no room for a new key (every record in it is live);
    /// the request got 503 with `Retry-After` and the handler did not run.
    StoreFull,
    /// The store failed and the handler ran without idempotency (fail-open).
    FailedOpen,
    /// Storing the response failed; the claim stays until its lease ends.
    CompleteFailed,
}

impl IdempotencyEvent {
    pub(crate) fn new(layer: Arc<str>, kind: IdempotencyEventKind) -> Self {
        Self { layer, kind }
    }

    /// What happened.
    pub fn event_kind(&self) -> IdempotencyEventKind {
        self.kind
    }
}

impl Event for IdempotencyEvent {
    fn kind(&self) -> &'static str {
        match self.kind {
            IdempotencyEventKind::Claimed => "claimed",
            IdempotencyEventKind::Replayed => "replayed",
            IdempotencyEventKind::InFlight => "in_flight",
            IdempotencyEventKind::Mismatch => "mismatch",
            IdempotencyEventKind::KeyRefused => "key_refused",
            IdempotencyEventKind::BodyTooLarge => "body_too_large",
            IdempotencyEventKind::BodyTimedOut => "body_timed_out",
            IdempotencyEventKind::Stored => "stored",
            IdempotencyEventKind::StoredWithoutBody => "stored_without_body",
            IdempotencyEventKind::Fenced => "fenced",
            IdempotencyEventKind::Released => "released",
            IdempotencyEventKind::StoreUnavailable => "store_unavailable",
            IdempotencyEventKind::StoreFull => "store_full",
            IdempotencyEventKind::FailedOpen => "failed_open",
            IdempotencyEventKind::CompleteFailed => "complete_failed",
        }
    }

    fn layer(&self) -> &str {
        &self.layer
    }

    fn severity(&self) -> Severity {
        match self.kind {
            IdempotencyEventKind::Claimed
            | IdempotencyEventKind::Replayed
            | IdempotencyEventKind::Stored
            | IdempotencyEventKind::StoredWithoutBody => Severity::Debug,
            IdempotencyEventKind::InFlight
            | IdempotencyEventKind::Mismatch
            | IdempotencyEventKind::KeyRefused
            | IdempotencyEventKind::BodyTooLarge
            | IdempotencyEventKind::BodyTimedOut
            | IdempotencyEventKind::Released => Severity::Info,
            IdempotencyEventKind::Fenced
            | IdempotencyEventKind::StoreUnavailable
            | IdempotencyEventKind::StoreFull
            | IdempotencyEventKind::FailedOpen
            | IdempotencyEventKind::CompleteFailed => Severity::Warn,
        }
    }

    fn pattern(&self) -> &'static str {
        "idempotency"
    }

    /// Requests the layer answered itself carry a refusal, by the `kind` of
    /// the problem it answered with (`idempotency_key_refused` stands for
    /// both `idempotency_key_missing` and `idempotency_key_invalid`).
    fn facts(&self) -> Facts {
        let refusal = match self.kind {
            IdempotencyEventKind::InFlight => "idempotency_in_flight",
            IdempotencyEventKind::Mismatch => "idempotency_key_mismatch",
            IdempotencyEventKind::KeyRefused => "idempotency_key_refused",
            IdempotencyEventKind::BodyTooLarge => "idempotency_body_too_large",
            IdempotencyEventKind::BodyTimedOut => "idempotency_body_timeout",
            IdempotencyEventKind::StoreUnavailable => "idempotency_store_unavailable",
            IdempotencyEventKind::StoreFull => "idempotency_store_full",
            _ => return Facts::NONE,
        };
        Facts::NONE.refusal(refusal)
    }
}
