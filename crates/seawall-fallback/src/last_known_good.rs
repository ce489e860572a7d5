//! The last-known-good cache: the latest successful response per key,
//! bounded in entries and age.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use seawall_core::ConfigError;
use tokio::time::Instant;

use crate::mode::Recorder;

const LAYER: &str = "fallback";

/// Settings of the last-known-good tier.
///
/// A successful response is remembered under a key computed from the
/// request (see [`Builder::last_known_good`](crate::Builder::last_known_good))
/// and served in place of a failure while it is younger than
/// [`max_staleness`](Self::max_staleness). At most
/// [`capacity`](Self::capacity) keys are kept; the least useful are evicted
/// (TinyLFU, via `moka`), and entries are dropped after
/// [`time_to_live`](Self::time_to_live) even if never read.
///
/// Defaults: 1 000 entries, 5 minutes of staleness, a time to live equal to
/// the staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastKnownGood {
    capacity: u64,
    max_staleness: Duration,
    time_to_live: Option<Duration>,
}

impl Default for LastKnownGood {
    fn default() -> Self {
        Self::new()
    }
}

impl LastKnownGood {
    /// The default settings.
    pub const fn new() -> Self {
        Self {
            capacity: 1_000,
            max_staleness: Duration::from_secs(300),
            time_to_live: None,
        }
    }

    /// How many keys are remembered at most.
    #[must_use]
    pub const fn capacity(mut self, entries: u64) -> Self {
        self.capacity = entries;
        self
    }

    /// How old a remembered response may be and still be served.
    #[must_use]
    pub const fn max_staleness(mut self, age: Duration) -> Self {
        self.max_staleness = age;
        self
    }

    /// How long after it was stored an entry is dropped to free memory,
    /// read or not (default: the staleness). Within it, staleness decides
    /// what is served; a time to live shorter than the staleness drops
    /// entries that would still have been fresh enough.
    #[must_use]
    pub const fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::new(LAYER, "capacity", "must be at least 1"));
        }
        if self.max_staleness.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "max_staleness",
                "must be greater than zero",
            ));
        }
        if self.time_to_live.is_some_and(|ttl| ttl.is_zero()) {
            return Err(ConfigError::new(
                LAYER,
                "time_to_live",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

struct Entry<V> {
    // Stored with tokio's clock, not moka's, so staleness follows paused
    // virtual time in tests and the lab.
    stored_at: Instant,
    value: V,
}

/// The last-known-good store seen through the request info only; the key
/// type stays inside.
pub(crate) trait Slot<I, V>: Send + Sync {
    fn recorder(&self, info: &I) -> Option<Recorder<V>>;
    fn recall(&self, info: &I) -> Option<(V, Duration)>;
    fn entry_count(&self) -> u64;
    fn run_pending_tasks(&self);
    fn clear(&self);
}

pub(crate) struct Store<K, V, F> {
    cache: Cache<K, Arc<Entry<V>>>,
    key: F,
    max_staleness: Duration,
}

impl<K, V, F> Store<K, V, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(config: LastKnownGood, key: F) -> Self {
        let ttl = config.time_to_live.unwrap_or(config.max_staleness);
        Self {
            cache: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(ttl)
                .build(),
            key,
            max_staleness: config.max_staleness,
        }
    }
}

impl<I, K, V, F> Slot<I, V> for Store<K, V, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(&I) -> Option<K> + Send + Sync + 'static,
{
    fn recorder(&self, info: &I) -> Option<Recorder<V>> {
        let key = (self.key)(info)?;
        let cache = self.cache.clone();
        Some(Recorder::new(move |value| {
            let entry = Entry {
                stored_at: Instant::now(),
                value,
            };
            cache.insert(key, Arc::new(entry));
        }))
    }

    fn recall(&self, info: &I) -> Option<(V, Duration)> {
        let key = (self.key)(info)?;
        let entry = self.cache.get(&key)?;
        let age = entry.stored_at.elapsed();
        // A stale entry is not served, and not removed either: its time to
        // live (by default the staleness) and the capacity bound free it.
        // Removing it here could remove a response a concurrent success
        // recorded since this read instead.
        (age <= self.max_staleness).then(|| (entry.value.clone(), age))
    }

    fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }
}

/// A handle on a layer's last-known-good cache, for health checks, metrics
/// and invalidation. Obtained from
/// [`FallbackLayer::last_known_good`](crate::FallbackLayer::last_known_good).
#[derive(Clone)]
pub struct LastKnownGoodCache {
    slot: Arc<dyn Cleanup>,
}

/// The key- and info-independent operations of a slot.
trait Cleanup: Send + Sync {
    fn entry_count(&self) -> u64;
    fn run_pending_tasks(&self);
    fn clear(&self);
}

struct Erased<I, V>(Arc<dyn Slot<I, V>>);

impl<I: 'static, V: 'static> Cleanup for Erased<I, V> {
    fn entry_count(&self) -> u64 {
        self.0.entry_count()
    }
    fn run_pending_tasks(&self) {
        self.0.run_pending_tasks();
    }
    fn clear(&self) {
        self.0.clear();
    }
}

impl LastKnownGoodCache {
    pub(crate) fn new<I: 'static, V: 'static>(slot: Arc<dyn Slot<I, V>>) -> Self {
        Self {
            slot: Arc::new(Erased(slot)),
        }
    }

    /// The number of remembered responses. The count is approximate until
    /// [`run_pending_tasks`](Self::run_pending_tasks): evictions are applied
    /// in batches.
    pub fn entry_count(&self) -> u64 {
        self.slot.entry_count()
    }

    /// Applies pending evictions now.
    pub fn run_pending_tasks(&self) {
        self.slot.run_pending_tasks();
    }

    /// Forgets every remembered response.
    pub fn clear(&self) {
        self.slot.clear();
    }
}

impl fmt::Debug for LastKnownGoodCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastKnownGoodCache")
            .field("entry_count", &self.entry_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type KeyFn = fn(&u32) -> Option<u32>;

    fn store(config: LastKnownGood) -> Store<u32, &'static str, KeyFn> {
        #[allow(clippy::trivially_copy_pass_by_ref)] // the key function takes the info by reference
        fn key(n: &u32) -> Option<u32> {
            (*n != 0).then_some(*n)
        }
        Store::new(config, key as KeyFn)
    }

    #[tokio::test(start_paused = true)]
    async fn serves_until_stale_then_not() {
        let s = store(LastKnownGood::new().max_staleness(Duration::from_secs(10)));
        s.recorder(&1).expect("keyed").record("one");
        tokio::time::advance(Duration::from_secs(10)).await;
        let (v, age) = s.recall(&1).expect("fresh enough");
        assert_eq!(v, "one");
        assert_eq!(age, Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(s.recall(&1).is_none());
        assert!(s.recall(&1).is_none(), "and stays unserved");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_recorded_after_a_stale_read_is_served() {
        let s = store(LastKnownGood::new().max_staleness(Duration::from_secs(10)));
        s.recorder(&1).expect("keyed").record("old");
        tokio::time::advance(Duration::from_secs(11)).await;
        // A failure that finds the entry stale leaves the cache as it is:
        // a removal after its read could hit a fresh response recorded by a
        // concurrent success in between.
        assert!(s.recall(&1).is_none());
        assert!(s.cache.get(&1).is_some(), "a stale read removes nothing");
        s.recorder(&1).expect("keyed").record("fresh");
        assert_eq!(s.recall(&1).map(|(v, _)| v), Some("fresh"));
        assert_eq!(s.recall(&1).map(|(_, age)| age), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn unkeyed_requests_are_neither_stored_nor_served() {
        let s = store(LastKnownGood::new());
        assert!(s.recorder(&0).is_none());
        assert!(s.recall(&0).is_none());
        s.recorder(&2).expect("keyed").record("two");
        assert!(s.recall(&3).is_none(), "other keys see nothing");
        assert_eq!(s.recall(&2).map(|(v, _)| v), Some("two"));
    }

    #[test]
    fn validation() {
        assert!(LastKnownGood::new().validate().is_ok());
        assert_eq!(
            LastKnownGood::new()
                .capacity(0)
                .validate()
                .unwrap_err()
                .field(),
            "capacity"
        );
        assert_eq!(
            LastKnownGood::new()
                .max_staleness(Duration::ZERO)
                .validate()
                .unwrap_err()
                .field(),
            "max_staleness"
        );
        assert_eq!(
            LastKnownGood::new()
                .time_to_live(Duration::ZERO)
                .validate()
                .unwrap_err()
                .field(),
            "time_to_live"
        );
    }
}
