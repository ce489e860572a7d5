//! `RateLimitLayer`: keyed GCRA rate limits for tower, in one process or
//! across a fleet through Redis.
//!
//! A rate limit caps how many requests (or units of work) a key may spend
//! per period: per client IP, per API key, per tenant, per route, or all
//! together. This layer implements the generic cell rate algorithm
//! ([`Quota`] explains it), the exact form of a token bucket that keeps one
//! number per key: a request is admitted at once while its key has burst
//! left, and otherwise refused with the exact time until it would pass.
//!
//! - **Keys** come from a function of the request ([`key`]: the peer IP, a
//!   header, the path, a typed extension such as the principal); a global
//!   limit is the constant key ([`Limit::global`]).
//! - **Several limits** (10/s per IP *and* 1,000/h per API key *and*
//!   5,000/s overall) make one decision: a request is admitted only if every
//!   limit admits it, and a request refused by one limit spends nothing from
//!   the others. The locks of the limits' keys are taken in one fixed order,
//!   so the decision is exact under concurrency. With one limit, a
//!   decision takes its key's shard lock shared (decisions wait only for
//!   the insertion of a new key, not for each other) and moves the key's
//!   state with a compare-and-swap, exact as well.
//! - **Cost**: a request may spend more than one unit ([`Builder::cost`]).
//! - **Modes**: refuse at once with [`RateLimited`] (`429`, with
//!   `Retry-After` through `seawall::http::RejectionResponseLayer`,
//!   `RESOURCE_EXHAUSTED` for gRPC), or wait up to a bound
//!   ([`Builder::wait`]); a dropped wait holds nothing.
//! - **Fields**: the IETF `RateLimit-Policy` / `RateLimit` response fields
//!   ([`headers`], draft-ietf-httpapi-ratelimit-headers-09) on every answer
//!   when enabled.
//! - **Bounded memory**: each limit's keys live in a registry bounded in
//!   entries and bytes; see [below](#memory).
//! - **Fleet-wide** (feature `redis`): [`RedisBackend`] decides for every
//!   limit in one Lua script call on the server's clock, with a timeout and
//!   a policy for when Redis is away.
//! - **Events** ([`RateLimitEvent`]) through the shared listener, with the
//!   `tracing` and `metrics` listeners of `seawall-core`.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use seawall_rate_limit::{key, Limit, Quota, RateLimitLayer, RateLimited};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = RateLimitLayer::builder()
//!     .limit(Limit::per_key("api-key", Quota::per_second(1).burst(2), key::header("x-api-key")))
//!     .headers()
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(()))
//! }));
//! let req = || Request::builder().header("x-api-key", "k1").body(()).unwrap();
//!
//! let first = svc.ready().await.unwrap().call(req()).await.unwrap();
//! assert_eq!(first.headers()["ratelimit"], r#""api-key";r=1;t=1"#);
//! assert_eq!(first.headers()["ratelimit-policy"], r#""api-key";q=1;w=1"#);
//! svc.ready().await.unwrap().call(req()).await.unwrap();
//!
//! let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().unwrap();
//! assert_eq!(limited.retry_after(), Some(std::time::Duration::from_secs(1)));
//! # }
//! ```
//!
//! # Memory
//!
//! Each limit keeps at most [`Builder::key_capacity`] keys (default
//! 100,000) in at most [`Builder::key_memory`] bytes (default 16 MiB,
//! counting per key its entry in its shard's hash table, the table's
//! control byte and its heap bytes; the table's spare capacity comes on
//! top, at most about 1.3 times as much again), in up to 16 shards with an
//! equal share each. Each key is hashed once per request. A key whose
//! bucket is full again carries no information and is dropped as new keys
//! arrive (each insertion looks at two of the table's buckets, so
//! reclaiming is O(1) per request and needs no timer). A shard full of keys that are still limited **never
//! evicts one** (that would give it a fresh burst): a new key that finds no
//! room is counted against the shard's shared overflow bucket with the
//! limit's quota, and carries that bucket's debt if it later gets a cell;
//! a key never sent there starts with a full bucket. Keys longer than
//! [`Builder::max_key_bytes`] (default 256) share a separate long-key
//! bucket per shard, which no other key ever inherits from. The bound can
//! thus refuse more than the limit would, never less.
//!
//! # Features
//!
//! - `redis`: [`RedisBackend`].
//! - `axum`: [`key::peer_ip`] also reads axum's `ConnectInfo`.
//! - `tracing`, `metrics`: the listeners of `seawall_core::event`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod event;
#[cfg(feature = "redis")]
mod fleet;
mod future;
mod gcra;
pub mod headers;
pub mod key;
mod layer;
mod limit;
mod registry;
mod service;

pub use error::RateLimited;
pub use event::RateLimitEvent;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use fleet::{OnBackendError, RedisBackend};
pub use future::ResponseFuture;
pub use gcra::Quota;
pub use key::RateKey;
pub use layer::{Builder, Cost, HeaderMode, Mode, One, RateLimitLayer};
pub use limit::{BuiltLimit, Decide, Global, KeyFn, KeyGuard, Limit, LimitSet};
/// The `redis` crate this one uses, for building connections.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;
pub use service::RateLimit;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
