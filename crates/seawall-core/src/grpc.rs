//! gRPC status codes and the gRPC classifier.

use http::{HeaderMap, Response};

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
    /// protocol prescribes; an absent header gives `None`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get("grpc-status")?;
        let code = value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(Self::from_i32)
            .unwrap_or(GrpcCode::Unknown);
        Some(code)
    }
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
        Self { failures }
    }

    /// Makes `code` a failure.
    #[must_use]
    pub const fn fail_on(mut self, code: GrpcCode) -> Self {
        self.failures |= bit(code);
        self
    }

    /// Makes `code` a success.
    #[must_use]
    pub const fn succeed_on(mut self, code: GrpcCode) -> Self {
        self.failures &= !bit(code);
        self
    }

    /// The outcome of a call that ended with `code`.
    #[inline]
    pub const fn classify_code(&self, code: GrpcCode) -> Outcome {
        if self.failures & bit(code) != 0 {
            Outcome::Failure
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
