//! `IdempotencyLayer`: makes retried `POST` and `PATCH` requests safe.
//!
//! A client that times out on a payment does not know whether the payment
//! happened. If it retries with the same `Idempotency-Key` header (the IETF
//! HTTPAPI draft, and what Stripe has done for years), this layer makes the
//! server run the handler **once per key** and answer every repeat with the
//! stored response, marked `Idempotent-Replayed: true`. It holds for a fleet
//! of replicas when they share a Redis or PostgreSQL store.
//!
//! # What the layer does
//!
//! - Only the configured methods (default `POST`, `PATCH`) are handled;
//!   other requests pass through untouched, without allocation.
//! - The key is one header line of at most 255 characters: a bare token of
//!   visible ASCII (`Idempotency-Key: 5f1c-a1b2`, what Stripe clients send)
//!   or an RFC 9651 structured-field string (`"5f1c-a1b2"`, the IETF draft's
//!   form); both forms name the same key. With
//!   [`strict_keys`](IdempotencyLayerBuilder::strict_keys) only the string
//!   form is accepted. A bad key (empty, too long, two lines, spaces,
//!   control characters, non-ASCII, quotes or separators in a bare token)
//!   gets 400; a missing key passes through, or gets 400 with
//!   [`require_key`](IdempotencyLayerBuilder::require_key).
//! - **Records are scoped to the caller by default**: a SHA-256 of the
//!   request's credentials (`Authorization`, `Proxy-Authorization`,
//!   `Cookie`; see
//!   [`credential_headers`](IdempotencyLayerBuilder::credential_headers) to
//!   add an API-key field) joins the record key, so two principals sending
//!   the same key value never share a record: each runs its own request
//!   and replays only its own answer. `Cookie` counts only when neither
//!   `Authorization` nor `Proxy-Authorization` is present, and split
//!   cookie fields (HTTP/2) equal the same cookies joined (see
//!   [`CredentialDigest`]). Requests without credentials share one
//!   anonymous scope, apart from every principal.
//!   [`tenant`](IdempotencyLayerBuilder::tenant) scopes by an identity you
//!   extract instead (an account id set by authentication; a request it
//!   finds no tenant for falls back to its credentials), and
//!   [`unscoped`](IdempotencyLayerBuilder::unscoped) opts out. The layer's
//!   name, the [`Scope`] and the key are tagged, length-prefixed and hashed
//!   into a [`StoreKey`], so no choice of key or tenant name reaches
//!   another scope.
//! - The request's fingerprint is the SHA-256 of method, path and query,
//!   `Content-Type` and body (buffered up to
//!   [`max_request_body`](IdempotencyLayerBuilder::max_request_body), else
//!   413, within
//!   [`request_body_timeout`](IdempotencyLayerBuilder::request_body_timeout),
//!   default 30 s, else 408). The same key with another fingerprint gets
//!   422.
//! - The first request *claims* the key atomically, with a lease and a
//!   random [`FencingToken`]: across every replica exactly one wins and runs
//!   the handler. A repeat while it runs gets 409 with `Retry-After`, or,
//!   with [`wait_in_flight`](IdempotencyLayerBuilder::wait_in_flight), waits
//!   for the response.
//! - The response (status, headers except `Set-Cookie`, `Date`, hop-by-hop
//!   fields and `Content-Length`, and the body up to
//!   [`max_stored_body`](IdempotencyLayerBuilder::max_stored_body)) is kept
//!   for the [`retention`](IdempotencyLayerBuilder::retention) period
//!   (default 24 h). A larger body is not stored: repeats get the status and
//!   headers with an empty body, and the handler never runs again.
//! - Which statuses are kept is a [`KeepPolicy`]: everything by default (a
//!   retry of a 500 gets the same 500), or release the key on 5xx/429 so a
//!   retry runs again. The layer's own 400/409/413/422/503 are never stored.
//! - Its own answers are RFC 9457 `application/problem+json` documents with
//!   a `kind` member (`idempotency_in_flight`, `idempotency_key_mismatch`,
//!   `idempotency_store_full`, `idempotency_body_timeout`, ...).
//!
//! # The guarantee
//!
//! **A key's handler runs at most once for as long as its record should
//! exist**: while its claim's lease holds, then for the retention period
//! after it completed. No store drops a live record to make room: a full
//! [`MemoryStore`] refuses *new* keys with 503 and `Retry-After` (event
//! `StoreFull`), even in [`fail_open`](IdempotencyLayerBuilder::fail_open)
//! mode. A response too large to keep is kept without its body, never
//! forgotten. What ends a record early, so that a retry runs again, is
//! listed below (handler errors, panics, statuses the [`KeepPolicy`] does
//! not keep, a lease that ran out).
//!
//! # Crashes, panics, cancellation
//!
//! A lease that ends (the owner crashed, or ran longer than
//! [`lease`](IdempotencyLayerBuilder::lease)) frees the key for the next
//! request, and the late owner's completion is refused by its token: its
//! response is returned to its own client but never overwrites the record.
//! With [`renew_lease`](IdempotencyLayerBuilder::renew_lease) the claim is
//! renewed while the handler runs, so only a crash (not slowness) frees it.
//!
//! Within a live process the layer **runs the handler to completion in a
//! spawned task**: if the client disconnects, the handler still finishes
//! and its response is stored, so the client's retry is a replay, not a
//! second execution. If the handler panics (in its call, its future or its
//! body), the panic is caught and the claim released by its token, and
//! only once the store has answered the release does the request fail with
//! [`HandlerPanicked`] (a 500): a retry sent on seeing that 500 runs the
//! handler again, never gets 409. (If the store fails the release, the key
//! frees when its lease ends.) The layer therefore needs a Tokio
//! runtime with its timer enabled, and the wrapped service, its future and
//! its body must be `Send + 'static` (true of axum handlers).
//!
//! What releases the key instead of storing a response: the handler
//! returning an `Err` (not a response), its response body failing while it
//! is read for storing, and a status that the [`KeepPolicy`] does not keep.
//! A retry after any of these runs the handler again. If storing the
//! response fails, the claim is left to end with its lease, after which a
//! retry runs the handler again too.
//!
//! # Store failures
//!
//! If the store cannot be reached, the request gets 503 with `Retry-After`
//! and the handler is **not** called (fail closed). With
//! [`fail_open`](IdempotencyLayerBuilder::fail_open) the handler runs without
//! idempotency instead.
//!
//! # Stores and their memory bounds
//!
//! - [`MemoryStore`] (default): one process; at most 10,000 records and
//!   64 MiB by default ([`MemoryStore::with_limits`]), counting bodies,
//!   headers and a per-record overhead; refuses new keys when full of live
//!   records.
//! - `store::RedisStore` (feature `redis`): `SET NX PX` claims
//!   and Lua scripts for token-checked completion and release; one round
//!   trip for a replay, two for a first request. Records live in Redis,
//!   each at most `max_stored_body` plus its headers; bound them with
//!   Redis's `maxmemory` **and `maxmemory-policy noeviction`**: every record
//!   has a TTL, so a `volatile-*` or `allkeys-*` policy would evict live
//!   records and let their handlers run twice, whereas `noeviction` makes
//!   new claims fail (503) when Redis is full; `RedisStore::check_eviction_policy`
//!   verifies it at start-up.
//! - `store::PostgresStore` (feature `postgres`): a table
//!   it creates, `INSERT ... ON CONFLICT DO NOTHING` claims, expiry on the
//!   database clock and a sweep of expired rows. Records live on disk, each
//!   row at most `max_stored_body` plus its headers; the table holds what
//!   the retention keeps until `PostgresStore::sweep` runs.
//!
//! Besides its store, the layer holds per request in flight at most
//! [`max_request_body`](IdempotencyLayerBuilder::max_request_body) of
//! request body (for at most the body timeout) and
//! [`max_stored_body`](IdempotencyLayerBuilder::max_stored_body) of
//! response body.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use seawall_idempotency::{IdempotencyLayer, RequestBody};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let charges = Arc::new(AtomicUsize::new(0));
//! let counter = charges.clone();
//! let mut svc = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new())
//!     .service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
//!         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!         async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("charge #{n}"))))) }
//!     });
//!
//! for attempt in 0..3 {
//!     let req = Request::post("/charges")
//!         .header("idempotency-key", "order-42")
//!         .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
//!         .unwrap();
//!     let res = svc.ready().await.unwrap().call(req).await.unwrap();
//!     assert_eq!(res.headers().contains_key("idempotent-replayed"), attempt > 0);
//!     assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "charge #1");
//! }
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! With axum, put `seawall::http::RejectionResponseLayer` (or
//! `HandleErrorLayer`) above this layer: like every seawall layer it returns
//! tower's `BoxError` (only for handler errors and panics; its own refusals
//! are responses).
//!
//! # Features
//!
//! - `redis`: `store::RedisStore`; re-exports the `redis` crate.
//! - `postgres`: `store::PostgresStore`; re-exports
//!   `deadpool_postgres` (and through it `tokio_postgres`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
mod event;
mod execution;
mod future;
mod key;
mod layer;
mod problem;
mod record;
mod service;
pub mod store;

pub use body::ResponseBody;
pub use error::{HandlerPanicked, StoreError, StoreErrorKind};
pub use event::{IdempotencyEvent, IdempotencyEventKind};
pub use future::ResponseFuture;
pub use key::{
    CredentialDigest, FencingToken, Fingerprint, Scope, StoreKey, DEFAULT_CREDENTIAL_HEADERS,
    MAX_KEY_LEN,
};
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder, KeepPolicy};
pub use problem::PROBLEM_JSON;
pub use record::StoredResponse;
pub use service::{Idempotency, RequestBody, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use store::{Claim, Completion, MemoryStore, Store};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use deadpool_postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;

/// The case count of the crate's fuzzing property tests: a bounded default
/// for CI, raised with `SEAWALL_FUZZ_CASES` (see the README).
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::test_runner::Config {
    let cases = std::env::var("SEAWALL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    proptest::test_runner::Config::with_cases(cases)
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
