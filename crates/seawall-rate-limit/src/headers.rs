//! The IETF `RateLimit-Policy` and `RateLimit` response fields.
//!
//! Implements the structured-field syntax of
//! [draft-ietf-httpapi-ratelimit-headers-09] (March 2025), serialised with
//! `sfv` (RFC 9651):
//!
//! ```text
//! RateLimit-Policy: "ip";q=10;w=1, "all";q=1000;w=3600
//! RateLimit: "ip";r=7;t=1, "all";r=993;t=25
//! ```
//!
//! Each limit is one list member named by the limit's name. In the policy,
//! `q` is the limit's rate and `w` its period in seconds (so a period must
//! be a whole number of seconds when the fields are enabled); the burst is
//! not expressible in the draft's vocabulary. In `RateLimit`, `r` is the
//! units the caller's key could spend now (at most the burst) and `t` the
//! seconds, rounded up, until its bucket is full again.
//!
//! [draft-ietf-httpapi-ratelimit-headers-09]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/09/

use http::{HeaderName, HeaderValue, Response};
use seawall_core::ConfigError;
use sfv::{KeyRef, ListSerializer, StringRef};

use crate::gcra::Gcra;
use crate::limit::LimitView;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

const NANOS: u64 = 1_000_000_000;

/// Whether and how a response carries the rate-limit fields. Chosen with
/// [`Builder::headers`](crate::Builder::headers).
pub trait ResponseHeaders<Res>: Send + Sync + 'static {
    /// `false` when nothing is ever written; the layer then computes nothing.
    const ENABLED: bool;

    /// Writes the fields into `res`.
    fn apply(res: &mut Res, policy: &HeaderValue, state: HeaderValue);
}

/// No rate-limit fields (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl<Res> ResponseHeaders<Res> for NoHeaders {
    const ENABLED: bool = false;

    #[inline]
    fn apply(_res: &mut Res, _policy: &HeaderValue, _state: HeaderValue) {}
}

/// `RateLimit-Policy` and `RateLimit` on every `http::Response`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IetfHeaders;

impl<B: 'static> ResponseHeaders<Response<B>> for IetfHeaders {
    const ENABLED: bool = true;

    fn apply(res: &mut Response<B>, policy: &HeaderValue, state: HeaderValue) {
        let headers = res.headers_mut();
        headers.insert(RATELIMIT_POLICY, policy.clone());
        headers.insert(RATELIMIT, state);
    }
}

fn sf_name(name: &str) -> Result<&StringRef, ConfigError> {
    StringRef::from_str(name).map_err(|e| {
        ConfigError::new(
            "rate limit",
            "limit name",
            format!("not a structured-field string: {e}"),
        )
    })
}

/// The `RateLimit-Policy` value of a set of limits.
pub(crate) fn policy(
    limits: &[(std::sync::Arc<str>, crate::Quota)],
) -> Result<HeaderValue, ConfigError> {
    let mut list = ListSerializer::new();
    for (name, quota) in limits {
        let period = quota.period();
        if period.subsec_nanos() != 0 {
            return Err(ConfigError::new(
                "rate limit",
                "headers",
                format!("the RateLimit fields need periods of whole seconds, limit {name:?} has {period:?}"),
            ));
        }
        let q = sfv::Integer::try_from(quota.rate()).map_err(|_| {
            ConfigError::new(
                "rate limit",
                "headers",
                "rate too large for the RateLimit fields",
            )
        })?;
        let w = sfv::Integer::try_from(period.as_secs()).map_err(|_| {
            ConfigError::new(
                "rate limit",
                "headers",
                "period too long for the RateLimit fields",
            )
        })?;
        let _ = list
            .bare_item(sf_name(name)?)
            .parameter(KeyRef::constant("q"), q)
            .parameter(KeyRef::constant("w"), w);
    }
    let text = list.finish().unwrap_or_default();
    HeaderValue::try_from(text).map_err(|_| {
        ConfigError::new(
            "rate limit",
            "headers",
            "policy is not a valid header value",
        )
    })
}

/// Builds a `RateLimit` value, one member per limit, in the order given.
#[derive(Debug, Default)]
pub(crate) struct StateWriter {
    text: String,
}

impl StateWriter {
    pub(crate) fn push(&mut self, view: LimitView<'_>, now: u64) {
        let remaining = view.gcra.remaining(view.tat, now);
        self.push_raw(view.name, remaining, Gcra::until_full(view.tat, now));
    }

    /// One member: `remaining` units, full again in `until_full` ns.
    pub(crate) fn push_raw(&mut self, name: &str, remaining: u64, until_full: u64) {
        let reset = until_full.div_ceil(NANOS);
        if !self.text.is_empty() {
            self.text.push_str(", ");
        }
        // A fresh serialiser on the same buffer writes no separator before
        // its first member. Names were checked at build time; integers are
        // clamped into the structured-field range.
        let mut list = ListSerializer::with_buffer(&mut self.text);
        if let Ok(name) = StringRef::from_str(name) {
            let _ = list
                .bare_item(name)
                .parameter(KeyRef::constant("r"), clamp(remaining))
                .parameter(KeyRef::constant("t"), clamp(reset));
        }
    }

    pub(crate) fn finish(self) -> HeaderValue {
        // Only quoted names and integers: always a valid value.
        HeaderValue::try_from(self.text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn clamp(n: u64) -> sfv::Integer {
    const MAX: u64 = 999_999_999_999_999;
    sfv::Integer::try_from(n.min(MAX)).unwrap_or(sfv::integer(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn policy_lists_every_limit() {
        let v = policy(&[
            (Arc::from("ip"), Quota::per_second(10).burst(20)),
            (Arc::from("all"), Quota::per_hour(1000)),
        ])
        .unwrap();
        assert_eq!(v, r#""ip";q=10;w=1, "all";q=1000;w=3600"#);
        let err =
            policy(&[(Arc::from("x"), Quota::new(5, Duration::from_millis(1500)))]).unwrap_err();
        assert_eq!(err.field(), "headers");
    }

    #[test]
    fn state_reports_remaining_and_reset() {
        let gcra = Quota::per_second(10).burst(5).validate("q").unwrap();
        let name: Arc<str> = Arc::from("ip");
        let now = 10 * NANOS;
        let mut w = StateWriter::default();
        // Three units spent: two remain, full again in 0.3 s → t=1.
        w.push(
            LimitView {
                name: &name,
                gcra,
                tat: now + 3 * NANOS / 10,
            },
            now,
        );
        let all: Arc<str> = Arc::from("all");
        w.push(
            LimitView {
                name: &all,
                gcra,
                tat: 0,
            },
            now,
        );
        assert_eq!(w.finish(), r#""ip";r=2;t=1, "all";r=5;t=0"#);
    }
}
