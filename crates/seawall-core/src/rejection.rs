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

use crate::GrpcCode;

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
/// an HTTP status, a `Retry-After` hint, the text a client may be shown and
/// the gRPC code a server answers with.
///
/// The text a client sees ([`detail`](Self::detail)) is a `&'static str`
/// written by the layer that refuses, never built from request data or from
/// another error's message; adapters such as `seawall::http` send nothing
/// else.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use seawall_core::{GrpcCode, Rejected};
///
/// let r = Rejected::new("quota_spent", StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(1)))
///     .with_detail("the tenant's quota is spent");
/// assert_eq!(r.detail(), "the tenant's quota is spent");
/// assert_eq!(r.grpc_code(), GrpcCode::ResourceExhausted);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    kind: &'static str,
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: Option<&'static str>,
    grpc_code: Option<GrpcCode>,
    /// The answer reports a failure of what is below the layer (see
    /// [`Rejected::failure`]) rather than the layer's own refusal.
    failure: bool,
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
            detail: None,
            grpc_code: None,
            failure: false,
        }
    }

    /// An answer of `kind` that reports a *failure of what is below* the
    /// layer (the handler or dependency it guards), not a local refusal:
    /// e.g. the idempotency layer's `handler_panicked`. It is found by
    /// [`find`] like any rejection (status, hint, detail), but
    /// [`find_refusal`] skips it, so a circuit breaker above counts it as a
    /// failure of the dependency and `IgnoreRejections` does not ignore it.
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::{rejection, BoxError, Rejected};
    ///
    /// let panicked = Rejected::failure("handler_panicked", StatusCode::INTERNAL_SERVER_ERROR, None);
    /// assert!(panicked.reports_failure() && !panicked.is_refusal());
    /// let err: BoxError = Box::new(panicked);
    /// assert!(rejection::find(&*err).is_some());
    /// assert!(rejection::find_refusal(&*err).is_none());
    /// ```
    pub const fn failure(
        kind: &'static str,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut r = Self::new(kind, status, retry_after);
        r.failure = true;
        r
    }

    /// `true` for a layer's own refusal to run the request (a full bulkhead,
    /// a rate limit, an open breaker, a full registry, an idempotency key
    /// in use...): what [`Rejected::new`] makes. The dependency was never
    /// reached, so breakers do not count it.
    pub const fn is_refusal(&self) -> bool {
        !self.failure
    }

    /// `true` for an answer that reports a failure of what is below the
    /// layer (made by [`Rejected::failure`]).
    pub const fn reports_failure(&self) -> bool {
        self.failure
    }

    /// Sets the text a client may be shown (an HTTP problem's `detail`, a
    /// `grpc-message`). Write it as the layer's own fixed words: it must not
    /// carry request data, secrets or another error's message.
    #[must_use]
    pub const fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Sets the gRPC code a server answers this rejection with, instead of
    /// the one derived from the kind and status (see
    /// [`grpc_code`](Self::grpc_code)).
    #[must_use]
    pub const fn with_grpc_code(mut self, code: GrpcCode) -> Self {
        self.grpc_code = Some(code);
        self
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

    /// The text a client may be shown: the one set with
    /// [`with_detail`](Self::with_detail), else a fixed text for the kinds
    /// seawall's layers use (`circuit_open`, `bulkhead_full`,
    /// `bulkhead_timeout`, `rate_limited`, ...), else a fixed text for the
    /// status.
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::Rejected;
    ///
    /// let open = Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None);
    /// assert_eq!(open.detail(), "the circuit breaker is open");
    /// ```
    pub fn detail(&self) -> &'static str {
        if let Some(detail) = self.detail {
            return detail;
        }
        match self.kind {
            "circuit_open" => "the circuit breaker is open",
            "bulkhead_full" => "the bulkhead is full",
            "bulkhead_timeout" => "timed out waiting for a bulkhead permit",
            "rate_limited" => "the rate limit is exceeded",
            "timeout" => "the request timed out",
            "overloaded" => "the service is overloaded",
            "injected_fault" => "an injected fault",
            "handler_panicked" => "the handler failed",
            _ => match self.status.as_u16() {
                429 => "too many requests",
                503 => "the service is unavailable",
                408 | 504 => "the request timed out",
                _ => "the request was refused",
            },
        }
    }

    /// The gRPC code a server answers this rejection with: the one set with
    /// [`with_grpc_code`](Self::with_grpc_code), else `RESOURCE_EXHAUSTED`
    /// for the kind `rate_limited`, else
    /// [`GrpcCode::from_http_status`] of the status (`503` is
    /// `UNAVAILABLE`, `429` `RESOURCE_EXHAUSTED`, `504` `DEADLINE_EXCEEDED`).
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::{GrpcCode, Rejected};
    ///
    /// let full = Rejected::new("bulkhead_full", StatusCode::SERVICE_UNAVAILABLE, None);
    /// assert_eq!(full.grpc_code(), GrpcCode::Unavailable);
    /// ```
    pub fn grpc_code(&self) -> GrpcCode {
        if let Some(code) = self.grpc_code {
            return code;
        }
        if self.kind == "rate_limited" {
            return GrpcCode::ResourceExhausted;
        }
        GrpcCode::from_http_status(self.status)
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

/// Finds a seawall rejection that is a layer's own refusal (see
/// [`Rejected::is_refusal`]) in an error or its source chain: what a
/// circuit breaker or `IgnoreRejections` must not count as a failure of the
/// dependency. A rejection that reports a failure below the layer
/// ([`Rejected::failure`]) is not one.
pub fn find_refusal<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Rejected> {
    find(err).filter(|r| r.is_refusal())
}

/// `true` if the error or one of its sources is a seawall refusal (see
/// [`find_refusal`]).
pub fn is_refusal(err: &(dyn Error + 'static)) -> bool {
    find_refusal(err).is_some()
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
    fn refusals_and_reported_failures_are_told_apart() {
        let refusal = Rejected::new("bulkhead_full", StatusCode::SERVICE_UNAVAILABLE, None);
        assert!(refusal.is_refusal() && !refusal.reports_failure());
        let err: BoxError = Box::new(Wrapper(Box::new(refusal)));
        assert!(is_refusal(&*err));
        assert_eq!(find_refusal(&*err).unwrap().kind(), "bulkhead_full");

        let failure =
            Rejected::failure("handler_panicked", StatusCode::INTERNAL_SERVER_ERROR, None)
                .with_detail("x");
        assert!(failure.reports_failure() && !failure.is_refusal());
        let err: BoxError = Box::new(Wrapper(Box::new(failure)));
        assert!(is_rejection(&*err));
        assert_eq!(find(&*err).unwrap().kind(), "handler_panicked");
        assert!(find_refusal(&*err).is_none() && !is_refusal(&*err));
    }

    #[test]
    fn detail_is_fixed_text_per_kind_status_or_explicit() {
        let r =
            |kind, status: u16| Rejected::new(kind, StatusCode::from_u16(status).unwrap(), None);
        assert_eq!(
            r("circuit_open", 503).detail(),
            "the circuit breaker is open"
        );
        assert_eq!(r("bulkhead_full", 503).detail(), "the bulkhead is full");
        assert_eq!(
            r("bulkhead_timeout", 503).detail(),
            "timed out waiting for a bulkhead permit"
        );
        assert_eq!(
            r("rate_limited", 429).detail(),
            "the rate limit is exceeded"
        );
        assert_eq!(r("custom", 503).detail(), "the service is unavailable");
        assert_eq!(r("custom", 429).detail(), "too many requests");
        assert_eq!(r("custom", 504).detail(), "the request timed out");
        assert_eq!(r("custom", 418).detail(), "the request was refused");
        assert_eq!(r("custom", 418).with_detail("mine").detail(), "mine");
    }

    #[test]
    fn grpc_code_from_kind_status_or_explicit() {
        let r =
            |kind, status: u16| Rejected::new(kind, StatusCode::from_u16(status).unwrap(), None);
        assert_eq!(r("circuit_open", 503).grpc_code(), GrpcCode::Unavailable);
        assert_eq!(
            r("bulkhead_timeout", 503).grpc_code(),
            GrpcCode::Unavailable
        );
        assert_eq!(
            r("rate_limited", 503).grpc_code(),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(r("custom", 429).grpc_code(), GrpcCode::ResourceExhausted);
        assert_eq!(r("custom", 504).grpc_code(), GrpcCode::DeadlineExceeded);
        assert_eq!(
            r("custom", 503)
                .with_grpc_code(GrpcCode::Aborted)
                .grpc_code(),
            GrpcCode::Aborted
        );
        // The builders leave the kind, status and hint as they were.
        let plain = r("custom", 503);
        let dressed = plain.with_detail("x").with_grpc_code(GrpcCode::Aborted);
        assert_eq!(dressed.kind(), plain.kind());
        assert_eq!(dressed.status(), plain.status());
        assert_eq!(dressed.retry_after(), plain.retry_after());
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
