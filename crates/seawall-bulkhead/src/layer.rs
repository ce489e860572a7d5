use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use seawall_core::{ConfigError, ErrorsFail, Listener};
use tower_layer::Layer;

use crate::event::BulkheadEvent;
use crate::limit::AdaptiveLimit;
use crate::pool::{Handle, Pool, PoolBuilder};
use crate::priority::NoPriority;
use crate::service::Bulkhead;

/// Applies a bulkhead to a service: at most the pool's limit of calls run at
/// once; the rest wait in a bounded queue or are refused.
///
/// Clones of a layer, and layers built on the same [`Pool`], share one pool
/// of permits.
///
/// - `P` chooses each request's [`Priority`](crate::Priority)
///   ([`NoPriority`] by default).
/// - `C` classifies finished calls for an adaptive limit
///   ([`ErrorsFail`] by default: every error is a drop).
#[derive(Clone)]
pub struct BulkheadLayer<P = NoPriority, C = ErrorsFail> {
    pool: Pool,
    prioritize: P,
    classifier: C,
    backpressure: bool,
}

impl BulkheadLayer {
    /// A builder for a layer with its own pool; see [`BulkheadBuilder`].
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder {
            pool: Pool::builder(),
            prioritize: NoPriority,
            classifier: ErrorsFail,
            backpressure: false,
        }
    }

    /// A layer drawing from `pool`, which may be shared with other layers.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            prioritize: NoPriority,
            classifier: ErrorsFail,
            backpressure: false,
        }
    }
}

impl<P, C> BulkheadLayer<P, C> {
    /// Chooses each request's priority with `prioritize`: a closure
    /// `Fn(&Req) -> Priority` or a [`HeaderPriority`](crate::HeaderPriority).
    pub fn priority<P2>(self, prioritize: P2) -> BulkheadLayer<P2, C> {
        BulkheadLayer {
            pool: self.pool,
            prioritize,
            classifier: self.classifier,
            backpressure: self.backpressure,
        }
    }

    /// Classifies finished calls for an adaptive limit: a
    /// [`Failure`](seawall_core::Outcome::Failure) counts as a drop, an
    /// [`Ignore`](seawall_core::Outcome::Ignore) is not sampled.
    pub fn classifier<C2>(self, classifier: C2) -> BulkheadLayer<P, C2> {
        BulkheadLayer {
            pool: self.pool,
            prioritize: self.prioritize,
            classifier,
            backpressure: self.backpressure,
        }
    }

    /// Reserve the permit in `poll_ready` instead of waiting inside the
    /// response future, like `tower::limit::ConcurrencyLimit`.
    ///
    /// For client pipelines behind `tower::buffer::Buffer`, where
    /// back-pressure should reach the caller. Not for axum, which expects
    /// routes to be ready at once. In this mode the wait is unbounded in
    /// length (the caller's buffer bounds it) and bounded in time by
    /// `max_wait`: when it passes, `poll_ready` returns ready and the call
    /// fails with [`BulkheadTimeout`](crate::BulkheadTimeout). Priorities are
    /// checked in `call`, once the request is known: a request over its
    /// class's share gives its permit back and is refused.
    pub fn backpressure(mut self) -> Self {
        self.backpressure = true;
        self
    }

    /// A read-only view of the pool's state.
    pub fn handle(&self) -> Handle {
        self.pool.handle()
    }

    /// The pool this layer draws from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Makes the layer's pool live for the rest of the program, so that its
    /// services, their response futures and the permits they take hold a
    /// plain `&'static` reference to the pool instead of a reference count.
    ///
    /// A call that finds a free permit then saves one atomic increment and
    /// one atomic decrement of a counter shared by every caller of the pool
    /// (see [`SharedState`](seawall_core::SharedState)); the permit itself
    /// is still one compare-and-swap and one subtraction. The pool is never
    /// freed, even once every layer, service, [`Pool`] and [`Handle`] on it
    /// is gone, and what it owns is never dropped (a
    /// [listener](BulkheadBuilder::listener) that flushes on drop never
    /// flushes): leak layers built once, at start-up, not per request, per
    /// key or per connection.
    ///
    /// Nothing else changes: limits (fixed or adaptive), the queue,
    /// priorities, back-pressure mode and permit release work as before.
    /// It is the same pool, not a copy: clones of the layer, [`Pool`]s and
    /// [`Handle`]s taken before the call see and control the permits of the
    /// leaked layer (they keep their reference count, which now never
    /// reaches zero); those taken from the leaked layer afterwards, and
    /// layers built with [`BulkheadLayer::new`] on its [`pool`](Self::pool),
    /// hold the plain reference too. To put several layers on one leaked
    /// pool, leak each of them (or build them on the pool of a leaked one);
    /// a [`PoolRegistry`](crate::PoolRegistry) keeps handing out the same
    /// pool, but replacing it there or dropping the registry no longer frees
    /// it.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use seawall_bulkhead::BulkheadLayer;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = BulkheadLayer::builder()
    ///     .name("db")
    ///     .max_concurrent(8)
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle(); // taken before: still the same pool
    /// let layer = layer.leak();
    ///
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service_fn(|n: u32| async move { Ok::<_, Infallible>(n * 2) });
    /// let call = svc.ready().await.unwrap().call(21);
    /// assert_eq!(handle.in_flight(), 1);
    /// assert_eq!(call.await.unwrap(), 42);
    /// assert_eq!(handle.in_flight(), 0);
    /// # }
    /// ```
    #[must_use]
    pub fn leak(self) -> Self {
        Self {
            pool: self.pool.leak(),
            prioritize: self.prioritize,
            classifier: self.classifier,
            backpressure: self.backpressure,
        }
    }
}

impl<P: fmt::Debug, C: fmt::Debug> fmt::Debug for BulkheadLayer<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("pool", &self.pool)
            .field("prioritize", &self.prioritize)
            .field("classifier", &self.classifier)
            .field("backpressure", &self.backpressure)
            .finish()
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for BulkheadLayer<P, C> {
    type Service = Bulkhead<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(
            inner,
            self.pool.shared.clone(),
            self.prioritize.clone(),
            self.classifier.clone(),
            self.backpressure,
        )
    }
}

/// Configures a [`BulkheadLayer`] with its own [`Pool`].
///
/// ```
/// use std::time::Duration;
/// use http::HeaderName;
/// use seawall_bulkhead::{BulkheadLayer, HeaderPriority};
///
/// let layer = BulkheadLayer::builder()
///     .name("inventory")
///     .max_concurrent(32)
///     .max_queue(64)
///     .max_wait(Duration::from_millis(250))
///     .priority(HeaderPriority::new(HeaderName::from_static("x-priority")))
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().limit(), 32);
/// ```
#[must_use]
pub struct BulkheadBuilder<P = NoPriority, C = ErrorsFail> {
    pool: PoolBuilder,
    prioritize: P,
    classifier: C,
    backpressure: bool,
}

impl<P: fmt::Debug, C: fmt::Debug> fmt::Debug for BulkheadBuilder<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadBuilder")
            .field("pool", &self.pool)
            .field("prioritize", &self.prioritize)
            .field("classifier", &self.classifier)
            .field("backpressure", &self.backpressure)
            .finish()
    }
}

impl<P, C> BulkheadBuilder<P, C> {
    /// See [`PoolBuilder::name`].
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        self.map_pool(|p| p.name(name))
    }

    /// See [`PoolBuilder::max_concurrent`].
    pub fn max_concurrent(self, n: usize) -> Self {
        self.map_pool(|p| p.max_concurrent(n))
    }

    /// See [`PoolBuilder::adaptive`].
    pub fn adaptive(self, limit: impl AdaptiveLimit) -> Self {
        self.map_pool(|p| p.adaptive(limit))
    }

    /// See [`PoolBuilder::max_queue`].
    pub fn max_queue(self, n: usize) -> Self {
        self.map_pool(|p| p.max_queue(n))
    }

    /// See [`PoolBuilder::max_wait`].
    pub fn max_wait(self, wait: impl Into<Option<Duration>>) -> Self {
        self.map_pool(|p| p.max_wait(wait))
    }

    /// See [`PoolBuilder::normal_share`].
    pub fn normal_share(self, share: f64) -> Self {
        self.map_pool(|p| p.normal_share(share))
    }

    /// See [`PoolBuilder::sheddable_share`].
    pub fn sheddable_share(self, share: f64) -> Self {
        self.map_pool(|p| p.sheddable_share(share))
    }

    /// See [`PoolBuilder::retry_after`].
    pub fn retry_after(self, after: impl Into<Option<Duration>>) -> Self {
        self.map_pool(|p| p.retry_after(after))
    }

    /// See [`PoolBuilder::listener`].
    pub fn listener<L: Listener<BulkheadEvent>>(self, listener: L) -> Self {
        self.map_pool(|p| p.listener(listener))
    }

    /// See [`BulkheadLayer::priority`].
    pub fn priority<P2>(self, prioritize: P2) -> BulkheadBuilder<P2, C> {
        BulkheadBuilder {
            pool: self.pool,
            prioritize,
            classifier: self.classifier,
            backpressure: self.backpressure,
        }
    }

    /// See [`BulkheadLayer::classifier`].
    pub fn classifier<C2>(self, classifier: C2) -> BulkheadBuilder<P, C2> {
        BulkheadBuilder {
            pool: self.pool,
            prioritize: self.prioritize,
            classifier,
            backpressure: self.backpressure,
        }
    }

    /// See [`BulkheadLayer::backpressure`].
    pub fn backpressure(mut self) -> Self {
        self.backpressure = true;
        self
    }

    /// Validates the settings and builds the layer and its pool.
    pub fn build(self) -> Result<BulkheadLayer<P, C>, ConfigError> {
        Ok(BulkheadLayer {
            pool: self.pool.build()?,
            prioritize: self.prioritize,
            classifier: self.classifier,
            backpressure: self.backpressure,
        })
    }

    fn map_pool(mut self, f: impl FnOnce(PoolBuilder) -> PoolBuilder) -> Self {
        self.pool = f(self.pool);
        self
    }
}
