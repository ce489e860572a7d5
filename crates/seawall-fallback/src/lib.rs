//! Tiered fallbacks for [tower] services: keep the critical path answering
//! when a dependency it can live without fails.
//!
//! # The pattern
//!
//! A product page can render without recommendations; a cart can show
//! yesterday's shipping estimate. [`FallbackLayer`] wraps the call to such a
//! dependency and, when the call fails, answers from a list of **tiers**
//! tried in the order they were configured, each skipped when it has
//! nothing to give:
//!
//! 1. [`last_known_good`](Builder::last_known_good): the latest successful
//!    response for the same key, while younger than a maximum staleness,
//!    held in a cache bounded in entries, bytes and age, that follows
//!    RFC 9111's rules for a shared cache (see [below](#whose-answer-reaches-whom));
//! 2. [`alternative`](Builder::alternative): a secondary service (a replica,
//!    a slower source of truth);
//! 3. [`function`](Builder::function): computed from the request info and
//!    the failure ([`Cause`]);
//! 4. [`value`](Builder::value): a fixed answer.
//!
//! The layer fires when the [`Classify`](seawall_core::Classify)er calls the
//! outcome a failure (an error, or a failing response such as an HTTP 503)
//! and when an inner seawall layer refuses the call — an open circuit
//! breaker, a full bulkhead — as selected by [`Rejections`]. Successes and
//! ignored outcomes pass through untouched. If no tier answers, the
//! **original** error or response is returned, not a tier's.
//!
//! Substitute answers are marked: HTTP responses carry a [`Degraded`]
//! extension and a `seawall-degraded: <tier>` header (configurable), so
//! clients, caches and dashboards can tell. Each substitute emits a
//! [`FallbackEvent::Served`]; running out of tiers emits
//! [`FallbackEvent::Exhausted`].
//!
//! A tier that panics — its function, service, future, or the
//! last-known-good key function — is caught: the layer emits
//! [`FallbackEvent::TierPanicked`] and tries the next tier (a success whose
//! key function panics passes through unrecorded). The response future
//! never panics for a tier's bug.
//!
//! # When to use it
//!
//! Use it where a wrong-but-plausible answer beats an error: optional
//! content, read paths, enrichment. Put it *outside* the circuit breaker and
//! retries of the same dependency so it sees their final verdict and their
//! rejections. Do not use it to hide failures of writes.
//!
//! # Example
//!
//! An HTTP dependency that fails; the layer serves the last good body, and
//! an empty list when it has none.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Method, Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use seawall_fallback::{Degraded, FallbackLayer, LastKnownGood, RequestInfo, Tier};
//! use tower::{service_fn, BoxError, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = FallbackLayer::http()
//!     .name("recommendations")
//!     .last_known_good(
//!         LastKnownGood::new().capacity(10_000).max_staleness(Duration::from_secs(600)),
//!         |info: &RequestInfo| (info.method() == Method::GET).then(|| info.uri().clone()),
//!     )
//!     .value(Response::new(Bytes::from_static(b"[]")))
//!     .build()?;
//!
//! // A dependency that works once, then answers 503.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let svc = layer.layer(service_fn(move |_req: Request<()>| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!     async move {
//!         let status = if n == 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
//!         let body = Full::new(Bytes::from_static(b"[\"socks\"]"));
//!         Ok::<_, BoxError>(Response::builder().status(status).body(body)?)
//!     }
//! }));
//!
//! let get = |path: &str| Request::get(path).body(()).unwrap();
//! let fresh = svc.clone().oneshot(get("/recs/1")).await?;
//! assert!(fresh.extensions().get::<Degraded>().is_none());
//! assert_eq!(fresh.into_body().collect().await?.to_bytes(), "[\"socks\"]");
//!
//! // The dependency now fails: the remembered body is served...
//! let stale = svc.clone().oneshot(get("/recs/1")).await?;
//! assert_eq!(stale.status(), StatusCode::OK);
//! assert_eq!(stale.headers()["seawall-degraded"], "last-known-good");
//! assert_eq!(stale.into_body().collect().await?.to_bytes(), "[\"socks\"]");
//!
//! // ...and for a key never seen, the static value.
//! let empty = svc.oneshot(get("/recs/2")).await?;
//! assert_eq!(empty.extensions().get::<Degraded>().map(|d| d.tier), Some(Tier::Value));
//! assert_eq!(empty.into_body().collect().await?.to_bytes(), "[]");
//! # Ok(())
//! # }
//! ```
//!
//! # Whose answer reaches whom
//!
//! The last-known-good tier hands an answer recorded for one request to
//! another, so by default it keeps to RFC 9111's rules for a **shared**
//! cache (the details are under [`Http`](Http#what-the-last-known-good-tier-stores)):
//!
//! - no answer to a request with credentials (`Authorization`,
//!   `Proxy-Authorization`, `Cookie`) is stored, nor one marked
//!   `Cache-Control: private` or `no-store`, nor one that sets a cookie,
//!   nor one with `Vary: *`;
//! - no answer whose `Cache-Control` forbids serving it stale without
//!   validation (`no-cache`, `must-revalidate`, `proxy-revalidate`,
//!   `s-maxage`; RFC 9111 §4.2.4) is stored: the tier serves exactly when
//!   the origin cannot validate;
//! - no gRPC answer (`application/grpc…`, or a `grpc-status` header) is
//!   stored: its status lives in trailers, which are not kept, so only
//!   trailers-only errors could be;
//! - only `200`, `203` and `204` answers the classifier calls a success
//!   replace a stored entry: a `401`, `403`, `404` or `5xx` never replaces
//!   nor removes one;
//! - a stored answer is served only to requests whose `Vary` fields match.
//!
//! Where requests are authenticated, key the tier by the principal your
//! authentication layer established and say so with
//! [`key_includes_principal`](LastKnownGood::key_includes_principal): each
//! user is then served only their own last answer. Put the authentication
//! layer *outside* the fallback, so that only callers it let through reach
//! a stored answer.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use seawall_fallback::{FallbackLayer, LastKnownGood, RequestInfo, Tier, Degraded};
//! use tower::{service_fn, BoxError, Layer, ServiceExt};
//!
//! /// Set by the authentication layer once it has checked the credentials.
//! #[derive(Clone, Debug, PartialEq, Eq, Hash)]
//! struct User(String);
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = FallbackLayer::http()
//!     .name("orders")
//!     .capture_extension::<User>()
//!     .last_known_good(
//!         LastKnownGood::new().key_includes_principal(),
//!         |info: &RequestInfo| {
//!             let user = info.extensions().get::<User>()?.clone();
//!             Some((user, info.uri().path().to_owned()))
//!         },
//!     )
//!     .value(Response::new(Bytes::from_static(b"[]")))
//!     .build()?;
//!
//! // The orders service answers each user privately once, then fails.
//! let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
//! let svc = layer.layer(service_fn(move |req: Request<()>| {
//!     let up = up.swap(false, std::sync::atomic::Ordering::SeqCst);
//!     let user = req.extensions().get::<User>().map(|u| u.0.clone());
//!     async move {
//!         let status = if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
//!         let body = Full::new(Bytes::from(format!("orders of {user:?}")));
//!         Ok::<_, BoxError>(Response::builder()
//!             .status(status)
//!             .header("cache-control", "private")
//!             .body(body)?)
//!     }
//! }));
//! let as_user = |name: &str| {
//!     let mut req = Request::get("/me/orders")
//!         .header("authorization", format!("Bearer {name}-token"))
//!         .body(())
//!         .unwrap();
//!     req.extensions_mut().insert(User(name.to_owned()));
//!     req
//! };
//!
//! let fresh = svc.clone().oneshot(as_user("alice")).await?;
//! fresh.into_body().collect().await?; // recorded once read to the end
//!
//! // The service is down: Alice gets her own last answer, Bob does not.
//! let alice = svc.clone().oneshot(as_user("alice")).await?;
//! assert_eq!(alice.extensions().get::<Degraded>().map(|d| d.tier), Some(Tier::LastKnownGood));
//! assert_eq!(alice.into_body().collect().await?.to_bytes(), "orders of Some(\"alice\")");
//! let bob = svc.oneshot(as_user("bob")).await?;
//! assert_eq!(bob.extensions().get::<Degraded>().map(|d| d.tier), Some(Tier::Value));
//! assert_eq!(bob.into_body().collect().await?.to_bytes(), "[]");
//! # Ok(())
//! # }
//! ```
//!
//! Without `key_includes_principal`, neither answer would have been
//! stored: both requests carried `Authorization`.
//!
//! # A fleet of replicas
//!
//! With the `redis` feature, `Builder::last_known_good_shared` shares the
//! tier's answers through Redis (see `RedisLastKnownGood`), so that a
//! replica started during an outage has answers to give. Redis is consulted
//! only on a failure and written to off the request's path; when it is down
//! or slow the tier is skipped.
//!
//! # Modes
//!
//! [`FallbackLayer::http`] handles `http` messages with streaming bodies
//! (see [`Http`]). [`FallbackLayer::builder`] and [`FallbackLayer::capturing`]
//! handle any `Clone` response (see [`Plain`]): here a price lookup that,
//! while its breaker is open, answers from a secondary source and else from
//! a computed default.
//!
//! ```
//! use http::StatusCode;
//! use seawall_core::{BoxError, Rejected};
//! use seawall_fallback::{CauseKind, FallbackLayer, Rejections};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! #[derive(Debug)]
//! struct Lookup { sku: &'static str }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = FallbackLayer::capturing(|req: &Lookup| req.sku)
//!     .on_rejections(Rejections::only(["circuit_open"]))
//!     .alternative(service_fn(|sku: &'static str| async move {
//!         if sku == "socks" { Ok::<_, BoxError>(450_u32) } else { Err("not in the replica".into()) }
//!     }))
//!     .function(|_sku: &&'static str, cause| {
//!         (cause.kind() == CauseKind::Rejection("circuit_open")).then_some(999)
//!     })
//!     .build()?;
//!
//! // The breaker below is open: every call is refused at once.
//! let prices = layer.layer(service_fn(|_: Lookup| async {
//!     Err::<u32, BoxError>(Rejected::new("circuit_open", StatusCode::SERVICE_UNAVAILABLE, None).into())
//! }));
//! assert_eq!(prices.clone().oneshot(Lookup { sku: "socks" }).await?, 450);
//! assert_eq!(prices.oneshot(Lookup { sku: "hat" }).await?, 999);
//! # Ok(())
//! # }
//! ```
//!
//! # Cost
//!
//! On success, without last-known-good recording, the layer adds a
//! classification and one reference-count increment and decrement per call:
//! no lock, no allocation, no boxing. Request info is captured only if a
//! tier other than [`value`](Builder::value) reads it (for HTTP, one
//! allocation; with the last-known-good tier, also a copy of the request's
//! header map, whose values are reference-counted, to judge credentials,
//! `Cache-Control` and `Vary`). Recording a successful response for the
//! last-known-good tier copies it (for HTTP, its headers and a body up to
//! the limit) into the cache. The tier chain itself runs in one boxed future, only after a
//! failure. Figures: `cargo bench -p seawall-benches --bench fallback`.
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

mod chain;
mod event;
mod future;
pub mod http;
mod last_known_good;
mod layer;
mod mode;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod tier;

pub use event::FallbackEvent;
pub use future::ResponseFuture;
pub use http::{FallbackBody, Http, RequestInfo};
pub use last_known_good::{LastKnownGood, LastKnownGoodCache};
pub use layer::{Builder, FallbackLayer};
pub use mode::{Capture, CaptureWith, Mode, NoCapture, Plain, Recorder, Respond};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisLastKnownGood;
pub use service::Fallback;
pub use tier::{Cause, CauseKind, Degraded, Rejections, Tier};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
