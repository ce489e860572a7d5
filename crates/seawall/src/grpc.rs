//! gRPC adapters, for both sides of a call.
//!
//! **Server.** [`RejectionResponseLayer`](crate::http::RejectionResponseLayer)
//! answers a request whose `content-type` is `application/grpc*` with a
//! trailers-only gRPC response ([`error_response`]): HTTP 200,
//! `content-type: application/grpc` (`application/grpc-web` or
//! `application/grpc-web-text` for a gRPC-Web request), no body, and in the
//! headers
//!
//! | error | `grpc-status` |
//! |---|---|
//! | open breaker, full bulkhead, bulkhead timeout, `Overloaded` | `UNAVAILABLE` (14) |
//! | rate limit (kind `rate_limited`, or status 429) | `RESOURCE_EXHAUSTED` (8) |
//! | tower's or tokio's `Elapsed`, a rejection with status 504 | `DEADLINE_EXCEEDED` (4) |
//! | any other seawall rejection | [`Rejected::grpc_code`](crate::Rejected::grpc_code) |
//! | anything else | `UNKNOWN` (2), with no text of the error |
//!
//! `grpc-message` is seawall's own fixed text
//! ([`Rejected::detail`](crate::Rejected::detail)), percent-encoded as the
//! gRPC protocol prescribes, and a hint becomes `grpc-retry-pushback-ms`.
//!
//! **Client** (feature `tonic`). `into_status` and `to_status` turn a
//! seawall rejection inside a `BoxError` into a `tonic::Status` with the
//! right code, and `RejectionStatusLayer` does it for every error of a
//! stack, so that tonic's generated client returns `Code::Unavailable` for an
//! open breaker instead of `Code::Unknown`.
#![cfg_attr(
    feature = "tonic",
    doc = r#"
```
use http::StatusCode;
use seawall::{grpc, BoxError, Rejected};
use tonic::Code;

let err: BoxError = Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None).into();
let status = grpc::to_status(&*err);
assert_eq!(status.code(), Code::Unavailable);
assert_eq!(status.message(), "the circuit breaker is open");
```
"#
)]

use std::error::Error;

use bytes::Bytes;
use http::{header, HeaderMap, Response};
use http_body_util::Full;

use crate::http::problem::Answer;

/// The `content-type` of seawall's gRPC answers.
pub const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// `true` if the request's `content-type` is `application/grpc` or one of its
/// variants (`application/grpc+proto`, `application/grpc+json`, ...).
///
/// ```
/// use http::HeaderMap;
/// use seawall::grpc::is_grpc_request;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "application/grpc+proto".parse().unwrap());
/// assert!(is_grpc_request(&headers));
/// headers.insert("content-type", "application/json".parse().unwrap());
/// assert!(!is_grpc_request(&headers));
/// ```
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= GRPC_CONTENT_TYPE.len()
            && value[..GRPC_CONTENT_TYPE.len()].eq_ignore_ascii_case(GRPC_CONTENT_TYPE.as_bytes())
    })
}

/// The trailers-only gRPC answer for an error (see the [module
/// docs](self) for the codes). It carries seawall's own text only.
///
/// ```
/// use http::StatusCode;
/// use seawall::{grpc, BoxError, Rejected};
/// use std::time::Duration;
///
/// let err: BoxError = Rejected::new(
///     "bulkhead_full",
///     StatusCode::SERVICE_UNAVAILABLE,
///     Some(Duration::from_millis(250)),
/// )
/// .into();
/// let res = grpc::error_response(&*err);
/// assert_eq!(res.status(), StatusCode::OK);
/// assert_eq!(res.headers()["grpc-status"], "14");
/// assert_eq!(res.headers()["grpc-message"], "the bulkhead is full");
/// assert_eq!(res.headers()["grpc-retry-pushback-ms"], "250");
/// ```
pub fn error_response(err: &(dyn Error + 'static)) -> Response<Full<Bytes>> {
    Answer::of(err).grpc_response()
}

#[cfg(feature = "tonic")]
mod status;

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use status::{
    into_status, to_status, RejectionStatus, RejectionStatusFuture, RejectionStatusLayer,
};
