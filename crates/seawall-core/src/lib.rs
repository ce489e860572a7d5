//! The shared vocabulary of the seawall resilience layers.
//!
//! Every seawall layer speaks the same few words, defined here so that layers
//! compose without glue:
//!
//! - [`Outcome`] and [`Classify`]: one way to say whether a call succeeded,
//!   failed, or should not count. Circuit breakers, retries, fallbacks and
//!   adaptive limits all take a classifier. [`ErrorsFail`] (the default),
//!   [`HttpClassifier`] and [`GrpcClassifier`] ship ready, and any closure
//!   `Fn(Result<&Res, &Err>) -> Outcome` is a classifier too.
//! - [`Rejection`]: what a layer's own refusal (an open breaker, a full
//!   bulkhead) looks like from the outside: an HTTP status and a
//!   `Retry-After` hint. [`rejection::find`] reads it back from any
//!   [`BoxError`] without knowing the concrete error type.
//! - [`hint`]: defensive parsing of the server hints `Retry-After`
//!   (RFC 9110 §10.2.3) and `grpc-retry-pushback-ms` (gRFC A6).
//! - [`event`]: typed events and the [`Listener`] trait. A layer whose
//!   listener is [`NoopListener`] builds no event at all.
//! - [`ConfigError`]: the error every builder returns for invalid settings.
//! - [`SharedState`]: how services and response futures hold their layer's
//!   state: reference-counted, or a plain reference once leaked.
//!
//! # Example
//!
//! ```
//! use http::{Response, StatusCode};
//! use seawall_core::{Classify, HttpClassifier, Outcome};
//!
//! let classifier = HttpClassifier::new();
//! let unavailable = Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap();
//! let ok = Response::new(());
//!
//! assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&unavailable)), Outcome::Failure);
//! assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&ok)), Outcome::Success);
//!
//! // Any closure is a classifier: here a 404 should not count at all.
//! let ignore_404 = |res: Result<&Response<()>, &std::io::Error>| match res {
//!     Ok(r) if r.status() == StatusCode::NOT_FOUND => Outcome::Ignore,
//!     Ok(_) => Outcome::Success,
//!     Err(_) => Outcome::Failure,
//! };
//! let not_found = Response::builder().status(404).body(()).unwrap();
//! assert_eq!(ignore_404.classify(Ok(&not_found)), Outcome::Ignore);
//! ```
//!
//! # Features
//!
//! - `tracing`: [`TracingListener`](event::TracingListener).
//! - `metrics`: [`MetricsListener`](event::MetricsListener).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod config;
pub mod event;
pub mod grpc;
pub mod hint;
mod http_classify;
pub mod problem;
pub mod rejection;
mod shared;

pub use classify::{
    And, Classify, ClassifyExt, ErrorChain, ErrorsFail, IgnoreErrors, IgnoreRejections, Not, Or,
    Outcome,
};
pub use config::ConfigError;
pub use event::{Event, Listener, NoopListener};
pub use grpc::{GrpcClassifier, GrpcCode};
pub use http_classify::HttpClassifier;
pub use rejection::{Rejected, Rejection};
pub use shared::SharedState;

/// The error type every seawall layer returns: tower's boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
