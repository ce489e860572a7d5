//! gRPC status codes and the gRPC classifier.

use http::{HeaderMap, Response, StatusCode};

use crate::{Classify, Outcome};

/// The gRPC status codes (see the gRPC `statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GrpcCode {
    /// `0`: not an error.
    Ok = 0,
    /// `1`: cancelled, typically by the caller.
    Cancelled = 1,
    /// `2`: unknown error.
    Unknown = 2,
    /// `3`: the client specified an invalid argument.
    InvalidArgument = 3,
    /// `4`: the deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// `5`: some requested entity was not found.
    NotFound = 5,
    /// `6`: the entity that a client attempted to create already exists.
    AlreadyExists = 6,
    /// `7`: the caller does not have permission.
    PermissionDenied = 7,
    /// `8`: some resource has been exhausted (quota, rate limit).
    ResourceExhausted = 8,
    /// `9`: the system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// `10`: the operation was aborted (a concurrency conflict).
    Aborted = 10,
    /// `11`: the operation was attempted past the valid range.
    OutOfRange = 11,
    /// `12`: the operation is not implemented.
    Unimplemented = 12,
    /// `13`: internal error.
    Internal = 13,
    /// `14`: the service is currently unavailable.
    Unavailable = 14,
    /// `15`: unrecoverable data loss or corruption.
    DataLoss = 15,
    /// `16`: the request lacks valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code, in numeric order.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code with this number, or `None` outside 0..=16.
    pub fn from_i32(value: i32) -> Option<Self> {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// The code's number.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// Reads the `grpc-status` header. A present but unparseable or
    /// out-of-range value reads as [`GrpcCode::Unknown`], as the gRPC
    /// protocol prescribes; an absent header gives `None`. See
    /// [`parse`](Self::parse) for what counts as parseable.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get(GRPC_STATUS)
            .map(|value| Self::parse(value.as_bytes()))
    }

    /// Reads a `grpc-status` value from the network.
    ///
    /// Only the canonical decimal of a code is that code: `0` through `16`,
    /// ASCII digits with no sign, no leading zero, no whitespace. Anything
    /// else (`"+0"`, `"-0"`, `"00"`, `" 14"`, `"17"`, bytes that are not
    /// text) reads as [`GrpcCode::Unknown`], never as `OK`: a garbled
    /// status must not turn a failure into a success.
    ///
    /// ```
    /// use seawall_core::GrpcCode;
    ///
    /// assert_eq!(GrpcCode::parse(b"0"), GrpcCode::Ok);
    /// assert_eq!(GrpcCode::parse(b"14"), GrpcCode::Unavailable);
    /// assert_eq!(GrpcCode::parse(b"+0"), GrpcCode::Unknown);
    /// assert_eq!(GrpcCode::parse(b"-0"), GrpcCode::Unknown);
    /// assert_eq!(GrpcCode::parse(b"014"), GrpcCode::Unknown);
    /// ```
    pub fn parse(value: &[u8]) -> Self {
        let number = match *value {
            [d @ b'0'..=b'9'] => d - b'0',
            [t @ b'1'..=b'9', u @ b'0'..=b'9'] => (t - b'0') * 10 + (u - b'0'),
            _ => return GrpcCode::Unknown,
        };
        Self::ALL
            .get(usize::from(number))
            .copied()
            .unwrap_or(GrpcCode::Unknown)
    }

    /// The canonical decimal of the code, as sent in `grpc-status`.
    ///
    /// ```
    /// use seawall_core::GrpcCode;
    ///
    /// assert_eq!(GrpcCode::Unavailable.as_str(), "14");
    /// ```
    pub const fn as_str(self) -> &'static str {
        const NUMBERS: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        NUMBERS[self as usize]
    }

    /// The code's name as the gRPC documentation writes it, e.g.
    /// `"UNAVAILABLE"`.
    pub const fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code a server answers a refusal of this HTTP `status` with.
    ///
    /// This is seawall's mapping of its own refusals, by meaning, not the
    /// gRPC spec's mapping of transport statuses: `429` is
    /// `RESOURCE_EXHAUSTED` (a quota), `408` and `504` are
    /// `DEADLINE_EXCEEDED`, `502` and `503` are `UNAVAILABLE` (retry later),
    /// `501` is `UNIMPLEMENTED`, other `5xx` `INTERNAL`; `400`
    /// `INVALID_ARGUMENT`, `401` `UNAUTHENTICATED`, `403`
    /// `PERMISSION_DENIED`, `404` `NOT_FOUND`, `409` `ABORTED`, `412` and
    /// `422` `FAILED_PRECONDITION`; anything else `UNKNOWN`.
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::GrpcCode;
    ///
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::SERVICE_UNAVAILABLE), GrpcCode::Unavailable);
    /// assert_eq!(GrpcCode::from_http_status(StatusCode::TOO_MANY_REQUESTS), GrpcCode::ResourceExhausted);
    /// ```
    pub fn from_http_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => GrpcCode::InvalidArgument,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::NotFound,
            408 | 504 => GrpcCode::DeadlineExceeded,
            409 => GrpcCode::Aborted,
            412 | 422 => GrpcCode::FailedPrecondition,
            429 => GrpcCode::ResourceExhausted,
            501 => GrpcCode::Unimplemented,
            502 | 503 => GrpcCode::Unavailable,
            500..=599 => GrpcCode::Internal,
            _ => GrpcCode::Unknown,
        }
    }
}

impl std::fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `grpc-status` header name.
pub const GRPC_STATUS: &str = "grpc-status";

/// The `grpc-message` header name.
pub const GRPC_MESSAGE: &str = "grpc-message";

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 protocol
/// prescribes: every byte of the UTF-8 text outside printable ASCII
/// (`0x20..=0x7E`), and `%` itself, becomes `%XX`.
///
/// ```
/// use seawall_core::grpc::percent_encode_message;
///
/// assert_eq!(percent_encode_message("100% full"), "100%25 full");
/// assert_eq!(percent_encode_message("caf\u{e9}\n"), "caf%C3%A9%0A");
/// ```
pub fn percent_encode_message(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    out
}

/// Classifies gRPC responses by the `grpc-status` in their headers.
///
/// A trailers-only response (an error answered before any message) carries
/// `grpc-status` in its headers, which is where this classifier looks. A
/// response without `grpc-status` in its headers has a status still to come
/// in its trailers: it is classified by its HTTP status (200 is a success,
/// anything else a failure). A transport error is a failure.
///
/// Failures by default: `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
/// `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNKNOWN` and `ABORTED`.
///
/// ```
/// use http::Response;
/// use seawall_core::{Classify, GrpcClassifier, GrpcCode, Outcome};
///
/// let classifier = GrpcClassifier::new().fail_on(GrpcCode::DataLoss);
/// let res = |code: &str| Response::builder().header("grpc-status", code).body(()).unwrap();
/// let c = |code| Classify::<_, ()>::classify(&classifier, Ok(&res(code)));
/// assert_eq!(c("14"), Outcome::Failure); // UNAVAILABLE
/// assert_eq!(c("5"), Outcome::Success); // NOT_FOUND is the caller's problem
/// assert_eq!(c("15"), Outcome::Failure); // DATA_LOSS, configured above
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcClassifier {
    failures: u32,
    ignored: u32,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcClassifier {
    /// The default classifier.
    pub const fn new() -> Self {
        let failures = bit(GrpcCode::Unavailable)
            | bit(GrpcCode::DeadlineExceeded)
            | bit(GrpcCode::ResourceExhausted)
            | bit(GrpcCode::Internal)
            | bit(GrpcCode::Unknown)
            | bit(GrpcCode::Aborted);
        Self {
            failures,
            ignored: 0,
        }
    }

    /// A classifier under which no code fails (only transport errors do).
    pub const fn none_fail() -> Self {
        Self {
            failures: 0,
            ignored: 0,
        }
    }

    /// Makes `code` a failure.
    #[must_use]
    pub const fn fail_on(mut self, code: GrpcCode) -> Self {
        self.failures |= bit(code);
        self.ignored &= !bit(code);
        self
    }

    /// Makes every code in `codes` a failure.
    ///
    /// ```
    /// use seawall_core::{GrpcClassifier, GrpcCode, Outcome};
    ///
    /// let c = GrpcClassifier::none_fail().fail_on_all(&[GrpcCode::Unavailable, GrpcCode::DataLoss]);
    /// assert_eq!(c.classify_code(GrpcCode::DataLoss), Outcome::Failure);
    /// assert_eq!(c.classify_code(GrpcCode::Internal), Outcome::Success);
    /// ```
    #[must_use]
    pub const fn fail_on_all(mut self, codes: &[GrpcCode]) -> Self {
        let mut i = 0;
        while i < codes.len() {
            self = self.fail_on(codes[i]);
            i += 1;
        }
        self
    }

    /// Makes `code` a success.
    #[must_use]
    pub const fn succeed_on(mut self, code: GrpcCode) -> Self {
        self.failures &= !bit(code);
        self.ignored &= !bit(code);
        self
    }

    /// Makes `code` neither a success nor a failure: it is not recorded
    /// (e.g. `CANCELLED`, which the caller chose).
    ///
    /// ```
    /// use seawall_core::{GrpcClassifier, GrpcCode, Outcome};
    ///
    /// let c = GrpcClassifier::new().ignore(GrpcCode::Cancelled);
    /// assert_eq!(c.classify_code(GrpcCode::Cancelled), Outcome::Ignore);
    /// ```
    #[must_use]
    pub const fn ignore(mut self, code: GrpcCode) -> Self {
        self.failures &= !bit(code);
        self.ignored |= bit(code);
        self
    }

    /// The outcome of a call that ended with `code`.
    #[inline]
    pub const fn classify_code(&self, code: GrpcCode) -> Outcome {
        if self.failures & bit(code) != 0 {
            Outcome::Failure
        } else if self.ignored & bit(code) != 0 {
            Outcome::Ignore
        } else {
            Outcome::Success
        }
    }
}

const fn bit(code: GrpcCode) -> u32 {
    1 << (code as u32)
}

impl<B, E> Classify<Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => match GrpcCode::from_headers(res.headers()) {
                Some(code) => self.classify_code(code),
                None if res.status() == http::StatusCode::OK => Outcome::Success,
                None => Outcome::Failure,
            },
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(c: GrpcClassifier, header: Option<&str>) -> Outcome {
        let mut res = Response::builder();
        if let Some(h) = header {
            res = res.header("grpc-status", h);
        }
        Classify::<_, ()>::classify(&c, Ok(&res.body(()).unwrap()))
    }

    #[test]
    fn every_code_through_default_classifier() {
        let c = GrpcClassifier::new();
        let failing = [
            GrpcCode::Unavailable,
            GrpcCode::DeadlineExceeded,
            GrpcCode::ResourceExhausted,
            GrpcCode::Internal,
            GrpcCode::Unknown,
            GrpcCode::Aborted,
        ];
        for code in GrpcCode::ALL {
            let expected = if failing.contains(&code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let header = code.as_i32().to_string();
            assert_eq!(classify(c, Some(&header)), expected, "{code:?}");
            assert_eq!(GrpcCode::from_i32(code.as_i32()), Some(code));
        }
    }

    #[test]
    fn malformed_status_reads_as_unknown() {
        let c = GrpcClassifier::new();
        for garbage in ["abc", "17", "-1", "", "99999999999"] {
            assert_eq!(classify(c, Some(garbage)), Outcome::Failure, "{garbage:?}");
        }
        let c = c.succeed_on(GrpcCode::Unknown);
        assert_eq!(classify(c, Some("abc")), Outcome::Success);
    }

    #[test]
    fn signed_and_non_canonical_zero_read_as_unknown() {
        for value in [
            &b"+0"[..],
            b"-0",
            b"00",
            b"014",
            b" 0",
            b"0 ",
            b"+14",
            b"1_4",
            b"\xff",
            b"",
        ] {
            assert_eq!(GrpcCode::parse(value), GrpcCode::Unknown, "{value:?}");
        }
        let c = GrpcClassifier::new();
        assert_eq!(classify(c, Some("+0")), Outcome::Failure);
        assert_eq!(classify(c, Some("-0")), Outcome::Failure);
        for code in GrpcCode::ALL {
            assert_eq!(GrpcCode::parse(code.as_str().as_bytes()), code);
        }
    }

    #[test]
    fn ignored_and_listed_codes() {
        let c = GrpcClassifier::none_fail()
            .fail_on_all(&[GrpcCode::Unavailable, GrpcCode::Cancelled])
            .ignore(GrpcCode::Cancelled);
        assert_eq!(classify(c, Some("14")), Outcome::Failure);
        assert_eq!(classify(c, Some("1")), Outcome::Ignore);
        assert_eq!(classify(c, Some("13")), Outcome::Success);
        let c = c.fail_on(GrpcCode::Cancelled);
        assert_eq!(classify(c, Some("1")), Outcome::Failure);
        let c = c.succeed_on(GrpcCode::Cancelled);
        assert_eq!(classify(c, Some("1")), Outcome::Success);
    }

    #[test]
    fn http_status_mapping_and_names() {
        let cases = [
            (503, GrpcCode::Unavailable),
            (502, GrpcCode::Unavailable),
            (429, GrpcCode::ResourceExhausted),
            (504, GrpcCode::DeadlineExceeded),
            (408, GrpcCode::DeadlineExceeded),
            (500, GrpcCode::Internal),
            (501, GrpcCode::Unimplemented),
            (409, GrpcCode::Aborted),
            (422, GrpcCode::FailedPrecondition),
            (404, GrpcCode::NotFound),
            (200, GrpcCode::Unknown),
        ];
        for (status, code) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(GrpcCode::from_http_status(status), code, "{status}");
        }
        assert_eq!(
            GrpcCode::ResourceExhausted.to_string(),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(GrpcCode::Unauthenticated.as_str(), "16");
    }

    #[test]
    fn message_percent_encoding() {
        assert_eq!(percent_encode_message("plain text ~"), "plain text ~");
        assert_eq!(percent_encode_message("a%b"), "a%25b");
        assert_eq!(percent_encode_message("\r\n\u{7f}"), "%0D%0A%7F");
        assert_eq!(percent_encode_message("\u{1F600}"), "%F0%9F%98%80");
    }

    #[test]
    fn missing_status_uses_http_status() {
        let c = GrpcClassifier::new();
        assert_eq!(classify(c, None), Outcome::Success);
        let res = Response::builder().status(502).body(()).unwrap();
        assert_eq!(Classify::<_, ()>::classify(&c, Ok(&res)), Outcome::Failure);
        assert_eq!(
            Classify::<Response<()>, ()>::classify(&c, Err(&())),
            Outcome::Failure
        );
    }
}
