//! HTTP adapters.
//!
//! [`RejectionResponseLayer`] turns any [`BoxError`](crate::BoxError) from
//! the layers below into an `http::Response`: a seawall
//! [`Rejection`](crate::Rejection) keeps its status and `Retry-After`, a
//! timeout becomes 504, anything else 500; the body is an
//! `application/problem+json` document (RFC 9457).

pub(crate) mod problem;
mod rejection_response;

pub use problem::{error_response, PROBLEM_JSON};
pub use rejection_response::{RejectionResponse, RejectionResponseLayer, ResponseFuture};
