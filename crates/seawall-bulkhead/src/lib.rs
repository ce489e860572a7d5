//! Bulkheads for [tower]: bounded concurrency per dependency, with a bounded
//! wait queue, priority shedding and adaptive limits.
//!
//! # The pattern
//!
//! A ship's bulkheads keep one flooded compartment from sinking the whole
//! hull. In a service, the compartments are the dependencies: if every
//! request handler may wait on a slow database, a slow database soon holds
//! every worker, connection and byte of memory, and the endpoints that never
//! touch it go down too. A bulkhead gives each dependency a fixed number of
//! permits; once they are all in use, further calls wait a bounded time in a
//! bounded queue, and are then refused at once with a `503` and a short
//! `Retry-After`, instead of piling up.
//!
//! Use a bulkhead around each dependency that can slow down (a database, a
//! downstream API, a CPU-heavy handler), with a limit sized to what that
//! dependency can take. When you do not know that number, or it changes,
//! let an [adaptive limit](limit) find it from latency and failures.
//!
//! # What it does
//!
//! - **Limit**: at most [`max_concurrent`](PoolBuilder::max_concurrent) calls
//!   hold permits, or an [adaptive limit](limit) ([`Aimd`](limit::Aimd),
//!   [`Gradient2`](limit::Gradient2), [`Vegas`](limit::Vegas)) fed with each
//!   call's latency and the [`Classify`](seawall_core::Classify)er's verdict
//!   (a failure counts as a drop).
//! - **Queue**: up to [`max_queue`](PoolBuilder::max_queue) requests wait,
//!   each at most [`max_wait`](PoolBuilder::max_wait). A full queue refuses
//!   with [`BulkheadFull`], an expired wait with [`BulkheadTimeout`]; both
//!   are [`Rejection`](seawall_core::Rejection)s (503 + `Retry-After`, 1 s by
//!   default) that `seawall::http::RejectionResponseLayer` turns into
//!   responses.
//! - **Priorities**: requests may be [`Critical`](Priority::Critical),
//!   [`Normal`](Priority::Normal) or [`Sheddable`](Priority::Sheddable),
//!   chosen by a closure or a [`HeaderPriority`]. Sheddable work is not
//!   admitted once 80% of the limit is in use, normal work once 95% is, and
//!   critical work may use every permit. Queued work is admitted most
//!   important class first, first come first served within a class, and a
//!   full queue makes room for important work by evicting the newest waiter
//!   of a less important class.
//! - **No leaks**: a permit is an RAII guard inside the response future; it
//!   is given back when the call completes, fails, panics or is dropped, and
//!   a queued request that gives up leaves the queue.
//! - **Sharing**: clones of a layer share one [`Pool`]; a pool can back
//!   layers on several routes, passed around directly or looked up by name
//!   in a [`PoolRegistry`]; separate layers are separate pools.
//! - **Observability**: a [`Handle`] reads in-flight, queued, the current
//!   limit and refusal counters; a [`Listener`](seawall_core::Listener)
//!   receives [`BulkheadEvent`]s for refusals and limit changes. A fixed
//!   limit can be changed at run time with [`Pool::set_max_concurrent`].
//!
//! # Waiting: in the future or in `poll_ready`
//!
//! By default the bulkhead is always as ready as the service it wraps: once
//! the inner service is ready, `poll_ready` reserves a permit if one is free
//! and otherwise returns ready anyway, and the request waits for its permit
//! inside the response future. That is what
//! axum needs (its routes must be ready), and what lets a bulkhead refuse
//! one request without failing the service. [`BulkheadLayer::backpressure`]
//! instead reserves the permit in `poll_ready`, like
//! `tower::limit::ConcurrencyLimit`, for client pipelines behind
//! `tower::buffer::Buffer` where back-pressure should reach the caller.
//!
//! # Cost
//!
//! When a permit is free and nobody waits, taking it is one compare-and-swap
//! and giving it back one atomic subtraction: no lock, no allocation, no
//! boxing, no clock read (unless the limit is adaptive). The permit holds
//! the pool through a reference count, one more atomic increment and
//! decrement per call, unless the layer was [leaked](BulkheadLayer::leak)
//! at start-up. See `benches/benches/bulkhead.rs` for the comparison with
//! `tower::limit::ConcurrencyLimit`.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{HeaderName, Request, Response};
//! use seawall_bulkhead::{BulkheadFull, BulkheadLayer, HeaderPriority, Priority};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bulkhead = BulkheadLayer::builder()
//!     .name("search")
//!     .max_concurrent(1)
//!     .max_queue(0)
//!     .priority(HeaderPriority::new(HeaderName::from_static("x-priority")))
//!     .build()
//!     .expect("valid settings");
//! let handle = bulkhead.handle();
//!
//! let mut svc = ServiceBuilder::new().layer(bulkhead).service_fn(|_req: Request<()>| async {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     Ok::<_, Infallible>(Response::new("results"))
//! });
//!
//! // The first call takes the only permit...
//! let first = svc.ready().await.unwrap().call(Request::new(()));
//! assert_eq!(handle.in_flight(), 1);
//!
//! // ...so the next is refused at once, without reaching the service.
//! let err = svc.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
//! let full = err.downcast_ref::<BulkheadFull>().expect("a bulkhead refusal");
//! assert_eq!(full.priority(), Some(Priority::Normal));
//!
//! assert_eq!(first.await.unwrap().into_body(), "results");
//! assert_eq!(handle.in_flight(), 0);
//! assert_eq!(handle.rejected(), 1);
//! # }
//! ```
//!
//! # Features
//!
//! - `tracing`: enables `seawall_core::event::TracingListener`, which logs
//!   [`BulkheadEvent`]s.
//! - `metrics`: enables `seawall_core::event::MetricsListener`, which counts
//!   them.
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod event;
mod future;
mod layer;
pub mod limit;
mod pool;
mod priority;
mod queue;
mod registry;
mod service;
mod sync;

pub use error::{BulkheadFull, BulkheadTimeout};
pub use event::{BulkheadEvent, RejectReason};
pub use future::ResponseFuture;
pub use layer::{BulkheadBuilder, BulkheadLayer};
pub use pool::{Handle, Pool, PoolBuilder};
/// [`Handle`] under a name that reads apart from a circuit breaker's handle,
/// for code that names both.
pub type BulkheadHandle = Handle;
pub use priority::{HeaderPriority, NoPriority, ParsePriorityError, Prioritize, Priority};
pub use registry::PoolRegistry;
pub use service::Bulkhead;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
