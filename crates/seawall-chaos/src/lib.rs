//! Fault injection for [tower]: prove that the resilience around a
//! dependency works before the dependency proves it for you.
//!
//! # The pattern
//!
//! Chaos engineering injects the failures production will bring (a slow
//! database, an API answering `503`, a dependency that stops answering at
//! all, one that flaps) on purpose, at a known rate and time, and watches
//! whether the system keeps its promises: do the breakers open, do retries
//! stay within budget, does the bulkhead keep the healthy routes serving?
//! [`ChaosLayer`] sits where the dependency is called, as the innermost
//! layer of a client stack (or in front of a handler), and makes some calls
//! fail the way the dependency would.
//!
//! # Faults
//!
//! Each [`Fault`] has a rate in `[0, 1]`, a [`Schedule`] and a name:
//!
//! - [`Fault::latency`]: adds a [`Latency`] (fixed, uniform, log-normal,
//!   Pareto) before the call proceeds.
//! - [`Fault::error`]: fails with [`InjectedFault`]; [`Fault::error_with`]
//!   with your own error; [`Fault::connection_reset`] as a hyper client
//!   whose connection dropped.
//! - [`Fault::http`] (e.g. `503` with `Retry-After`, `429`) and
//!   [`Fault::grpc`] (a trailers-only status): answers, for `http`
//!   services ([`ChaosBuilder::http`]).
//! - [`Fault::hang`]: never completes, until a timeout above drops it.
//!
//! An injected fault simulates a failure *of the dependency*, so it is not
//! a seawall [`Rejection`](seawall_core::Rejection): breakers above count
//! it as a failure and retries may retry it, as they would a real one.
//! Faults that answer or fail do not call the inner service.
//!
//! For each call, faults are evaluated in the order they were added: each
//! fault that is switched on and whose schedule is active draws once from
//! the service's RNG and fires if the draw is below its rate. Latencies add
//! up; the first error, answer or hang to fire ends the call (after the
//! latency), and later ones are not drawn.
//!
//! # Schedules and the handle
//!
//! A [`Schedule`] is measured from the layer's start instant in
//! `tokio::time::Instant`, so an outage from 10 s to 40 s, a brownout or a
//! flapping dependency play out the same in paused virtual time. A
//! [`ChaosHandle`] switches faults (or the whole layer) on and off and
//! changes rates at run time, restarts the schedules, and counts injections.
//!
//! # Header-triggered faults
//!
//! With [`ChaosBuilder::header_faults`], a request can ask for a delay or an
//! error answer through headers, as with Envoy's fault filter. They exist
//! only when enabled; see [`HeaderFaults`].
//!
//! # Reproducibility
//!
//! The decisions come from a seeded [`SmallRng`](rand::rngs::SmallRng)
//! ([`ChaosBuilder::seed`]). Each service made by the layer, and each clone
//! of a service, gets its own RNG stream, numbered in the order they are
//! made. With the same seed, services made in the same order, and calls
//! arriving in the same order on each service, the same calls get the same
//! faults. Under concurrency, which call reaches a service first is up to
//! the scheduler, so only the statistics repeat, not the exact calls; run
//! the service on one thread (or behind one `tower::buffer::Buffer` fed in
//! a fixed order) when the exact sequence matters. Changing the set of
//! active faults changes the draws of the calls that follow.
//!
//! # Cost
//!
//! A call through a layer that is switched off, or whose faults all are,
//! reads one atomic and calls the inner service: no clock read, no RNG
//! draw, no allocation. When faults are on, each active fault costs one RNG
//! draw, and a scheduled one a clock read per call; a call that gets a
//! fault allocates its outcome. See `benches/benches/chaos.rs` and the
//! README for figures against `tower::limit::ConcurrencyLimit`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use seawall_chaos::{ChaosLayer, Fault, Latency, Schedule};
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let secs = Duration::from_secs;
//! let chaos = ChaosLayer::builder()
//!     .http()
//!     .seed(7)
//!     .fault(Fault::latency(Latency::fixed(Duration::from_millis(50))).named("slow"))
//!     // A full outage from 10 s to 40 s after the start.
//!     .fault(
//!         Fault::http(StatusCode::SERVICE_UNAVAILABLE)
//!             .retry_after(secs(5))
//!             .schedule(Schedule::between(secs(10), secs(40)))
//!             .named("outage"),
//!     )
//!     .build()?;
//! let handle = chaos.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(chaos)
//!     .service_fn(|_req: Request<String>| async { Ok::<_, BoxError>(Response::new(String::from("ok"))) });
//!
//! let res = svc.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.status(), StatusCode::OK); // 50 ms later, in virtual time
//!
//! tokio::time::advance(secs(15)).await;
//! let res = svc.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "5");
//!
//! handle.disable(); // game over: pass everything through
//! let res = svc.oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(handle.injected("outage"), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `tracing`: [`TracingListener`](seawall_core::event::TracingListener)
//!   for [`ChaosEvent`]s.
//! - `metrics`: [`MetricsListener`](seawall_core::event::MetricsListener).
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod event;
mod fault;
mod future;
mod handle;
mod headers;
mod layer;
pub mod protocol;
mod schedule;
mod service;

pub use error::{FaultKind, InjectedFault};
pub use event::ChaosEvent;
pub use fault::{Fault, Latency, DEFAULT_LATENCY_CAP, MAX_LATENCY};
pub use future::ResponseFuture;
pub use handle::ChaosHandle;
pub use headers::{HeaderFaults, ABORT_HEADER, DELAY_HEADER, GRPC_STATUS_HEADER};
pub use layer::{ChaosBuilder, ChaosLayer};
pub use protocol::{Http, Plain};
pub use schedule::Schedule;
pub use service::Chaos;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
