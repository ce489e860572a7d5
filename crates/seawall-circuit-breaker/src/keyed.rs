//! Keyed mode: one breaker per key, in a bounded registry.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::mem;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use seawall_core::{BoxError, Classify, SharedState};
use tokio::time::Instant;
use tower::util::Oneshot;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{Breaker, Config};
use crate::error::KeyedRegistryFull;
use crate::event::Emitter;
use crate::future::{Permit, ResponseFuture};
use crate::handle::{Handle, Shared};
use crate::State;

const MAX_SHARDS: usize = 16;

/// How long a shard found full of breakers that must not be dropped
/// refuses new keys without scanning again.
const FULL_BACKOFF: Duration = Duration::from_secs(1);

struct Entry<C> {
    shared: Arc<Shared<C>>,
    /// The key's calls in flight and when the last one ended.
    activity: Arc<Activity>,
    last_used: Instant,
    /// Used since the eviction hand last passed (CLOCK's reference bit).
    referenced: bool,
    /// Which of the key's places in `order` is current.
    stamp: u64,
}

/// The calls of one key: how many are in flight, and when the last one
/// ended. A breaker with calls in flight is never dropped (their outcome,
/// a trip included, must land on the breaker the key keeps), and a key is
/// idle only `key_idle_timeout` after its last call *ended*.
struct Activity {
    in_flight: AtomicUsize,
    /// Nanoseconds since `base` when the last call ended.
    last_done: AtomicU64,
    base: Instant,
}

impl Activity {
    fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            base,
        })
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    fn last_done(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_done.load(Ordering::Relaxed))
    }
}

/// One call of a key in flight, taken under its shard's lock when the
/// call's breaker is handed out; dropped when the call's outcome is
/// recorded (or the call is refused or cancelled), noting when it ended.
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &*self.0;
        let ended = Instant::now().saturating_duration_since(a.base);
        a.last_done.fetch_max(
            u64::try_from(ended.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // `Release`: whoever sees the count fall sees the end time.
        a.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.0.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

/// One shard: its breakers, and the order an eviction hand visits them in
/// (CLOCK: a queue of keys with lazily dropped stale places).
struct Shard<K, C> {
    map: HashMap<K, Entry<C>>,
    order: VecDeque<(K, u64)>,
    next_stamp: u64,
    last_sweep: Instant,
    /// Until then this shard holds no breaker it may drop.
    full_until: Option<Instant>,
}

/// The breakers of a keyed layer: sharded maps under short locks, and one
/// count of the breakers they hold together. A new breaker first reserves
/// its place in the count (never past the capacity), so the total can never
/// exceed it; and no breaker is evicted while the registry has room, however
/// the keys fall into shards.
///
/// When full, a new key takes the place of a breaker found by a CLOCK hand
/// (idle closed breakers at once, recently used ones after a second chance):
/// O(1) amortised per new key. Breakers that are open, half-open, forced
/// open or disabled are never dropped, neither by eviction nor by idleness;
/// if no breaker may be dropped, the new key is refused with
/// [`KeyedRegistryFull`].
pub(crate) struct Registry<K, C> {
    shards: Box<[Mutex<Shard<K, C>>]>,
    len: AtomicUsize,
    hasher: RandomState,
    cfg: Arc<Config>,
    classifier: C,
    emit: Option<Emitter>,
    capacity: usize,
    idle: Duration,
    /// The origin of the keys' `last_done` times.
    base: Instant,
}

impl<K, C> Registry<K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
    C: Clone,
{
    pub(crate) fn new(
        cfg: Arc<Config>,
        classifier: C,
        emit: Option<Emitter>,
        capacity: usize,
        idle: Duration,
    ) -> Self {
        let count = capacity.clamp(1, MAX_SHARDS);
        let now = Instant::now();
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                    next_stamp: 0,
                    last_sweep: now,
                    full_until: None,
                })
            })
            .collect();
        Self {
            shards,
            len: AtomicUsize::new(0),
            hasher: RandomState::new(),
            cfg,
            classifier,
            emit,
            capacity,
            idle,
            base: now,
        }
    }

    fn shard_index(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    /// No call for `key_idle_timeout`: none admitted since, none in flight,
    /// none ended since.
    fn is_idle(&self, entry: &Entry<C>, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_used) >= self.idle
            && !entry.activity.busy()
            && now.saturating_duration_since(entry.activity.last_done()) >= self.idle
    }

    /// Whether the registry may forget this breaker: only a closed one (a
    /// fresh breaker for its key would be the same), or one left open so
    /// long ago that its open period ended `key_idle_timeout` before now
    /// and no call came since (its key is gone).
    fn may_drop(&self, entry: &Entry<C>, now: Instant) -> bool {
        if entry.activity.busy() {
            // Its calls' outcomes (a trip) must land on the key's breaker.
            return false;
        }
        let breaker = &entry.shared.breaker;
        match breaker.state() {
            State::Closed => true,
            State::Open => self.is_idle(entry, now) && breaker.open_ended_before(now, self.idle),
            _ => false,
        }
    }

    /// Takes one place in the registry, if it has room.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Drops the idle breakers of a shard that may be dropped, giving their
    /// places back. Run at most once per idle period per shard.
    fn sweep(&self, shard: &mut Shard<K, C>, now: Instant) {
        let before = shard.map.len();
        shard
            .map
            .retain(|_, e| !(self.is_idle(e, now) && self.may_drop(e, now)));
        shard.last_sweep = now;
        self.len
            .fetch_sub(before - shard.map.len(), Ordering::AcqRel);
        Self::compact(shard);
    }

    /// Drops stale places from the hand's queue once they outnumber the
    /// live ones (amortised O(1): at most one pass per as many changes).
    fn compact(shard: &mut Shard<K, C>) {
        if shard.order.len() > 2 * shard.map.len() + 16 {
            let map = &shard.map;
            shard
                .order
                .retain(|(k, stamp)| map.get(k).is_some_and(|e| e.stamp == *stamp));
        }
    }

    /// Moves the CLOCK hand until it drops one breaker of the shard: an
    /// idle one that may be dropped at once, a droppable one not used since
    /// the hand last passed, after giving it a second chance otherwise.
    /// Visits each place at most twice; `false` if nothing may be dropped.
    fn evict_one(&self, shard: &mut Shard<K, C>, now: Instant) -> bool {
        if shard.full_until.is_some_and(|until| now < until) {
            return false;
        }
        let mut budget = 2 * shard.order.len();
        while budget > 0 {
            budget -= 1;
            let Some((key, stamp)) = shard.order.pop_front() else {
                break;
            };
            let Some(entry) = shard.map.get_mut(&key) else {
                continue;
            };
            if entry.stamp != stamp {
                continue;
            }
            let idle = self.is_idle(entry, now);
            let keep = if !self.may_drop(entry, now) {
                true
            } else if entry.referenced && !idle {
                entry.referenced = false;
                true
            } else {
                false
            };
            if keep {
                shard.order.push_back((key, stamp));
            } else {
                shard.map.remove(&key);
                shard.full_until = None;
                return true;
            }
        }
        if !shard.map.is_empty() {
            // Every breaker here must stay: do not scan again for a while.
            shard.full_until = Some(now + FULL_BACKOFF);
        }
        false
    }

    fn make(&self, key: &K) -> Arc<Shared<C>> {
        Arc::new(Shared {
            breaker: Breaker::new(
                self.cfg.clone(),
                Some(Arc::from(format!("{key:?}"))),
                self.emit.clone(),
            ),
            classifier: self.classifier.clone(),
        })
    }

    fn insert(&self, shard: &mut Shard<K, C>, key: K, now: Instant) -> (Arc<Shared<C>>, InFlight) {
        let shared = self.make(&key);
        let activity = Activity::new(self.base);
        let call = InFlight::new(&activity);
        // A new (closed) breaker is one the hand may drop.
        shard.full_until = None;
        let stamp = shard.next_stamp;
        shard.next_stamp += 1;
        shard.order.push_back((key.clone(), stamp));
        shard.map.insert(
            key,
            Entry {
                shared: shared.clone(),
                activity,
                last_used: now,
                referenced: false,
                stamp,
            },
        );
        (shared, call)
    }

    /// The breaker for `key`, made on first use, with one call counted in
    /// flight on it until the returned guard is dropped; see [`Registry`]
    /// for what happens when the registry is full.
    pub(crate) fn get(&self, key: K) -> Result<(Arc<Shared<C>>, InFlight), KeyedRegistryFull> {
        let now = Instant::now();
        let index = self.shard_index(&key);
        loop {
            let mut shard = lock(&self.shards[index]);
            if let Some(entry) = shard.map.get_mut(&key) {
                if self.is_idle(entry, now) && self.may_drop(entry, now) {
                    // An idle key that comes back to a breaker with nothing
                    // to remember starts with a fresh one, in its place.
                    entry.shared = self.make(&key);
                }
                entry.last_used = now;
                entry.referenced = true;
                // Counted under the lock: no sweep or eviction can drop the
                // breaker between here and the call's end.
                let call = InFlight::new(&entry.activity);
                return Ok((entry.shared.clone(), call));
            }
            if now.saturating_duration_since(shard.last_sweep) >= self.idle {
                self.sweep(&mut shard, now);
            }
            if self.reserve() {
                return Ok(self.insert(&mut shard, key, now));
            }
            // Full: take the place of a breaker of this shard (the count
            // stays as it is) ...
            if self.evict_one(&mut shard, now) {
                Self::compact(&mut shard);
                return Ok(self.insert(&mut shard, key, now));
            }
            // ... or free one in another shard (never holding two shard
            // locks), then try again.
            drop(shard);
            if !self.evict_elsewhere(index, now) {
                return Err(KeyedRegistryFull::new(Some(self.cfg.open.base())));
            }
        }
    }

    fn evict_elsewhere(&self, skip: usize, now: Instant) -> bool {
        for (i, shard) in self.shards.iter().enumerate() {
            if i == skip {
                continue;
            }
            let mut shard = lock(shard);
            if self.evict_one(&mut shard, now) {
                self.len.fetch_sub(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a shard was locked leaves its map valid.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a [`KeyedHandle`] needs from a registry, without its classifier type.
trait KeyedView<K>: Send + Sync {
    fn breakers(&self) -> Vec<(K, Handle)>;
    fn get(&self, key: &K) -> Option<Handle>;
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
}

impl<K, C> KeyedView<K> for Registry<K, C>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
{
    fn breakers(&self) -> Vec<(K, Handle)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in &*self.shards {
            let mut shard = lock(shard);
            self.sweep(&mut shard, now);
            out.extend(
                shard
                    .map
                    .iter()
                    .map(|(k, e)| (k.clone(), Handle::new(e.shared.clone()))),
            );
        }
        out
    }

    fn get(&self, key: &K) -> Option<Handle> {
        let now = Instant::now();
        let shard = lock(&self.shards[self.shard_index(key)]);
        shard
            .map
            .get(key)
            .filter(|e| !(self.is_idle(e, now) && self.may_drop(e, now)))
            .map(|e| Handle::new(e.shared.clone()))
    }

    fn len(&self) -> usize {
        // The shared count, not a sum over the shards: a breaker can move
        // from a shard already summed to one not summed yet, and the sum
        // would then count it twice.
        self.len.load(Ordering::Acquire)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Reads the breakers of a keyed layer: which keys have one and in which
/// state, for health checks and dashboards.
///
/// ```
/// use seawall_circuit_breaker::{CircuitBreakerLayer, State};
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder()
///     .key_capacity(100)
///     .build_keyed(|host: &&'static str| host.to_string())
///     .unwrap();
/// let keys = layer.handle();
/// let mut svc = layer.layer(service_fn(|host: &'static str| async move {
///     Ok::<_, std::convert::Infallible>(host.len())
/// }));
/// svc.ready().await.unwrap().call("a.example").await.unwrap();
/// svc.ready().await.unwrap().call("b.example").await.unwrap();
///
/// let mut states = keys.states();
/// states.sort_by(|a, b| a.0.cmp(&b.0));
/// assert_eq!(states, vec![
///     ("a.example".to_string(), State::Closed),
///     ("b.example".to_string(), State::Closed),
/// ]);
/// keys.get(&"a.example".to_string()).unwrap().force_open();
/// assert!(svc.ready().await.unwrap().call("a.example").await.is_err());
/// # }
/// ```
pub struct KeyedHandle<K> {
    view: Arc<dyn KeyedView<K>>,
}

impl<K> Clone for KeyedHandle<K> {
    fn clone(&self) -> Self {
        Self {
            view: self.view.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("len", &self.view.len())
            .field("capacity", &self.view.capacity())
            .finish()
    }
}

impl<K> KeyedHandle<K> {
    /// Every live key with a handle on its breaker (idle breakers are
    /// evicted first).
    pub fn breakers(&self) -> Vec<(K, Handle)> {
        self.view.breakers()
    }

    /// Every live key with its breaker's state.
    pub fn states(&self) -> Vec<(K, State)> {
        self.view
            .breakers()
            .into_iter()
            .map(|(k, h)| {
                let state = h.state();
                (k, state)
            })
            .collect()
    }

    /// The handle of `key`'s breaker, if it has one.
    pub fn get(&self, key: &K) -> Option<Handle> {
        self.view.get(key)
    }

    /// How many breakers the registry holds (idle ones included until they
    /// are swept).
    pub fn len(&self) -> usize {
        self.view.len()
    }

    /// `true` if the registry holds no breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most breakers the registry keeps.
    pub fn capacity(&self) -> usize {
        self.view.capacity()
    }
}

/// Applies a [`KeyedCircuitBreaker`]: one breaker per request key. Built by
/// [`Builder::build_keyed`](crate::Builder::build_keyed); clones share the
/// registry.
pub struct KeyedCircuitBreakerLayer<K, F, C> {
    registry: Arc<Registry<K, C>>,
    key_fn: F,
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    pub(crate) fn new(registry: Arc<Registry<K, C>>, key_fn: F) -> Self {
        Self { registry, key_fn }
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
{
    /// A handle on the registry of breakers.
    pub fn handle(&self) -> KeyedHandle<K> {
        KeyedHandle {
            view: self.registry.clone(),
        }
    }
}

impl<K, F: Clone, C> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, F, C> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.registry.cfg.name)
            .field("capacity", &self.registry.capacity)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

/// A circuit breaker per request key (host, route, tenant), so one failing
/// dependency behind a shared client does not open the breaker for all.
///
/// Because the key is only known from the request, `poll_ready` is always
/// ready and an admitted call waits for the inner service's readiness inside
/// its response future (on a clone of the inner service, as
/// `ServiceExt::oneshot` does); a rejected call never touches it.
pub struct KeyedCircuitBreaker<S, K, F, C> {
    inner: S,
    registry: Arc<Registry<K, C>>,
    key_fn: F,
}

impl<S: Clone, K, F: Clone, C> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.registry.cfg.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + fmt::Debug,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<Oneshot<S, Req>, C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (shared, in_flight) = match self.registry.get((self.key_fn)(&req)) {
            Ok(got) => got,
            Err(full) => return ResponseFuture::refused(full),
        };
        match shared.breaker.admit() {
            Ok((word, probe_at)) => {
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                let ticket = shared.breaker.ticket(word, probe_at);
                // Counted, never leaked: the registry must be able to free
                // an evicted key's breaker once its calls are done.
                let permit = Permit::new(SharedState::from(shared), ticket).in_flight(in_flight);
                ResponseFuture::called(Oneshot::new(inner, req), permit)
            }
            Err(open) => ResponseFuture::rejected(open.retry_after_hint()),
        }
    }
}
