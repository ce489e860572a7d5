//! Rejections: a layer's own refusal to run a request.
//!
//! An open circuit breaker, a full bulkhead or an injected fault refuses a
//! request with a small error type of its own (`CircuitOpen`,
//! `BulkheadFull`, ...). Callers match the concrete type with
//! `err.is::<CircuitOpen>()`. Layers that only hold a [`BoxError`] (retry,
//! fallback, the HTTP rejection response) read the refusal's HTTP status and
//! `Retry-After` hint with [`find`], which needs no concrete type: every
//! rejection returns a [`Rejected`] from [`Error::source`], and [`find`] walks
//! the source chain looking for it. The walk also sees through wrappers such
//! as `tower::buffer`'s `ServiceError`.
//!
//! ```
//! use std::{error::Error, fmt, time::Duration};
//! use http::StatusCode;
//! use seawall_core::{rejection, BoxError, Rejected, Rejection};
//!
//! /// The kind of error a layer would define.
//! #[derive(Debug)]
//! struct Overloaded(Rejected);
//!
//! impl fmt::Display for Overloaded {
//!     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
//!         f.write_str("service overloaded")
//!     }
//! }
//! impl Error for Overloaded {
//!     fn source(&self) -> Option<&(dyn Error + 'static)> {
//!         Some(&self.0)
//!     }
//! }
//! impl Rejection for Overloaded {
//!     fn rejected(&self) -> &Rejected {
//!         &self.0
//!     }
//! }
//!
//! let err: BoxError = Box::new(Overloaded(Rejected::new(
//!     "overloaded",
//!     StatusCode::SERVICE_UNAVAILABLE,
//!     Some(Duration::from_secs(2)),
//! )));
//! let found = rejection::find(&*err).expect("a seawall rejection");
//! assert_eq!(found.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(found.retry_after(), Some(Duration::from_secs(2)));
//! assert_eq!(found.kind(), "overloaded");
//! ```
//!
//! [`BoxError`]: crate::BoxError
//! [`Error::source`]: std::error::Error::source

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// A seawall layer's refusal to run a request.
///
/// Implementors are small public error structs that hold a [`Rejected`] and
/// return it from [`Error::source`], so that [`find`] recognises them inside
/// any boxed error.
pub trait Rejection: Error + Send + Sync + 'static {
    /// The status and hint of this rejection.
    fn rejected(&self) -> &Rejected;

    /// The HTTP status a server should answer with.
    fn status(&self) -> StatusCode {
        self.rejected().status()
    }

    /// How long the caller should wait before trying again, if known.
    fn retry_after(&self) -> Option<Duration> {
        self.rejected().retry_after()
    }
}

/// The part of a rejection that any layer can read: a machine-readable kind,
/// an HTTP status and a `Retry-After` hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    kind: &'static str,
    status: StatusCode,
    retry_after: Option<Duration>,
}

impl Rejected {
    /// A rejection of `kind` (snake case, e.g. `"circuit_open"`).
    pub const fn new(
        kind: &'static str,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            kind,
            status,
            retry_after,
        }
    }

    /// The machine-readable kind, e.g. `"circuit_open"`.
    pub const fn kind(&self) -> &'static str {
        self.kind
    }

    /// The HTTP status a server should answer with.
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// How long the caller should wait before trying again, if known.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected by seawall ({}, {})", self.kind, self.status)?;
        if let Some(after) = self.retry_after {
            write!(f, ", retry after {after:?}")?;
        }
        Ok(())
    }
}

impl Error for Rejected {}

impl Rejection for Rejected {
    fn rejected(&self) -> &Rejected {
        self
    }
}

/// Finds the seawall rejection in an error or its source chain.
///
/// Returns `None` for errors that no seawall layer produced.
pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Rejected> {
    let mut current: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(rejected) = e.downcast_ref::<Rejected>() {
            return Some(rejected);
        }
        current = e.source();
    }
    None
}

/// `true` if the error or one of its sources is a seawall rejection.
pub fn is_rejection(err: &(dyn Error + 'static)) -> bool {
    find(err).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn finds_through_wrappers_and_not_elsewhere() {
        let inner = Rejected::new("test", StatusCode::TOO_MANY_REQUESTS, None);
        let err: BoxError = Box::new(Wrapper(Box::new(inner)));
        let found = find(&*err).unwrap();
        assert_eq!(found.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(found.kind(), "test");
        assert!(is_rejection(&*err));

        let other: BoxError = "plain".into();
        assert!(find(&*other).is_none());
        let wrapped_other: BoxError = Box::new(Wrapper("plain".into()));
        assert!(!is_rejection(&*wrapped_other));
    }

    #[test]
    fn display_names_kind_status_and_hint() {
        let r = Rejected::new(
            "circuit_open",
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(7)),
        );
        assert_eq!(
            r.to_string(),
            "rejected by seawall (circuit_open, 503 Service Unavailable), retry after 7s"
        );
        assert_eq!(r.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(Rejection::status(&r), StatusCode::SERVICE_UNAVAILABLE);
    }
}
