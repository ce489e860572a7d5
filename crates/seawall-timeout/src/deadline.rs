//! Deadlines a request already carries: `grpc-timeout`, or seawall's
//! [`Deadline`] extension.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

/// The `grpc-timeout` request header (gRPC over HTTP/2).
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A deadline carried by an `http::Request` in its extensions.
///
/// An [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer) in HTTP mode
/// gives up at this instant when it comes before its own timeout: a caller
/// that must answer by then gains nothing from a later answer.
///
/// ```
/// use std::time::Duration;
/// use seawall_timeout::Deadline;
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Deadline(Instant::now() + Duration::from_millis(250)));
/// assert_eq!(Deadline::remaining_of(&req, Instant::now()), Some(Duration::from_millis(250)));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The time left before the deadline that `request` carries, from its
    /// [`Deadline`] extension or its `grpc-timeout` header (the smaller of
    /// the two when both are present); zero once the deadline has passed.
    /// `None` when it carries neither (or a malformed header).
    pub fn remaining_of<B>(request: &http::Request<B>, now: Instant) -> Option<Duration> {
        let extension = request
            .extensions()
            .get::<Deadline>()
            .map(|d| d.0.saturating_duration_since(now));
        let header = grpc_timeout(request.headers());
        match (extension, header) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Parses a `grpc-timeout` header: 1 to 8 ASCII digits followed by a unit,
/// `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u`
/// (microseconds) or `n` (nanoseconds), as the gRPC HTTP/2 protocol
/// defines it. Anything else (absent, empty, too many digits, a sign, a
/// space, an unknown unit, several values) is `None`: a malformed header is
/// ignored, never an error.
///
/// ```
/// use std::time::Duration;
/// use seawall_timeout::grpc_timeout;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("grpc-timeout", "250m".parse().unwrap());
/// assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(250)));
/// headers.insert("grpc-timeout", "123456789S".parse().unwrap());
/// assert_eq!(grpc_timeout(&headers), None, "nine digits");
/// ```
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let mut values = headers.get_all(GRPC_TIMEOUT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    // At most 99_999_999 hours: 3.6e11 seconds, far inside `Duration`.
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How an [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer) reads the
/// deadline a request already carries.
///
/// [`NoDeadline`] (the default) for requests that carry none;
/// [`HttpDeadline`] for `http::Request`s. Implement it for a request type of
/// your own that carries a deadline.
pub trait CarriedDeadline<Req> {
    /// The time left before the request's own deadline, if it has one.
    /// `now` reads the clock: call it only when the request carries a
    /// deadline, so that requests without one cost no clock read.
    fn remaining(&self, request: &Req, now: &dyn Fn() -> Instant) -> Option<Duration>;
}

/// Requests carry no deadline: only the adaptive timeout applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoDeadline;

impl<Req> CarriedDeadline<Req> for NoDeadline {
    #[inline]
    fn remaining(&self, _request: &Req, _now: &dyn Fn() -> Instant) -> Option<Duration> {
        None
    }
}

/// `http::Request`s carry a deadline in a [`Deadline`] extension or a
/// `grpc-timeout` header; see [`Deadline::remaining_of`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpDeadline;

impl<B> CarriedDeadline<http::Request<B>> for HttpDeadline {
    #[inline]
    fn remaining(&self, request: &http::Request<B>, now: &dyn Fn() -> Instant) -> Option<Duration> {
        let carried = request.extensions().get::<Deadline>().is_some()
            || request.headers().contains_key(GRPC_TIMEOUT);
        if carried {
            Deadline::remaining_of(request, now())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[u8]) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, http::HeaderValue::from_bytes(v).unwrap());
        grpc_timeout(&h)
    }

    #[test]
    fn every_unit() {
        assert_eq!(parse(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse(b"4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse(b"5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse(b"6u"), Some(Duration::from_micros(6)));
        assert_eq!(parse(b"7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse(b"0m"), Some(Duration::ZERO));
        assert_eq!(
            parse(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn malformed_values_are_ignored() {
        for v in [
            &b""[..],
            b"m",
            b"100",
            b"100x",
            b"100ms",
            b"-1S",
            b"+1S",
            b" 1S",
            b"1 S",
            b"1.5S",
            b"123456789m",
            b"\xff1S",
        ] {
            assert_eq!(parse(v), None, "{:?}", String::from_utf8_lossy(v));
        }
        let mut h = HeaderMap::new();
        h.append(GRPC_TIMEOUT, "1S".parse().unwrap());
        h.append(GRPC_TIMEOUT, "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None, "two values");
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_earlier_of_extension_and_header() {
        let start = Instant::now();
        let now = &|| start;
        let mut req = http::Request::new(());
        let read = std::cell::Cell::new(false);
        let watched = || {
            read.set(true);
            start
        };
        assert_eq!(HttpDeadline.remaining(&req, &watched), None);
        assert!(!read.get(), "no deadline, no clock read");
        req.headers_mut()
            .insert(GRPC_TIMEOUT, "300m".parse().unwrap());
        assert_eq!(
            HttpDeadline.remaining(&req, now),
            Some(Duration::from_millis(300))
        );
        req.extensions_mut()
            .insert(Deadline(start + Duration::from_millis(100)));
        assert_eq!(
            HttpDeadline.remaining(&req, now),
            Some(Duration::from_millis(100))
        );
        // A deadline already past leaves no time at all.
        let later = start + Duration::from_secs(1);
        assert_eq!(
            HttpDeadline.remaining(&req, &|| later),
            Some(Duration::ZERO)
        );
        assert_eq!(NoDeadline.remaining(&req, now), None);
    }
}
