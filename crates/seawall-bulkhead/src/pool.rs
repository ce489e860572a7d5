//! The engine: a pool of permits shared by every service that uses it.
//!
//! The happy path is lock-free: when nobody waits, a permit is one
//! compare-and-swap and its release one `fetch_sub`. The wait queue,
//! priority admission and adaptive limits live behind mutexes that are only
//! taken when someone waits, when a limit is adaptive, or when a request is
//! refused.
//!
//! The in-flight and queued counts share one atomic word. That rules out
//! lost wake-ups without any ordering argument across two locations: a
//! would-be waiter registers with a compare-and-swap that only succeeds if
//! the in-flight count it judged "full" is still current, and a releaser's
//! `fetch_sub` returns the queued count of the very same instant, so either
//! the waiter sees the freed permit and takes it, or the releaser sees the
//! waiter and hands the permit over (under the queue lock).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::time::Duration;

use seawall_core::{ConfigError, Listener, Outcome, SharedState};
use tokio::time::{Instant, Sleep};

use crate::error::{BulkheadFull, BulkheadTimeout, Refusal};
use crate::event::{BulkheadEvent, RejectReason, Sink};
use crate::limit::{AdaptiveLimit, Sample, LAYER};
use crate::priority::Priority;
use crate::queue::{Slot, WaitQueue};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

pub(crate) struct Shared {
    name: std::sync::Arc<str>,
    /// In-flight permits (low 32 bits) and queued requests (high 32 bits).
    state: AtomicU64,
    limit: AtomicUsize,
    max_queue: usize,
    max_wait: Option<Duration>,
    /// Per-mille shares of the limit open to normal and sheddable work.
    normal_share: usize,
    sheddable_share: usize,
    retry_after: Option<Duration>,
    queue: Mutex<WaitQueue>,
    limiter: Option<Mutex<Box<dyn AdaptiveLimit>>>,
    sink: Sink,
    rejected_full: AtomicU64,
    rejected_shed: AtomicU64,
    rejected_timeout: AtomicU64,
}

/// Outcome of asking for a permit.
pub(crate) enum Acquire {
    Acquired(Permit),
    Queued(Waiter),
    Refused(RejectReason),
}

/// How long the queue may be for this request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueBound {
    /// `max_queue`, with eviction of less important waiters.
    Configured,
    /// No bound: the caller's own buffer bounds it (backpressure mode).
    Unbounded,
}

/// One queued request in `Shared::state`.
const QUEUED_ONE: u64 = 1 << 32;

/// The largest limit (and queue length) the state word can count.
pub(crate) const MAX_LIMIT: usize = (1 << 31) - 1;

/// The longest duration a setting of this crate keeps: 365 days. Longer
/// ones, up to `Duration::MAX`, are clamped to it, so that no deadline or
/// window end computed from them can overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The longest `Retry-After` hint a refusal carries: one day, the bound
/// seawall puts on every hint it sends (`seawall_core::hint::MAX_HINT`).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

#[inline]
fn in_flight_of(state: u64) -> usize {
    (state & (QUEUED_ONE - 1)) as usize
}

#[inline]
fn queued_of(state: u64) -> usize {
    (state >> 32) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks calls user code that could panic halfway, so
    // a poisoned lock still holds consistent state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    #[inline]
    fn cap(&self, class: Priority, limit: usize) -> usize {
        let share = match class {
            Priority::Critical => return limit,
            Priority::Normal => self.normal_share,
            Priority::Sheddable => self.sheddable_share,
        };
        // A class is admitted while utilisation is below its share:
        // in_flight < limit × share ⇔ in_flight < ceil(limit × share).
        // In u64: `limit × 1000` may not fit a 32-bit usize.
        ((limit as u64 * share as u64).div_ceil(1000)) as usize
    }

    #[inline]
    pub(crate) fn is_adaptive(&self) -> bool {
        self.limiter.is_some()
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub(crate) fn name(&self) -> &std::sync::Arc<str> {
        &self.name
    }

    /// Takes a permit for `class` if one is free and nobody waits; returns
    /// the in-flight count before it.
    #[inline]
    fn try_fast(&self, class: Priority) -> Option<usize> {
        let cap = self.cap(class, self.limit.load(Ordering::Acquire));
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            // Waiters go first: a newcomer never overtakes the queue.
            if queued_of(current) != 0 || in_flight_of(current) >= cap {
                return None;
            }
            match self.state.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(in_flight_of(current)),
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        in_flight_of(self.state.load(Ordering::Acquire))
    }

    /// A permit without waiting, or `None`.
    #[inline]
    pub(crate) fn try_acquire(this: &SharedState<Self>, class: Priority) -> Option<Permit> {
        this.try_fast(class).map(|n| Permit::new(this.clone(), n))
    }

    #[inline]
    pub(crate) fn acquire(this: &SharedState<Self>, class: Priority, bound: QueueBound) -> Acquire {
        match this.try_fast(class) {
            Some(n) => Acquire::Acquired(Permit::new(this.clone(), n)),
            None => Self::acquire_slow(this, class, bound),
        }
    }

    #[cold]
    fn acquire_slow(this: &SharedState<Self>, class: Priority, bound: QueueBound) -> Acquire {
        let mut queue = lock(&this.queue);
        let max = match bound {
            QueueBound::Configured => this.max_queue,
            QueueBound::Unbounded => MAX_LIMIT,
        };
        let may_wait = max > 0 && this.max_wait.is_none_or(|w| !w.is_zero());
        let mut current = this.state.load(Ordering::Acquire);
        loop {
            let limit = this.limit.load(Ordering::Acquire);
            let in_flight = in_flight_of(current);
            if !queue.has_waiting_at_or_above(class) && in_flight < this.cap(class, limit) {
                match this.state.compare_exchange_weak(
                    current,
                    current + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Acquire::Acquired(Permit::new(this.clone(), in_flight)),
                    Err(actual) => {
                        current = actual;
                        continue;
                    }
                }
            }
            let refuse = |queue_full: bool| {
                // Free permits the class may not use: shed. None at all, or
                // a full queue: full.
                Acquire::Refused(if in_flight < limit && !queue_full {
                    RejectReason::Shed
                } else {
                    RejectReason::Full
                })
            };
            if !may_wait {
                return refuse(false);
            }
            if queue.len() >= max {
                // A full queue: take the place of a less important waiter,
                // whose count we inherit, or give up.
                if queue.evict_below(class) {
                    break;
                }
                return refuse(true);
            }
            // Registers only if the count judged full above is still
            // current; a permit freed meanwhile makes this fail and retry.
            match this.state.compare_exchange_weak(
                current,
                current + QUEUED_ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        let key = queue.push(class);
        drop(queue);
        let mut waiter = Waiter {
            shared: this.clone(),
            key,
            sleep: None,
            done: false,
        };
        // The timer is armed once the waiter owns its place: should it panic
        // (no Tokio timer), unwinding drops the waiter, which leaves the
        // queue instead of leaking its place.
        if let Some(wait) = this.max_wait {
            waiter.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        Acquire::Queued(waiter)
    }

    /// Gives a permit back and hands it on to a waiter if one can use it.
    #[inline]
    fn release(&self) {
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        if queued_of(before) != 0 {
            self.dispatch();
        }
    }

    /// Hands free permits to waiters, most important class first.
    #[cold]
    fn dispatch(&self) {
        let mut queue = lock(&self.queue);
        let mut current = self.state.load(Ordering::Acquire);
        while let Some(class) = queue.highest() {
            // Less important classes have smaller caps: if the head class
            // cannot start, nobody behind it can.
            let in_flight = in_flight_of(current);
            if in_flight >= self.cap(class, self.limit.load(Ordering::Acquire)) {
                break;
            }
            // One waiter moves from queued to in flight, atomically.
            let next = current + 1 - QUEUED_ONE;
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    queue.grant_front(class, in_flight);
                    current = next;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// A waiter left the queue without a permit.
    fn unqueue(&self) {
        self.state.fetch_sub(QUEUED_ONE, Ordering::AcqRel);
    }

    fn sample(&self, rtt: Duration, in_flight: usize, dropped: bool) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let (from, to) = {
            let mut limiter = lock(limiter);
            let to = limiter
                .update(&Sample::new(rtt, in_flight, dropped))
                .clamp(1, MAX_LIMIT);
            // Stored under the limiter lock so concurrent updates publish
            // their limits in the order they computed them.
            (self.limit.swap(to, Ordering::AcqRel), to)
        };
        if from != to {
            // Lock-free check, unlike `set_max_concurrent`: a waiter missed
            // here is still dispatched by the release of the sampled call's
            // permit, which the caller holds until after this returns.
            if to > from && queued_of(self.state.load(Ordering::Acquire)) != 0 {
                self.dispatch();
            }
            self.sink.emit(|| BulkheadEvent::LimitChanged {
                pool: self.name.clone(),
                from,
                to,
            });
        }
    }

    /// Counts a refusal, reports it, and builds its error.
    #[cold]
    pub(crate) fn refuse(&self, reason: RejectReason, priority: Option<Priority>) -> Refusal {
        let counter = match reason {
            RejectReason::Full => &self.rejected_full,
            RejectReason::Shed => &self.rejected_shed,
            RejectReason::Timeout => &self.rejected_timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.sink.emit(|| BulkheadEvent::Rejected {
            pool: self.name.clone(),
            reason,
            priority,
            in_flight: self.in_flight(),
            limit: self.limit(),
        });
        match reason {
            RejectReason::Full => {
                Refusal::Full(BulkheadFull::new(self.retry_after, priority, false))
            }
            RejectReason::Shed => {
                Refusal::Full(BulkheadFull::new(self.retry_after, priority, true))
            }
            RejectReason::Timeout => {
                Refusal::Timeout(BulkheadTimeout::new(self.retry_after, priority))
            }
        }
    }

    /// `true` if a request of `class` holding a permit taken when `before`
    /// permits were in use went past its class's share.
    pub(crate) fn over_share(&self, class: Priority, before: usize) -> bool {
        before >= self.cap(class, self.limit())
    }
}

/// A held permit; given back when dropped, however the call ends.
///
/// Kept to a handle on the pool and a count (three words): it moves through
/// `poll_ready`, `call` and the response future on every request. Taking it
/// clones the handle, which costs a reference-count increment (and its drop
/// a decrement) unless the pool was leaked, when it is a copied reference.
pub(crate) struct Permit {
    shared: SharedState<Shared>,
    before: usize,
}

impl Permit {
    #[inline]
    fn new(shared: SharedState<Shared>, before: usize) -> Self {
        Self { shared, before }
    }

    /// Permits in use when this one was taken.
    pub(crate) fn before(&self) -> usize {
        self.before
    }

    /// Feeds a call that started at `started` and ended with `outcome` to
    /// the adaptive limit, if any.
    pub(crate) fn record(&self, started: Instant, outcome: Outcome) {
        let dropped = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignore => return,
        };
        self.shared
            .sample(started.elapsed(), self.before + 1, dropped);
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("pool", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// A place in the wait queue. Dropping it leaves the queue, and gives back a
/// permit that was handed over but not yet collected.
pub(crate) struct Waiter {
    shared: SharedState<Shared>,
    key: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Waiter {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Permit, RejectReason>> {
        if self.done {
            // Polled again after completing: behave like a refused request
            // rather than panicking.
            return Poll::Ready(Err(RejectReason::Full));
        }
        {
            let mut queue = lock(&self.shared.queue);
            if let Slot::Waiting { waker, .. } = queue.slot_mut(self.key) {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            } else {
                self.done = true;
                return Poll::Ready(Self::finish(&self.shared, self.key, &mut queue));
            }
        }
        if let Some(sleep) = &mut self.sleep {
            if sleep.as_mut().poll(cx).is_ready() {
                let mut queue = lock(&self.shared.queue);
                self.done = true;
                // Granted (or evicted) just before the deadline: that verdict
                // stands.
                let result = if let Slot::Waiting { .. } = queue.slot_mut(self.key) {
                    queue.remove(self.key);
                    self.shared.unqueue();
                    Err(RejectReason::Timeout)
                } else {
                    Self::finish(&self.shared, self.key, &mut queue)
                };
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    }

    /// Collects the verdict of a slot that is no longer waiting.
    fn finish(
        shared: &SharedState<Shared>,
        key: usize,
        queue: &mut WaitQueue,
    ) -> Result<Permit, RejectReason> {
        match queue.remove(key) {
            Slot::Granted { in_flight } => Ok(Permit::new(shared.clone(), in_flight)),
            // Evicted by a more important request.
            Slot::Evicted => Err(RejectReason::Shed),
            Slot::Waiting { .. } | Slot::Vacant => Err(RejectReason::Full),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let slot = {
            let mut queue = lock(&self.shared.queue);
            let slot = queue.remove(self.key);
            if matches!(slot, Slot::Waiting { .. }) {
                self.shared.unqueue();
            }
            slot
        };
        // Outside the lock: releasing may take it again to hand the permit on.
        if let Slot::Granted { .. } = slot {
            self.shared.release();
        }
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("pool", &self.shared.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A pool of permits: the capacity one dependency gets.
///
/// Every [`BulkheadLayer`](crate::BulkheadLayer) built from the same pool
/// (or a clone of it) draws from the same permits, so several routes or
/// clients can share one bulkhead. Separate pools are separate bulkheads.
///
/// ```
/// use seawall_bulkhead::{BulkheadLayer, Pool};
///
/// let db = Pool::builder().name("db").max_concurrent(8).build().unwrap();
/// let users = BulkheadLayer::new(db.clone());
/// let orders = BulkheadLayer::new(db.clone());
/// // Both layers take permits from the same eight.
/// assert_eq!(users.handle().limit(), 8);
/// assert_eq!(orders.handle().name(), "db");
/// ```
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: SharedState<Shared>,
}

impl Pool {
    /// A builder with the defaults: 25 permits, no queue, 1 s `max_wait`
    /// once a queue is set, shares of 95% (normal) and 80% (sheddable), and
    /// a 1 s `Retry-After`.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// A read-only view of the pool's state.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The pool's name, used in events.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// This pool, reached through a plain `&'static` reference from now on;
    /// see [`BulkheadLayer::leak`](crate::BulkheadLayer::leak).
    pub(crate) fn leak(self) -> Self {
        Self {
            shared: self.shared.leak(),
        }
    }

    /// Changes a fixed limit at run time, e.g. from a configuration reload.
    ///
    /// A higher limit admits waiting requests at once; a lower one lets the
    /// calls in flight finish and admits no more until use falls below it.
    /// An adaptive limit moves by itself and cannot be set: that is a
    /// [`ConfigError`].
    pub fn set_max_concurrent(&self, n: usize) -> Result<(), ConfigError> {
        if self.shared.is_adaptive() {
            return Err(ConfigError::new(
                LAYER,
                "max_concurrent",
                "cannot be set on a pool with an adaptive limit",
            ));
        }
        if !(1..=MAX_LIMIT).contains(&n) {
            return Err(ConfigError::new(
                LAYER,
                "max_concurrent",
                format!("must be in [1, {MAX_LIMIT}], got {n}"),
            ));
        }
        let from = self.shared.limit.swap(n, Ordering::AcqRel);
        if n > from {
            // Not only when the state word shows waiters: a request may be
            // queueing right now on the old limit, and nothing else would
            // wake it while the calls in flight run on. Under the queue lock
            // it has either registered (and is dispatched here) or has not
            // yet read the limit (and sees the new one).
            self.shared.dispatch();
        }
        if n != from {
            self.shared.sink.emit(|| BulkheadEvent::LimitChanged {
                pool: self.shared.name.clone(),
                from,
                to: n,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("limit", &self.shared.limit())
            .finish_non_exhaustive()
    }
}

/// Reads a pool's state: in-flight calls, queued calls, the current limit
/// and refusals, for health checks and metrics.
#[derive(Clone)]
pub struct Handle {
    shared: SharedState<Shared>,
}

impl Handle {
    /// The pool's name, used in events.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Permits in use.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Requests waiting for a permit.
    pub fn queued(&self) -> usize {
        queued_of(self.shared.state.load(Ordering::Acquire))
    }

    /// The current limit (fixed, or the adaptive limit's latest value).
    pub fn limit(&self) -> usize {
        self.shared.limit()
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.in_flight())
    }

    /// Requests refused because every permit was taken and the queue was
    /// full.
    pub fn rejected_full(&self) -> u64 {
        self.shared.rejected_full.load(Ordering::Relaxed)
    }

    /// Requests refused because their priority class had used its share, or
    /// evicted from the queue by more important work.
    pub fn rejected_shed(&self) -> u64 {
        self.shared.rejected_shed.load(Ordering::Relaxed)
    }

    /// Requests that waited `max_wait` without a permit.
    pub fn rejected_timeout(&self) -> u64 {
        self.shared.rejected_timeout.load(Ordering::Relaxed)
    }

    /// All refusals.
    pub fn rejected(&self) -> u64 {
        self.rejected_full() + self.rejected_shed() + self.rejected_timeout()
    }

    /// `true` if both handles observe the same pool.
    pub fn same_pool(&self, other: &Handle) -> bool {
        std::ptr::eq(&raw const *self.shared, &raw const *other.shared)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.shared.name)
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit())
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Pool`].
#[must_use]
pub struct PoolBuilder {
    name: std::sync::Arc<str>,
    max_concurrent: usize,
    adaptive: Option<Box<dyn AdaptiveLimit>>,
    max_queue: usize,
    max_wait: Option<Duration>,
    normal_share: f64,
    sheddable_share: f64,
    retry_after: Option<Duration>,
    sink: Sink,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self {
            name: std::sync::Arc::from("bulkhead"),
            max_concurrent: 25,
            adaptive: None,
            max_queue: 0,
            max_wait: Some(Duration::from_secs(1)),
            normal_share: 0.95,
            sheddable_share: 0.8,
            retry_after: Some(Duration::from_secs(1)),
            sink: Sink::NONE,
        }
    }
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("adaptive", &self.adaptive)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    pub(crate) fn configured_name(&self) -> &std::sync::Arc<str> {
        &self.name
    }

    /// The name used in events (default `"bulkhead"`).
    pub fn name(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// A fixed limit of `n` concurrent calls (default 25).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self.adaptive = None;
        self
    }

    /// An adaptive limit instead of a fixed one; see [`limit`](crate::limit).
    pub fn adaptive(mut self, limit: impl AdaptiveLimit) -> Self {
        self.adaptive = Some(Box::new(limit));
        self
    }

    /// How many requests may wait for a permit (default 0: refuse at once
    /// when every permit is taken). When the queue is full, a request evicts
    /// the newest waiter of a less important class, if there is one.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// How long a request may wait in the queue (default 1 s). `None` waits
    /// until a permit frees, bounded only by the queue length. The wait uses
    /// Tokio's timer, so queued requests need a runtime with time enabled.
    /// A wait longer than 365 days is clamped to 365 days.
    pub fn max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.max_wait = wait.into().map(|wait| wait.min(MAX_DURATION));
        self
    }

    /// Normal work is refused once this share of the limit is in use, in
    /// `(0, 1]` (default 0.95). Only applies when requests are prioritised.
    pub fn normal_share(mut self, share: f64) -> Self {
        self.normal_share = share;
        self
    }

    /// Sheddable work is refused once this share of the limit is in use, in
    /// `(0, 1]` and at most the normal share (default 0.8). Only applies when
    /// requests are prioritised.
    pub fn sheddable_share(mut self, share: f64) -> Self {
        self.sheddable_share = share;
        self
    }

    /// The `Retry-After` hint of refusals (default 1 s; `None` or zero for
    /// no hint). A hint longer than one day is clamped to one day, so that
    /// whoever turns it into a header or a deadline cannot overflow:
    /// `retry_after(Duration::MAX)` refuses with a one-day hint.
    pub fn retry_after(mut self, after: impl Into<Option<Duration>>) -> Self {
        self.retry_after = after.into().map(|after| after.min(MAX_RETRY_AFTER));
        self
    }

    /// Receives the pool's [`BulkheadEvent`]s. A disabled listener (the
    /// default `NoopListener`) costs nothing: no event is built.
    pub fn listener<L: Listener<BulkheadEvent>>(mut self, listener: L) -> Self {
        self.sink = Sink::new(listener);
        self
    }

    /// Validates the settings and builds the pool.
    pub fn build(self) -> Result<Pool, ConfigError> {
        if self.adaptive.is_none() && !(1..=MAX_LIMIT).contains(&self.max_concurrent) {
            return Err(ConfigError::new(
                LAYER,
                "max_concurrent",
                format!("must be in [1, {MAX_LIMIT}], got {}", self.max_concurrent),
            ));
        }
        if self.max_queue > MAX_LIMIT {
            return Err(ConfigError::new(
                LAYER,
                "max_queue",
                format!("must be at most {MAX_LIMIT}, got {}", self.max_queue),
            ));
        }
        let share = |field, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok((v * 1000.0).round().max(1.0) as usize)
            } else {
                Err(ConfigError::new(
                    LAYER,
                    field,
                    format!("must be in (0, 1], got {v}"),
                ))
            }
        };
        let normal_share = share("normal_share", self.normal_share)?;
        let sheddable_share = share("sheddable_share", self.sheddable_share)?;
        if sheddable_share > normal_share {
            return Err(ConfigError::new(
                LAYER,
                "sheddable_share",
                format!(
                    "must not exceed normal_share ({}), got {}",
                    self.normal_share, self.sheddable_share
                ),
            ));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new(LAYER, "name", "must not be empty"));
        }
        let limit = match &self.adaptive {
            Some(a) => a.limit().clamp(1, MAX_LIMIT),
            None => self.max_concurrent,
        };
        let retry_after = self.retry_after.filter(|d| !d.is_zero());
        Ok(Pool {
            shared: SharedState::new(Shared {
                name: self.name,
                state: AtomicU64::new(0),
                limit: AtomicUsize::new(limit),
                max_queue: self.max_queue,
                max_wait: self.max_wait,
                normal_share,
                sheddable_share,
                retry_after,
                queue: Mutex::new(WaitQueue::default()),
                limiter: self.adaptive.map(Mutex::new),
                sink: self.sink,
                rejected_full: AtomicU64::new(0),
                rejected_shed: AtomicU64::new(0),
                rejected_timeout: AtomicU64::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(limit: usize, queue: usize) -> SharedState<Shared> {
        Pool::builder()
            .max_concurrent(limit)
            .max_queue(queue)
            .max_wait(None)
            .build()
            .unwrap()
            .shared
    }

    #[test]
    fn class_caps_follow_shares() {
        let p = pool(10, 0);
        assert_eq!(p.cap(Priority::Critical, 10), 10);
        assert_eq!(p.cap(Priority::Normal, 10), 10, "ceil(9.5)");
        assert_eq!(p.cap(Priority::Sheddable, 10), 8);
        assert_eq!(
            p.cap(Priority::Sheddable, 1),
            1,
            "an idle pool admits anyone"
        );
        assert_eq!(p.cap(Priority::Normal, 100), 95);
        assert_eq!(p.cap(Priority::Sheddable, 100), 80);
    }

    #[test]
    fn permits_come_back_on_drop_and_fast_path_refuses_when_full() {
        let p = pool(2, 0);
        let a = Shared::try_acquire(&p, Priority::Critical).unwrap();
        let b = Shared::try_acquire(&p, Priority::Critical).unwrap();
        assert_eq!((a.before(), b.before()), (0, 1));
        assert!(Shared::try_acquire(&p, Priority::Critical).is_none());
        assert!(matches!(
            Shared::acquire(&p, Priority::Critical, QueueBound::Configured),
            Acquire::Refused(RejectReason::Full)
        ));
        drop(a);
        assert_eq!(p.in_flight(), 1);
        drop(b);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn a_leaked_pool_hands_out_plain_references_to_itself() {
        let counted = Pool::builder()
            .max_concurrent(1)
            .max_queue(1)
            .max_wait(None)
            .build()
            .unwrap();
        let before = counted.handle();
        let leaked = counted.leak();
        assert!(leaked.shared.is_static());
        assert!(leaked.clone().handle().shared.is_static());
        assert!(!before.shared.is_static(), "earlier handles keep counting");
        assert!(leaked.handle().same_pool(&before));

        // Permits and waiters, however they are obtained, copy the reference.
        let held = Shared::try_acquire(&leaked.shared, Priority::Critical).unwrap();
        assert!(held.shared.is_static());
        let Acquire::Queued(mut waiter) =
            Shared::acquire(&leaked.shared, Priority::Critical, QueueBound::Configured)
        else {
            panic!("one permit, held: the second request queues");
        };
        assert!(waiter.shared.is_static());
        assert_eq!(before.queued(), 1);
        drop(held);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(handed_over)) = waiter.poll(&mut cx) else {
            panic!("the released permit goes to the waiter");
        };
        assert!(handed_over.shared.is_static());
        assert_eq!((before.in_flight(), before.queued()), (1, 0));
        drop(handed_over);
        assert_eq!(before.in_flight(), 0);
    }

    #[test]
    fn rejects_bad_settings() {
        let field = |b: PoolBuilder| b.build().unwrap_err().field();
        assert_eq!(field(Pool::builder().max_concurrent(0)), "max_concurrent");
        assert_eq!(field(Pool::builder().normal_share(0.0)), "normal_share");
        assert_eq!(
            field(Pool::builder().normal_share(f64::NAN)),
            "normal_share"
        );
        assert_eq!(
            field(Pool::builder().sheddable_share(1.5)),
            "sheddable_share"
        );
        assert_eq!(
            field(Pool::builder().normal_share(0.5).sheddable_share(0.6)),
            "sheddable_share"
        );
        assert_eq!(field(Pool::builder().name("")), "name");
    }
}

/// Run with `RUSTFLAGS="--cfg loom" cargo test -p seawall-bulkhead --lib --release loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;
    use std::future::poll_fn;

    fn pool(limit: usize) -> SharedState<Shared> {
        Pool::builder()
            .max_concurrent(limit)
            .max_queue(8)
            .max_wait(None)
            .build()
            .unwrap()
            .shared
    }

    /// A permit, waiting for it if needed; loom reports a deadlock if the
    /// wake-up is lost.
    fn take(p: &SharedState<Shared>) -> Permit {
        match Shared::acquire(p, Priority::Critical, QueueBound::Configured) {
            Acquire::Acquired(permit) => permit,
            Acquire::Queued(mut waiter) => {
                loom::future::block_on(poll_fn(|cx| waiter.poll(cx))).expect("granted")
            }
            Acquire::Refused(reason) => panic!("refused: {reason}"),
        }
    }

    fn assert_idle(p: &Shared) {
        assert_eq!(p.in_flight(), 0);
        assert_eq!(queued_of(p.state.load(Ordering::SeqCst)), 0);
        assert_eq!(lock(&p.queue).len(), 0);
    }

    #[test]
    fn loom_a_release_racing_a_new_waiter_is_never_lost() {
        loom::model(|| {
            let p = pool(1);
            let held = take(&p);
            let t = thread::spawn(move || drop(held));
            drop(take(&p));
            t.join().unwrap();
            assert_idle(&p);
        });
    }

    #[test]
    fn loom_a_waiter_giving_up_while_granted_passes_the_permit_on() {
        loom::model(|| {
            let p = pool(1);
            let held = take(&p);
            let t = thread::spawn(move || drop(held));
            match Shared::acquire(&p, Priority::Critical, QueueBound::Configured) {
                Acquire::Queued(waiter) => drop(waiter),
                Acquire::Acquired(permit) => drop(permit),
                Acquire::Refused(reason) => panic!("refused: {reason}"),
            }
            t.join().unwrap();
            assert_idle(&p);
        });
    }

    #[test]
    fn loom_two_contenders_share_one_permit() {
        loom::model(|| {
            let p = pool(1);
            let held = take(&p);
            let other = p.clone();
            let t = thread::spawn(move || {
                let permit = take(&other);
                assert_eq!(other.in_flight(), 1);
                drop(permit);
            });
            drop(held);
            let permit = take(&p);
            assert_eq!(p.in_flight(), 1);
            drop(permit);
            t.join().unwrap();
            assert_idle(&p);
        });
    }

    #[test]
    fn loom_a_raised_limit_admits_a_waiter_queueing_meanwhile() {
        loom::model(|| {
            let p = pool(1);
            let held = take(&p);
            let pool = Pool { shared: p.clone() };
            let t = thread::spawn(move || pool.set_max_concurrent(2).unwrap());
            // `held` is only given back afterwards: the second permit must
            // come from the raised limit, or this waits forever.
            let second = take(&p);
            assert_eq!(p.in_flight(), 2);
            t.join().unwrap();
            drop((held, second));
            assert_idle(&p);
        });
    }
}
