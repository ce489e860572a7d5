//! The shared vocabulary of the seawall resilience layers.
//!
//! Every seawall layer speaks the same few words, defined here so that layers
//! compose without glue:
//!
//! - [`Outcome`] and [`Classify`]: one way to say whether a call succeeded,
//!   failed, or should not count. Circuit breakers, retries, fallbacks and
//!   adaptive limits all take a classifier. [`ErrorsFail`] (the default),
//!   [`HttpClassifier`] and [`GrpcClassifier`] ship ready, and combine
//!   through [`ClassifyExt`] ([`IgnoreRejections`], [`Or`], [`And`],
//!   [`Not`], [`IgnoreErrors`]) into named types. Prefer them to a closure
//!   over `&BoxError`, which can make a service unusable inside
//!   `tokio::spawn` ("implementation of `FnOnce` is not general enough").
//! - [`problem`]: the one writer of seawall's problem+json answers.
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
//! use seawall_core::{BoxError, Classify, ClassifyExt, HttpClassifier, Outcome};
//!
//! let classifier = HttpClassifier::new();
//! let unavailable = Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap();
//! let ok = Response::new(());
//!
//! assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&unavailable)), Outcome::Failure);
//! assert_eq!(Classify::<_, std::io::Error>::classify(&classifier, Ok(&ok)), Outcome::Success);
//!
//! // A 404 should not count at all, nor should seawall's own refusals.
//! let classifier = HttpClassifier::new()
//!     .ignore(StatusCode::NOT_FOUND)
//!     .ignore_rejections();
//! let not_found = Response::builder().status(404).body(()).unwrap();
//! assert_eq!(Classify::<_, BoxError>::classify(&classifier, Ok(&not_found)), Outcome::Ignore);
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
    And, Classify, ClassifyExt, ErrorsFail, IgnoreErrors, IgnoreRejections, Not, Or, Outcome,
};
pub use config::ConfigError;
pub use event::{Event, Listener, NoopListener};
pub use grpc::{GrpcClassifier, GrpcCode};
pub use http_classify::HttpClassifier;
pub use rejection::{Rejected, Rejection};
pub use shared::SharedState;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The error type every seawall layer returns: tower's boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
