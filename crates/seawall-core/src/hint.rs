//! Server hints: how long the server asks the client to wait.
//!
//! - `Retry-After` (RFC 9110 §10.2.3): `delay-seconds` (`1*DIGIT`) or an
//!   HTTP-date. A date in the past means "now" (zero).
//! - `grpc-retry-pushback-ms` (gRFC A6): a non-negative integer of
//!   milliseconds.
//!
//! The values come from the network, so parsing is defensive: garbage, a
//! sign, an overflow, an empty value, or a delay longer than
//! [`MAX_HINT`] give `None`, never a panic.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

/// The longest delay accepted from a server hint (one day). Anything longer
/// is treated as absurd and ignored.
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// The `grpc-retry-pushback-ms` header name.
pub const GRPC_RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Parses a `Retry-After` value, reading the clock for HTTP-dates.
///
/// ```
/// use std::time::Duration;
/// use seawall_core::hint::parse_retry_after;
///
/// assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after("-7"), None);
/// assert_eq!(parse_retry_after("soon"), None);
/// assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
/// ```
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// Parses a `Retry-After` value against the given current time.
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let delay = if value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse::<u64>().ok()?)
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    (delay <= MAX_HINT).then_some(delay)
}

/// Parses a `grpc-retry-pushback-ms` value.
///
/// gRFC A6 says a negative or unparseable pushback means "do not retry";
/// this function reports it as `None` and leaves that decision to the caller.
///
/// ```
/// use std::time::Duration;
/// use seawall_core::hint::parse_grpc_pushback;
///
/// assert_eq!(parse_grpc_pushback("250"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_pushback("-1"), None);
/// ```
pub fn parse_grpc_pushback(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let delay = Duration::from_millis(value.parse::<u64>().ok()?);
    (delay <= MAX_HINT).then_some(delay)
}

/// The longest wait seawall ever *sends* in a `Retry-After` or
/// `grpc-retry-pushback-ms` header: one day, the same bound as
/// [`MAX_HINT`] on the hints it reads.
///
/// A layer configured with a longer hint (even [`Duration::MAX`]) tells its
/// clients to come back in a day; nothing overflows.
pub const MAX_RETRY_AFTER: Duration = MAX_HINT;

/// The `Retry-After` delay-seconds to send for a wait of `after`.
///
/// Whole seconds rounded up, so a client never comes back early; at least 1,
/// because `Retry-After: 0` invites an immediate retry storm from every
/// refused client; at most [`MAX_RETRY_AFTER`] (86 400). The arithmetic
/// saturates: no duration overflows or panics.
///
/// Every seawall layer and adapter that writes `Retry-After` uses this.
///
/// ```
/// use std::time::Duration;
/// use seawall_core::hint::retry_after_secs;
///
/// assert_eq!(retry_after_secs(Duration::from_millis(2_100)), 3);
/// assert_eq!(retry_after_secs(Duration::ZERO), 1);
/// assert_eq!(retry_after_secs(Duration::MAX), 86_400);
/// ```
pub const fn retry_after_secs(after: Duration) -> u64 {
    let max = MAX_RETRY_AFTER.as_secs();
    if after.as_secs() >= max {
        return max;
    }
    // Below the maximum, so adding one cannot overflow.
    let secs = after.as_secs() + (after.subsec_nanos() > 0) as u64;
    if secs == 0 {
        1
    } else if secs > max {
        max
    } else {
        secs
    }
}

/// [`retry_after_secs`] as a header value.
///
/// ```
/// use std::time::Duration;
/// use seawall_core::hint::retry_after_value;
///
/// assert_eq!(retry_after_value(Duration::from_secs(7)), "7");
/// ```
pub fn retry_after_value(after: Duration) -> HeaderValue {
    HeaderValue::from(retry_after_secs(after))
}

/// The `grpc-retry-pushback-ms` milliseconds to send for a wait of `after`:
/// rounded up to a whole millisecond, at most [`MAX_RETRY_AFTER`]
/// (86 400 000), never overflowing.
///
/// ```
/// use std::time::Duration;
/// use seawall_core::hint::grpc_pushback_ms;
///
/// assert_eq!(grpc_pushback_ms(Duration::from_micros(1_500)), 2);
/// assert_eq!(grpc_pushback_ms(Duration::MAX), 86_400_000);
/// ```
pub const fn grpc_pushback_ms(after: Duration) -> u64 {
    if after.as_secs() >= MAX_RETRY_AFTER.as_secs() {
        return MAX_RETRY_AFTER.as_secs() * 1_000;
    }
    let nanos = after.subsec_nanos();
    // Below one day, so the product cannot overflow.
    after.as_secs() * 1_000 + (nanos / 1_000_000) as u64 + (!nanos.is_multiple_of(1_000_000)) as u64
}

fn header_str(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

/// The `Retry-After` of a header map, if it holds a valid one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(header_str)
        .and_then(parse_retry_after)
}

/// The `grpc-retry-pushback-ms` of a header map, if it holds a valid one.
pub fn grpc_pushback(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(GRPC_RETRY_PUSHBACK)
        .and_then(header_str)
        .and_then(parse_grpc_pushback)
}

/// The server's hint, whichever of `Retry-After` and
/// `grpc-retry-pushback-ms` is present and valid (`Retry-After` first).
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use seawall_core::hint::server_hint;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-retry-pushback-ms", "1500".parse().unwrap());
/// assert_eq!(server_hint(&headers), Some(Duration::from_millis(1500)));
/// ```
pub fn server_hint(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| grpc_pushback(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let ago_90s = httpdate::fmt_http_date(now - Duration::from_secs(90));
        let in_two_days = httpdate::fmt_http_date(now + Duration::from_secs(2 * 86_400));
        let cases: Vec<(&str, Option<Duration>)> = vec![
            ("0", Some(Duration::ZERO)),
            ("7", Some(Duration::from_secs(7))),
            ("  120 ", Some(Duration::from_secs(120))),
            ("86400", Some(MAX_HINT)),
            (&in_90s, Some(Duration::from_secs(90))),
            (&ago_90s, Some(Duration::ZERO)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
            // negative, signed, fractional
            ("-1", None),
            ("-120", None),
            ("+5", None),
            ("1.5", None),
            // overflow and absurd
            ("86401", None),
            ("18446744073709551616", None),
            ("99999999999999999999999999", None),
            (&in_two_days, None),
            ("Fri, 31 Dec 9999 23:59:59 GMT", None),
            // garbage and empty
            ("", None),
            ("   ", None),
            ("soon", None),
            ("7 seconds", None),
            ("Wed, 32 Oct 2015 07:28:00 GMT", None),
            ("0x10", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after_at(value, now), expected, "{value:?}");
        }
    }

    #[test]
    fn grpc_pushback_table() {
        let cases = [
            ("0", Some(Duration::ZERO)),
            ("250", Some(Duration::from_millis(250))),
            ("86400000", Some(MAX_HINT)),
            ("86400001", None),
            ("-1", None),
            ("", None),
            ("abc", None),
            ("18446744073709551616", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_pushback(value), expected, "{value:?}");
        }
    }

    #[test]
    fn retry_after_secs_rounds_up_saturates_and_clamps() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_secs(Duration::from_millis(6_001)), 7);
        assert_eq!(retry_after_secs(Duration::from_millis(86_399_001)), 86_400);
        assert_eq!(retry_after_secs(Duration::from_secs(86_400)), 86_400);
        assert_eq!(retry_after_secs(Duration::from_secs(86_401)), 86_400);
        assert_eq!(
            retry_after_secs(Duration::new(u64::MAX, 999_999_999)),
            86_400
        );
        assert_eq!(retry_after_secs(Duration::MAX), 86_400);
        assert_eq!(retry_after_value(Duration::MAX), "86400");
    }

    #[test]
    fn grpc_pushback_ms_rounds_up_saturates_and_clamps() {
        assert_eq!(grpc_pushback_ms(Duration::ZERO), 0);
        assert_eq!(grpc_pushback_ms(Duration::from_nanos(1)), 1);
        assert_eq!(grpc_pushback_ms(Duration::from_millis(250)), 250);
        assert_eq!(grpc_pushback_ms(Duration::new(3, 1_000_001)), 3_002);
        assert_eq!(grpc_pushback_ms(Duration::from_secs(86_400)), 86_400_000);
        assert_eq!(grpc_pushback_ms(Duration::MAX), 86_400_000);
    }

    #[test]
    fn header_map_helpers() {
        let mut headers = HeaderMap::new();
        assert_eq!(server_hint(&headers), None);
        headers.insert(GRPC_RETRY_PUSHBACK, HeaderValue::from_static("10"));
        assert_eq!(server_hint(&headers), Some(Duration::from_millis(10)));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(server_hint(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
        assert_eq!(server_hint(&headers), Some(Duration::from_millis(10)));
    }
}
