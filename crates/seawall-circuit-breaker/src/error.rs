//! The breaker's own refusal.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::StatusCode;
use seawall_core::{Rejected, Rejection};

/// The error returned instead of calling the inner service while the breaker
/// is open (or half-open with every probe slot taken, or forced open).
///
/// Its [`Rejection::status`] is `503 Service Unavailable` and its
/// [`Rejection::retry_after`] is the time left until the breaker lets a
/// probe through, when that is known.
///
/// ```
/// use seawall_circuit_breaker::CircuitOpen;
/// use seawall_core::{rejection, BoxError};
///
/// fn is_fast_failure(err: &BoxError) -> bool {
///     err.is::<CircuitOpen>()
///         || rejection::find(&**err).is_some_and(|r| r.kind() == "circuit_open")
/// }
/// # let _ = is_fast_failure;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    rejected: Rejected,
}

impl CircuitOpen {
    /// The `kind` of the [`Rejected`] inside, for code that only holds a
    /// `BoxError`.
    pub const KIND: &'static str = "circuit_open";

    pub(crate) const fn retry_after_hint(&self) -> Option<Duration> {
        self.rejected.retry_after()
    }

    pub(crate) const fn new(retry_after: Option<Duration>) -> Self {
        Self {
            rejected: Rejected::new(Self::KIND, StatusCode::SERVICE_UNAVAILABLE, retry_after),
        }
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker is open")
    }
}

impl Error for CircuitOpen {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.rejected)
    }
}

impl Rejection for CircuitOpen {
    fn rejected(&self) -> &Rejected {
        &self.rejected
    }
}

/// The error returned by a keyed breaker for a request whose key has no
/// breaker yet when the registry is full and holds no breaker it may drop.
///
/// A keyed registry never drops a breaker that is open, half-open, forced
/// open or disabled (that would silently close a failing dependency's
/// circuit); when every place holds one, new keys are refused with this
/// error instead, without calling the inner service. Its status is `503`
/// and its `retry_after` hint the breaker's base open duration.
///
/// ```
/// use seawall_circuit_breaker::KeyedRegistryFull;
/// use seawall_core::BoxError;
///
/// fn is_registry_full(err: &BoxError) -> bool {
///     err.is::<KeyedRegistryFull>()
/// }
/// # let _ = is_registry_full;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedRegistryFull {
    rejected: Rejected,
}

impl KeyedRegistryFull {
    /// The `kind` of the [`Rejected`] inside.
    pub const KIND: &'static str = "circuit_breaker_registry_full";

    pub(crate) const fn new(retry_after: Option<Duration>) -> Self {
        Self {
            rejected: Rejected::new(Self::KIND, StatusCode::SERVICE_UNAVAILABLE, retry_after),
        }
    }
}

impl fmt::Display for KeyedRegistryFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker registry is full")
    }
}

impl Error for KeyedRegistryFull {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.rejected)
    }
}

impl Rejection for KeyedRegistryFull {
    fn rejected(&self) -> &Rejected {
        &self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::BoxError;

    #[test]
    fn is_a_503_rejection_with_hint() {
        let err: BoxError = Box::new(CircuitOpen::new(Some(Duration::from_secs(3))));
        assert_eq!(err.to_string(), "circuit breaker is open");
        assert!(err.is::<CircuitOpen>());
        let found = seawall_core::rejection::find(&*err).unwrap();
        assert_eq!(found.kind(), "circuit_open");
        assert_eq!(found.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(found.retry_after(), Some(Duration::from_secs(3)));
        let open = err.downcast_ref::<CircuitOpen>().unwrap();
        assert_eq!(Rejection::retry_after(open), Some(Duration::from_secs(3)));
    }
}
