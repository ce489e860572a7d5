//! The last-known-good cache: the latest successful response per key,
//! bounded in entries, bytes and age.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use seawall_core::ConfigError;
use tokio::time::Instant;

use crate::mode::Recorder;

const LAYER: &str = "fallback";

/// What each entry is charged beyond its value and key: the cache's node,
/// the entry's timestamps and reference count (an estimate, on the high side).
const ENTRY_OVERHEAD: usize = 128;

/// Settings of the last-known-good tier.
///
/// A successful response is remembered under a key computed from the
/// request (see [`Builder::last_known_good`](crate::Builder::last_known_good))
/// and served in place of a failure while it is younger than
/// [`max_staleness`](Self::max_staleness).
///
/// # Memory bound
///
/// The cache holds at most [`capacity`](Self::capacity) entries **and** at
/// most [`max_bytes`](Self::max_bytes) bytes, whichever binds first. An
/// entry is charged its stored value (for HTTP: the body, every header name
/// and value, and the `http::Response` itself; for plain responses: the
/// value's inline size, as its heap data is unknown), the bytes its key
/// feeds to a hasher (a `String` key is charged its length), and 128 bytes
/// of bookkeeping; and never less than `max_bytes / capacity`, which is how
/// the entry bound is kept. An entry bigger than `max_bytes` is not stored.
/// The least useful entries are evicted (TinyLFU, via `moka`) in O(1)
/// amortised time. Evictions are applied in batches, every 64 writes or
/// 300 ms: between two batches the cache can hold up to 384 insertions more
/// than the bound (use [`LastKnownGoodCache::run_pending_tasks`] to apply
/// them at once).
///
/// Entries are dropped [`time_to_live`](Self::time_to_live) after they were
/// stored (default: the staleness), read or not, and, if
/// [`idle_timeout`](Self::idle_timeout) is set, once neither recorded nor
/// served for that long.
///
/// # Who may be served what
///
/// Follows RFC 9111's rules for a shared cache by default; for HTTP see
/// [`Http`](crate::Http#what-the-last-known-good-tier-stores). An answer to a
/// request carrying credentials (`Authorization`, `Proxy-Authorization`,
/// `Cookie`) is never stored unless [`key_includes_principal`](Self::key_includes_principal)
/// says that the key keeps principals apart.
///
/// Defaults: 1 000 entries, 32 MiB, 5 minutes of staleness, a time to live
/// equal to the staleness, no idle timeout, no answers to requests with
/// credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastKnownGood {
    capacity: u64,
    max_bytes: u64,
    max_staleness: Duration,
    time_to_live: Option<Duration>,
    idle_timeout: Option<Duration>,
    key_includes_principal: bool,
}

impl Default for LastKnownGood {
    fn default() -> Self {
        Self::new()
    }
}

impl LastKnownGood {
    /// The longest staleness, time to live or idle timeout accepted: 365
    /// days. Longer durations (`Duration::MAX` included) are refused by
    /// [`build`](crate::Builder::build) with a `ConfigError` rather than
    /// clamped: no answer that old stands in for a healthy one.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// The default settings.
    pub const fn new() -> Self {
        Self {
            capacity: 1_000,
            max_bytes: 32 * 1024 * 1024,
            max_staleness: Duration::from_secs(300),
            time_to_live: None,
            idle_timeout: None,
            key_includes_principal: false,
        }
    }

    /// How many keys are remembered at most (default 1 000).
    #[must_use]
    pub const fn capacity(mut self, entries: u64) -> Self {
        self.capacity = entries;
        self
    }

    /// How many bytes the remembered responses may take at most (default
    /// 32 MiB); see [the memory bound](Self#memory-bound).
    #[must_use]
    pub const fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How old a remembered response may be and still be served (default
    /// 5 minutes, at most [`MAX_DURATION`](Self::MAX_DURATION)).
    #[must_use]
    pub const fn max_staleness(mut self, age: Duration) -> Self {
        self.max_staleness = age;
        self
    }

    /// How long after it was stored an entry is dropped to free memory,
    /// read or not (default: the staleness, at most [`MAX_DURATION`](Self::MAX_DURATION)).
    /// Within it, staleness decides what is served; a time to live shorter
    /// than the staleness drops entries that would still have been fresh
    /// enough.
    #[must_use]
    pub const fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Drops entries neither recorded nor served for this long (default:
    /// none, the time to live bounds every entry's life; at most
    /// [`MAX_DURATION`](Self::MAX_DURATION)).
    #[must_use]
    pub const fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Declares that the key function keeps principals apart — it includes
    /// the user, session or tenant the request is authenticated as — so
    /// that answers to requests carrying credentials (`Authorization`,
    /// `Proxy-Authorization`, `Cookie`) may be stored, and served to
    /// requests with the same key.
    ///
    /// Off by default: such answers are then never stored (RFC 9111 §3.5),
    /// whatever the key. With it, the cache acts as one private cache per
    /// principal, so an answer marked `Cache-Control: private` to a request
    /// that carried credentials is stored too (RFC 9111 §5.2.2.7 lets a
    /// private cache keep it); `no-store`, `Set-Cookie` and `Vary` are
    /// honoured as ever.
    ///
    /// This is a promise the layer cannot check: a key that ignores who is
    /// asking then serves one user's answer to another. Derive the
    /// principal from what your authentication layer established (a request
    /// extension it sets, captured with
    /// [`capture_extension`](crate::Builder::capture_extension)), or from
    /// the credential itself. A stored answer is served while the
    /// dependency fails, without the dependency's own access checks: a
    /// credential revoked meanwhile still reads its last answer, for at
    /// most the staleness.
    ///
    /// ```
    /// use http::header::AUTHORIZATION;
    /// use seawall_fallback::{FallbackLayer, LastKnownGood, RequestInfo};
    ///
    /// #[derive(Clone, PartialEq, Eq, Hash)]
    /// struct UserId(u64); // set by the authentication layer outside
    ///
    /// let layer = FallbackLayer::http()
    ///     .capture_extension::<UserId>()
    ///     .last_known_good(
    ///         LastKnownGood::new().key_includes_principal(),
    ///         |info: &RequestInfo| {
    ///             let user = info.extensions().get::<UserId>()?.clone();
    ///             Some((user, info.uri().path().to_owned()))
    ///         },
    ///     )
    ///     .build()
    ///     .unwrap();
    /// # let _ = (layer, AUTHORIZATION);
    /// ```
    #[must_use]
    pub const fn key_includes_principal(mut self) -> Self {
        self.key_includes_principal = true;
        self
    }

    #[cfg(feature = "redis")]
    pub(crate) fn staleness(&self) -> Duration {
        self.max_staleness
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::new(LAYER, "capacity", "must be at least 1"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new(LAYER, "max_bytes", "must be at least 1"));
        }
        let durations = [
            ("max_staleness", Some(self.max_staleness)),
            ("time_to_live", self.time_to_live),
            ("idle_timeout", self.idle_timeout),
        ];
        for (field, duration) in durations {
            let Some(duration) = duration else { continue };
            if duration.is_zero() {
                return Err(ConfigError::new(LAYER, field, "must be greater than zero"));
            }
            if duration > Self::MAX_DURATION {
                return Err(ConfigError::new(LAYER, field, "must be at most 365 days"));
            }
        }
        Ok(())
    }
}

struct Entry<V> {
    // Stored with tokio's clock, not moka's, so staleness follows paused
    // virtual time in tests and the lab.
    stored_at: Instant,
    weight: u32,
    value: V,
}

/// The last-known-good store seen through the request info only; the key
/// type stays inside.
pub(crate) trait Slot<I, V>: Send + Sync {
    /// Whether the user declared that keys keep principals apart.
    fn key_includes_principal(&self) -> bool;
    /// Calls the key function: `None` when the request has no key.
    fn recorder(&self, info: &I) -> Option<Recorder<V>>;
    /// The entry for `info`'s key, if fresh enough and `usable`.
    fn recall(&self, info: &I, usable: &dyn Fn(&V) -> bool) -> Option<(V, Duration)>;
    /// A read of `info`'s key from the shared store, if there is one; its
    /// answer is not yet checked for `usable`.
    fn recall_shared(&self, info: &I) -> Option<SharedRead<V>>;
    fn entry_count(&self) -> u64;
    fn weighted_size(&self) -> u64;
    fn run_pending_tasks(&self);
    fn clear(&self);
    /// Told the layer's name when it is built (a shared store's default
    /// key prefix includes it).
    fn name_layer(&self, name: &str) {
        let _ = name;
    }
}

/// A pending read from a shared store.
#[cfg(feature = "redis")]
pub(crate) type SharedRead<V> = crate::redis::RemoteRead<V>;
/// A pending read from a shared store (none without the `redis` feature).
#[cfg(not(feature = "redis"))]
pub(crate) type SharedRead<V> = std::future::Ready<Option<(V, Duration)>>;

pub(crate) struct Store<K, V, F> {
    cache: Cache<K, Arc<Entry<V>>>,
    /// `false` when answers live only in the shared store.
    local: bool,
    #[cfg(feature = "redis")]
    remote: Option<Arc<crate::redis::Remote<V>>>,
    key: F,
    max_staleness: Duration,
    key_includes_principal: bool,
    /// The least an entry is charged: `max_bytes / capacity`, rounded up.
    floor: u64,
    max_bytes: u64,
}

impl<K, V, F> Store<K, V, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// `config` must have been validated.
    pub(crate) fn new(config: LastKnownGood, key: F) -> Self {
        let ttl = config.time_to_live.unwrap_or(config.max_staleness);
        let mut cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key: &K, entry: &Arc<Entry<V>>| entry.weight)
            .time_to_live(ttl);
        if let Some(idle) = config.idle_timeout {
            cache = cache.time_to_idle(idle);
        }
        Self {
            cache: cache.build(),
            local: true,
            #[cfg(feature = "redis")]
            remote: None,
            key,
            max_staleness: config.max_staleness,
            key_includes_principal: config.key_includes_principal,
            floor: config.max_bytes.div_ceil(config.capacity.max(1)),
            max_bytes: config.max_bytes,
        }
    }
}

#[cfg(feature = "redis")]
impl<K, V, F> Store<K, V, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A store that also shares its answers through Redis; `config` must
    /// have been validated.
    pub(crate) fn shared(config: LastKnownGood, key: F, remote: crate::redis::Remote<V>) -> Self {
        let mut store = Self::new(config, key);
        store.local = remote.local();
        store.remote = Some(Arc::new(remote));
        store
    }
}

/// What an entry is charged, or `None` if it can never fit.
fn weight<K: Hash, V>(key: &K, value_bytes: usize, floor: u64, max_bytes: u64) -> Option<u32> {
    let bytes = value_bytes
        .saturating_add(key_bytes(key))
        .saturating_add(size_of::<K>() + size_of::<Entry<V>>() + ENTRY_OVERHEAD);
    let bytes = u64::try_from(bytes).ok()?.max(floor);
    if bytes > max_bytes {
        return None;
    }
    u32::try_from(bytes).ok()
}

/// The bytes `key` feeds to a hasher: its data, whatever its type.
fn key_bytes<K: Hash>(key: &K) -> usize {
    struct Counter(usize);
    impl Hasher for Counter {
        fn finish(&self) -> u64 {
            self.0 as u64
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0 = self.0.saturating_add(bytes.len());
        }
    }
    let mut counter = Counter(0);
    key.hash(&mut counter);
    counter.0
}

impl<I, K, V, F> Slot<I, V> for Store<K, V, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(&I) -> Option<K> + Send + Sync + 'static,
{
    fn key_includes_principal(&self) -> bool {
        self.key_includes_principal
    }

    fn recorder(&self, info: &I) -> Option<Recorder<V>> {
        let key = (self.key)(info)?;
        let cache = self.local.then(|| self.cache.clone());
        #[cfg(feature = "redis")]
        let remote = self.remote.clone();
        let (floor, max_bytes) = (self.floor, self.max_bytes);
        let recorder = Recorder::new(move |value, value_bytes| {
            // The key's own `Hash` and `Eq` run here (charging it, then
            // inserting); a panic in them loses this copy, never the
            // response it was made from.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                #[cfg(feature = "redis")]
                if let Some(remote) = &remote {
                    remote.write(remote.key(&key), &value);
                }
                let Some(cache) = cache else { return };
                let Some(weight) = weight::<K, V>(&key, value_bytes, floor, max_bytes) else {
                    return;
                };
                let entry = Entry {
                    stored_at: Instant::now(),
                    weight,
                    value,
                };
                cache.insert(key, Arc::new(entry));
            }));
        });
        Some(recorder.key_includes_principal(self.key_includes_principal))
    }

    fn recall(&self, info: &I, usable: &dyn Fn(&V) -> bool) -> Option<(V, Duration)> {
        if !self.local {
            return None;
        }
        let key = (self.key)(info)?;
        let entry = self.cache.get(&key)?;
        let age = entry.stored_at.elapsed();
        // A stale entry is not served, and not removed either: its time to
        // live (by default the staleness) and the capacity bound free it.
        // Removing it here could remove a response a concurrent success
        // recorded since this read instead.
        (age <= self.max_staleness && usable(&entry.value)).then(|| (entry.value.clone(), age))
    }

    #[cfg(feature = "redis")]
    fn recall_shared(&self, info: &I) -> Option<SharedRead<V>> {
        let remote = self.remote.as_ref()?;
        let key = (self.key)(info)?;
        Some(remote.read(remote.key(&key)))
    }

    #[cfg(not(feature = "redis"))]
    fn recall_shared(&self, _info: &I) -> Option<SharedRead<V>> {
        None
    }

    fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }

    #[cfg(feature = "redis")]
    fn name_layer(&self, name: &str) {
        if let Some(remote) = &self.remote {
            remote.name_layer(name);
        }
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
    fn weighted_size(&self) -> u64;
    fn run_pending_tasks(&self);
    fn clear(&self);
}

struct Erased<I, V>(Arc<dyn Slot<I, V>>);

impl<I: 'static, V: 'static> Cleanup for Erased<I, V> {
    fn entry_count(&self) -> u64 {
        self.0.entry_count()
    }
    fn weighted_size(&self) -> u64 {
        self.0.weighted_size()
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

    /// The bytes the remembered responses are charged (see [the memory
    /// bound](LastKnownGood#memory-bound)), at most
    /// [`max_bytes`](LastKnownGood::max_bytes) once pending evictions are
    /// applied.
    pub fn weighted_size(&self) -> u64 {
        self.slot.weighted_size()
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
            .field("weighted_size", &self.weighted_size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type KeyFn = fn(&u32) -> Option<u32>;

    fn any(_: &&'static str) -> bool {
        true
    }

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
        s.recorder(&1).expect("keyed").record("one", 8);
        tokio::time::advance(Duration::from_secs(10)).await;
        let (v, age) = s.recall(&1, &any).expect("fresh enough");
        assert_eq!(v, "one");
        assert_eq!(age, Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(s.recall(&1, &any).is_none());
        assert!(s.recall(&1, &any).is_none(), "and stays unserved");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_recorded_after_a_stale_read_is_served() {
        let s = store(LastKnownGood::new().max_staleness(Duration::from_secs(10)));
        s.recorder(&1).expect("keyed").record("old", 8);
        tokio::time::advance(Duration::from_secs(11)).await;
        // A failure that finds the entry stale leaves the cache as it is:
        // a removal after its read could hit a fresh response recorded by a
        // concurrent success in between.
        assert!(s.recall(&1, &any).is_none());
        assert!(s.cache.get(&1).is_some(), "a stale read removes nothing");
        s.recorder(&1).expect("keyed").record("fresh", 8);
        assert_eq!(s.recall(&1, &any).map(|(v, _)| v), Some("fresh"));
        assert_eq!(s.recall(&1, &any).map(|(_, age)| age), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn unkeyed_requests_are_neither_stored_nor_served() {
        let s = store(LastKnownGood::new());
        assert!(s.recorder(&0).is_none());
        assert!(s.recall(&0, &any).is_none());
        s.recorder(&2).expect("keyed").record("two", 8);
        assert!(s.recall(&3, &any).is_none(), "other keys see nothing");
        assert_eq!(s.recall(&2, &any).map(|(v, _)| v), Some("two"));
    }

    #[tokio::test(start_paused = true)]
    async fn unusable_variants_are_not_served() {
        let s = store(LastKnownGood::new());
        s.recorder(&1).expect("keyed").record("gzip", 8);
        assert!(s.recall(&1, &|v: &&str| *v == "br").is_none());
        assert_eq!(
            s.recall(&1, &|v: &&str| *v == "gzip").map(|(v, _)| v),
            Some("gzip")
        );
    }

    #[test]
    fn keys_are_charged_their_data() {
        assert_eq!(key_bytes(&7_u32), 4);
        assert!(key_bytes(&"x".repeat(10_000)) >= 10_000);
        assert!(key_bytes(&("a".repeat(100), 3_u8)) >= 101);
    }

    #[test]
    fn entries_are_charged_at_least_their_share_and_never_beyond_the_bound() {
        let overhead = size_of::<u32>() + size_of::<Entry<&str>>() + ENTRY_OVERHEAD;
        let small = weight::<u32, &str>(&1, 10, 1_000, 1 << 20).unwrap();
        assert_eq!(u64::from(small), 1_000, "the floor keeps the entry bound");
        let big = weight::<u32, &str>(&1, 5_000, 1_000, 1 << 20).unwrap();
        assert_eq!(big as usize, 5_000 + 4 + overhead);
        assert!(weight::<u32, &str>(&1, 1 << 20, 1, 1 << 20).is_none());
        assert!(weight::<u32, &str>(&1, usize::MAX, 1, u64::MAX).is_none());
    }

    #[test]
    fn bytes_bound_the_cache_as_well_as_entries() {
        // 100 entries of 1 KiB fit the entry bound but not 16 KiB.
        let s = store(LastKnownGood::new().capacity(100).max_bytes(16 * 1024));
        for n in 1..=100 {
            s.recorder(&n).expect("keyed").record("v", 1024);
        }
        s.cache.run_pending_tasks();
        assert!(
            s.cache.weighted_size() <= 16 * 1024,
            "{}",
            s.cache.weighted_size()
        );
        assert!(s.cache.entry_count() <= 15, "{}", s.cache.entry_count());
        assert!(s.cache.entry_count() >= 1);

        // Tiny entries: the entry bound binds.
        let s = store(LastKnownGood::new().capacity(10).max_bytes(1 << 20));
        for n in 1..=100 {
            s.recorder(&n).expect("keyed").record("v", 1);
        }
        s.cache.run_pending_tasks();
        assert!(
            (1..=10).contains(&s.cache.entry_count()),
            "{}",
            s.cache.entry_count()
        );

        // An entry bigger than the whole bound is never stored.
        let s = store(LastKnownGood::new().max_bytes(4096));
        s.recorder(&1).expect("keyed").record("huge", 4096);
        s.cache.run_pending_tasks();
        assert_eq!(s.cache.entry_count(), 0);
    }

    #[test]
    fn absurd_durations_are_refused() {
        for config in [
            LastKnownGood::new().max_staleness(Duration::MAX),
            LastKnownGood::new().time_to_live(Duration::MAX),
            LastKnownGood::new()
                .idle_timeout(LastKnownGood::MAX_DURATION + Duration::from_nanos(1)),
        ] {
            let err = config.validate().unwrap_err();
            assert_eq!(err.reason(), "must be at most 365 days", "{err}");
        }
        assert!(LastKnownGood::new()
            .max_staleness(LastKnownGood::MAX_DURATION)
            .validate()
            .is_ok());
        assert_eq!(
            LastKnownGood::new()
                .max_bytes(0)
                .validate()
                .unwrap_err()
                .field(),
            "max_bytes"
        );
        assert_eq!(
            LastKnownGood::new()
                .idle_timeout(Duration::ZERO)
                .validate()
                .unwrap_err()
                .field(),
            "idle_timeout"
        );
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
