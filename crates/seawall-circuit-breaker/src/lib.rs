//! A circuit breaker for [tower] services: stop calling a dependency that is
//! failing, fail fast instead, and probe it carefully until it recovers.
//!
//! # The pattern
//!
//! A dependency that is down or overloaded makes every caller wait for
//! timeouts, ties up connections, threads and memory, and keeps the
//! dependency from recovering. A circuit breaker watches the outcomes of
//! calls and, when too many fail (or are too slow), *opens*: calls are
//! refused at once with [`CircuitOpen`] (`503`, with a `Retry-After` hint)
//! without touching the dependency. After an open duration it lets a few
//! *probe* calls through (*half-open*); if they succeed it *closes* again,
//! otherwise it stays open for another (possibly longer) while.
//!
//! ```text
//!            failure or slow-call rate ≥ threshold
//!            (or N failures in a row)
//!   Closed ─────────────────────────────────────────▶ Open
//!     ▲                                               │ open duration
//!     │ probes healthy                                ▼ elapsed
//!     └──────────────────────────────────────────── HalfOpen
//!                    probes unhealthy or lost ──▶ Open
//! ```
//!
//! Use it in front of anything remote that can fail as a whole: another
//! service, a database, a third-party API. Put retries *outside* the
//! breaker so that retried calls see the open circuit and stop, and a
//! timeout *inside* it so that hung calls count as failures.
//!
//! # What this breaker does
//!
//! - **True sliding windows.** A count window holds exactly the last N
//!   recorded outcomes; a time window holds the last D, in buckets. Both
//!   cost O(1) per call however much they hold, and both are lock-free.
//!   `minimum_calls` keeps a handful of early failures from tripping it.
//! - **Trip rules:** failure rate, slow-call rate (a call slower than
//!   `slow_call_duration`, whatever its outcome), N consecutive failures.
//! - **Exact half-open probing:** exactly `half_open_probes` calls run at
//!   once; the rest are rejected. Cancelled probes give their slot back, and
//!   probes that never finish cannot wedge the breaker
//!   (`max_half_open_wait`).
//! - **Epochs:** an outcome of a call admitted under an earlier state (say,
//!   started while closed and finished after the trip) never drives the
//!   new state.
//! - **Open durations** fixed or growing with consecutive trips
//!   ([`OpenDuration`]), with jitter.
//! - **No waiting while open:** `poll_ready` does not poll the inner service
//!   when the call is going to be rejected, and the rejection is a ready
//!   error from `call` (never an error from `poll_ready`, which would tell
//!   tower the service is dead).
//! - **Classification** through [`seawall_core::Classify`]: every error
//!   fails by default; [`HttpClassifier`](seawall_core::HttpClassifier) and
//!   [`GrpcClassifier`](seawall_core::GrpcClassifier) judge responses.
//! - **A [`Handle`]** for health checks and operations: state, a
//!   [`Metrics`] snapshot, a `watch` of state changes, and force open /
//!   disable / reset. Events go to a [`Listener`](seawall_core::Listener).
//! - **Rejections from inside are not failures:** a seawall rejection
//!   raised by a layer the breaker wraps (a full bulkhead, a rate limit, an
//!   inner breaker) never reached the dependency, so it is ignored unless
//!   [`Builder::count_inner_rejections`] says otherwise. A panicking inner
//!   call is recorded as a failure before the panic goes on.
//! - **Metrics-only mode** ([`Builder::metrics_only`]): record and report,
//!   never refuse.
//! - **Keyed mode:** one breaker per host, route or tenant in a bounded
//!   registry, enumerable through a [`KeyedHandle`].
//!
//! The closed path takes no lock, allocates nothing and boxes nothing: one
//! atomic load to admit, a few atomic operations to record.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use seawall_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
//! use seawall_core::{BoxError, Rejection};
//! use tower::{service_fn, ServiceBuilder, ServiceExt, Service};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("inventory")
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate_threshold(0.5)
//!     .open_duration(Duration::from_secs(5))
//!     .build()
//!     .expect("valid settings");
//! let handle = breaker.handle();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err::<&str, BoxError>("backend down".into()) } else { Ok("ok") }
//!     }));
//!
//! for _ in 0..4 {
//!     let _ = svc.ready().await.unwrap().call(true).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Refused at once, with the time left open as a hint.
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().unwrap();
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(5)));
//!
//! // After the open duration one probe goes through, and it succeeds.
//! tokio::time::advance(Duration::from_secs(5)).await;
//! assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "ok");
//! assert_eq!(handle.state(), State::Closed);
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod error;
mod event;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
mod future;
mod handle;
mod keyed;
mod layer;
mod open_duration;
mod service;
mod state;
mod sync;
mod window;

pub use error::{CircuitOpen, KeyedRegistryFull};
pub use event::{CircuitBreakerEvent, EventKind};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use fleet::{FleetHandle, FleetSync, FleetView};
pub use future::ResponseFuture;
pub use handle::{Handle, Metrics};
/// [`Handle`] under a name that reads apart from a bulkhead's handle, for
/// code that names both.
pub type CircuitBreakerHandle = Handle;
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerLayer, KeyedHandle};
pub use layer::{Builder, CircuitBreakerLayer};
pub use open_duration::OpenDuration;
pub use service::CircuitBreaker;
pub use state::State;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
