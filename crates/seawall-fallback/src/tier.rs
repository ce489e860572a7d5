//! The vocabulary of degradation: which tier served, why the layer fired,
//! and which rejections it fires on.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::StatusCode;
use seawall_core::{rejection, BoxError, Rejected};

/// A source of substitute responses, tried in the order the builder was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The last successful response remembered for the same key.
    LastKnownGood,
    /// A secondary service.
    Alternative,
    /// A function of the request's information and the failure.
    Function,
    /// A fixed value.
    Value,
}

impl Tier {
    /// The tier's name as used in the degraded header and in events:
    /// `last-known-good`, `alternative`, `function` or `static`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::LastKnownGood => "last-known-good",
            Tier::Alternative => "alternative",
            Tier::Function => "function",
            Tier::Value => "static",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The marker a substitute response carries in its extensions (HTTP), so
/// handlers, loggers and outer layers can tell it from a fresh answer.
///
/// ```
/// use seawall_fallback::{Degraded, Tier};
///
/// # let res = http::Response::new(());
/// match res.extensions().get::<Degraded>() {
///     Some(d) if d.tier == Tier::LastKnownGood => { /* maybe stale */ }
///     Some(_) => { /* substitute */ }
///     None => { /* the real thing */ }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Degraded {
    /// The tier that produced the response.
    pub tier: Tier,
    /// For [`Tier::LastKnownGood`], how long ago the response was
    /// remembered (an HTTP `Age` header adds the age it arrived with).
    pub age: Option<Duration>,
}

impl Degraded {
    /// A marker for `tier`.
    pub const fn new(tier: Tier) -> Self {
        Self { tier, age: None }
    }

    pub(crate) const fn aged(tier: Tier, age: Duration) -> Self {
        Self {
            tier,
            age: Some(age),
        }
    }
}

/// What the layer replaces: the inner service's error, or a response the
/// classifier called a failure. Given to [`function`](crate::Builder::function) tiers.
pub struct Cause<'a> {
    inner: CauseRef<'a>,
}

enum CauseRef<'a> {
    Error(&'a BoxError),
    Response(Option<StatusCode>),
}

impl<'a> Cause<'a> {
    pub(crate) fn error(err: &'a BoxError) -> Self {
        Self {
            inner: CauseRef::Error(err),
        }
    }

    pub(crate) fn response(status: Option<StatusCode>) -> Self {
        Self {
            inner: CauseRef::Response(status),
        }
    }

    /// The inner service's error, if the call failed with one.
    pub fn as_error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self.inner {
            CauseRef::Error(e) => Some(&**e),
            CauseRef::Response(_) => None,
        }
    }

    /// The seawall rejection (an open breaker, a full bulkhead...) in the
    /// error's source chain, if any.
    pub fn rejection(&self) -> Option<&'a Rejected> {
        match self.inner {
            CauseRef::Error(e) => rejection::find(&**e),
            CauseRef::Response(_) => None,
        }
    }

    /// The failing response's status (HTTP), or the status a rejection
    /// asks for.
    pub fn status(&self) -> Option<StatusCode> {
        match self.inner {
            CauseRef::Response(status) => status,
            CauseRef::Error(_) => self.rejection().map(Rejected::status),
        }
    }

    /// A summary, as carried by events.
    pub fn kind(&self) -> CauseKind {
        match self.inner {
            CauseRef::Response(status) => CauseKind::Response(status),
            CauseRef::Error(_) => match self.rejection() {
                Some(r) => CauseKind::Rejection(r.kind()),
                None => CauseKind::Error,
            },
        }
    }
}

impl fmt::Debug for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner {
            CauseRef::Error(e) => f.debug_tuple("Error").field(e).finish(),
            CauseRef::Response(s) => f.debug_tuple("Response").field(&s).finish(),
        }
    }
}

/// Why the layer fired, in short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseKind {
    /// The inner service returned an error that is not a seawall rejection.
    Error,
    /// The inner service returned a seawall rejection of this kind
    /// (e.g. `"circuit_open"`).
    Rejection(&'static str),
    /// The inner service answered with a response classified as a failure
    /// (with its status, for HTTP).
    Response(Option<StatusCode>),
}

/// Which seawall rejections (an open breaker, a full bulkhead, ...) the
/// layer replaces. Default: all of them.
///
/// Rejections are matched by [`Rejected::kind`], found anywhere in the
/// error's source chain with [`seawall_core::rejection::find`]; the
/// classifier is not consulted for them. Errors that are not rejections are
/// judged by the classifier.
///
/// ```
/// use seawall_fallback::Rejections;
///
/// // Serve a fallback while the breaker is open, but let a full bulkhead
/// // surface as 503 so the client backs off.
/// let only_open = Rejections::only(["circuit_open"]);
/// # let _ = only_open;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejections(Filter);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    All,
    Only(Box<[&'static str]>),
    Except(Box<[&'static str]>),
}

impl Rejections {
    /// Every rejection fires the fallback (the default).
    pub fn all() -> Self {
        Self(Filter::All)
    }

    /// No rejection fires the fallback: they pass through untouched.
    pub fn none() -> Self {
        Self(Filter::Only(Box::new([])))
    }

    /// Only rejections of these kinds fire the fallback.
    pub fn only(kinds: impl IntoIterator<Item = &'static str>) -> Self {
        Self(Filter::Only(kinds.into_iter().collect()))
    }

    /// Every rejection except those of these kinds fires the fallback.
    pub fn except(kinds: impl IntoIterator<Item = &'static str>) -> Self {
        Self(Filter::Except(kinds.into_iter().collect()))
    }

    /// `true` if a rejection of `kind` fires the fallback.
    pub fn matches(&self, kind: &str) -> bool {
        match &self.0 {
            Filter::All => true,
            Filter::Only(kinds) => kinds.contains(&kind),
            Filter::Except(kinds) => !kinds.contains(&kind),
        }
    }
}

impl Default for Rejections {
    fn default() -> Self {
        Self::all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(BoxError);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn rejection_filters() {
        assert!(Rejections::all().matches("circuit_open"));
        assert!(!Rejections::none().matches("circuit_open"));
        let only = Rejections::only(["circuit_open"]);
        assert!(only.matches("circuit_open"));
        assert!(!only.matches("bulkhead_full"));
        let except = Rejections::except(["bulkhead_full"]);
        assert!(except.matches("circuit_open"));
        assert!(!except.matches("bulkhead_full"));
        assert_eq!(Rejections::default(), Rejections::all());
    }

    #[test]
    fn cause_reads_rejections_through_wrappers() {
        let rejected = Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None);
        let err: BoxError = Box::new(Wrapped(Box::new(rejected)));
        let cause = Cause::error(&err);
        assert_eq!(cause.kind(), CauseKind::Rejection("circuit_open"));
        assert_eq!(cause.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            cause.as_error().map(ToString::to_string).as_deref(),
            Some("wrapped")
        );

        let plain: BoxError = "boom".into();
        let cause = Cause::error(&plain);
        assert_eq!(cause.kind(), CauseKind::Error);
        assert_eq!(cause.status(), None);
        assert!(cause.rejection().is_none());

        let cause = Cause::response(Some(StatusCode::BAD_GATEWAY));
        assert_eq!(
            cause.kind(),
            CauseKind::Response(Some(StatusCode::BAD_GATEWAY))
        );
        assert!(cause.as_error().is_none());
        assert_eq!(cause.status(), Some(StatusCode::BAD_GATEWAY));
    }

    #[test]
    fn tier_names() {
        assert_eq!(Tier::LastKnownGood.to_string(), "last-known-good");
        assert_eq!(Tier::Alternative.as_str(), "alternative");
        assert_eq!(Tier::Function.as_str(), "function");
        assert_eq!(Tier::Value.as_str(), "static");
    }
}
