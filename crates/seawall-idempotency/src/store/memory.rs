use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use seawall_core::ConfigError;
use tokio::time::Instant;

use super::{Claim, Completion, Store, StoreFuture};
use crate::error::StoreError;
use crate::key::{FencingToken, Fingerprint, StoreKey};
use crate::layer::MAX_DURATION;
use crate::record::StoredResponse;

const SHARDS: usize = 16;

/// Bytes charged to every record besides its response: the key, the map
/// slot, the entry with its fingerprint and token, and its expiry queue
/// item. An estimate on the generous side, so the bound holds.
const RECORD_OVERHEAD: usize = 256;

const STORE: &str = "idempotency memory store";

/// Expiry queues kept even when empty: a layer uses two (lease and
/// retention), so this covers several layers sharing one store.
const MAX_IDLE_QUEUES: usize = 8;

/// The default store: records in this process's memory.
///
/// Right for a single replica, and for tests. Records expire on
/// [`tokio::time::Instant`] (so paused test time applies).
///
/// # Memory bound
///
/// The store holds at most `capacity` records *and* `max_bytes` bytes of
/// them (defaults [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) and
/// [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES): 10,000 records, 64 MiB).
/// A record counts its response body, its headers' names and values plus
/// 48 bytes per header, and 256 bytes for the key, the map slot, the entry
/// and its expiry bookkeeping. The records are spread by key over 16
/// shards, each holding a sixteenth of both bounds, so one shard can be
/// full while others have room.
///
/// # Never evicts a live record
///
/// An unexpired record, completed or in flight, is never dropped to make
/// room: that would let a retry run its handler a second time. When a
/// shard is full, the store drops the records that have expired; if none
/// has, a new claim fails with [`StoreError`] of kind
/// [`Full`](crate::StoreErrorKind::Full) and the layer answers `503` with
/// `Retry-After` (event `StoreFull`) without running the handler. The
/// effective guarantee is therefore: **a key's handler runs at most once
/// for as long as its record should exist** (lease, then retention), and
/// under a flood of new keys the store refuses work rather than forgets.
///
/// A completed response that does not fit in its shard's bytes is stored
/// without its body (a replay gets the status and headers with an empty
/// body), or, if even its headers do not fit, as its status alone; the
/// handler still never runs again for that key.
///
/// Finding expired records costs O(1) amortised per insertion: each record
/// is queued by expiry in a FIFO per distinct lease or retention length
/// (two per layer using the store), so only the fronts of those queues are
/// ever looked at.
///
/// Clones share the same records.
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<Shard>]>,
    limits: Limits,
}

#[derive(Clone, Copy)]
struct Limits {
    records: usize,
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<StoreKey, Entry>,
    /// The bytes charged for the records in `map`.
    bytes: usize,
    /// Expiry FIFOs, one per time-to-live: within one, items expire in the
    /// order they were pushed. An item is stale once its record was
    /// removed, completed or renewed; it is then dropped when reached.
    queues: Vec<ExpiryQueue>,
}

struct ExpiryQueue {
    ttl: Duration,
    items: VecDeque<(Instant, StoreKey)>,
}

struct Entry {
    fingerprint: Fingerprint,
    expires_at: Instant,
    size: usize,
    state: State,
}

enum State {
    InFlight(FencingToken),
    Completed(StoredResponse),
}

/// The bytes charged for a claim in flight: room for a status-only
/// completion too, so a completion always fits in what its claim holds.
const IN_FLIGHT_SIZE: usize = RECORD_OVERHEAD + FencingToken::LEN;

/// `now + ttl`, saturating: a caller of the public [`Store`] methods may
/// pass any duration.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl.min(MAX_DURATION))
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 60 * 60)))
        .unwrap_or(now)
}

impl MemoryStore {
    /// The default capacity: 10,000 records.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// The default bound in bytes: 64 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

    /// A store of at most [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)
    /// records and [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES) bytes.
    pub fn new() -> Self {
        Self::build(Self::DEFAULT_CAPACITY, Self::DEFAULT_MAX_BYTES)
    }

    /// A store of at most `capacity` records (rounded up to a multiple of
    /// its shard count) and [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES)
    /// bytes.
    pub fn with_capacity(capacity: usize) -> Result<Self, ConfigError> {
        Self::with_limits(capacity, Self::DEFAULT_MAX_BYTES)
    }

    /// A store of at most `capacity` records (rounded up to a multiple of
    /// its shard count) and `max_bytes` bytes, which must leave each shard
    /// room for at least one 1 KiB record.
    ///
    /// ```
    /// use seawall_idempotency::MemoryStore;
    ///
    /// let store = MemoryStore::with_limits(50_000, 256 * 1024 * 1024).unwrap();
    /// assert_eq!(store.max_bytes(), 256 * 1024 * 1024);
    /// assert!(MemoryStore::with_limits(10, 100).is_err());
    /// ```
    pub fn with_limits(capacity: usize, max_bytes: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new(STORE, "capacity", "must be at least 1"));
        }
        let shards = SHARDS.min(capacity);
        if max_bytes / shards < 1024 {
            return Err(ConfigError::new(
                STORE,
                "max_bytes",
                format!("must be at least {} bytes (1 KiB per shard)", shards * 1024),
            ));
        }
        Ok(Self::build(capacity, max_bytes))
    }

    fn build(capacity: usize, max_bytes: usize) -> Self {
        let shards = SHARDS.min(capacity);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            limits: Limits {
                records: capacity.div_ceil(shards),
                bytes: max_bytes / shards,
            },
        }
    }

    /// The most records the store holds.
    pub fn capacity(&self) -> usize {
        self.limits.records * self.shards.len()
    }

    /// The most bytes of records the store holds.
    pub fn max_bytes(&self) -> usize {
        self.limits.bytes * self.shards.len()
    }

    /// The number of records held, including expired ones not yet dropped.
    ///
    /// A sum over the shards, read one after another: exact when no request
    /// is in progress, approximate under load. The bounds themselves are
    /// enforced per shard, under its lock.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// The bytes charged for the records held (see the type's docs); read
    /// like [`len`](Self::len).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }

    /// `true` if no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired record; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                shard.sweep(Instant::now(), usize::MAX)
            })
            .sum()
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        let i = usize::from(key.as_bytes()[0]) % self.shards.len();
        lock(&self.shards[i])
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut shard = self.shard(key);
        // Read under the lock, so items join each queue in expiry order.
        let now = Instant::now();
        if let Some(entry) = shard.map.get(key) {
            if entry.expires_at > now {
                if entry.fingerprint != *fingerprint {
                    return Ok(Claim::Mismatch);
                }
                return Ok(match &entry.state {
                    State::InFlight(_) => Claim::InFlight {
                        retry_after: entry.expires_at - now,
                    },
                    State::Completed(res) => Claim::Completed(res.clone()),
                });
            }
            shard.remove(key);
        }
        // A little sweeping on every claim keeps stale queue items few; a
        // full sweep of what has expired only when the shard is full. Both
        // only pop queue fronts: O(1) amortised, as each item is pushed once.
        shard.sweep(now, 2);
        if !shard.fits(IN_FLIGHT_SIZE, self.limits) {
            shard.sweep(now, usize::MAX);
            if !shard.fits(IN_FLIGHT_SIZE, self.limits) {
                return Err(StoreError::full());
            }
        }
        let token = FencingToken::random();
        let expires_at = deadline(now, lease);
        shard.bytes += IN_FLIGHT_SIZE;
        shard.map.insert(
            *key,
            Entry {
                fingerprint: *fingerprint,
                expires_at,
                size: IN_FLIGHT_SIZE,
                state: State::InFlight(token.clone()),
            },
        );
        shard.enqueue(lease, expires_at, *key);
        Ok(Claim::Claimed(token))
    }

    fn complete_now(
        &self,
        key: &StoreKey,
        token: &FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Completion {
        let mut shard = self.shard(key);
        let now = Instant::now();
        let Some(held) = shard.map.get(key).filter(|e| holds(e, token, now)) else {
            return Completion::Fenced;
        };
        let held = held.size;
        let limit = self.limits.bytes;
        let room = |shard: &Shard, size: usize| shard.bytes - held + size <= limit;
        let full_size = RECORD_OVERHEAD + response.size();
        let mut kept = (response.clone(), full_size, Completion::Stored);
        if !room(&shard, full_size) {
            shard.sweep(now, usize::MAX);
            if !room(&shard, full_size) {
                let bodiless = response.without_body();
                let size = RECORD_OVERHEAD + bodiless.size();
                kept = if room(&shard, size) {
                    (bodiless, size, Completion::StoredWithoutBody)
                } else {
                    // Always fits: no larger than the claim's own charge.
                    let bare = response.status_only();
                    (bare, RECORD_OVERHEAD, Completion::StoredWithoutBody)
                };
            }
        }
        let (stored, size, outcome) = kept;
        let expires_at = deadline(now, retention);
        shard.bytes = shard.bytes - held + size;
        if let Some(entry) = shard.map.get_mut(key) {
            entry.state = State::Completed(stored);
            entry.expires_at = expires_at;
            entry.size = size;
        }
        shard.enqueue(retention, expires_at, *key);
        outcome
    }
}

impl Shard {
    fn fits(&self, size: usize, limits: Limits) -> bool {
        self.map.len() < limits.records && self.bytes + size <= limits.bytes
    }

    fn remove(&mut self, key: &StoreKey) {
        if let Some(entry) = self.map.remove(key) {
            self.bytes -= entry.size;
        }
    }

    fn enqueue(&mut self, ttl: Duration, expires_at: Instant, key: StoreKey) {
        let item = (expires_at, key);
        match self.queues.iter_mut().find(|q| q.ttl == ttl) {
            Some(queue) => queue.items.push_back(item),
            None => self.queues.push(ExpiryQueue {
                ttl,
                items: VecDeque::from([item]),
            }),
        }
    }

    /// Pops up to `budget` queue items that are due, dropping the records
    /// that have expired; returns how many records were dropped.
    fn sweep(&mut self, now: Instant, budget: usize) -> usize {
        let mut budget = budget;
        let mut dropped = 0;
        let Self { map, bytes, queues } = self;
        for queue in queues.iter_mut() {
            while budget > 0 {
                let Some(&(due, key)) = queue.items.front() else {
                    break;
                };
                if due > now {
                    break;
                }
                queue.items.pop_front();
                budget -= 1;
                // Stale items point at a record that lives on (renewed,
                // completed) or is gone; only an expired record is dropped.
                if map.get(&key).is_some_and(|e| e.expires_at <= now) {
                    if let Some(entry) = map.remove(&key) {
                        *bytes -= entry.size;
                        dropped += 1;
                    }
                }
            }
        }
        // Empty queues are kept for reuse (their buffer too), unless a
        // caller's many distinct durations pile them up.
        if queues.len() > MAX_IDLE_QUEUES {
            queues.retain(|q| !q.items.is_empty());
        }
        dropped
    }
}

fn holds(entry: &Entry, token: &FencingToken, now: Instant) -> bool {
    entry.expires_at > now && matches!(&entry.state, State::InFlight(t) if t == token)
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // No code path panics while holding the lock with the map half-updated,
    // so a poisoned shard is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity())
            .field("max_bytes", &self.max_bytes())
            .finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        let result = self.claim_now(key, fingerprint, lease);
        Box::pin(async move { result })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        _fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion> {
        let done = self.complete_now(key, token, response, retention);
        Box::pin(async move { Ok(done) })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        let mut shard = self.shard(key);
        let now = Instant::now();
        let released = shard.map.get(key).is_some_and(|e| holds(e, token, now));
        if released {
            shard.remove(key);
        }
        drop(shard);
        Box::pin(async move { Ok(released) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let mut shard = self.shard(key);
        let now = Instant::now();
        let expires_at = deadline(now, lease);
        let renewed = match shard.map.get_mut(key) {
            Some(entry) if holds(entry, token, now) => {
                entry.expires_at = expires_at;
                true
            }
            _ => false,
        };
        if renewed {
            shard.enqueue(lease, expires_at, *key);
        }
        drop(shard);
        Box::pin(async move { Ok(renewed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn key(n: u8) -> StoreKey {
        StoreKey::new("t", crate::Scope::Shared, &n.to_string())
    }

    fn response(body: &'static str) -> StoredResponse {
        StoredResponse::new(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
            false,
        )
    }

    const FP: Fingerprint = Fingerprint::from_bytes([1; 32]);
    const LEASE: Duration = Duration::from_secs(10);
    const DAY: Duration = Duration::from_secs(86_400);

    fn token(c: Claim) -> FencingToken {
        match c {
            Claim::Claimed(t) => t,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn claim_complete_replay_and_mismatch() {
        let store = MemoryStore::new();
        let k = key(1);
        let t = token(store.claim(&k, &FP, LEASE).await.unwrap());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            store.claim(&k, &FP, LEASE).await.unwrap(),
            Claim::InFlight {
                retry_after: Duration::from_secs(6)
            }
        );
        let other = Fingerprint::from_bytes([2; 32]);
        assert_eq!(
            store.claim(&k, &other, LEASE).await.unwrap(),
            Claim::Mismatch
        );
        let res = response("done");
        assert_eq!(
            store.complete(&k, &t, &FP, &res, DAY).await.unwrap(),
            Completion::Stored
        );
        assert_eq!(
            store.claim(&k, &FP, LEASE).await.unwrap(),
            Claim::Completed(res.clone())
        );
        assert_eq!(
            store.claim(&k, &other, LEASE).await.unwrap(),
            Claim::Mismatch
        );
        // A second completion by the same token is refused: it no longer holds a claim.
        assert_eq!(
            store.complete(&k, &t, &FP, &res, DAY).await.unwrap(),
            Completion::Fenced
        );
        tokio::time::advance(DAY).await;
        token(store.claim(&k, &FP, LEASE).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_is_taken_over_and_stale_owner_fenced() {
        let store = MemoryStore::new();
        let k = key(2);
        let stale = token(store.claim(&k, &FP, LEASE).await.unwrap());
        tokio::time::advance(LEASE).await;
        let fresh = token(store.claim(&k, &FP, LEASE).await.unwrap());
        assert_ne!(stale, fresh);
        let res = response("x");
        assert_eq!(
            store.complete(&k, &stale, &FP, &res, DAY).await.unwrap(),
            Completion::Fenced
        );
        assert!(!store.release(&k, &stale).await.unwrap());
        assert!(matches!(
            store.claim(&k, &FP, LEASE).await.unwrap(),
            Claim::InFlight { .. }
        ));
        assert!(store.release(&k, &fresh).await.unwrap());
        token(store.claim(&k, &FP, LEASE).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn renew_extends_only_a_live_claim_of_its_token() {
        let store = MemoryStore::new();
        let k = key(4);
        let t = token(store.claim(&k, &FP, LEASE).await.unwrap());
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(store.renew(&k, &t, LEASE).await.unwrap());
        tokio::time::advance(Duration::from_secs(8)).await;
        // 16 s after the claim, the renewed lease still holds.
        assert!(matches!(
            store.claim(&k, &FP, LEASE).await.unwrap(),
            Claim::InFlight { .. }
        ));
        assert!(!store
            .renew(&k, &FencingToken::random(), LEASE)
            .await
            .unwrap());
        tokio::time::advance(LEASE).await;
        assert!(
            !store.renew(&k, &t, LEASE).await.unwrap(),
            "an ended lease is not revived"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lease_ended_without_successor_still_fences() {
        let store = MemoryStore::new();
        let k = key(3);
        let t = token(store.claim(&k, &FP, LEASE).await.unwrap());
        tokio::time::advance(LEASE + Duration::from_millis(1)).await;
        assert_eq!(
            store
                .complete(&k, &t, &FP, &response("late"), DAY)
                .await
                .unwrap(),
            Completion::Fenced
        );
    }

    /// Keys that land in the same shard of a store with `shards` shards.
    fn same_shard(shards: usize, n: usize) -> Vec<StoreKey> {
        (0..4096u32)
            .map(|n| StoreKey::new("t", crate::Scope::Shared, &format!("s{n}")))
            .filter(|k| usize::from(k.as_bytes()[0]) % shards == 0)
            .take(n)
            .collect()
    }

    fn is_full(r: Result<Claim, StoreError>) -> bool {
        matches!(r, Err(e) if e.kind() == crate::error::StoreErrorKind::Full)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_refuses_rather_than_evicts_live_records() {
        let store = MemoryStore::with_capacity(2).unwrap();
        assert_eq!(store.shards.len(), 2);
        let same = same_shard(2, 3);
        let a = token(store.claim(&same[0], &FP, LEASE).await.unwrap());
        // The shard (one record) is full of a claim in flight.
        assert!(is_full(store.claim(&same[1], &FP, LEASE).await));
        store
            .complete(&same[0], &a, &FP, &response("a"), DAY)
            .await
            .unwrap();
        // Still full: a completed, unexpired record is never evicted.
        assert!(is_full(store.claim(&same[1], &FP, LEASE).await));
        tokio::time::advance(Duration::from_secs(86_399)).await;
        assert!(is_full(store.claim(&same[1], &FP, LEASE).await));
        assert_eq!(
            store.claim(&same[0], &FP, LEASE).await.unwrap(),
            Claim::Completed(response("a")),
            "the record is replayed until its retention ends"
        );
        // Once it expires, it makes room.
        tokio::time::advance(Duration::from_secs(1)).await;
        token(store.claim(&same[1], &FP, LEASE).await.unwrap());
        // Expired leases make room too.
        tokio::time::advance(LEASE).await;
        token(store.claim(&same[2], &FP, LEASE).await.unwrap());
        assert_eq!(store.purge_expired(), 0);
        assert!(store.len() <= 2);
        assert!(MemoryStore::with_capacity(0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_other_keys_never_evict_a_completed_record() {
        // The review's scenario: Carol's payment completes, then any client
        // sends more new keys than the store holds.
        let store = MemoryStore::new();
        let carol = StoreKey::new("t", crate::Scope::Tenant("carol"), "pay-1");
        let t = token(store.claim(&carol, &FP, LEASE).await.unwrap());
        store
            .complete(&carol, &t, &FP, &response("paid"), DAY)
            .await
            .unwrap();
        let mut refused = 0;
        for i in 0..(MemoryStore::DEFAULT_CAPACITY * 2) {
            let k = StoreKey::new("t", crate::Scope::Anonymous, &i.to_string());
            match store.claim(&k, &FP, LEASE).await {
                Ok(Claim::Claimed(t)) => {
                    store
                        .complete(&k, &t, &FP, &response("x"), DAY)
                        .await
                        .unwrap();
                }
                Ok(other) => panic!("a fresh key, got {other:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), crate::error::StoreErrorKind::Full);
                    refused += 1;
                }
            }
        }
        assert!(refused >= MemoryStore::DEFAULT_CAPACITY, "{refused}");
        assert!(store.len() <= store.capacity());
        assert_eq!(
            store.claim(&carol, &FP, LEASE).await.unwrap(),
            Claim::Completed(response("paid"))
        );
    }

    fn big(len: usize) -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("x-kept", http::HeaderValue::from_static("yes"));
        StoredResponse::new(
            StatusCode::OK,
            &headers,
            Bytes::from(vec![b'x'; len]),
            false,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_bounded_and_a_response_too_large_is_kept_without_body() {
        // One shard of 8 KiB.
        let store = MemoryStore::with_limits(1, 8 * 1024).unwrap();
        assert_eq!((store.capacity(), store.max_bytes()), (1, 8 * 1024));
        let store = MemoryStore::with_limits(1024, 16 * 8 * 1024).unwrap();
        let same = same_shard(16, 4);
        let a = token(store.claim(&same[0], &FP, LEASE).await.unwrap());
        assert_eq!(
            store
                .complete(&same[0], &a, &FP, &big(5 * 1024), DAY)
                .await
                .unwrap(),
            Completion::Stored
        );
        let charged = store.bytes();
        assert!(charged > 5 * 1024 && charged < 6 * 1024, "{charged}");
        // A second 5 KiB response does not fit beside it: kept bodiless.
        let b = token(store.claim(&same[1], &FP, LEASE).await.unwrap());
        assert_eq!(
            store
                .complete(&same[1], &b, &FP, &big(5 * 1024), DAY)
                .await
                .unwrap(),
            Completion::StoredWithoutBody
        );
        let Claim::Completed(kept) = store.claim(&same[1], &FP, LEASE).await.unwrap() else {
            panic!("completed");
        };
        assert!(kept.body().is_empty() && kept.body_omitted());
        assert_eq!(kept.headers()["x-kept"], "yes");
        assert!(store.bytes() <= 8 * 1024);
        // Claims are refused once the shard's bytes are spent, long before
        // its record bound (64 per shard).
        let store = MemoryStore::with_limits(1024, 16 * 8 * 1024).unwrap();
        let keys = same_shard(16, 16);
        let a = token(store.claim(&keys[0], &FP, LEASE).await.unwrap());
        store
            .complete(&keys[0], &a, &FP, &big(7 * 1024), DAY)
            .await
            .unwrap();
        let mut claimed = 0;
        for k in &keys[1..] {
            match store.claim(k, &FP, LEASE).await {
                Ok(Claim::Claimed(_)) => claimed += 1,
                r => {
                    assert!(is_full(r));
                    break;
                }
            }
        }
        assert!(claimed < 15, "bytes, not records, refused the claims");
        assert!(store.bytes() <= 8 * 1024);
        assert!(MemoryStore::with_limits(16, 16 * 1023).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_larger_than_a_whole_shard_keeps_its_status() {
        let store = MemoryStore::with_limits(1, 1024).unwrap();
        let k = key(1);
        let t = token(store.claim(&k, &FP, LEASE).await.unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-huge",
            http::HeaderValue::from_bytes(&[b'h'; 2048]).unwrap(),
        );
        let res = StoredResponse::new(StatusCode::ACCEPTED, &headers, Bytes::new(), false);
        assert_eq!(
            store.complete(&k, &t, &FP, &res, DAY).await.unwrap(),
            Completion::StoredWithoutBody
        );
        let Claim::Completed(kept) = store.claim(&k, &FP, LEASE).await.unwrap() else {
            panic!("completed");
        };
        assert_eq!(kept.status(), StatusCode::ACCEPTED);
        assert!(kept.headers().is_empty());
        assert!(store.bytes() <= 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_found_across_durations_and_renewals() {
        let store = MemoryStore::new();
        let short = key(1);
        let long = key(2);
        let renewed = key(3);
        let ts = token(
            store
                .claim(&short, &FP, Duration::from_secs(5))
                .await
                .unwrap(),
        );
        token(
            store
                .claim(&long, &FP, Duration::from_secs(50))
                .await
                .unwrap(),
        );
        let tr = token(
            store
                .claim(&renewed, &FP, Duration::from_secs(5))
                .await
                .unwrap(),
        );
        store
            .complete(&short, &ts, &FP, &response("s"), Duration::from_secs(20))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(store
            .renew(&renewed, &tr, Duration::from_secs(5))
            .await
            .unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        // 6 s: nothing has expired (the renewal moved `renewed` to 9 s).
        assert_eq!(store.purge_expired(), 0);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(store.purge_expired(), 1, "the renewed claim, at 9 s");
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(store.purge_expired(), 1, "the completed record, at 21 s");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(store.purge_expired(), 1, "the long lease, at 50 s");
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_queues_are_reused_and_do_not_pile_up() {
        let store = MemoryStore::with_capacity(1).unwrap();
        let queues = |s: &MemoryStore| lock(&s.shards[0]).queues.len();
        for _ in 0..3 {
            let t = token(store.claim(&key(1), &FP, LEASE).await.unwrap());
            store
                .complete(&key(1), &t, &FP, &response("x"), DAY)
                .await
                .unwrap();
            tokio::time::advance(DAY).await;
            assert_eq!(store.purge_expired(), 1);
            // Lease and retention: two queues, kept empty for the next use.
            assert_eq!(queues(&store), 2);
        }
        for ms in 1..=40 {
            token(
                store
                    .claim(&key(2), &FP, Duration::from_millis(ms))
                    .await
                    .unwrap(),
            );
            tokio::time::advance(Duration::from_millis(ms)).await;
        }
        store.purge_expired();
        assert!(queues(&store) <= MAX_IDLE_QUEUES, "{}", queues(&store));
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_durations_saturate_instead_of_panicking() {
        let store = MemoryStore::new();
        let k = key(7);
        let t = token(store.claim(&k, &FP, Duration::MAX).await.unwrap());
        assert!(store.renew(&k, &t, Duration::MAX).await.unwrap());
        assert_eq!(
            store
                .complete(&k, &t, &FP, &response("forever"), Duration::MAX)
                .await
                .unwrap(),
            Completion::Stored
        );
        tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
        assert_eq!(
            store.claim(&k, &FP, LEASE).await.unwrap(),
            Claim::Completed(response("forever"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_claims_have_one_winner() {
        let store = MemoryStore::new();
        let k = key(9);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.claim(&k, &FP, LEASE).await.unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Claim::Claimed(_)) {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
