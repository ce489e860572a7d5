//! The layer and its builder.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use seawall_core::{ConfigError, ErrorsFail, Listener, NoopListener, SharedState};
use tower_layer::Layer;

use crate::breaker::{Breaker, Config, WindowConfig};
use crate::event::{emitter, CircuitBreakerEvent};
use crate::handle::{Handle, Shared};
use crate::keyed::{KeyedCircuitBreakerLayer, Registry};
use crate::open_duration::OpenDuration;
use crate::service::CircuitBreaker;
use crate::state::MAX_PROBES;
use crate::window::MAX_COUNT_WINDOW;

pub(crate) const LAYER: &str = "circuit breaker";

/// The most buckets a time window may have.
const MAX_BUCKETS: usize = 4096;

/// Applies a [`CircuitBreaker`] to services.
///
/// The layer owns one breaker: every service it builds, and every clone of
/// the layer, shares it, so a breaker guards a dependency however many
/// connections or clones reach it. Use [`handle`](Self::handle) to watch and
/// steer it.
///
/// ```
/// use std::time::Duration;
/// use seawall_circuit_breaker::CircuitBreakerLayer;
///
/// let layer = CircuitBreakerLayer::builder()
///     .failure_rate_threshold(0.5)
///     .count_window(50)
///     .minimum_calls(20)
///     .open_duration(Duration::from_secs(10))
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), seawall_core::ConfigError>(())
/// ```
pub struct CircuitBreakerLayer<C: 'static = ErrorsFail> {
    shared: SharedState<Shared<C>>,
}

impl CircuitBreakerLayer {
    /// A layer with the default settings (see [`Builder`]).
    pub fn new() -> Self {
        Builder::new().build_unchecked()
    }

    /// A builder starting from the default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Send + Sync + 'static> CircuitBreakerLayer<C> {
    /// A handle on this layer's breaker.
    ///
    /// The handle steers the same breaker whether it is taken before or
    /// after [`leak`](Self::leak).
    pub fn handle(&self) -> Handle {
        Handle::from_state(self.shared.clone())
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Makes the layer's breaker live for the rest of the program, so that
    /// its services and their response futures hold a plain reference to it
    /// instead of a reference count.
    ///
    /// Every call then saves one atomic increment and one atomic decrement
    /// of a shared counter, made when `call` hands the response future its
    /// hold on the breaker and undone when the future is dropped (see
    /// [`SharedState`]). The breaker, its window and its classifier are
    /// never freed: leak layers built once, at start-up, not per request.
    ///
    /// Clones of the layer, services and [`Handle`]s made before the call
    /// keep counting but reach the same breaker, so a handle taken earlier
    /// still observes and steers it. Keyed layers
    /// ([`build_keyed`](Builder::build_keyed)) have no `leak`: a key's
    /// breaker must stay freeable when the registry evicts it.
    ///
    /// ```
    /// use seawall_circuit_breaker::{CircuitBreakerLayer, State};
    /// use seawall_core::BoxError;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("inventory")
    ///     .build()
    ///     .expect("valid settings");
    /// let handle = layer.handle();
    /// let layer = layer.leak();
    ///
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n + 1) }));
    /// assert_eq!(svc.clone().oneshot(1).await.unwrap(), 2);
    ///
    /// // The handle taken before the leak steers the same breaker.
    /// handle.force_open();
    /// assert!(svc.oneshot(1).await.is_err());
    /// assert_eq!(layer.handle().state(), State::ForcedOpen);
    /// # }
    /// ```
    #[must_use]
    pub fn leak(self) -> Self {
        Self {
            shared: self.shared.leak(),
        }
    }
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.shared.breaker)
            .finish()
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.shared.clone())
    }
}

/// Configures a [`CircuitBreakerLayer`] (or, with
/// [`build_keyed`](Self::build_keyed), a [`KeyedCircuitBreakerLayer`]).
///
/// The breaker trips when, over its sliding window and once the window
/// holds at least `minimum_calls` outcomes, the failure rate reaches
/// `failure_rate_threshold` or the slow-call rate reaches
/// `slow_call_rate_threshold`; or, if set, after `consecutive_failures`
/// failures in a row.
///
/// | setting | default |
/// |---|---|
/// | [`name`](Self::name) | `"circuit_breaker"` |
/// | [`failure_rate_threshold`](Self::failure_rate_threshold) | 0.5 |
/// | [`slow_call_duration`](Self::slow_call_duration) | none (slow calls not detected) |
/// | [`slow_call_rate_threshold`](Self::slow_call_rate_threshold) | 1.0 |
/// | window | [`count_window`](Self::count_window)`(100)` |
/// | [`minimum_calls`](Self::minimum_calls) | 100 |
/// | [`consecutive_failures`](Self::consecutive_failures) | none |
/// | [`open_duration`](Self::open_duration) | 30 s, fixed |
/// | [`half_open_probes`](Self::half_open_probes) | 1 |
/// | [`max_half_open_wait`](Self::max_half_open_wait) | 60 s |
/// | [`count_inner_rejections`](Self::count_inner_rejections) | `false` |
/// | [`metrics_only`](Self::metrics_only) | `false` |
/// | [`classifier`](Self::classifier) | [`ErrorsFail`] |
/// | [`listener`](Self::listener) | [`NoopListener`] |
/// | [`key_capacity`](Self::key_capacity) (keyed) | 1024 |
/// | [`key_idle_timeout`](Self::key_idle_timeout) (keyed) | 10 min |
///
/// `build` checks every setting and returns a [`ConfigError`] naming the
/// first one that is invalid.
#[must_use]
pub struct Builder<C = ErrorsFail, L = NoopListener> {
    name: Arc<str>,
    failure_rate: f64,
    slow_call_duration: Option<Duration>,
    slow_call_rate: f64,
    minimum_calls: u64,
    consecutive_failures: Option<u64>,
    window: WindowConfig,
    open: OpenDuration,
    probes: u32,
    max_half_open_wait: Duration,
    count_inner_rejections: bool,
    metrics_only: bool,
    key_capacity: usize,
    key_idle_timeout: Duration,
    classifier: C,
    listener: L,
}

impl<C: fmt::Debug, L: fmt::Debug> fmt::Debug for Builder<C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("failure_rate", &self.failure_rate)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("slow_call_rate", &self.slow_call_rate)
            .field("minimum_calls", &self.minimum_calls)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("window", &self.window)
            .field("open", &self.open)
            .field("probes", &self.probes)
            .field("max_half_open_wait", &self.max_half_open_wait)
            .field("count_inner_rejections", &self.count_inner_rejections)
            .field("metrics_only", &self.metrics_only)
            .field("key_capacity", &self.key_capacity)
            .field("key_idle_timeout", &self.key_idle_timeout)
            .field("classifier", &self.classifier)
            .field("listener", &self.listener)
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The default settings.
    pub fn new() -> Self {
        Self {
            name: Arc::from("circuit_breaker"),
            failure_rate: 0.5,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            minimum_calls: 100,
            consecutive_failures: None,
            window: WindowConfig::Count(100),
            open: OpenDuration::fixed(Duration::from_secs(30)),
            probes: 1,
            max_half_open_wait: Duration::from_secs(60),
            count_inner_rejections: false,
            metrics_only: false,
            key_capacity: 1024,
            key_idle_timeout: Duration::from_secs(600),
            classifier: ErrorsFail,
            listener: NoopListener,
        }
    }
}

impl<C, L> Builder<C, L> {
    /// The name used in events and metric labels.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Trip when this share of the window's calls failed, in `(0, 1]`.
    pub fn failure_rate_threshold(mut self, threshold: f64) -> Self {
        self.failure_rate = threshold;
        self
    }

    /// Count a call as slow when it takes longer than `duration`, whatever
    /// its outcome. Slow calls are only detected (and the clock only read)
    /// when this is set.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = Some(duration);
        self
    }

    /// Trip when this share of the window's calls were slow, in `(0, 1]`.
    pub fn slow_call_rate_threshold(mut self, threshold: f64) -> Self {
        self.slow_call_rate = threshold;
        self
    }

    /// Judge the last `size` calls (at most 500 000).
    pub fn count_window(mut self, size: usize) -> Self {
        self.window = WindowConfig::Count(size);
        self
    }

    /// Judge the calls of the last `duration`, kept in `buckets` buckets
    /// (the window slides one bucket at a time; 10 to 60 buckets is usual).
    pub fn time_window(mut self, duration: Duration, buckets: usize) -> Self {
        self.window = WindowConfig::Time { duration, buckets };
        self
    }

    /// Do not judge rates before the window holds this many calls. For a
    /// count window it must not exceed the window size.
    pub fn minimum_calls(mut self, calls: u64) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Also trip after this many failures in a row, whatever the window says.
    pub fn consecutive_failures(mut self, failures: u64) -> Self {
        self.consecutive_failures = Some(failures);
        self
    }

    /// How long to stay open after a trip: a `Duration` or an
    /// [`OpenDuration`] that grows with consecutive trips.
    pub fn open_duration(mut self, open: impl Into<OpenDuration>) -> Self {
        self.open = open.into();
        self
    }

    /// How many probe calls run at once while half-open (1 to 1000). The
    /// breaker closes when the probes' failure and slow-call rates are
    /// under their thresholds, and opens again otherwise.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.probes = probes;
        self
    }

    /// The longest a half-open probe may run, from its admission. A probe
    /// that has not finished by then is lost: the first call to arrive
    /// after that moment (any call, whether or not probe slots are free)
    /// opens the breaker again, with the new open period counted from the
    /// moment the wait ran out, so probes that never finish cannot wedge
    /// it. A slot admitted by `poll_ready` but never called counts from the
    /// start of half-open. Calls refused while half-open carry a
    /// `retry_after` of the time left until the oldest probe's wait runs
    /// out (by then the breaker has closed or opened again).
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.max_half_open_wait = wait;
        self
    }

    /// Whether a seawall rejection raised *inside* the breaker counts as a
    /// failure of the dependency (default `false`).
    ///
    /// A layer below the breaker that refuses a call (a full or timed-out
    /// bulkhead, a rate limit, an inner breaker: any error in which
    /// [`seawall_core::rejection::find`] finds a rejection) never reached
    /// the dependency, so by default its refusal is ignored: it counts
    /// neither as a failure nor as a success, does not reset the run of
    /// consecutive failures, and a half-open probe refused that way gives
    /// its slot back (it says nothing about the dependency, so the next
    /// caller probes instead). With `true`, such a refusal is a failure
    /// whatever the classifier says.
    ///
    /// ```
    /// use seawall_circuit_breaker::CircuitBreakerLayer;
    ///
    /// // The bulkhead below is part of the dependency's capacity: treat its
    /// // refusals as the dependency being overloaded.
    /// let layer = CircuitBreakerLayer::builder()
    ///     .count_inner_rejections(true)
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), seawall_core::ConfigError>(())
    /// ```
    pub fn count_inner_rejections(mut self, count: bool) -> Self {
        self.count_inner_rejections = count;
        self
    }

    /// Metrics-only mode (default `false`): record and report like a
    /// normal breaker (window, [`Metrics`](crate::Metrics), and the
    /// `FailureRateExceeded` / `SlowCallRateExceeded` /
    /// `ConsecutiveFailuresExceeded` events each time a judgement finds a
    /// rule broken), but never open and never refuse a call, like
    /// Resilience4j's `METRICS_ONLY` state. Useful to tune thresholds on
    /// real traffic before enforcing them.
    ///
    /// ```
    /// use seawall_circuit_breaker::{CircuitBreakerLayer, State};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder()
    ///     .count_window(4)
    ///     .minimum_calls(4)
    ///     .metrics_only(true)
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
    /// for _ in 0..8 {
    ///     assert_eq!(svc.clone().oneshot(()).await.unwrap_err().to_string(), "down");
    /// }
    /// assert_eq!(handle.state(), State::Closed);
    /// assert_eq!(handle.metrics().failure_rate, Some(1.0));
    /// # }
    /// ```
    pub fn metrics_only(mut self, metrics_only: bool) -> Self {
        self.metrics_only = metrics_only;
        self
    }

    /// Keyed mode: the most breakers kept at once. No breaker is evicted
    /// while there is room. When full, a new key takes the place of a
    /// closed breaker: an idle one at once, else one not used since a CLOCK
    /// hand last passed it (an approximation of least recently used, O(1)
    /// amortised per new key). Breakers that are open, half-open, forced
    /// open or disabled are never dropped, by eviction or by
    /// [`key_idle_timeout`](Self::key_idle_timeout); if the registry holds
    /// nothing else, the new key's request is refused with
    /// [`KeyedRegistryFull`](crate::KeyedRegistryFull) (503) and the inner
    /// service is not called. (A breaker left open with no call for its key
    /// for `key_idle_timeout` after its open period ended may be dropped:
    /// its key is gone.)
    pub fn key_capacity(mut self, capacity: usize) -> Self {
        self.key_capacity = capacity;
        self
    }

    /// Keyed mode: forget a key's closed breaker after it saw no call for
    /// this long (open, forced-open and disabled breakers are kept).
    pub fn key_idle_timeout(mut self, idle: Duration) -> Self {
        self.key_idle_timeout = idle;
        self
    }

    /// Decides which results are failures; see [`seawall_core::Classify`].
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, L> {
        Builder {
            name: self.name,
            failure_rate: self.failure_rate,
            slow_call_duration: self.slow_call_duration,
            slow_call_rate: self.slow_call_rate,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            window: self.window,
            open: self.open,
            probes: self.probes,
            max_half_open_wait: self.max_half_open_wait,
            count_inner_rejections: self.count_inner_rejections,
            metrics_only: self.metrics_only,
            key_capacity: self.key_capacity,
            key_idle_timeout: self.key_idle_timeout,
            classifier,
            listener: self.listener,
        }
    }

    /// Receives the breaker's [`CircuitBreakerEvent`]s.
    pub fn listener<L2>(self, listener: L2) -> Builder<C, L2> {
        Builder {
            name: self.name,
            failure_rate: self.failure_rate,
            slow_call_duration: self.slow_call_duration,
            slow_call_rate: self.slow_call_rate,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            window: self.window,
            open: self.open,
            probes: self.probes,
            max_half_open_wait: self.max_half_open_wait,
            count_inner_rejections: self.count_inner_rejections,
            metrics_only: self.metrics_only,
            key_capacity: self.key_capacity,
            key_idle_timeout: self.key_idle_timeout,
            classifier: self.classifier,
            listener,
        }
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let rate = |field, value: f64| {
            if value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError::new(
                    LAYER,
                    field,
                    format!("must be in (0, 1], got {value}"),
                ))
            }
        };
        rate("failure_rate_threshold", self.failure_rate)?;
        rate("slow_call_rate_threshold", self.slow_call_rate)?;
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                LAYER,
                "slow_call_duration",
                "must be greater than zero",
            ));
        }
        match self.window {
            WindowConfig::Count(size) => {
                if size == 0 || size > MAX_COUNT_WINDOW {
                    return Err(ConfigError::new(
                        LAYER,
                        "count_window",
                        format!("must be in 1..={MAX_COUNT_WINDOW}, got {size}"),
                    ));
                }
                if self.minimum_calls > size as u64 {
                    return Err(ConfigError::new(
                        LAYER,
                        "minimum_calls",
                        format!(
                            "must not exceed the count window ({size}), got {}",
                            self.minimum_calls
                        ),
                    ));
                }
            }
            WindowConfig::Time { duration, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(ConfigError::new(
                        LAYER,
                        "time_window",
                        format!("buckets must be in 1..={MAX_BUCKETS}, got {buckets}"),
                    ));
                }
                if duration.as_nanos() < buckets as u128 {
                    return Err(ConfigError::new(
                        LAYER,
                        "time_window",
                        format!("duration must be at least 1 ns per bucket, got {duration:?}"),
                    ));
                }
            }
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new(
                LAYER,
                "minimum_calls",
                "must be at least 1",
            ));
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                LAYER,
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        self.open.validate()?;
        if self.probes == 0 || self.probes > MAX_PROBES {
            return Err(ConfigError::new(
                LAYER,
                "half_open_probes",
                format!("must be in 1..={MAX_PROBES}, got {}", self.probes),
            ));
        }
        if self.max_half_open_wait.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "max_half_open_wait",
                "must be greater than zero",
            ));
        }
        Ok(self.settings())
    }

    fn settings(&self) -> Config {
        Config {
            name: self.name.clone(),
            failure_rate: self.failure_rate,
            slow_call_duration: self.slow_call_duration,
            slow_call_rate: self.slow_call_rate,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            window: self.window,
            open: self.open,
            probes: self.probes,
            max_half_open_wait: self.max_half_open_wait,
            count_inner_rejections: self.count_inner_rejections,
            metrics_only: self.metrics_only,
        }
    }
}

impl<C, L> Builder<C, L>
where
    L: Listener<CircuitBreakerEvent>,
{
    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let cfg = Arc::new(self.config()?);
        Ok(self.finish(cfg))
    }

    fn finish(self, cfg: Arc<Config>) -> CircuitBreakerLayer<C> {
        let breaker = Breaker::new(cfg, None, emitter(self.listener));
        CircuitBreakerLayer {
            shared: SharedState::new(Shared {
                breaker,
                classifier: self.classifier,
            }),
        }
    }

    /// Checks the settings and builds a keyed layer: one breaker per key
    /// that `key_fn` picks from each request (a host, a route, a tenant),
    /// kept in a registry of at most [`key_capacity`](Self::key_capacity)
    /// breakers.
    pub fn build_keyed<Req, K, F>(
        self,
        key_fn: F,
    ) -> Result<KeyedCircuitBreakerLayer<K, F, C>, ConfigError>
    where
        F: Fn(&Req) -> K,
        K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
        C: Clone,
    {
        let cfg = Arc::new(self.config()?);
        if self.key_capacity == 0 {
            return Err(ConfigError::new(
                LAYER,
                "key_capacity",
                "must be at least 1",
            ));
        }
        if self.key_idle_timeout.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "key_idle_timeout",
                "must be greater than zero",
            ));
        }
        let registry = Registry::new(
            cfg,
            self.classifier,
            emitter(self.listener),
            self.key_capacity,
            self.key_idle_timeout,
        );
        Ok(KeyedCircuitBreakerLayer::new(Arc::new(registry), key_fn))
    }
}

impl Builder {
    /// The defaults are valid, so building them skips the checks.
    fn build_unchecked(self) -> CircuitBreakerLayer {
        let cfg = Arc::new(self.settings());
        self.finish(cfg)
    }
}
