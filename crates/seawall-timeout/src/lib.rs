//! Timeouts as a contract: an [`AdaptiveTimeoutLayer`] that learns how long
//! a dependency takes, and a [`HedgeLayer`] that cuts its tail by sending a
//! second attempt of slow requests that are safe to send twice.
//!
//! # Adaptive timeouts
//!
//! A fixed timeout is either too long (a stuck dependency holds callers
//! for seconds) or too short (a slow day turns into an outage of timeouts).
//! The usual advice is "p99 latency under normal conditions times 2 to 3".
//! [`AdaptiveTimeoutLayer`] follows it continuously:
//!
//! ```text
//! timeout = clamp(percentile(p) x multiplier, floor, ceiling)
//! ```
//!
//! over the latencies of a rolling window. The defaults are p99 x 3 within
//! [10 ms, 30 s], over a 30 s window, with a fixed 1 s until the window
//! holds 100 samples.
//!
//! - **The samples**: a call that made the caller wait (returned `Pending`)
//!   and succeeded (decided by a [`Classify`](seawall_core::Classify); every
//!   `Ok` by default, HTTP successes with
//!   [`.http()`](AdaptiveTimeoutBuilder::http)) counts its latency; a call
//!   the adaptive threshold timed out counts the threshold. Nothing else: a
//!   failure (a fast `503`, a slow reset) says nothing of how long an answer
//!   takes, a request's own shorter deadline says nothing of the
//!   dependency, and a call answered on its first poll could not time out
//!   (as zero, a wall of cache hits would drag the p99 of the misses to the
//!   floor).
//! - **Timeouts are lower bounds, not guesses**: a timed-out call would have
//!   taken at least the threshold. While fewer than `1 - percentile` of the
//!   calls time out, such samples sit above the percentile whatever their
//!   true latency, so they leave it as it would be; when more do, the
//!   percentile becomes the threshold and each refresh multiplies it by the
//!   multiplier until the calls fit again. A step above the timeout is so
//!   followed within the window length, and a slow drift moves the
//!   percentile as ever; a jump, or a dependency that hangs, is capped by
//!   the ceiling. (With a multiplier of 1 or less the timeout cannot rise
//!   past a step.)
//! - The request's own deadline wins when it is shorter: with
//!   [`.http()`](AdaptiveTimeoutBuilder::http), a `grpc-timeout` header or a
//!   [`Deadline`] extension ([`CarriedDeadline`] for other request types).
//! - A timeout fails the call with [`AdaptiveTimeoutElapsed`], whose source
//!   is tower's `Elapsed`: `seawall::http::RejectionResponseLayer` answers it
//!   with `504` (`DEADLINE_EXCEEDED` for gRPC). It is a failure of the
//!   dependency, not a seawall rejection, so a circuit breaker above counts
//!   it. With a listener, each timeout is a [`TimeoutEvent`] carrying the
//!   threshold.
//!
//! ```
//! use std::time::Duration;
//! use seawall_timeout::AdaptiveTimeoutLayer;
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = AdaptiveTimeoutLayer::builder()
//!     .percentile(0.99)
//!     .multiplier(3.0)
//!     .floor(Duration::from_millis(20))
//!     .ceiling(Duration::from_secs(5))
//!     .initial_timeout(Duration::from_secs(1))
//!     .build()
//!     .expect("valid config");
//!
//! let dependency = service_fn(|ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, BoxError>(ms)
//! });
//! let svc = ServiceBuilder::new().layer(layer.clone()).service(dependency);
//! for _ in 0..200 {
//!     svc.clone().oneshot(10).await.unwrap();
//! }
//! tokio::time::advance(Duration::from_millis(100)).await;
//! // p99 = 10 ms, x3 = 30 ms (within the bucket precision of 1.6%).
//! let timeout = layer.timeout();
//! assert!(timeout > Duration::from_millis(29) && timeout < Duration::from_millis(31));
//! assert!(svc.oneshot(100).await.is_err());
//! # }
//! ```
//!
//! # Hedged requests
//!
//! "The Tail at Scale" (Dean & Barroso, 2013): send a second copy of a
//! request that has not answered after the 95th-percentile latency, use the
//! first answer and cancel the other. For a few percent more requests, the
//! tail collapses: their hedge after 10 ms cut the p99.9 from 1,800 ms to
//! 74 ms for 2% more requests. [`HedgeLayer`] does it with the guards that
//! make it safe:
//!
//! - **Only requests safe to send twice.** [`HttpRequests`] hedges
//!   idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and
//!   requests with one usable `Idempotency-Key` (not blank, `""` or
//!   repeated); a `POST` without one is sent exactly once. gRPC methods are hedged only when opted in by path.
//!   [`CloneRequests`] hedges generic `Clone` requests, all or those a
//!   predicate accepts.
//! - **A budget.** Every hedgeable request earns a share of a token (5% by
//!   default) in a lock-free [`RetryBudget`](seawall_retry::RetryBudget),
//!   every hedge spends one, and only a small reserve is saved (what 100
//!   requests earn): over any run of `n` hedgeable requests, hedges number
//!   at most `ratio x (n + 100)`, even when the whole dependency slows down
//!   after a calm period. At most `max_hedges` (default 1) per request.
//! - **The first success wins**; the other attempts are dropped, which
//!   cancels them. Nothing else wins while another attempt runs: not a
//!   failure, not an outcome the classifier ignores, not an answer saying
//!   another attempt is in flight (`409` / `425` with [`HttpRequests`], what
//!   a deduplicating server answers a keyed POST's hedge; see
//!   [`HedgeResponse`]). A request that fails before its hedge is due is
//!   not hedged (that is what retries are for).
//! - **The delay** is fixed, or (the default) the p95 of recent waited-for
//!   latencies, from the same estimator as the adaptive timeout.
//! - Bodies are buffered and replayed by the retry layer's
//!   [`HttpReplay`](seawall_retry::HttpReplay), not a second implementation.
//!
//! ```
//! use std::time::Duration;
//! use seawall_timeout::HedgeLayer;
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = HedgeLayer::builder()
//!     .delay(Duration::from_millis(20))
//!     .budget_ratio(1.0)
//!     .build()
//!     .unwrap();
//! // The first attempt is stuck; the hedge answers at once.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let seen = calls.clone();
//! let dependency = service_fn(move |_: ()| {
//!     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         if n == 0 { std::future::pending::<()>().await }
//!         Ok::<_, BoxError>(n)
//!     }
//! });
//! let svc = ServiceBuilder::new().layer(layer).service(dependency);
//! let started = tokio::time::Instant::now();
//! // The hedge (attempt 2, the call numbered 1) answers after 20 ms; the
//! // stuck first attempt is dropped.
//! assert_eq!(svc.oneshot(()).await.unwrap(), 1);
//! assert_eq!(started.elapsed(), Duration::from_millis(20));
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
//! # }
//! ```
//!
//! # Cost
//!
//! On the path where nothing goes wrong, neither layer locks, boxes or
//! allocates. A call answered on its first poll costs neither layer a clock
//! read, a timer or a record (it is not a sample: the caller did not wait),
//! and the timeout is a cached atomic. A call that returns `Pending` reads
//! the clock then and when it ends (and records one relaxed `fetch_add`): the
//! timeout and the hedge delay count from when the caller starts waiting
//! (tower's `Timeout` counts from `call`); a request carrying a deadline
//! reads the clock in `call`. The percentile is recomputed from the window at
//! most once per `refresh` (100 ms), by one caller. The hedge also clones the
//! request and the inner service (to be able to send it again) and adds to
//! the budget. See the README for the figures against tower's `Timeout` and
//! `benches/benches/timeout.rs`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod deadline;
mod error;
mod estimator;
mod event;
mod hedge;
mod timeout;
mod timer;
mod window;

pub use deadline::{
    grpc_timeout, CarriedDeadline, Deadline, HttpDeadline, NoDeadline, GRPC_TIMEOUT,
};
pub use error::AdaptiveTimeoutElapsed;
pub use event::{HedgeEvent, TimeoutEvent};
pub use hedge::future::ResponseFuture as HedgeResponseFuture;
pub use hedge::layer::{HedgeBuilder, HedgeLayer, MAX_HEDGES};
pub use hedge::policy::{
    CloneRequests, EveryRequest, HedgePolicy, HedgePredicate, HedgeResponse, HttpRequests,
};
pub use hedge::service::Hedge;
pub use timeout::future::ResponseFuture;
pub use timeout::layer::{AdaptiveTimeoutBuilder, AdaptiveTimeoutLayer};
pub use timeout::service::AdaptiveTimeout;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
