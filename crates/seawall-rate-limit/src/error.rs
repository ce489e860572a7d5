//! The limiter's refusal.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use seawall_core::{GrpcCode, Rejected, Rejection};

/// A rate limit refused the request.
///
/// Answered with `429 Too Many Requests` (`RESOURCE_EXHAUSTED` for gRPC)
/// and, through `seawall::http::RejectionResponseLayer`, a `Retry-After` of
/// the exact time until the request's cost is free again, rounded up to
/// whole seconds. The hint is `None` only when the request costs more than a
/// limit's whole burst and can never pass ([`is_never`](Self::is_never) is
/// `true`: retrying it is pointless), or when a fleet-wide limit could not be
/// consulted and the layer fails closed (`is_never` is `false`: it may pass
/// once Redis answers).
///
/// ```
/// use seawall_rate_limit::RateLimited;
/// use seawall_core::{rejection, BoxError};
///
/// # fn check(err: BoxError) {
/// if let Some(limited) = err.downcast_ref::<RateLimited>() {
///     println!("limited by {} for {:?}", limited.limit(), limited.retry_after());
/// }
/// // Or, without knowing the type:
/// if let Some(rejected) = rejection::find(&*err) {
///     assert_eq!(rejected.status(), 429);
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimited {
    rejected: Rejected,
    limit: Arc<str>,
    fields: Option<(HeaderValue, HeaderValue)>,
    never: bool,
}

impl RateLimited {
    pub(crate) const KIND: &'static str = "rate_limited";

    pub(crate) fn new(retry_after: Option<Duration>, limit: Arc<str>) -> Self {
        Self {
            rejected: Rejected::new(Self::KIND, StatusCode::TOO_MANY_REQUESTS, retry_after),
            limit,
            fields: None,
            never: false,
        }
    }

    /// Marks a refusal that can never pass: the cost exceeds a burst.
    pub(crate) fn never(mut self) -> Self {
        self.never = true;
        self
    }

    pub(crate) fn with_fields(mut self, policy: HeaderValue, state: HeaderValue) -> Self {
        self.fields = Some((policy, state));
        self
    }

    /// The name of the limit that refused (the one needing the longest
    /// wait).
    pub fn limit(&self) -> &str {
        &self.limit
    }

    /// The exact time until the request would be admitted.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rejected.retry_after()
    }

    /// `true` when the request costs more than a limit's whole burst: no
    /// wait will ever admit it, so retrying it (or the same request later)
    /// is pointless. `false` for every transient refusal, including a
    /// fleet-wide limit failing closed (no `retry_after` either, but it may
    /// pass once Redis answers).
    pub fn is_never(&self) -> bool {
        self.never
    }

    /// The `RateLimit-Policy` and `RateLimit` field values at the refusal,
    /// when the layer writes the fields.
    pub fn fields(&self) -> Option<(&HeaderValue, &HeaderValue)> {
        self.fields.as_ref().map(|(p, s)| (p, s))
    }

    /// The gRPC status code for this refusal: `RESOURCE_EXHAUSTED`.
    pub fn grpc_code(&self) -> GrpcCode {
        GrpcCode::from_http_status(self.rejected.status())
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limited")
    }
}

impl Error for RateLimited {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.rejected)
    }
}

impl Rejection for RateLimited {
    fn rejected(&self) -> &Rejected {
        &self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::{rejection, BoxError};

    #[test]
    fn found_with_status_hint_and_grpc_code() {
        let hint = Some(Duration::from_millis(250));
        let err: BoxError = Box::new(RateLimited::new(hint, Arc::from("ip")));
        let found = rejection::find(&*err).expect("a rejection");
        assert_eq!(found.kind(), "rate_limited");
        assert_eq!(found.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(found.retry_after(), hint);
        assert_eq!(err.to_string(), "rate limited");
        let typed = err.downcast_ref::<RateLimited>().expect("typed");
        assert_eq!(typed.limit(), "ip");
        assert_eq!(typed.grpc_code(), GrpcCode::ResourceExhausted);
        assert!(typed.fields().is_none());
    }
}
