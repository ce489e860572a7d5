//! Header-triggered faults, Envoy style: a request asks for its own fault.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use seawall_core::{ConfigError, GrpcCode};

use crate::fault::MAX_LATENCY;
use crate::layer::LAYER;
use crate::protocol::Answer;

/// The default header asking for added latency, in milliseconds.
pub const DELAY_HEADER: &str = "x-seawall-fault-delay-ms";
/// The default header asking for an HTTP error answer (a status in
/// `400..=599`).
pub const ABORT_HEADER: &str = "x-seawall-fault-abort";
/// The default header asking for a gRPC error answer (a code in `1..=16`).
pub const GRPC_STATUS_HEADER: &str = "x-seawall-fault-grpc-status";

/// Faults a request triggers with its own headers, as Envoy's fault filter
/// does: a test or a game-day script sends `x-seawall-fault-delay-ms: 300`
/// or `x-seawall-fault-abort: 503` through a live system and watches what
/// happens.
///
/// They exist only when the layer is built with
/// [`ChaosBuilder::header_faults`](crate::ChaosBuilder::header_faults) on an
/// HTTP protocol; a layer built without it ignores those headers. Anyone who
/// can send a request can trigger them, so enable them only where the
/// callers are trusted (behind an authenticating proxy that strips the
/// headers from outside traffic, or in a test environment).
///
/// Values are parsed defensively: anything but plain decimal digits in range
/// is ignored (no fault), a delay is capped at
/// [`max_delay`](Self::max_delay) (10 s unless set), and no header can make
/// a call hang. They obey the handle's master switch
/// ([`ChaosHandle::disable`](crate::ChaosHandle::disable)) and are counted
/// by [`ChaosHandle::injected_by_headers`](crate::ChaosHandle::injected_by_headers).
///
/// When a request asks for an HTTP and a gRPC answer, the HTTP one wins.
///
/// ```
/// use std::time::Duration;
/// use seawall_chaos::{ChaosLayer, HeaderFaults};
///
/// let layer = ChaosLayer::builder()
///     .http()
///     .header_faults(HeaderFaults::new().max_delay(Duration::from_secs(2)))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct HeaderFaults {
    delay: HeaderName,
    abort: HeaderName,
    grpc_status: HeaderName,
    max_delay: Duration,
}

impl Default for HeaderFaults {
    fn default() -> Self {
        Self::new()
    }
}

/// What a request's headers asked for.
#[derive(Debug, Default)]
pub(crate) struct Triggered {
    pub(crate) delay: Option<Duration>,
    pub(crate) answer: Option<Answer>,
}

impl HeaderFaults {
    /// The default headers ([`DELAY_HEADER`], [`ABORT_HEADER`],
    /// [`GRPC_STATUS_HEADER`]) with a 10 s cap on delays.
    pub fn new() -> Self {
        Self {
            delay: HeaderName::from_static(DELAY_HEADER),
            abort: HeaderName::from_static(ABORT_HEADER),
            grpc_status: HeaderName::from_static(GRPC_STATUS_HEADER),
            max_delay: Duration::from_secs(10),
        }
    }

    /// Caps the delay a request may ask for (10 s unless set; at most one
    /// hour).
    #[must_use]
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Reads the delay from `name` instead of [`DELAY_HEADER`].
    #[must_use]
    pub fn delay_header(mut self, name: HeaderName) -> Self {
        self.delay = name;
        self
    }

    /// Reads the HTTP status from `name` instead of [`ABORT_HEADER`].
    #[must_use]
    pub fn abort_header(mut self, name: HeaderName) -> Self {
        self.abort = name;
        self
    }

    /// Reads the gRPC code from `name` instead of [`GRPC_STATUS_HEADER`].
    #[must_use]
    pub fn grpc_status_header(mut self, name: HeaderName) -> Self {
        self.grpc_status = name;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_delay > MAX_LATENCY {
            return Err(ConfigError::new(
                LAYER,
                "max_delay",
                format!("must be at most 1 h, got {:?}", self.max_delay),
            ));
        }
        Ok(())
    }

    /// What `headers` ask for; `None` when they ask for nothing valid.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<Triggered> {
        let delay = number(headers, &self.delay, 10)
            .map(|ms| Duration::from_millis(ms).min(self.max_delay))
            .filter(|d| !d.is_zero());
        let answer = number(headers, &self.abort, 3)
            .and_then(|code| u16::try_from(code).ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .filter(|s| s.is_client_error() || s.is_server_error())
            .map(|status| Answer::http(status, None))
            .or_else(|| {
                number(headers, &self.grpc_status, 2)
                    .and_then(|code| i32::try_from(code).ok())
                    .and_then(GrpcCode::from_i32)
                    .filter(|code| *code != GrpcCode::Ok)
                    .map(|code| Answer::grpc(code, "injected fault"))
            });
        (delay.is_some() || answer.is_some()).then_some(Triggered { delay, answer })
    }
}

/// The first value of `name` as a decimal number of at most `max_digits`
/// digits, surrounding whitespace allowed; anything else is `None`.
fn number(headers: &HeaderMap, name: &HeaderName, max_digits: usize) -> Option<u64> {
    let value = headers.get(name)?.as_bytes().trim_ascii();
    if value.is_empty() || value.len() > max_digits || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn read(pairs: &[(&'static str, &[u8])]) -> Option<Triggered> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        HeaderFaults::new()
            .max_delay(Duration::from_secs(2))
            .read(&headers)
    }

    #[test]
    fn valid_headers_are_read() {
        let t = read(&[(DELAY_HEADER, b" 250 ")]).unwrap();
        assert_eq!(t.delay, Some(Duration::from_millis(250)));
        assert!(t.answer.is_none());
        let t = read(&[(ABORT_HEADER, b"503"), (GRPC_STATUS_HEADER, b"14")]).unwrap();
        assert_eq!(t.answer.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        let t = read(&[(GRPC_STATUS_HEADER, b"14")]).unwrap();
        let answer = t.answer.unwrap();
        assert_eq!(answer.headers()["grpc-status"], "14");
        assert_eq!(answer.headers()["grpc-message"], "injected fault");
    }

    #[test]
    fn delays_are_capped() {
        let t = read(&[(DELAY_HEADER, b"9999999999")]).unwrap();
        assert_eq!(t.delay, Some(Duration::from_secs(2)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for (name, value) in [
            (DELAY_HEADER, &b""[..]),
            (DELAY_HEADER, b"-5"),
            (DELAY_HEADER, b"1e3"),
            (DELAY_HEADER, b"0"),
            (DELAY_HEADER, b"12345678901"),
            (DELAY_HEADER, b"+5"),
            (DELAY_HEADER, b"\xff\xfe"),
            (ABORT_HEADER, b"200"),
            (ABORT_HEADER, b"600"),
            (ABORT_HEADER, b"5030"),
            (ABORT_HEADER, b"abc"),
            (GRPC_STATUS_HEADER, b"0"),
            (GRPC_STATUS_HEADER, b"17"),
            (GRPC_STATUS_HEADER, b"99"),
        ] {
            assert!(read(&[(name, value)]).is_none(), "{name}: {value:?}");
        }
        assert!(read(&[]).is_none());
    }

    #[test]
    fn custom_names_and_bad_cap() {
        let faults = HeaderFaults::default()
            .delay_header(HeaderName::from_static("x-delay"))
            .abort_header(HeaderName::from_static("x-abort"))
            .grpc_status_header(HeaderName::from_static("x-grpc"));
        let mut headers = HeaderMap::new();
        headers.insert(DELAY_HEADER, HeaderValue::from_static("100"));
        assert!(faults.read(&headers).is_none());
        headers.insert("x-abort", HeaderValue::from_static("429"));
        let t = faults.read(&headers).unwrap();
        assert_eq!(t.answer.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
        let err = HeaderFaults::new()
            .max_delay(Duration::from_secs(3601))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "max_delay");
    }
}
