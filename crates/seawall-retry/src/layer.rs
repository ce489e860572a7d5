use std::fmt;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use seawall_core::{ConfigError, ErrorsFail, HttpClassifier, NoopListener, SharedState};
use tower_layer::Layer;

use crate::backoff::{Backoff, Jitter};
use crate::budget::RetryBudget;
use crate::replay::{CloneRequest, HttpReplay};
use crate::service::JitterRetry;

const LAYER: &str = "retry";

/// The longest duration a setting of this crate keeps: 365 days. Longer ones,
/// up to `Duration::MAX`, are clamped to it (a backoff longer than it is
/// refused), so that no deadline or timer computed from them can overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Retries failed requests with jittered backoff, within a budget, a deadline
/// and the server's hints. See the [crate docs](crate).
///
/// Type parameters: `P` how requests are kept for replay ([`CloneRequest`]
/// or [`HttpReplay`]), `C` the classifier, `L` the event listener, `R` the
/// random number generator used for jitter.
///
/// Cloning the layer shares its configuration, its retry budget and its RNG
/// seed sequence.
pub struct JitterRetryLayer<P = CloneRequest, C = ErrorsFail, L = NoopListener, R = SmallRng>
where
    P: 'static,
    C: 'static,
    L: 'static,
{
    config: SharedState<Config<P, C, L>>,
    _rng: PhantomData<fn() -> R>,
}

pub(crate) struct Config<P, C, L> {
    pub(crate) name: Arc<str>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) jitter: Jitter,
    pub(crate) max_delay: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) replay: P,
    pub(crate) classifier: C,
    pub(crate) listener: L,
    seed: u64,
    streams: AtomicU64,
}

impl<P, C, L> Config<P, C, L> {
    /// A seed for the RNG of one retried request. Streams are numbered, so a
    /// seeded layer replays the same jitter, and spread by the golden-ratio
    /// increment so consecutive seeds share no bits.
    pub(crate) fn next_seed(&self) -> u64 {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        self.seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

impl<P, C, L, R> Clone for JitterRetryLayer<P, C, L, R> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            _rng: PhantomData,
        }
    }
}

impl<P, C, L> fmt::Debug for Config<P, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("max_delay", &self.max_delay)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<P, C, L, R> fmt::Debug for JitterRetryLayer<P, C, L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterRetryLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl JitterRetryLayer {
    /// A builder for generic `Req: Clone` requests, with errors as failures.
    ///
    /// Defaults: 3 attempts, exponential backoff from 100 ms capped at 10 s
    /// with full jitter, no deadline, no attempt timeout, a fresh
    /// [`RetryBudget::new`] shared by clones, an unseeded [`SmallRng`].
    pub fn builder() -> JitterRetryBuilder {
        JitterRetryBuilder {
            name: Arc::from(LAYER),
            max_attempts: 3,
            backoff: Backoff::exponential(Duration::from_millis(100)),
            jitter: Jitter::Full,
            max_delay: Duration::from_secs(10),
            deadline: None,
            attempt_timeout: None,
            budget: BudgetChoice::Default,
            replay: CloneRequest,
            classifier: ErrorsFail,
            listener: NoopListener,
            seed: None,
            _rng: PhantomData,
        }
    }
}

impl<P, C, L, R> JitterRetryLayer<P, C, L, R> {
    /// The layer's name, used in events.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The retry budget, if any; clone it to share it with another layer.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.config.budget.as_ref()
    }

    /// Makes the layer's configuration live for the rest of the program, so
    /// that its services and their response futures hold a plain reference
    /// to it instead of a reference count.
    ///
    /// Every call then skips one atomic increment and one atomic decrement
    /// of a counter shared by all calls through the layer (see
    /// [`SharedState`]): 0.4–3.5 ns per call in this repository's benches on
    /// one core, more where many cores call through one layer. The
    /// configuration is never freed and its listener is never dropped: leak
    /// layers built once, at start-up, not per request or per key. The
    /// budget and seed sequence stay shared with clones made before the
    /// call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use seawall_retry::JitterRetryLayer;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Built once, when the client is set up.
    /// let retry = JitterRetryLayer::builder()
    ///     .max_attempts(3)
    ///     .deadline(Duration::from_secs(2))
    ///     .build()
    ///     .expect("valid retry settings")
    ///     .leak();
    ///
    /// let client = ServiceBuilder::new()
    ///     .layer(retry)
    ///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n + 1) }));
    /// assert_eq!(client.oneshot(41).await.unwrap(), 42);
    /// # }
    /// ```
    #[must_use]
    pub fn leak(self) -> Self {
        Self {
            config: self.config.leak(),
            _rng: PhantomData,
        }
    }
}

impl<S, P, C, L, R> Layer<S> for JitterRetryLayer<P, C, L, R> {
    type Service = JitterRetry<S, P, C, L, R>;

    fn layer(&self, inner: S) -> Self::Service {
        JitterRetry::new(inner, self.config.clone())
    }
}

#[derive(Debug, Clone)]
enum BudgetChoice {
    None,
    /// A fresh [`RetryBudget::new`], made in `build` so each built layer has
    /// its own.
    Default,
    Given(RetryBudget),
}

/// Builds a [`JitterRetryLayer`]; see [`JitterRetryLayer::builder`].
#[must_use]
pub struct JitterRetryBuilder<P = CloneRequest, C = ErrorsFail, L = NoopListener, R = SmallRng> {
    name: Arc<str>,
    max_attempts: u32,
    backoff: Backoff,
    jitter: Jitter,
    max_delay: Duration,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    budget: BudgetChoice,
    replay: P,
    classifier: C,
    listener: L,
    seed: Option<u64>,
    _rng: PhantomData<fn() -> R>,
}

impl<P, C, L, R> fmt::Debug for JitterRetryBuilder<P, C, L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterRetryBuilder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("max_delay", &self.max_delay)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl<P, C, L, R> JitterRetryBuilder<P, C, L, R> {
    /// The name used in events (default `"retry"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts in all, counting the first (default 3; at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff schedule (default exponential from 100 ms). A base delay
    /// longer than 365 days is refused by [`build`](Self::build).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The jitter (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The cap of every delay (default 10 s). A server hint longer than this
    /// ends retrying. A cap longer than 365 days is clamped to 365 days.
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.max_delay = cap.min(MAX_DURATION);
        self
    }

    /// A total time budget per request, from the call (default none).
    ///
    /// The request ends by the deadline: each attempt runs for at most the
    /// time left (and at most [`attempt_timeout`](Self::attempt_timeout)),
    /// no retry starts whose backoff would end at or past the deadline (the
    /// last failure is then returned as it is), and in HTTP mode reading the
    /// request body and waiting for the inner service's readiness stop at
    /// it too. A request cut short by the deadline fails with
    /// [`DeadlineExceeded`](crate::DeadlineExceeded), a timeout (`504`
    /// through `seawall::http::RejectionResponseLayer`). A deadline longer
    /// than 365 days is clamped to 365 days.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline.min(MAX_DURATION));
        self
    }

    /// A timeout of each attempt; an attempt that exceeds it fails with
    /// [`AttemptTimeout`](crate::AttemptTimeout) (default none), and is
    /// retried if attempts, deadline and budget allow. An attempt that
    /// reaches the [`deadline`](Self::deadline) first fails with
    /// [`DeadlineExceeded`](crate::DeadlineExceeded) instead. A timeout
    /// longer than 365 days is clamped to 365 days.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout.min(MAX_DURATION));
        self
    }

    /// Uses `budget`, which may be shared with other layers.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = BudgetChoice::Given(budget);
        self
    }

    /// Retries without a budget: only `max_attempts` limits them.
    pub fn no_budget(mut self) -> Self {
        self.budget = BudgetChoice::None;
        self
    }

    /// Seeds the jitter RNG, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// HTTP mode: [`HttpReplay`] (idempotent methods or `Idempotency-Key`,
    /// bodies buffered up to 64 KiB, server hints) and [`HttpClassifier`]
    /// (5xx, 408, 429 and transport errors fail).
    ///
    /// The inner service receives `http::Request<ReplayBody<B>>` for a
    /// request `http::Request<B>` (see [`ReplayBody`](crate::ReplayBody)): a
    /// hyper-util `Client` built with `build_http()` infers that body type,
    /// so it needs no annotation and no conversion. For a client already
    /// built for the caller's body type (`Client<_, Full<Bytes>>`), add
    /// `.replay(HttpReplay::new().original_body())`; for a tonic `Channel`,
    /// use `.grpc()` (feature `tonic`). See [`HttpReplay`] for
    /// the modes.
    pub fn http(self) -> JitterRetryBuilder<HttpReplay, HttpClassifier, L, R> {
        self.replay(HttpReplay::new())
            .classifier(HttpClassifier::new())
    }

    /// gRPC mode, in front of a tonic `Channel` (or any tonic
    /// `GrpcService`): the inner service receives
    /// `http::Request<tonic::body::Body>`, the type tonic clients send, so
    /// the layer goes between a generated client and its channel with no
    /// conversion. Failures are classified by
    /// [`GrpcClassifier`](seawall_core::GrpcClassifier) (`UNAVAILABLE`,
    /// `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`... in headers, trailers or
    /// a trailers-only answer), `grpc-retry-pushback-ms` is honoured, and
    /// request messages up to 64 KiB are buffered for replay.
    ///
    /// Every gRPC call is a `POST`, so this mode retries **every method**
    /// (`HttpReplay::any_method(true)`): use it on channels whose methods
    /// are safe to send twice. To retry only calls carrying an
    /// `idempotency-key` metadata entry, use
    /// `.grpc().replay(HttpReplay::new().tonic_body())`.
    ///
    /// ```
    /// use seawall_retry::JitterRetryLayer;
    ///
    /// let layer = JitterRetryLayer::builder().grpc().max_attempts(3).build().unwrap();
    /// # let _ = layer;
    /// // let channel = tonic::transport::Channel::from_static("http://[::1]:50051").connect_lazy();
    /// // let client = MyServiceClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
    /// ```
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc(
        self,
    ) -> JitterRetryBuilder<HttpReplay<crate::AsTonicBody>, seawall_core::GrpcClassifier, L, R>
    {
        self.replay(HttpReplay::new().any_method(true).tonic_body())
            .classifier(seawall_core::GrpcClassifier::new())
    }

    /// How requests are kept for replay.
    pub fn replay<P2>(self, replay: P2) -> JitterRetryBuilder<P2, C, L, R> {
        JitterRetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            budget: self.budget,
            replay,
            classifier: self.classifier,
            listener: self.listener,
            seed: self.seed,
            _rng: PhantomData,
        }
    }

    /// Which results are failures worth retrying. The classifier sees the
    /// error already boxed, so it can look for a concrete type with
    /// `err.is::<T>()`.
    pub fn classifier<C2>(self, classifier: C2) -> JitterRetryBuilder<P, C2, L, R> {
        JitterRetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            budget: self.budget,
            replay: self.replay,
            classifier,
            listener: self.listener,
            seed: self.seed,
            _rng: PhantomData,
        }
    }

    /// Receives [`RetryEvent`](crate::RetryEvent)s.
    pub fn listener<L2>(self, listener: L2) -> JitterRetryBuilder<P, C, L2, R> {
        JitterRetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            budget: self.budget,
            replay: self.replay,
            classifier: self.classifier,
            listener,
            seed: self.seed,
            _rng: PhantomData,
        }
    }

    /// The RNG type used for jitter (default [`SmallRng`]); any
    /// `SeedableRng + RngCore`, one instance per retried request.
    pub fn rng<R2>(self) -> JitterRetryBuilder<P, C, L, R2> {
        JitterRetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            budget: self.budget,
            replay: self.replay,
            classifier: self.classifier,
            listener: self.listener,
            seed: self.seed,
            _rng: PhantomData,
        }
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<JitterRetryLayer<P, C, L, R>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                LAYER,
                "max_attempts",
                "must be at least 1 (it counts the first attempt)",
            ));
        }
        if let Backoff::Exponential { base } = self.backoff {
            if base.is_zero() {
                return Err(ConfigError::new(
                    LAYER,
                    "backoff",
                    "exponential base must be greater than zero",
                ));
            }
        }
        if self.backoff.base() > MAX_DURATION {
            return Err(ConfigError::new(
                LAYER,
                "backoff",
                format!(
                    "base delay must be at most 365 days, got {:?}",
                    self.backoff.base()
                ),
            ));
        }
        if self.max_delay < self.backoff.base() {
            return Err(ConfigError::new(
                LAYER,
                "max_delay",
                format!(
                    "must be at least the backoff base ({:?}), got {:?}",
                    self.backoff.base(),
                    self.max_delay
                ),
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                LAYER,
                "deadline",
                "must be greater than zero",
            ));
        }
        if self.attempt_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                LAYER,
                "attempt_timeout",
                "must be greater than zero",
            ));
        }
        let budget = match self.budget {
            BudgetChoice::None => None,
            BudgetChoice::Default => Some(RetryBudget::new()),
            BudgetChoice::Given(b) => Some(b),
        };
        let seed = self
            .seed
            .unwrap_or_else(|| std::hash::RandomState::new().hash_one(0x5EA_3A11_u64));
        Ok(JitterRetryLayer {
            config: SharedState::new(Config {
                name: self.name,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                jitter: self.jitter,
                max_delay: self.max_delay,
                deadline: self.deadline,
                attempt_timeout: self.attempt_timeout,
                budget,
                replay: self.replay,
                classifier: self.classifier,
                listener: self.listener,
                seed,
                streams: AtomicU64::new(0),
            }),
            _rng: PhantomData,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_config_errors() {
        let field = |b: JitterRetryBuilder| b.build().unwrap_err().field();
        assert_eq!(
            field(JitterRetryLayer::builder().max_attempts(0)),
            "max_attempts"
        );
        assert_eq!(
            field(JitterRetryLayer::builder().backoff(Backoff::exponential(Duration::ZERO))),
            "backoff"
        );
        assert_eq!(
            field(JitterRetryLayer::builder().max_delay(Duration::from_millis(1))),
            "max_delay"
        );
        assert_eq!(
            field(JitterRetryLayer::builder().deadline(Duration::ZERO)),
            "deadline"
        );
        assert_eq!(
            field(JitterRetryLayer::builder().attempt_timeout(Duration::ZERO)),
            "attempt_timeout"
        );
        assert_eq!(
            field(JitterRetryLayer::builder().backoff(Backoff::constant(Duration::MAX))),
            "backoff"
        );
        assert_eq!(
            field(
                JitterRetryLayer::builder()
                    .backoff(Backoff::exponential(MAX_DURATION + Duration::from_nanos(1)))
                    .max_delay(Duration::MAX)
            ),
            "backoff"
        );
        let err = JitterRetryLayer::builder()
            .max_attempts(0)
            .build()
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid retry config: `max_attempts`"));
    }

    #[test]
    fn absurd_durations_are_clamped_to_a_year() {
        let layer = JitterRetryLayer::builder()
            .backoff(Backoff::constant(MAX_DURATION))
            .max_delay(Duration::MAX)
            .deadline(Duration::MAX)
            .attempt_timeout(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(layer.config.max_delay, MAX_DURATION);
        assert_eq!(layer.config.deadline, Some(MAX_DURATION));
        assert_eq!(layer.config.attempt_timeout, Some(MAX_DURATION));
        assert_eq!(MAX_DURATION, Duration::from_secs(365 * 86_400));
        let sane = JitterRetryLayer::builder()
            .max_delay(Duration::from_secs(3))
            .deadline(Duration::from_secs(5))
            .attempt_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(sane.config.max_delay, Duration::from_secs(3));
        assert_eq!(sane.config.deadline, Some(Duration::from_secs(5)));
        assert_eq!(sane.config.attempt_timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn clones_share_budget_and_seed_streams() {
        let layer = JitterRetryLayer::builder()
            .seed(9)
            .name("db")
            .build()
            .unwrap();
        let clone = layer.clone();
        assert_eq!(clone.name(), "db");
        assert!(layer.budget().unwrap().same_as(clone.budget().unwrap()));
        let first = layer.config.next_seed();
        let second = clone.config.next_seed();
        assert_eq!(first, 9);
        assert_ne!(first, second);
        assert!(JitterRetryLayer::builder()
            .no_budget()
            .build()
            .unwrap()
            .budget()
            .is_none());
    }
}
