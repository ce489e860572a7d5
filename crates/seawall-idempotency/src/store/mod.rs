//! Where idempotency records live.
//!
//! A [`Store`] keeps one record per [`StoreKey`]: either *in flight* (a
//! claim with a lease and a [`FencingToken`]) or *completed* (a
//! [`StoredResponse`] kept for the retention period). The layer needs three
//! operations, each atomic in the store:
//!
//! - [`claim`](Store::claim): take the key if it is free or its record has
//!   expired, otherwise report what holds it;
//! - [`complete`](Store::complete): replace the claim by the response, only
//!   if the caller's token still holds it;
//! - [`release`](Store::release): drop the claim, only with its token.
//!
//! [`MemoryStore`] serves one process; `RedisStore` (feature `redis`) and
//! `PostgresStore` (feature `postgres`) serve a fleet of replicas.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::key::{FencingToken, Fingerprint, StoreKey};
use crate::record::StoredResponse;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;

/// The boxed future a [`Store`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What [`Store::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller now holds the key until its lease ends.
    Claimed(FencingToken),
    /// Another request holds the key; its lease ends in `retry_after`.
    InFlight {
        /// The time left on the holder's lease.
        retry_after: Duration,
    },
    /// The key's request completed with the same fingerprint.
    Completed(StoredResponse),
    /// The key was used for a request with another fingerprint.
    Mismatch,
}

/// What [`Store::complete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The response is stored.
    Stored,
    /// The response is stored without its body (and possibly without its
    /// headers): the store had no room for them. Repeats get the stored
    /// status with an empty body; the handler does not run again.
    StoredWithoutBody,
    /// The token no longer holds the key (its lease ended, and the record
    /// expired or was claimed again): nothing was written.
    Fenced,
}

/// A backend for idempotency records.
///
/// Implementations must make [`claim`](Store::claim) atomic: of any number
/// of concurrent claims of a free key, across every process sharing the
/// store, exactly one gets [`Claim::Claimed`].
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, holding it for `lease`.
    ///
    /// A record whose lease or retention has ended counts as absent.
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim>;

    /// Stores `response` for `key`, kept for `retention`, if `token` still
    /// holds the key.
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion>;

    /// Frees `key` if `token` still holds it, so that the next request runs
    /// the handler. Returns `true` if the claim was dropped.
    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool>;

    /// Extends the claim of `key` to end `lease` from now, if `token` still
    /// holds it and its lease has not ended. Returns `true` if extended.
    ///
    /// Used by the layer's [`renew_lease`] option. The default does not
    /// renew (returns `Ok(false)`), which leaves leases at their length.
    ///
    /// [`renew_lease`]: crate::IdempotencyLayerBuilder::renew_lease
    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let _ = (key, token, lease);
        Box::pin(async { Ok(false) })
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        (**self).claim(key, fingerprint, lease)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion> {
        (**self).complete(key, token, fingerprint, response, retention)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        (**self).release(key, token)
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).renew(key, token, lease)
    }
}

/// Whole milliseconds for a store's TTL argument, at least 1 so a zero
/// duration never means "no expiry".
#[cfg(any(feature = "redis", feature = "postgres"))]
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}
