//! Errors.

use std::error::Error;
use std::fmt;

use http::StatusCode;
use seawall_core::{Rejected, Rejection};

/// A store could not be reached or answered something unreadable.
///
/// The layer answers 503 with `Retry-After` and does not call the handler
/// (unless it was built with `fail_open(true)`).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<Box<dyn Error + Send + Sync>>,
}

/// What went wrong in a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store is down, unreachable or timed out.
    Unavailable,
    /// The store is full of live records and will not evict one.
    Full,
    /// A stored value could not be read.
    Corrupt,
    /// The store is set up so that it could drop live records (for example
    /// a Redis server with an evicting `maxmemory-policy`).
    Misconfigured,
}

impl StoreError {
    /// The store is down, unreachable or timed out.
    pub fn unavailable(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            kind: StoreErrorKind::Unavailable,
            source: Some(source.into()),
        }
    }

    /// The store is full of live records.
    pub fn full() -> Self {
        Self {
            kind: StoreErrorKind::Full,
            source: None,
        }
    }

    /// A stored value could not be read.
    pub fn corrupt(what: &'static str) -> Self {
        Self {
            kind: StoreErrorKind::Corrupt,
            source: Some(what.into()),
        }
    }

    /// The store is set up so that it could drop live records.
    pub fn misconfigured(why: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            kind: StoreErrorKind::Misconfigured,
            source: Some(why.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StoreErrorKind::Unavailable => f.write_str("idempotency store unavailable"),
            StoreErrorKind::Full => f.write_str("idempotency store full"),
            StoreErrorKind::Corrupt => f.write_str("idempotency store returned a corrupt record"),
            StoreErrorKind::Misconfigured => {
                f.write_str("idempotency store is configured to drop live records")
            }
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// The handler panicked while holding a key. The claim was released, so a
/// retry runs the handler again.
///
/// Its [`Rejected`] reports a failure of the handler
/// ([`Rejected::reports_failure`]), not a refusal of this layer, so a
/// circuit breaker above the idempotency layer counts it as a failure.
#[derive(Debug)]
pub struct HandlerPanicked {
    rejected: Rejected,
}

impl HandlerPanicked {
    pub(crate) const fn new() -> Self {
        Self {
            // A failure of the handler below, not a refusal of this layer:
            // a circuit breaker above counts it.
            rejected: Rejected::failure(
                "handler_panicked",
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
        }
    }
}

impl fmt::Display for HandlerPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("handler panicked while holding an idempotency key")
    }
}

impl Error for HandlerPanicked {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.rejected)
    }
}

impl Rejection for HandlerPanicked {
    fn rejected(&self) -> &Rejected {
        &self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_error_kinds_and_sources() {
        let e = StoreError::unavailable("connection refused");
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        assert_eq!(e.to_string(), "idempotency store unavailable");
        assert_eq!(e.source().unwrap().to_string(), "connection refused");
        assert!(StoreError::full().source().is_none());
        assert_eq!(StoreError::corrupt("x").kind(), StoreErrorKind::Corrupt);
        let e = StoreError::misconfigured("maxmemory-policy is allkeys-lru");
        assert_eq!(e.kind(), StoreErrorKind::Misconfigured);
        assert_eq!(
            e.to_string(),
            "idempotency store is configured to drop live records"
        );
    }

    #[test]
    fn panic_is_a_500_rejection() {
        let err: seawall_core::BoxError = Box::new(HandlerPanicked::new());
        let found = seawall_core::rejection::find(&*err).unwrap();
        assert_eq!(found.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.is::<HandlerPanicked>());
        // A failure of the handler, not a refusal: breakers above count it.
        assert!(found.reports_failure());
        assert!(seawall_core::rejection::find_refusal(&*err).is_none());
    }
}
