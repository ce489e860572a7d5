//! The hedge layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use seawall_core::{ConfigError, ErrorsFail, HttpClassifier, NoopListener};
use seawall_retry::RetryBudget;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::estimator::{Estimator, EstimatorConfig, MAX_SETTING};
use crate::hedge::policy::{CloneRequests, HttpRequests};
use crate::hedge::service::Hedge;

/// The layer name in configuration errors.
const LAYER: &str = "hedge";

/// The most hedges per request [`HedgeBuilder::max_hedges`] accepts.
pub const MAX_HEDGES: u32 = 8;

/// The default [`HedgeBuilder::budget_reserve`] is what this many hedgeable
/// requests earn at the budget ratio.
const RESERVE_REQUESTS: f64 = 100.0;

pub(crate) enum HedgeDelay {
    Fixed(Duration),
    Adaptive(Estimator),
}

/// State shared by the layer, its services and their response futures.
pub(crate) struct HedgeShared<P, C, L> {
    pub(crate) policy: P,
    pub(crate) classifier: C,
    pub(crate) listener: L,
    pub(crate) name: Arc<str>,
    pub(crate) budget: RetryBudget,
    pub(crate) max_hedges: u32,
    pub(crate) delay: HedgeDelay,
}

impl<P, C, L> HedgeShared<P, C, L> {
    /// The hedge delay for an attempt sent at `now`.
    #[inline]
    pub(crate) fn delay(&self, now: Instant) -> Duration {
        match &self.delay {
            HedgeDelay::Fixed(d) => *d,
            HedgeDelay::Adaptive(e) => e.current(now),
        }
    }

    /// The estimator, when the delay is adaptive.
    #[inline]
    pub(crate) fn estimator(&self) -> Option<&Estimator> {
        match &self.delay {
            HedgeDelay::Fixed(_) => None,
            HedgeDelay::Adaptive(e) => Some(e),
        }
    }
}

/// Sends one more attempt of a request that is slower than the hedge delay;
/// the first success wins and the other attempts are dropped (cancelled).
///
/// - `P` is the [`HedgePolicy`](crate::HedgePolicy): which requests are safe
///   to send twice and how they are kept ([`CloneRequests`] by default,
///   [`HttpRequests`] with [`HedgeBuilder::http`]).
/// - `C` decides which results are successes: only a success wins while
///   another attempt is still running ([`ErrorsFail`] by default); `P` also
///   holds back answers that say another attempt is in flight
///   ([`HedgeResponse`](crate::HedgeResponse)).
/// - `L` receives [`HedgeEvent`](crate::HedgeEvent)s.
///
/// Every service made by a layer (and every clone of one) shares its
/// latency window and its hedge budget.
///
/// The delay counts from the first poll of the response future that finds
/// the first attempt pending. Each hedge is a clone of the inner service,
/// readied inside the response future before the hedge is sent.
///
/// See the [crate documentation](crate) for the defaults and an example.
pub struct HedgeLayer<P = CloneRequests, C = ErrorsFail, L = NoopListener> {
    shared: Arc<HedgeShared<P, C, L>>,
}

impl<P, C, L> Clone for HedgeLayer<P, C, L> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<P: fmt::Debug, C, L> fmt::Debug for HedgeLayer<P, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("name", &self.shared.name)
            .field("policy", &self.shared.policy)
            .field("max_hedges", &self.shared.max_hedges)
            .finish_non_exhaustive()
    }
}

impl HedgeLayer {
    /// A builder with the defaults: hedge at the p95 of successful latencies
    /// within [1 ms, 10 s] (50 ms until 100 samples, over a 30 s window), at
    /// most one hedge per request, hedges at most 5% of requests.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            config: EstimatorConfig {
                quantile: 0.95,
                multiplier: 1.0,
                floor: Duration::from_millis(1),
                ceiling: Duration::from_secs(10),
                initial: Duration::from_millis(50),
                min_samples: 100,
                window: Duration::from_secs(30),
                slices: 10,
                refresh: Duration::from_millis(100),
            },
            fixed: None,
            budget: None,
            budget_ratio: 0.05,
            budget_reserve: None,
            max_hedges: 1,
            policy: CloneRequests::new(),
            classifier: ErrorsFail,
            listener: NoopListener,
            name: Arc::from("hedge"),
        }
    }
}

impl<P, C, L> HedgeLayer<P, C, L> {
    /// The delay after which a request starting now would be hedged.
    pub fn delay(&self) -> Duration {
        self.shared.delay(Instant::now())
    }

    /// The hedge budget (shared by every service of the layer).
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// The layer's name, used in events.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<S, P, C, L> Layer<S> for HedgeLayer<P, C, L> {
    type Service = Hedge<S, P, C, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::new(inner, self.shared.clone())
    }
}

/// Builds a [`HedgeLayer`]; see [`HedgeLayer::builder`].
#[must_use]
pub struct HedgeBuilder<P = CloneRequests, C = ErrorsFail, L = NoopListener> {
    config: EstimatorConfig,
    fixed: Option<Duration>,
    budget: Option<RetryBudget>,
    budget_ratio: f64,
    budget_reserve: Option<u32>,
    max_hedges: u32,
    policy: P,
    classifier: C,
    listener: L,
    name: Arc<str>,
}

impl<P: fmt::Debug, C, L> fmt::Debug for HedgeBuilder<P, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("fixed", &self.fixed)
            .field("budget_ratio", &self.budget_ratio)
            .field("budget_reserve", &self.budget_reserve)
            .field("max_hedges", &self.max_hedges)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<P, C, L> HedgeBuilder<P, C, L> {
    /// Hedges after a fixed delay instead of an adaptive one.
    pub fn delay(mut self, d: Duration) -> Self {
        self.fixed = Some(d);
        self
    }

    /// Hedges after this percentile of recent successful latencies, in
    /// `(0, 1)` (default 0.95); undoes [`delay`](Self::delay).
    pub fn percentile(mut self, p: f64) -> Self {
        self.config.quantile = p;
        self.fixed = None;
        self
    }

    /// What the percentile is multiplied by, in `(0, 1000]` (default 1).
    pub fn multiplier(mut self, k: f64) -> Self {
        self.config.multiplier = k;
        self
    }

    /// The shortest adaptive delay (default 1 ms).
    pub fn min_delay(mut self, d: Duration) -> Self {
        self.config.floor = d;
        self
    }

    /// The longest adaptive delay (default 10 s).
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.config.ceiling = d;
        self
    }

    /// The delay used while the window holds fewer than `min_samples`
    /// latencies (default 50 ms).
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.config.initial = d;
        self
    }

    /// Latencies the window must hold before the percentile is trusted
    /// (default 100, at least 1).
    pub fn min_samples(mut self, n: u64) -> Self {
        self.config.min_samples = n;
        self
    }

    /// How far back latencies count (default 30 s).
    pub fn window(mut self, d: Duration) -> Self {
        self.config.window = d;
        self
    }

    /// Slices of the window, in `[2, 64]` (default 10).
    pub fn slices(mut self, n: u32) -> Self {
        self.config.slices = n;
        self
    }

    /// How often the delay is recomputed (default 100 ms).
    pub fn refresh(mut self, d: Duration) -> Self {
        self.config.refresh = d;
        self
    }

    /// Hedges allowed per hedgeable request, in `[0, 1]` (default 0.05):
    /// every hedgeable request earns that share of a token, every hedge
    /// spends one. The budget starts empty and saves at most
    /// [`budget_reserve`](Self::budget_reserve) tokens (by default what 100
    /// requests earn: 5 at 5%), so over any run of `n` hedgeable requests,
    /// hedges number at most `ratio x (n + 100)`, however calm the traffic
    /// was before: at most 5.5% of 1,000 requests, 5.05% of 10,000.
    pub fn budget_ratio(mut self, ratio: f64) -> Self {
        self.budget_ratio = ratio;
        self.budget = None;
        self
    }

    /// The most unspent hedge tokens the budget saves, at least 1 (default:
    /// what 100 hedgeable requests earn, `ceil(budget_ratio x 100)`, at
    /// least 1; 5 at the default 5%).
    ///
    /// Tokens saved during calm traffic are spent in the next slowdown on
    /// top of what that slowdown earns: over any run of `n` hedgeable
    /// requests, hedges number at most `budget_ratio x n + reserve`. A
    /// reserve lets slow requests that come close together all be hedged
    /// (with none, a hedge must wait for the next token); too large a one
    /// turns a calm period into a burst of extra load when the dependency
    /// slows down (a reserve of 100, the retry budget's default, let a 5%
    /// budget send 14.9% extra requests in the first 1,000 of a slowdown).
    ///
    /// Applies to the budget made from
    /// [`budget_ratio`](Self::budget_ratio), not to one given with
    /// [`budget`](Self::budget) (whose own `max_tokens` applies).
    pub fn budget_reserve(mut self, tokens: u32) -> Self {
        self.budget_reserve = Some(tokens);
        self.budget = None;
        self
    }

    /// Uses (and shares) `budget` instead of making one from
    /// [`budget_ratio`](Self::budget_ratio); e.g. one budget for hedges and
    /// retries to the same dependency. Its `max_tokens` and `min_per_sec`
    /// then bound the extra load (`ratio x n + max_tokens`, plus
    /// `min_per_sec` per second); keep them small.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Hedges per request at most, in `[1, 8]` (default 1). Each waits the
    /// delay after the previous attempt.
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// The name used in events (default `"hedge"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Which requests may be hedged and how they are kept.
    pub fn policy<P2>(self, policy: P2) -> HedgeBuilder<P2, C, L> {
        HedgeBuilder {
            config: self.config,
            fixed: self.fixed,
            budget: self.budget,
            budget_ratio: self.budget_ratio,
            budget_reserve: self.budget_reserve,
            max_hedges: self.max_hedges,
            policy,
            classifier: self.classifier,
            listener: self.listener,
            name: self.name,
        }
    }

    /// Which results are successes.
    pub fn classifier<C2>(self, classifier: C2) -> HedgeBuilder<P, C2, L> {
        HedgeBuilder {
            config: self.config,
            fixed: self.fixed,
            budget: self.budget,
            budget_ratio: self.budget_ratio,
            budget_reserve: self.budget_reserve,
            max_hedges: self.max_hedges,
            policy: self.policy,
            classifier,
            listener: self.listener,
            name: self.name,
        }
    }

    /// For `http` services: [`HttpRequests`] (idempotent or keyed requests
    /// only) and [`HttpClassifier`]. Add gRPC methods with
    /// `.policy(HttpRequests::new().grpc_method(..))`.
    pub fn http(self) -> HedgeBuilder<HttpRequests, HttpClassifier, L> {
        self.policy(HttpRequests::new())
            .classifier(HttpClassifier::new())
    }

    /// The listener of [`HedgeEvent`](crate::HedgeEvent)s.
    pub fn listener<L2>(self, listener: L2) -> HedgeBuilder<P, C, L2> {
        HedgeBuilder {
            config: self.config,
            fixed: self.fixed,
            budget: self.budget,
            budget_ratio: self.budget_ratio,
            budget_reserve: self.budget_reserve,
            max_hedges: self.max_hedges,
            policy: self.policy,
            classifier: self.classifier,
            listener,
            name: self.name,
        }
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<HedgeLayer<P, C, L>, ConfigError> {
        let delay = match self.fixed {
            Some(d) if d.is_zero() || d > MAX_SETTING => {
                return Err(ConfigError::new(
                    LAYER,
                    "delay",
                    format!("must be in (0, 1 day], got {d:?}"),
                ));
            }
            Some(d) => HedgeDelay::Fixed(d),
            None => {
                self.config.validate(LAYER)?;
                HedgeDelay::Adaptive(Estimator::new(self.config))
            }
        };
        if !(1..=MAX_HEDGES).contains(&self.max_hedges) {
            return Err(ConfigError::new(
                LAYER,
                "max_hedges",
                format!("must be in [1, {MAX_HEDGES}], got {}", self.max_hedges),
            ));
        }
        let budget = if let Some(b) = self.budget {
            b
        } else {
            if !(0.0..=1.0).contains(&self.budget_ratio) {
                return Err(ConfigError::new(
                    LAYER,
                    "budget_ratio",
                    format!("must be in [0, 1], got {}", self.budget_ratio),
                ));
            }
            let reserve = match self.budget_reserve {
                Some(0) => {
                    return Err(ConfigError::new(
                        LAYER,
                        "budget_reserve",
                        "must be at least 1 (a hedge spends one whole token)",
                    ));
                }
                Some(tokens) => tokens,
                // At most 100: the ratio is at most 1.
                None => ((self.budget_ratio * RESERVE_REQUESTS).ceil() as u32).max(1),
            };
            RetryBudget::builder()
                .ratio(self.budget_ratio)
                .min_per_sec(0)
                .max_tokens(reserve)
                .build()?
        };
        Ok(HedgeLayer {
            shared: Arc::new(HedgeShared {
                policy: self.policy,
                classifier: self.classifier,
                listener: self.listener,
                name: self.name,
                budget,
                max_hedges: self.max_hedges,
                delay,
            }),
        })
    }
}
