use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use seawall_core::ConfigError;
use tokio::time::Instant;

use super::{Claim, Completion, Store, StoreFuture};
use crate::error::StoreError;
use crate::key::{FencingToken, Fingerprint, StoreKey};
use crate::record::StoredResponse;

const SHARDS: usize = 16;

/// The default store: records in this process's memory.
///
/// Right for a single replica, and for tests. Records expire on
/// [`tokio::time::Instant`] (so paused test time applies). The store holds
/// at most `capacity` records: when a shard is full it drops expired
/// records, then the completed record closest to expiry. Claims in flight
/// are never evicted (that could run a handler twice); if a shard is full
/// of them, a new claim fails with a [`StoreError`] and the layer answers
/// 503.
///
/// Clones share the same records.
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<Shard>]>,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<StoreKey, Entry>,
}

struct Entry {
    fingerprint: Fingerprint,
    expires_at: Instant,
    state: State,
}

enum State {
    InFlight(FencingToken),
    Completed(StoredResponse),
}

impl MemoryStore {
    /// The default capacity: 10,000 records.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// A store of [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) records.
    pub fn new() -> Self {
        Self::build(Self::DEFAULT_CAPACITY)
    }

    /// A store of at most `capacity` records (rounded up to a multiple of
    /// its shard count).
    pub fn with_capacity(capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new(
                "idempotency memory store",
                "capacity",
                "must be at least 1",
            ));
        }
        Ok(Self::build(capacity))
    }

    fn build(capacity: usize) -> Self {
        let shards = SHARDS.min(capacity);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(shards),
        }
    }

    /// The number of records held, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// `true` if no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired record; returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                let before = shard.map.len();
                shard.map.retain(|_, e| e.expires_at > now);
                before - shard.map.len()
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
        let now = Instant::now();
        let mut shard = self.shard(key);
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
            shard.map.remove(key);
        }
        if shard.map.len() >= self.per_shard {
            shard.make_room(now, self.per_shard);
            if shard.map.len() >= self.per_shard {
                return Err(StoreError::full());
            }
        }
        let token = FencingToken::random();
        shard.map.insert(
            *key,
            Entry {
                fingerprint: *fingerprint,
                expires_at: now + lease,
                state: State::InFlight(token.clone()),
            },
        );
        Ok(Claim::Claimed(token))
    }
}

impl Shard {
    fn make_room(&mut self, now: Instant, limit: usize) {
        self.map.retain(|_, e| e.expires_at > now);
        if self.map.len() < limit {
            return;
        }
        // Still full of live records: evict the completed record that would
        // expire first, the one least likely to be replayed. A linear scan,
        // but only when a shard is full.
        let victim = self
            .map
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Completed(_)))
            .min_by_key(|(_, e)| e.expires_at)
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.map.remove(&k);
        }
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
            .field("capacity", &(self.per_shard * self.shards.len()))
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
        let now = Instant::now();
        let mut shard = self.shard(key);
        let done = match shard.map.get_mut(key) {
            Some(entry) if holds(entry, token, now) => {
                entry.state = State::Completed(response.clone());
                entry.expires_at = now + retention;
                Completion::Stored
            }
            _ => Completion::Fenced,
        };
        drop(shard);
        Box::pin(async move { Ok(done) })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let released = match shard.map.get(key) {
            Some(entry) if holds(entry, token, now) => {
                shard.map.remove(key);
                true
            }
            _ => false,
        };
        drop(shard);
        Box::pin(async move { Ok(released) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let renewed = match shard.map.get_mut(key) {
            Some(entry) if holds(entry, token, now) => {
                entry.expires_at = now + lease;
                true
            }
            _ => false,
        };
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
        StoreKey::new("t", None, &n.to_string())
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

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_completed_never_in_flight() {
        let store = MemoryStore::with_capacity(2).unwrap();
        assert_eq!(store.shards.len(), 2);
        // Find three keys in the same shard.
        let same: Vec<StoreKey> = (0..=255u8)
            .map(key)
            .filter(|k| k.as_bytes()[0] % 2 == 0)
            .take(3)
            .collect();
        let a = token(store.claim(&same[0], &FP, LEASE).await.unwrap());
        assert!(matches!(
            store.claim(&same[1], &FP, LEASE).await.unwrap_err().kind(),
            crate::error::StoreErrorKind::Full
        ));
        store
            .complete(&same[0], &a, &FP, &response("a"), DAY)
            .await
            .unwrap();
        token(store.claim(&same[1], &FP, LEASE).await.unwrap());
        // same[0]'s record was evicted to make room; same[1] is in flight.
        assert!(store.claim(&same[0], &FP, LEASE).await.is_err());
        // Expired leases make room too.
        tokio::time::advance(LEASE).await;
        token(store.claim(&same[2], &FP, LEASE).await.unwrap());
        assert_eq!(store.purge_expired(), 0);
        assert!(store.len() <= 2);
        assert!(MemoryStore::with_capacity(0).is_err());
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
