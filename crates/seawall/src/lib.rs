//! Resilience layers for [tower]: make services survive the failure of what
//! they depend on.
//!
//! seawall is a set of `tower::Layer`s that compose through
//! `tower::ServiceBuilder` into axum servers, tonic and hyper clients and any
//! tower pipeline. They share one vocabulary, [`core`]: a call's
//! [`Outcome`] decided by one [`Classify`]er, refusals that are
//! [`Rejection`]s carrying an HTTP status and a `Retry-After` hint, and typed
//! events sent to a [`Listener`].
//!
//! This crate is the facade: it re-exports each layer crate behind a feature
//! of the same name, adds [`ServiceBuilderExt`], the HTTP adapters in
//! [`http`] and the gRPC adapters in [`grpc`]: a server stack under
//! [`http::RejectionResponseLayer`] answers gRPC requests with trailers-only
//! statuses (`UNAVAILABLE` for an open breaker or a full bulkhead), and with
//! the `tonic` feature a client stack under `grpc::RejectionStatusLayer`
//! hands tonic code a `tonic::Status` with the right code. Answers carry
//! seawall's own text only, never an inner error's message.
//!
//! Classifiers are named types that combine through [`ClassifyExt`]
//! (`HttpClassifier::new().ignore_rejections()`, `a.or(b)`, `a.not()`), so
//! a stack never needs a closure over `&BoxError` and its futures stay
//! spawnable with `tokio::spawn`.
//!
//! # Example
//!
//! An axum-style service whose errors become problem+json responses, so it
//! mounts on a `Router` without `HandleErrorLayer`:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use seawall::ServiceBuilderExt;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .rejection_response()
//!     .timeout(Duration::from_millis(50))
//!     .service_fn(|_req: Request<String>| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, BoxError>(Response::new(String::from("too late")))
//!     });
//!
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `http` (default) | [`http::RejectionResponseLayer`] (problem+json, trailers-only gRPC answers), [`grpc::error_response`] |
//! | `tonic` | `grpc::to_status`, `grpc::into_status`, `grpc::RejectionStatusLayer`: seawall rejections as `tonic::Status` |
//! | `circuit-breaker` | `seawall::circuit_breaker` (`CircuitBreakerLayer`, keyed breakers) |
//! | `retry` | `seawall::retry` (`JitterRetryLayer`, `RetryBudget`) |
//! | `bulkhead` | `seawall::bulkhead` (`BulkheadLayer`, adaptive limits) |
//! | `fallback` | `seawall::fallback` (`FallbackLayer`) |
//! | `idempotency` | `seawall::idempotency` (`IdempotencyLayer`, `MemoryStore`) |
//! | `redis` | the idempotency layer's `RedisStore`; with `rate-limit`, the rate limiter's `RedisBackend` |
//! | `postgres` | the idempotency layer's `PostgresStore` |
//! | `chaos` | `seawall::chaos` (`ChaosLayer`: seeded, scheduled fault injection) |
//! | `rate-limit` | `seawall::rate_limit` (`RateLimitLayer`: keyed GCRA, several limits, IETF `RateLimit` fields) |
//! | `timeout` | `seawall::timeout` (`AdaptiveTimeoutLayer`: percentile x k within bounds; `HedgeLayer`: idempotency-gated hedged requests under a budget) |
//! | `circuit-breaker` + `retry` | [`stack`]: client and server presets (the server preset also needs `bulkhead`) |
//! | `health` | [`health::HealthRegistry`]: JSON health and readiness endpoints |
//! | `tracing` | [`core::event::TracingListener`] |
//! | `metrics` | [`core::event::MetricsListener`] |
//! | `full` | all of the above |
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod grpc;

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;

#[cfg(all(feature = "circuit-breaker", feature = "retry"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "circuit-breaker", feature = "retry"))))]
pub mod stack;

pub use builder::ServiceBuilderExt;

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "tonic", feature = "circuit-breaker"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The shared vocabulary: outcomes, classifiers, rejections, hints, events.
pub use seawall_core as core;
pub use seawall_core::{
    And, BoxError, Classify, ClassifyExt, ConfigError, ErrorsFail, Event, GrpcClassifier, GrpcCode,
    HttpClassifier, IgnoreErrors, IgnoreRejections, Listener, NoopListener, Not, Or, Outcome,
    Rejected, Rejection,
};

#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
#[doc(inline)]
pub use seawall_circuit_breaker as circuit_breaker;

/// A circuit breaker's handle (`circuit_breaker::Handle`), named apart from
/// a bulkhead's.
#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
pub use seawall_circuit_breaker::CircuitBreakerHandle;

/// A bulkhead's handle (`bulkhead::Handle`), named apart from a circuit
/// breaker's.
#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
pub use seawall_bulkhead::BulkheadHandle;

pub use seawall_core::event::FnListener;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use seawall_core::event::MetricsListener;

#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use seawall_core::event::TracingListener;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
#[doc(inline)]
pub use seawall_retry as retry;

#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
#[doc(inline)]
pub use seawall_bulkhead as bulkhead;

#[cfg(feature = "fallback")]
#[cfg_attr(docsrs, doc(cfg(feature = "fallback")))]
#[doc(inline)]
pub use seawall_fallback as fallback;

#[cfg(feature = "idempotency")]
#[cfg_attr(docsrs, doc(cfg(feature = "idempotency")))]
#[doc(inline)]
pub use seawall_idempotency as idempotency;

#[cfg(feature = "chaos")]
#[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
#[doc(inline)]
pub use seawall_chaos as chaos;

#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
#[doc(inline)]
pub use seawall_rate_limit as rate_limit;

#[cfg(feature = "timeout")]
#[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
#[doc(inline)]
pub use seawall_timeout as timeout;
