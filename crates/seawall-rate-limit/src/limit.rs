//! Limits and the one decision they make together.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, RwLockWriteGuard};

use seawall_core::ConfigError;

use crate::gcra::{Gcra, Verdict};
use crate::key::RateKey;
use crate::registry::{Bounds, Registry, Shard, Slot};
use crate::Quota;

/// How a limit finds a request's key.
///
/// Implemented for every `Fn(&Req) -> K` and for [`Global`].
pub trait KeyFn<Req>: Send + Sync + 'static {
    /// The key type.
    type Key: RateKey;

    /// The key of `req`.
    fn key(&self, req: &Req) -> Self::Key;
}

impl<Req, K, F> KeyFn<Req> for F
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    K: RateKey,
{
    type Key = K;

    #[inline]
    fn key(&self, req: &Req) -> K {
        self(req)
    }
}

/// The constant key of a global limit: every request shares one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Global;

impl<Req> KeyFn<Req> for Global {
    type Key = ();

    #[inline]
    fn key(&self, _req: &Req) {}
}

/// One limit: a name, a [`Quota`] and a key function.
///
/// The name labels the limit in the `RateLimit` fields, in events and in
/// Redis keys; it must be a short token (letters, digits, `_ - .`).
///
/// ```
/// use http::Request;
/// use seawall_rate_limit::{key, Limit, Quota};
///
/// // Per client IP, 10 a second with bursts of 20.
/// let per_ip = Limit::per_key("ip", Quota::per_second(10).burst(20), key::peer_ip::<()>);
/// // Everyone together, 1,000 an hour.
/// let global = Limit::global("all", Quota::per_hour(1000));
/// # let _ = (per_ip, global);
/// ```
pub struct Limit<K, F> {
    name: Arc<str>,
    quota: Quota,
    key_fn: F,
    _key: PhantomData<fn() -> K>,
}

impl<K, F: Clone> Clone for Limit<K, F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            quota: self.quota,
            key_fn: self.key_fn.clone(),
            _key: PhantomData,
        }
    }
}

impl<K, F> fmt::Debug for Limit<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl<K: RateKey, F> Limit<K, F> {
    /// A limit with one bucket per key that `key_fn` returns.
    pub fn per_key<Req>(name: impl Into<Arc<str>>, quota: Quota, key_fn: F) -> Self
    where
        F: Fn(&Req) -> K,
    {
        Self {
            name: name.into(),
            quota,
            key_fn,
            _key: PhantomData,
        }
    }
}

impl Limit<(), Global> {
    /// A limit shared by every request.
    pub fn global(name: impl Into<Arc<str>>, quota: Quota) -> Self {
        Self {
            name: name.into(),
            quota,
            key_fn: Global,
            _key: PhantomData,
        }
    }
}

impl<K, F> Limit<K, F> {
    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit's quota.
    pub const fn quota(&self) -> Quota {
        self.quota
    }
}

/// Settings every limit of a layer is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuildSettings {
    pub(crate) bounds: Bounds,
    /// Replicas sharing a fleet-wide limit: the local fallback's rate is
    /// divided by it. `None` when there is no fallback.
    pub(crate) fallback_replicas: Option<u64>,
}

/// One built limit.
pub struct BuiltLimit<K, F> {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    pub(crate) gcra: Gcra,
    pub(crate) key_fn: F,
    pub(crate) registry: Registry<K>,
    /// The local limit used while Redis cannot answer.
    pub(crate) fallback: Option<(Gcra, Registry<K>)>,
}

impl<K, F> fmt::Debug for BuiltLimit<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltLimit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

/// The limits a layer is built from: a [`Limit`], or a pair of limit sets
/// (the builder nests pairs as limits are added).
///
/// This trait is sealed; its methods are the layer's internals.
pub trait LimitSet: sealed::Sealed {
    /// The built form.
    type Built: Send + Sync + 'static;

    #[doc(hidden)]
    fn count(&self) -> usize;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn build_set(self, settings: &BuildSettings) -> Result<Self::Built, ConfigError>;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn describe(built: &Self::Built, f: &mut dyn FnMut(&Arc<str>, Quota, Gcra));
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<K, F> Sealed for super::Limit<K, F> {}
    impl<A, B> Sealed for (A, B) {}
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "rate limit",
            "limit name",
            format!("must be 1 to 64 letters, digits, '_', '-' or '.', got {name:?}"),
        ))
    }
}

impl LimitSet for () {
    type Built = ();

    fn count(&self) -> usize {
        0
    }

    #[allow(private_interfaces)]
    fn build_set(self, _settings: &BuildSettings) -> Result<(), ConfigError> {
        Ok(())
    }

    #[allow(private_interfaces)]
    fn describe(_built: &(), _f: &mut dyn FnMut(&Arc<str>, Quota, Gcra)) {}
}

impl<K: RateKey, F: Send + Sync + 'static> LimitSet for Limit<K, F> {
    type Built = BuiltLimit<K, F>;

    fn count(&self) -> usize {
        1
    }

    #[allow(private_interfaces)]
    fn build_set(self, settings: &BuildSettings) -> Result<Self::Built, ConfigError> {
        validate_name(&self.name)?;
        let gcra = self.quota.validate("quota")?;
        let global = std::any::TypeId::of::<K>() == std::any::TypeId::of::<()>();
        let registry = || {
            if global {
                Registry::single()
            } else {
                Registry::new(settings.bounds)
            }
        };
        let fallback = match settings.fallback_replicas {
            Some(replicas) => {
                // rate / replicas, over the same period: the same quota with
                // the period multiplied keeps integer rates exact.
                let period = self
                    .quota
                    .period()
                    .checked_mul(u32::try_from(replicas).unwrap_or(u32::MAX))
                    .ok_or_else(|| {
                        ConfigError::new("rate limit", "replicas", "too many for the period")
                    })?;
                let burst = self.quota.burst_size().div_ceil(replicas).max(1);
                let local = Quota::new(self.quota.rate(), period)
                    .burst(burst)
                    .validate("replicas")?;
                Some((local, registry()))
            }
            None => None,
        };
        Ok(BuiltLimit {
            name: self.name,
            quota: self.quota,
            gcra,
            key_fn: self.key_fn,
            registry: registry(),
            fallback,
        })
    }

    #[allow(private_interfaces)]
    fn describe(built: &Self::Built, f: &mut dyn FnMut(&Arc<str>, Quota, Gcra)) {
        f(&built.name, built.quota, built.gcra);
    }
}

impl<A: LimitSet, B: LimitSet> LimitSet for (A, B) {
    type Built = (A::Built, B::Built);

    fn count(&self) -> usize {
        self.0.count() + self.1.count()
    }

    #[allow(private_interfaces)]
    fn build_set(self, settings: &BuildSettings) -> Result<Self::Built, ConfigError> {
        Ok((self.0.build_set(settings)?, self.1.build_set(settings)?))
    }

    #[allow(private_interfaces)]
    fn describe(built: &Self::Built, f: &mut dyn FnMut(&Arc<str>, Quota, Gcra)) {
        A::describe(&built.0, f);
        B::describe(&built.1, f);
    }
}

/// One limit's key, locked for a decision.
pub struct KeyGuard<'a, K> {
    shard: RwLockWriteGuard<'a, Shard<K>>,
    slot: Slot,
}

impl<K> fmt::Debug for KeyGuard<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyGuard")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// What a decision needs from each limit, and what it reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitView<'a> {
    pub(crate) name: &'a Arc<str>,
    pub(crate) gcra: Gcra,
    pub(crate) tat: u64,
}

/// The built limits of a layer, deciding together for requests of type
/// `Req`. Sealed.
pub trait Decide<Req>: Send + Sync + 'static {
    #[doc(hidden)]
    type Guard<'a>
    where
        Self: 'a;

    /// How many limits decide.
    #[doc(hidden)]
    const LIMITS: usize;

    /// The whole decision. One limit moves its key's TAT with a
    /// compare-and-swap under its shard's shared lock; several lock every
    /// key exclusively ([`decide_locked`]).
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn decide(
        &self,
        req: &Req,
        now: u64,
        cost: u64,
        fallback: bool,
        report: Option<&mut dyn FnMut(LimitView<'_>)>,
    ) -> Decision;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn lock<'a>(&'a self, req: &Req, now: u64, fallback: bool) -> Self::Guard<'a>;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn visit(
        &self,
        guard: &mut Self::Guard<'_>,
        fallback: bool,
        f: &mut dyn FnMut(LimitView<'_>) -> Option<u64>,
    );

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn redis_keys(&self, req: &Req, max_key_bytes: usize, out: &mut Vec<Vec<u8>>);
}

impl<Req> Decide<Req> for () {
    type Guard<'a> = ();

    const LIMITS: usize = 0;

    #[allow(private_interfaces)]
    fn decide(
        &self,
        _req: &Req,
        _now: u64,
        _cost: u64,
        _fallback: bool,
        _report: Option<&mut dyn FnMut(LimitView<'_>)>,
    ) -> Decision {
        // No limit refuses.
        Decision::Admit
    }

    #[allow(private_interfaces)]
    fn lock(&self, _req: &Req, _now: u64, _fallback: bool) {}

    #[allow(private_interfaces)]
    fn visit(
        &self,
        _guard: &mut (),
        _fallback: bool,
        _f: &mut dyn FnMut(LimitView<'_>) -> Option<u64>,
    ) {
    }

    #[allow(private_interfaces)]
    fn redis_keys(&self, _req: &Req, _max: usize, _out: &mut Vec<Vec<u8>>) {}
}

impl<Req, K, F> Decide<Req> for BuiltLimit<K, F>
where
    K: RateKey,
    F: KeyFn<Req, Key = K>,
{
    type Guard<'a> = KeyGuard<'a, K>;

    const LIMITS: usize = 1;

    #[inline]
    #[allow(private_interfaces)]
    fn decide(
        &self,
        req: &Req,
        now: u64,
        cost: u64,
        fallback: bool,
        report: Option<&mut dyn FnMut(LimitView<'_>)>,
    ) -> Decision {
        let key = self.key_fn.key(req);
        let (gcra, registry) = match (&self.fallback, fallback) {
            (Some((gcra, registry)), true) => (*gcra, registry),
            _ => (self.gcra, &self.registry),
        };
        let (decision, tat) = registry.update(&key, now, |tat| match gcra.check(tat, now, cost) {
            Verdict::Conforms { new_tat } => (Some(new_tat), (Decision::Admit, new_tat)),
            Verdict::WaitNanos(wait) => (
                None,
                (
                    Decision::Refuse {
                        wait: Some(wait),
                        limit: 0,
                    },
                    tat,
                ),
            ),
            Verdict::Never => (
                None,
                (
                    Decision::Refuse {
                        wait: None,
                        limit: 0,
                    },
                    tat,
                ),
            ),
        });
        if let Some(report) = report {
            report(LimitView {
                name: &self.name,
                gcra,
                tat,
            });
        }
        decision
    }

    #[allow(private_interfaces)]
    fn lock<'a>(&'a self, req: &Req, now: u64, fallback: bool) -> Self::Guard<'a> {
        let key = self.key_fn.key(req);
        let (shard, slot) = match (&self.fallback, fallback) {
            (Some((_, registry)), true) => registry.lock(&key, now),
            _ => self.registry.lock(&key, now),
        };
        KeyGuard { shard, slot }
    }

    #[allow(private_interfaces)]
    fn visit(
        &self,
        guard: &mut Self::Guard<'_>,
        fallback: bool,
        f: &mut dyn FnMut(LimitView<'_>) -> Option<u64>,
    ) {
        let gcra = match (&self.fallback, fallback) {
            (Some((gcra, _)), true) => *gcra,
            _ => self.gcra,
        };
        let KeyGuard { shard, slot } = guard;
        let view = LimitView {
            name: &self.name,
            gcra,
            tat: shard.tat(*slot),
        };
        if let Some(new_tat) = f(view) {
            *shard.tat_mut(*slot) = new_tat;
        }
    }

    #[allow(private_interfaces)]
    fn redis_keys(&self, req: &Req, max_key_bytes: usize, out: &mut Vec<Vec<u8>>) {
        let key = self.key_fn.key(req);
        let mut name = Vec::with_capacity(self.name.len() + 1 + 16);
        name.extend_from_slice(self.name.as_bytes());
        name.push(b':');
        // The same test as the local registry's (heap bytes, not the
        // written text, which an `Option` prefixes with '='), so a key has
        // a bucket of its own on Redis exactly when it has one locally. An
        // empty key is a key like any other.
        if key.heap_bytes() <= max_key_bytes {
            key.write_key(&mut name);
        } else {
            // Too long: the shared long-key key, as locally.
            name.extend_from_slice(b"~overflow");
        }
        out.push(name);
    }
}

impl<Req, A: Decide<Req>, B: Decide<Req>> Decide<Req> for (A, B) {
    type Guard<'a>
        = (A::Guard<'a>, B::Guard<'a>)
    where
        Self: 'a;

    const LIMITS: usize = A::LIMITS + B::LIMITS;

    #[inline]
    #[allow(private_interfaces)]
    fn decide(
        &self,
        req: &Req,
        now: u64,
        cost: u64,
        fallback: bool,
        report: Option<&mut dyn FnMut(LimitView<'_>)>,
    ) -> Decision {
        // The builder nests pairs from `()`: one limit is `((), limit)`.
        if A::LIMITS == 0 {
            self.1.decide(req, now, cost, fallback, report)
        } else if B::LIMITS == 0 {
            self.0.decide(req, now, cost, fallback, report)
        } else {
            decide_locked(self, req, now, cost, fallback, report)
        }
    }

    #[allow(private_interfaces)]
    fn lock<'a>(&'a self, req: &Req, now: u64, fallback: bool) -> Self::Guard<'a> {
        // Always in the same order (the order the limits were added), so two
        // decisions never wait for each other's locks in a cycle.
        let a = self.0.lock(req, now, fallback);
        let b = self.1.lock(req, now, fallback);
        (a, b)
    }

    #[allow(private_interfaces)]
    fn visit(
        &self,
        guard: &mut Self::Guard<'_>,
        fallback: bool,
        f: &mut dyn FnMut(LimitView<'_>) -> Option<u64>,
    ) {
        self.0.visit(&mut guard.0, fallback, f);
        self.1.visit(&mut guard.1, fallback, f);
    }

    #[allow(private_interfaces)]
    fn redis_keys(&self, req: &Req, max: usize, out: &mut Vec<Vec<u8>>) {
        self.0.redis_keys(req, max, out);
        self.1.redis_keys(req, max, out);
    }
}

/// The outcome of one decision over every limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Admit,
    /// Refused; admissible after `wait` nanoseconds (`None`: never, the
    /// cost exceeds a burst). `limit` is the index of the limit that needs
    /// the longest wait.
    Refuse {
        wait: Option<u64>,
        limit: usize,
    },
}

/// Decides for every limit at once: either every limit takes the request's
/// cost, or none does.
#[inline]
pub(crate) fn decide<Req, D: Decide<Req>>(
    limits: &D,
    req: &Req,
    now: u64,
    cost: u64,
    fallback: bool,
    report: Option<&mut dyn FnMut(LimitView<'_>)>,
) -> Decision {
    limits.decide(req, now, cost, fallback, report)
}

/// Decides for several limits under their keys' exclusive locks: either
/// every limit takes the request's cost, or none does.
fn decide_locked<Req, D: Decide<Req>>(
    limits: &D,
    req: &Req,
    now: u64,
    cost: u64,
    fallback: bool,
    mut report: Option<&mut dyn FnMut(LimitView<'_>)>,
) -> Decision {
    let mut guard = limits.lock(req, now, fallback);
    let mut wait: Option<u64> = Some(0);
    let mut binding = 0;
    let mut index = 0;
    limits.visit(&mut guard, fallback, &mut |view| {
        let w = match view.gcra.check(view.tat, now, cost) {
            Verdict::Conforms { .. } => Some(0),
            Verdict::WaitNanos(n) => Some(n),
            Verdict::Never => None,
        };
        let worse = match (w, wait) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
            _ => false,
        };
        if worse {
            wait = w;
            binding = index;
        }
        index += 1;
        None
    });
    let admit = wait == Some(0);
    limits.visit(&mut guard, fallback, &mut |view| {
        let new_tat = if admit {
            match view.gcra.check(view.tat, now, cost) {
                Verdict::Conforms { new_tat } => Some(new_tat),
                _ => None,
            }
        } else {
            None
        };
        if let Some(report) = report.as_deref_mut() {
            report(LimitView {
                tat: new_tat.unwrap_or(view.tat),
                ..view
            });
        }
        new_tat
    });
    if admit {
        Decision::Admit
    } else {
        Decision::Refuse {
            wait,
            limit: binding,
        }
    }
}
