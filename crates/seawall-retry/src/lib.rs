//! `JitterRetryLayer`: retries that heal transient faults without turning an
//! outage into a retry storm.
//!
//! # The pattern
//!
//! A retry hides a fault that is gone a moment later: a dropped connection, a
//! leader election, a replica restarting. Retried carelessly, it does harm:
//! clients that failed together retry together and collide again, and every
//! client multiplying its load by `max_attempts` keeps an overloaded
//! dependency down. This layer retries with the safeguards that prevent both:
//!
//! - **Jittered backoff** — constant or exponential (`base * 2^n`, capped at
//!   `max_delay`) with no, full, equal or decorrelated [`Jitter`], exactly the
//!   formulas of Marc Brooker's "Exponential Backoff and Jitter" (AWS, 2015).
//!   Full and decorrelated jitter spread clients that failed together so they
//!   stop colliding; the crate's contention simulation (see the tests)
//!   reproduces the study's ordering.
//! - **A retry budget** — a [`RetryBudget`] shared by every clone of the
//!   layer, and by several layers if given the same handle: first attempts
//!   deposit a share of a token (10% by default), retries withdraw one. When
//!   the dependency is down, retries add at most that share of load instead
//!   of multiplying it.
//! - **Limits** — `max_attempts` (counting the first), a total `deadline` and
//!   an optional per-attempt timeout. The deadline bounds the whole request:
//!   each attempt runs for at most the time left before it (and at most the
//!   attempt timeout), no retry starts whose backoff would end at or past it,
//!   and reading an HTTP body or waiting for the inner service's readiness
//!   stops at it too. A request cut by the deadline fails with
//!   [`DeadlineExceeded`], a timeout (its source is tower's `Elapsed`, which
//!   `seawall::http::RejectionResponseLayer` answers with `504`).
//! - **Server hints** — `Retry-After` (seconds or HTTP-date) and
//!   `grpc-retry-pushback-ms` set the least delay; a rejection from a seawall
//!   layer below (an open circuit breaker, a full bulkhead) is retried only
//!   after its `retry_after`. A hint longer than `max_delay`, or past the
//!   deadline, ends retrying and returns the failure as it is.
//! - **Safe HTTP replay** — with [`.http()`](JitterRetryBuilder::http), only
//!   idempotent methods or requests with an `Idempotency-Key` are retried;
//!   bodies up to 64 KiB are buffered so a `PUT` or keyed `POST` can be sent
//!   again byte for byte; larger or streaming bodies are sent once, intact.
//!   The inner service receives `Request<ReplayBody<B>>`, which a hyper-util
//!   client built with `build_http()` infers; [`HttpReplay::original_body`]
//!   hands back the caller's own body type instead, and with the `tonic`
//!   feature `.grpc()` hands a tonic `Channel` the `tonic::body::Body` it
//!   takes (see [`HttpReplay`] for the modes).
//!
//! What counts as a failure is decided by one [`Classify`]: by default every
//! error ([`ErrorsFail`]); in HTTP mode 5xx, 408, 429 and transport errors
//! ([`HttpClassifier`]). Successes and `Ignore`d results are returned as they
//! are, and so is the last failure when retrying stops.
//!
//! # When to use it
//!
//! On the client side of a call to a dependency that fails transiently and
//! whose operations are idempotent (or carry an idempotency key). Place it
//! *above* a circuit breaker so that an open breaker's rejection carries its
//! `retry_after` up to the retry, and below any overall timeout.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use seawall_retry::{Backoff, Jitter, JitterRetryLayer};
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = JitterRetryLayer::builder()
//!     .max_attempts(4)
//!     .backoff(Backoff::exponential(Duration::from_millis(50)))
//!     .jitter(Jitter::Decorrelated)
//!     .max_delay(Duration::from_secs(2))
//!     .deadline(Duration::from_secs(5))
//!     .build()
//!     .expect("valid config");
//!
//! // A dependency that fails twice, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let flaky = service_fn(move |req: &'static str| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         if n < 2 { Err::<String, BoxError>("connection reset".into()) } else { Ok(req.to_uppercase()) }
//!     }
//! });
//!
//! let svc = ServiceBuilder::new().layer(layer).service(flaky);
//! assert_eq!(svc.oneshot("ping").await.unwrap(), "PING");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```
//!
//! HTTP clients use `.http()`; each retry carries its number in the
//! request's extensions, read with [`Attempt::of`]:
//!
//! ```
//! use seawall_retry::JitterRetryLayer;
//!
//! let layer = JitterRetryLayer::builder().http().max_attempts(3).build().unwrap();
//! # let _ = layer;
//! ```
//!
//! # Events
//!
//! With a listener ([`JitterRetryBuilder::listener`]) the layer reports
//! [`RetryEvent`]s: a retry scheduled (attempt, delay, cause), retries
//! exhausted (and why), the budget exhausted. With the default
//! [`NoopListener`](seawall_core::NoopListener) no event is built.
//!
//! # Cost
//!
//! When nothing fails, a call costs a clone of the request (tower's retry
//! does the same), a clone of the inner service, a reference count on the
//! shared configuration, and a classification. No lock, no allocation, no
//! boxing, no clock read (unless a deadline is set). Budget deposits are
//! batched per service instance (one shared atomic add per 16 calls). What
//! only a retry needs (RNG, timer) is created, in one allocation, at the
//! first retry; with an `attempt_timeout` or a `deadline`, that allocation
//! happens for every request, as its timer. See `benches/benches/retry.rs`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod budget;
mod error;
mod event;
mod future;
mod layer;
mod replay;
mod service;

pub use backoff::{Backoff, Delays, Jitter};
pub use budget::{RetryBudget, RetryBudgetBuilder};
pub use error::{AttemptTimeout, DeadlineExceeded};
pub use event::{GiveUpReason, RetryCause, RetryEvent};
pub use future::ResponseFuture;
pub use layer::{JitterRetryBuilder, JitterRetryLayer};
#[cfg(feature = "tonic")]
pub use replay::AsTonicBody;
pub use replay::{
    AsOriginalBody, AsReplayBody, Attempt, BufferBody, CloneRequest, HttpCopy, HttpReplay,
    InnerBody, ReadHint, Replay, ReplayBody, Staged, DEFAULT_BODY_LIMIT, IDEMPOTENCY_KEY,
};
pub use service::JitterRetry;

#[doc(no_inline)]
pub use seawall_core::{Classify, ErrorsFail, HttpClassifier};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
