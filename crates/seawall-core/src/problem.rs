//! seawall's one writer of RFC 9457 problem documents
//! (`application/problem+json`).
//!
//! Every seawall answer that is an HTTP error (the facade's
//! `RejectionResponseLayer`, the idempotency layer's `409`/`422`/`503`, ...)
//! is written here, so they all have the same members in the same order:
//!
//! ```json
//! {"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the circuit breaker is open","kind":"circuit_open"}
//! ```
//!
//! `type`, `title`, `status` and `detail` are RFC 9457's members; `kind` is
//! an extension member naming the refusal (`"circuit_open"`, `"timeout"`,
//! `"internal"`, ...). `detail` is present only when seawall has its own
//! fixed text for the answer: a [`Problem`] holds `&'static str` texts only,
//! so it cannot carry request data or another error's message, and
//! [`Problem::of_error`] never reads an error's `Display`.
//!
//! A `Retry-After` header goes with a hint, in whole seconds from
//! [`hint::retry_after_secs`] (rounded up,
//! at least 1, at most a day).
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use seawall_core::problem::Problem;
//!
//! let p = Problem::new(StatusCode::CONFLICT, "in_flight")
//!     .with_detail("a request with this key is in flight")
//!     .with_retry_after(Duration::from_millis(1_500));
//! assert_eq!(
//!     p.to_json(),
//!     r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"a request with this key is in flight","kind":"in_flight"}"#
//! );
//! let res = p.to_response();
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.headers()["retry-after"], "2");
//! ```

use std::error::Error;
use std::fmt::Write;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::{hint, rejection, Rejected};

/// The media type of an RFC 9457 problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An HTTP error answer written by seawall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: Option<&'static str>,
    retry_after: Option<Duration>,
}

impl Problem {
    /// A problem with this status and `kind`, without `detail` or hint.
    pub const fn new(status: StatusCode, kind: &'static str) -> Self {
        Self {
            status,
            kind,
            detail: None,
            retry_after: None,
        }
    }

    /// The answer to an error seawall knows nothing about: `500`, kind
    /// `"internal"`, no `detail`.
    pub const fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal")
    }

    /// The answer to a seawall rejection: its status, kind, fixed
    /// [`detail`](Rejected::detail) and hint.
    pub fn from_rejected(rejected: &Rejected) -> Self {
        Self {
            status: rejected.status(),
            kind: rejected.kind(),
            detail: Some(rejected.detail()),
            retry_after: rejected.retry_after(),
        }
    }

    /// The answer to any error: [`from_rejected`](Self::from_rejected) if a
    /// seawall rejection is in its source chain, else
    /// [`internal`](Self::internal). The error's own message is never used,
    /// whatever wraps what.
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::{problem::Problem, BoxError};
    ///
    /// let err: BoxError = "postgres://admin:hunter2@db".into();
    /// let p = Problem::of_error(&*err);
    /// assert_eq!(p.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// assert!(!p.to_json().contains("hunter2"));
    /// ```
    pub fn of_error(err: &(dyn Error + 'static)) -> Self {
        rejection::find(err).map_or_else(Self::internal, Self::from_rejected)
    }

    /// Sets the `detail` text: seawall's own fixed words, never request data
    /// or another error's message.
    #[must_use]
    pub const fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Sets the hint sent as `Retry-After`.
    #[must_use]
    pub const fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The HTTP status.
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The extension member `kind`.
    pub const fn kind(&self) -> &'static str {
        self.kind
    }

    /// The `detail` member, if any.
    pub const fn detail(&self) -> Option<&'static str> {
        self.detail
    }

    /// The hint sent as `Retry-After`, if any.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Appends the JSON document to `out`, members in the order `type`,
    /// `title`, `status`, `detail` (when present), `kind`.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"type\":\"about:blank\",\"title\":");
        push_json_str(out, self.status.canonical_reason().unwrap_or("Error"));
        out.push_str(",\"status\":");
        out.push_str(self.status.as_str());
        if let Some(detail) = self.detail {
            out.push_str(",\"detail\":");
            push_json_str(out, detail);
        }
        out.push_str(",\"kind\":");
        push_json_str(out, self.kind);
        out.push('}');
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        let detail = self.detail.map_or(0, str::len);
        let mut out = String::with_capacity(96 + detail + self.kind.len());
        self.write_json(&mut out);
        out
    }

    /// Sets `Content-Type: application/problem+json` and, with a hint,
    /// `Retry-After`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(after) = self.retry_after {
            headers.insert(RETRY_AFTER, hint::retry_after_value(after));
        }
    }

    /// The whole response, with the document as a `String` body; map the
    /// body into your body type with [`Response::map`].
    pub fn to_response(&self) -> Response<String> {
        let mut res = Response::new(self.to_json());
        *res.status_mut() = self.status;
        self.write_headers(res.headers_mut());
        res
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use std::fmt;

    #[test]
    fn one_member_order_with_and_without_detail() {
        let p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "circuit_open")
            .with_detail("the circuit breaker is open");
        assert_eq!(
            p.to_json(),
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the circuit breaker is open","kind":"circuit_open"}"#
        );
        assert_eq!(
            Problem::internal().to_json(),
            r#"{"type":"about:blank","title":"Internal Server Error","status":500,"kind":"internal"}"#
        );
    }

    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        let p = Problem::new(StatusCode::CONFLICT, "k\"").with_detail("a \"q\"\n\\ \u{1}");
        assert_eq!(
            p.to_json(),
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"a \"q\"\u000a\\ \u0001","kind":"k\""}"#
        );
    }

    #[test]
    fn unknown_status_has_a_title() {
        let p = Problem::new(StatusCode::from_u16(599).unwrap(), "odd");
        assert!(p.to_json().contains(r#""title":"Error","status":599"#));
    }

    #[test]
    fn response_headers_and_saturating_hint() {
        let res = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "x")
            .with_retry_after(Duration::MAX)
            .to_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(res.headers()[RETRY_AFTER], "86400");
        let res = Problem::internal().to_response();
        assert!(res.headers().get(RETRY_AFTER).is_none());
    }

    /// An application error whose message holds a secret and whose source is
    /// a seawall rejection.
    #[derive(Debug)]
    struct AppError(BoxError);
    impl fmt::Display for AppError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("GET https://api.example/v1?api_key=SECRET-KEY failed")
        }
    }
    impl Error for AppError {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn of_error_takes_only_the_rejections_own_text() {
        let rejected = Rejected::new(
            "circuit_open",
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(3)),
        );
        let err: BoxError = Box::new(AppError(Box::new(rejected)));
        let p = Problem::of_error(&*err);
        assert_eq!(p.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.kind(), "circuit_open");
        assert_eq!(p.detail(), Some("the circuit breaker is open"));
        assert_eq!(p.retry_after(), Some(Duration::from_secs(3)));
        assert!(!p.to_json().contains("SECRET"));

        let plain: BoxError = Box::new(AppError("db down: postgres://u:pw@h".into()));
        let p = Problem::of_error(&*plain);
        assert_eq!(p, Problem::internal());
        assert!(!p.to_json().contains("pw"));
    }
}
