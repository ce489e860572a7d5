//! Priority classes: which work a saturated bulkhead refuses first.

use std::error::Error;
use std::fmt;
use std::str::FromStr;

use http::header::HeaderName;

/// How much a request matters when the bulkhead is under pressure.
///
/// Ordered from least to most important, so `Priority::Critical >
/// Priority::Normal`. With the default shares, sheddable work is refused once
/// 80% of the limit is in use, normal work at 95%, and critical work may use
/// every permit. Queued work is admitted highest class first, first come
/// first served within a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Work that may be dropped first: prefetches, analytics, retries of
    /// background jobs.
    Sheddable,
    /// Ordinary user-facing work.
    Normal,
    /// Work that must get through while anything does: health checks,
    /// payments, control traffic.
    Critical,
}

impl Priority {
    /// Every class, most important first: the order in which queued work is
    /// admitted.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Sheddable];

    /// The lowercase name: `"critical"`, `"normal"` or `"sheddable"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Sheddable => "sheddable",
        }
    }

    /// Position in [`Priority::ALL`].
    pub(crate) const fn index(self) -> usize {
        match self {
            Priority::Critical => 0,
            Priority::Normal => 1,
            Priority::Sheddable => 2,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not `critical`, `normal` or `sheddable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePriorityError(());

impl fmt::Display for ParsePriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("priority must be `critical`, `normal` or `sheddable`")
    }
}

impl Error for ParsePriorityError {}

impl FromStr for Priority {
    type Err = ParsePriorityError;

    /// Parses a class name, ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or(ParsePriorityError(()))
    }
}

/// Chooses the [`Priority`] of a request.
///
/// Implemented by every closure `Fn(&Req) -> Priority`, by
/// [`HeaderPriority`] for HTTP requests, and by [`NoPriority`], the default,
/// which turns prioritisation off.
///
/// ```
/// use seawall_bulkhead::{Prioritize, Priority};
///
/// let by_path = |req: &http::Request<()>| {
///     if req.uri().path().starts_with("/admin") {
///         Priority::Critical
///     } else {
///         Priority::Normal
///     }
/// };
/// let req = http::Request::get("/admin/flags").body(()).unwrap();
/// assert_eq!(by_path.priority(&req), Priority::Critical);
/// ```
pub trait Prioritize<Req> {
    /// `false` only for [`NoPriority`]: the bulkhead then lets every request
    /// use the whole limit and does not call [`priority`](Self::priority).
    const ENABLED: bool = true;

    /// The class of `req`.
    fn priority(&self, req: &Req) -> Priority;
}

impl<F, Req> Prioritize<Req> for F
where
    F: Fn(&Req) -> Priority,
{
    #[inline]
    fn priority(&self, req: &Req) -> Priority {
        self(req)
    }
}

/// No prioritisation (the default): every request may use the whole limit,
/// and queued requests are served first come, first served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoPriority;

impl<Req> Prioritize<Req> for NoPriority {
    const ENABLED: bool = false;

    #[inline]
    fn priority(&self, _req: &Req) -> Priority {
        Priority::Critical
    }
}

/// Reads the class of an HTTP request from a header such as
/// `x-priority: sheddable`.
///
/// The value is matched ignoring ASCII case and surrounding whitespace. A
/// missing, repeated-but-unreadable or unknown value gets the default class
/// ([`Priority::Normal`] unless changed): a malformed header never fails the
/// request.
///
/// Clients can claim any class they like, so set or overwrite the header at a
/// trusted edge (a gateway, or a layer in front of the bulkhead), or use a
/// closure that derives the class from something the caller cannot forge.
///
/// ```
/// use http::{HeaderName, Request};
/// use seawall_bulkhead::{HeaderPriority, Prioritize, Priority};
///
/// let prioritize = HeaderPriority::new(HeaderName::from_static("x-priority"));
/// let req = Request::get("/").header("x-priority", "Sheddable").body(()).unwrap();
/// assert_eq!(prioritize.priority(&req), Priority::Sheddable);
///
/// let junk = Request::get("/").header("x-priority", "urgent!!").body(()).unwrap();
/// assert_eq!(prioritize.priority(&junk), Priority::Normal);
/// ```
#[derive(Debug, Clone)]
pub struct HeaderPriority {
    name: HeaderName,
    default: Priority,
}

impl HeaderPriority {
    /// Reads the class from the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self {
            name,
            default: Priority::Normal,
        }
    }

    /// The class of requests without a readable header.
    #[must_use]
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default = priority;
        self
    }
}

impl<B> Prioritize<http::Request<B>> for HeaderPriority {
    fn priority(&self, req: &http::Request<B>) -> Priority {
        req.headers()
            .get(&self.name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_orders_classes() {
        assert_eq!(" CRITICAL ".parse(), Ok(Priority::Critical));
        assert_eq!("normal".parse(), Ok(Priority::Normal));
        assert_eq!("Sheddable".parse(), Ok(Priority::Sheddable));
        assert!("high".parse::<Priority>().is_err());
        assert!("".parse::<Priority>().is_err());
        assert!(Priority::Critical > Priority::Normal);
        assert!(Priority::Normal > Priority::Sheddable);
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(p.to_string().parse(), Ok(p));
        }
    }

    #[test]
    fn header_priority_falls_back_on_bad_input() {
        let p = HeaderPriority::new(HeaderName::from_static("x-priority"))
            .default_priority(Priority::Sheddable);
        let none = http::Request::new(());
        assert_eq!(p.priority(&none), Priority::Sheddable);
        let mut bad = http::Request::new(());
        bad.headers_mut().insert(
            "x-priority",
            http::HeaderValue::from_bytes(b"\xffcritical").unwrap(),
        );
        assert_eq!(p.priority(&bad), Priority::Sheddable);
        let good = http::Request::get("/")
            .header("x-priority", "critical")
            .body(())
            .unwrap();
        assert_eq!(p.priority(&good), Priority::Critical);
        const { assert!(!<NoPriority as Prioritize<()>>::ENABLED) };
    }
}
