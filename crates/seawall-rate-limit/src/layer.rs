//! The layer's configuration.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use seawall_core::event::Listener;
use seawall_core::{ConfigError, NoopListener};
use tokio::time::Instant;
use tower_layer::Layer;

use crate::event::RateLimitEvent;
use crate::headers::{IetfHeaders, NoHeaders};
use crate::limit::{BuildSettings, Limit, LimitSet};
use crate::registry::Bounds;
use crate::service::RateLimit;

const LAYER: &str = "rate limit";
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What the layer does with a request a limit refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse at once with [`RateLimited`](crate::RateLimited).
    Reject,
    /// Wait, inside the response future, until the limits admit the request,
    /// if that is at most this long away; refuse otherwise. Back pressure
    /// for clients and background jobs.
    Wait(Duration),
}

/// The cost of a request in units of its limits' quotas.
///
/// Implemented for every `Fn(&Req) -> u64` and for [`One`].
pub trait Cost<Req>: Send + Sync + 'static {
    /// Units `req` spends; 0 makes it free.
    fn cost(&self, req: &Req) -> u64;
}

impl<Req, F> Cost<Req> for F
where
    F: Fn(&Req) -> u64 + Send + Sync + 'static,
{
    #[inline]
    fn cost(&self, req: &Req) -> u64 {
        self(req)
    }
}

/// Every request costs one unit (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct One;

impl<Req> Cost<Req> for One {
    #[inline]
    fn cost(&self, _req: &Req) -> u64 {
        1
    }
}

/// What a layer's services share.
pub(crate) struct Shared<D, C, Li> {
    pub(crate) name: Arc<str>,
    pub(crate) limits: D,
    pub(crate) names: Box<[Arc<str>]>,
    pub(crate) cost: C,
    pub(crate) listener: Li,
    pub(crate) mode: Mode,
    pub(crate) origin: Instant,
    pub(crate) policy: Option<HeaderValue>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) max_key_bytes: usize,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::fleet::Backend>,
}

impl<D, C, Li> Shared<D, C, Li> {
    /// Nanoseconds since the layer was built.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos() as u64
    }
}

/// Configures a [`RateLimitLayer`].
///
/// ```
/// use std::time::Duration;
/// use http::Request;
/// use seawall_rate_limit::{key, Limit, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .name("api")
///     .limit(Limit::per_key("ip", Quota::per_second(10).burst(20), key::peer_ip::<()>))
///     .limit(Limit::global("all", Quota::per_hour(100_000)))
///     .cost(|req: &Request<()>| if req.method() == "POST" { 5 } else { 1 })
///     .headers()
///     .build()
///     .unwrap();
/// # let _ = layer;
///
/// // Invalid settings are errors, not panics.
/// let err = RateLimitLayer::builder()
///     .limit(Limit::global("all", Quota::per_second(0)))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "quota");
/// ```
#[must_use]
pub struct Builder<L = (), C = One, H = NoHeaders, Li = NoopListener> {
    name: Arc<str>,
    limits: L,
    cost: C,
    mode: Mode,
    listener: Li,
    bounds: Bounds,
    #[cfg(feature = "redis")]
    redis: Option<crate::fleet::RedisBackend>,
    _headers: PhantomData<fn() -> H>,
}

impl<L, C, H, Li> fmt::Debug for Builder<L, C, H, Li> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            name: Arc::from("rate_limit"),
            limits: (),
            cost: One,
            mode: Mode::Reject,
            listener: NoopListener,
            bounds: Bounds {
                entries: 100_000,
                bytes: 16 << 20,
                key_bytes: 256,
            },
            #[cfg(feature = "redis")]
            redis: None,
            _headers: PhantomData,
        }
    }
}

impl<L, C, H, Li> Builder<L, C, H, Li> {
    /// The layer's name, used in events and metrics (default `rate_limit`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a limit. A request is admitted only if every limit admits it,
    /// and then spends its cost from every one; a refused request spends
    /// nothing from any.
    pub fn limit<K, F>(self, limit: Limit<K, F>) -> Builder<(L, Limit<K, F>), C, H, Li> {
        Builder {
            name: self.name,
            limits: (self.limits, limit),
            cost: self.cost,
            mode: self.mode,
            listener: self.listener,
            bounds: self.bounds,
            #[cfg(feature = "redis")]
            redis: self.redis,
            _headers: PhantomData,
        }
    }

    /// How many units a request costs (default: one each).
    pub fn cost<C2>(self, cost: C2) -> Builder<L, C2, H, Li> {
        Builder {
            name: self.name,
            limits: self.limits,
            cost,
            mode: self.mode,
            listener: self.listener,
            bounds: self.bounds,
            #[cfg(feature = "redis")]
            redis: self.redis,
            _headers: PhantomData,
        }
    }

    /// Refuse a limited request at once (the default).
    pub fn reject(mut self) -> Self {
        self.mode = Mode::Reject;
        self
    }

    /// Let a limited request wait up to `max` for its turn, refusing it only
    /// if it would have to wait longer.
    ///
    /// A waiting request holds nothing: it reserves no units while it waits
    /// and decides again when its wait is over, so dropping it (a client
    /// gone, a timeout above) costs no limit anything. The price is that
    /// waiters are not served in order: a newer request can take the units
    /// an older waiter was waiting for, and the older one then waits again,
    /// within its `max`.
    pub fn wait(mut self, max: Duration) -> Self {
        self.mode = Mode::Wait(max);
        self
    }

    /// Write the IETF `RateLimit-Policy` and `RateLimit` fields on every
    /// response that passes (see [`headers`](crate::headers) for the draft
    /// revision). A refusal carries them in
    /// [`RateLimited::fields`](crate::RateLimited::fields).
    pub fn headers(self) -> Builder<L, C, IetfHeaders, Li> {
        Builder {
            name: self.name,
            limits: self.limits,
            cost: self.cost,
            mode: self.mode,
            listener: self.listener,
            bounds: self.bounds,
            #[cfg(feature = "redis")]
            redis: self.redis,
            _headers: PhantomData,
        }
    }

    /// Sends [`RateLimitEvent`]s to `listener`.
    pub fn listener<Li2: Listener<RateLimitEvent>>(self, listener: Li2) -> Builder<L, C, H, Li2> {
        Builder {
            name: self.name,
            limits: self.limits,
            cost: self.cost,
            mode: self.mode,
            listener,
            bounds: self.bounds,
            #[cfg(feature = "redis")]
            redis: self.redis,
            _headers: PhantomData,
        }
    }

    /// The most keys each limit tracks (default 100,000). Split evenly over
    /// up to 16 shards (a power of two).
    pub fn key_capacity(mut self, entries: usize) -> Self {
        self.bounds.entries = entries;
        self
    }

    /// The most bytes each limit's keys may take, counted as described in
    /// the crate docs (default 16 MiB).
    pub fn key_memory(mut self, bytes: usize) -> Self {
        self.bounds.bytes = bytes;
        self
    }

    /// The longest key, in heap bytes, that gets a bucket of its own
    /// (default 256); longer keys share one bucket per shard (the same
    /// key on Redis: `…:~overflow`), which no other key inherits from.
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.bounds.key_bytes = bytes;
        self
    }

    /// Enforce the limits fleet-wide through Redis instead of in this
    /// process.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, backend: crate::fleet::RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<L::Built, C, H, Li>, ConfigError>
    where
        L: LimitSet,
        H: HeaderMode,
        C: Send + Sync + 'static,
        Li: Send + Sync + 'static,
    {
        if self.limits.count() == 0 {
            return Err(ConfigError::new(
                LAYER,
                "limit",
                "at least one limit is needed",
            ));
        }
        if let Mode::Wait(max) = self.mode {
            if max.is_zero() || max > MAX_WAIT {
                return Err(ConfigError::new(
                    LAYER,
                    "wait",
                    format!("must be positive and at most an hour, got {max:?}"),
                ));
            }
        }
        if self.bounds.entries == 0 {
            return Err(ConfigError::new(LAYER, "key_capacity", "must be positive"));
        }
        if self.bounds.bytes < 1024 {
            return Err(ConfigError::new(
                LAYER,
                "key_memory",
                format!("must be at least 1 KiB, got {}", self.bounds.bytes),
            ));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new(LAYER, "name", "must not be empty"));
        }
        #[cfg(feature = "redis")]
        let fallback_replicas = match &self.redis {
            Some(r) => r.fallback_replicas()?,
            None => None,
        };
        #[cfg(not(feature = "redis"))]
        let fallback_replicas = None;
        let limits = self.limits.build_set(&BuildSettings {
            bounds: self.bounds,
            fallback_replicas,
        })?;
        let mut quotas = Vec::new();
        let mut gcras = Vec::new();
        L::describe(&limits, &mut |name, quota, gcra| {
            quotas.push((name.clone(), quota));
            gcras.push(gcra);
        });
        let names: Box<[Arc<str>]> = quotas.iter().map(|(n, _)| n.clone()).collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(ConfigError::new(
                    LAYER,
                    "limit name",
                    format!("{name:?} is used twice"),
                ));
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = gcras;
        let policy = if <H as HeaderMode>::ENABLED {
            Some(crate::headers::policy(&quotas)?)
        } else {
            None
        };
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                name: self.name,
                limits,
                names,
                cost: self.cost,
                listener: self.listener,
                mode: self.mode,
                origin: Instant::now(),
                policy,
                max_key_bytes: self.bounds.key_bytes,
                #[cfg(feature = "redis")]
                redis: self.redis.map(|r| r.into_backend(&gcras)),
            }),
            _headers: PhantomData,
        })
    }
}

/// Whether a header choice writes anything, known without a response type.
pub trait HeaderMode {
    /// `true` for [`IetfHeaders`].
    const ENABLED: bool;
}

impl HeaderMode for NoHeaders {
    const ENABLED: bool = false;
}

impl HeaderMode for IetfHeaders {
    const ENABLED: bool = true;
}

/// Applies a GCRA rate limit, per key, with one or more limits deciding
/// together. Built by [`RateLimitLayer::builder`]; clones share the limits'
/// state.
pub struct RateLimitLayer<D, C = One, H = NoHeaders, Li = NoopListener> {
    pub(crate) shared: Arc<Shared<D, C, Li>>,
    _headers: PhantomData<fn() -> H>,
}

impl RateLimitLayer<()> {
    /// A builder with no limits yet, rejecting mode, one unit per request and
    /// no response fields.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<D, C, H, Li> RateLimitLayer<D, C, H, Li> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// What the layer does with refused requests.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }
}

impl<D, C, H, Li> Clone for RateLimitLayer<D, C, H, Li> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _headers: PhantomData,
        }
    }
}

impl<D, C, H, Li> fmt::Debug for RateLimitLayer<D, C, H, Li> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name)
            .field("limits", &self.shared.names)
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl<S, D, C, H, Li> Layer<S> for RateLimitLayer<D, C, H, Li> {
    type Service = RateLimit<S, D, C, H, Li>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}
