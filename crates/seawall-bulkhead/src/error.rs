//! The bulkhead's own refusals.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::StatusCode;
use seawall_core::{BoxError, Rejected, Rejection};

use crate::priority::Priority;

/// The bulkhead refused a request without running it: every permit was in
/// use and the wait queue was full (or disabled), or the request's priority
/// class had used up its share of the limit.
///
/// Answered with `503 Service Unavailable` and a short `Retry-After`.
///
/// ```
/// use seawall_bulkhead::BulkheadFull;
/// use seawall_core::{rejection, BoxError};
///
/// # fn check(err: BoxError) {
/// if let Some(full) = err.downcast_ref::<BulkheadFull>() {
///     println!("shed: {}", full.is_shed());
/// }
/// // Or, without knowing the type:
/// if let Some(rejected) = rejection::find(&*err) {
///     assert_eq!(rejected.status(), 503);
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadFull {
    rejected: Rejected,
    priority: Option<Priority>,
    shed: bool,
}

impl BulkheadFull {
    pub(crate) const KIND: &'static str = "bulkhead_full";

    pub(crate) const fn new(
        retry_after: Option<Duration>,
        priority: Option<Priority>,
        shed: bool,
    ) -> Self {
        Self {
            rejected: Rejected::new(Self::KIND, StatusCode::SERVICE_UNAVAILABLE, retry_after),
            priority,
            shed,
        }
    }

    /// The priority class of the refused request, if the bulkhead
    /// prioritises requests.
    pub const fn priority(&self) -> Option<Priority> {
        self.priority
    }

    /// `true` if the request was refused because its priority class had used
    /// up its share of the limit while permits were still free for more
    /// important work, or was evicted from a full queue by more important
    /// work.
    pub const fn is_shed(&self) -> bool {
        self.shed
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shed {
            f.write_str("bulkhead shed low-priority request")
        } else {
            f.write_str("bulkhead full")
        }
    }
}

impl Error for BulkheadFull {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.rejected)
    }
}

impl Rejection for BulkheadFull {
    fn rejected(&self) -> &Rejected {
        &self.rejected
    }
}

/// A request waited in the bulkhead's queue for `max_wait` without getting a
/// permit.
///
/// Answered with `503 Service Unavailable` and a short `Retry-After`.
#[derive(Debug, Clone)]
pub struct BulkheadTimeout {
    rejected: Rejected,
    priority: Option<Priority>,
}

impl BulkheadTimeout {
    pub(crate) const KIND: &'static str = "bulkhead_timeout";

    pub(crate) const fn new(retry_after: Option<Duration>, priority: Option<Priority>) -> Self {
        Self {
            rejected: Rejected::new(Self::KIND, StatusCode::SERVICE_UNAVAILABLE, retry_after),
            priority,
        }
    }

    /// The priority class of the refused request, if the bulkhead
    /// prioritises requests.
    pub const fn priority(&self) -> Option<Priority> {
        self.priority
    }
}

impl fmt::Display for BulkheadTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out waiting for a bulkhead permit")
    }
}

impl Error for BulkheadTimeout {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.rejected)
    }
}

impl Rejection for BulkheadTimeout {
    fn rejected(&self) -> &Rejected {
        &self.rejected
    }
}

/// Either refusal, kept unboxed until the response future is polled.
#[derive(Debug)]
pub(crate) enum Refusal {
    Full(BulkheadFull),
    Timeout(BulkheadTimeout),
}

impl Refusal {
    pub(crate) fn into_box(self) -> BoxError {
        match self {
            Refusal::Full(e) => Box::new(e),
            Refusal::Timeout(e) => Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::rejection;

    #[test]
    fn rejections_are_found_with_status_and_hint() {
        let hint = Some(Duration::from_secs(1));
        let full: BoxError = Refusal::Full(BulkheadFull::new(hint, None, false)).into_box();
        let found = rejection::find(&*full).expect("a rejection");
        assert_eq!(found.kind(), "bulkhead_full");
        assert_eq!(found.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(found.retry_after(), hint);
        assert_eq!(full.to_string(), "bulkhead full");
        assert!(full.is::<BulkheadFull>());

        let shed = BulkheadFull::new(None, Some(Priority::Sheddable), true);
        assert!(shed.is_shed());
        assert_eq!(shed.priority(), Some(Priority::Sheddable));
        assert_eq!(shed.to_string(), "bulkhead shed low-priority request");
        assert_eq!(Rejection::retry_after(&shed), None);

        let timeout: BoxError =
            Refusal::Timeout(BulkheadTimeout::new(hint, Some(Priority::Normal))).into_box();
        let found = rejection::find(&*timeout).expect("a rejection");
        assert_eq!(found.kind(), "bulkhead_timeout");
        assert_eq!(found.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            timeout.to_string(),
            "timed out waiting for a bulkhead permit"
        );
        let timeout = timeout.downcast_ref::<BulkheadTimeout>().expect("typed");
        assert_eq!(timeout.priority(), Some(Priority::Normal));
    }
}
