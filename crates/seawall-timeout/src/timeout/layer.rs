//! The adaptive timeout layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use seawall_core::{ConfigError, ErrorsFail, HttpClassifier, NoopListener};
use tokio::time::Instant;
use tower_layer::Layer;

use crate::deadline::{HttpDeadline, NoDeadline};
use crate::estimator::{Estimator, EstimatorConfig};
use crate::timeout::service::AdaptiveTimeout;

/// The layer name in configuration errors.
const LAYER: &str = "adaptive timeout";

/// State shared by the layer, its services and their response futures.
pub(crate) struct TimeoutShared<C, D, L> {
    pub(crate) estimator: Estimator,
    pub(crate) classifier: C,
    pub(crate) deadlines: D,
    pub(crate) listener: L,
    pub(crate) name: Arc<str>,
}

/// Times calls out after `clamp(percentile(p) x multiplier, floor, ceiling)`
/// of recent latencies, or the deadline the request carries when that comes
/// first.
///
/// The samples are the latencies of calls that made the caller wait and
/// succeeded, and, for calls the adaptive threshold timed out, the time
/// they waited (a lower bound of their latency, so that a latency above
/// the threshold can be learned). Failures, timeouts of a request's own
/// shorter deadline and calls answered on their first poll are not
/// samples. See the [crate documentation](crate).
///
/// Every service made by a layer (and every clone of one) shares its latency
/// window, so the estimate learns from all the traffic to the dependency.
///
/// The timeout counts from the first poll of the response future that finds
/// the call pending (when the caller starts waiting), or from `call` when
/// the request carries a deadline. A call answered on its first poll reads
/// no clock, arms no timer and is not a sample.
///
/// - `C` decides which answers feed the estimate: only
///   [`Outcome::Success`](seawall_core::Outcome::Success) does
///   ([`ErrorsFail`] by default: every `Ok`); timeouts do regardless.
/// - `D` reads the deadline a request carries ([`NoDeadline`] by default;
///   [`HttpDeadline`] with [`AdaptiveTimeoutBuilder::http`]).
/// - `L` receives a [`TimeoutEvent`](crate::TimeoutEvent) per timeout.
///
/// See the [crate documentation](crate) for the defaults and an example.
pub struct AdaptiveTimeoutLayer<C = ErrorsFail, D = NoDeadline, L = NoopListener> {
    shared: Arc<TimeoutShared<C, D, L>>,
}

impl<C, D, L> Clone for AdaptiveTimeoutLayer<C, D, L> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C, D, L> fmt::Debug for AdaptiveTimeoutLayer<C, D, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveTimeoutLayer")
            .field("name", &self.shared.name)
            .field("config", self.shared.estimator.config())
            .finish_non_exhaustive()
    }
}

impl AdaptiveTimeoutLayer {
    /// A builder with the defaults: p99 x 3 within [10 ms, 30 s], 1 s until
    /// 100 samples, a 30 s window in 10 slices, refreshed every 100 ms.
    pub fn builder() -> AdaptiveTimeoutBuilder {
        AdaptiveTimeoutBuilder {
            config: EstimatorConfig {
                quantile: 0.99,
                multiplier: 3.0,
                floor: Duration::from_millis(10),
                ceiling: Duration::from_secs(30),
                initial: Duration::from_secs(1),
                min_samples: 100,
                window: Duration::from_secs(30),
                slices: 10,
                refresh: Duration::from_millis(100),
            },
            classifier: ErrorsFail,
            deadlines: NoDeadline,
            listener: NoopListener,
            name: Arc::from("timeout"),
        }
    }
}

impl<C, D, L> AdaptiveTimeoutLayer<C, D, L> {
    /// The timeout a call starting now would get (before any deadline the
    /// request carries).
    pub fn timeout(&self) -> Duration {
        self.shared.estimator.current(Instant::now())
    }

    /// Samples in the window when the timeout was last computed: waited-for
    /// successes and adaptive timeouts.
    pub fn samples(&self) -> u64 {
        self.shared.estimator.samples()
    }

    /// The layer's name, used in events.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<S, C, D, L> Layer<S> for AdaptiveTimeoutLayer<C, D, L> {
    type Service = AdaptiveTimeout<S, C, D, L>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveTimeout::new(inner, self.shared.clone())
    }
}

/// Builds an [`AdaptiveTimeoutLayer`]; see [`AdaptiveTimeoutLayer::builder`].
#[must_use]
pub struct AdaptiveTimeoutBuilder<C = ErrorsFail, D = NoDeadline, L = NoopListener> {
    config: EstimatorConfig,
    classifier: C,
    deadlines: D,
    listener: L,
    name: Arc<str>,
}

impl<C, D, L> fmt::Debug for AdaptiveTimeoutBuilder<C, D, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveTimeoutBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C, D, L> AdaptiveTimeoutBuilder<C, D, L> {
    /// The percentile of the samples to start from, in `(0, 1)` (default
    /// 0.99).
    pub fn percentile(mut self, p: f64) -> Self {
        self.config.quantile = p;
        self
    }

    /// What the percentile is multiplied by, in `(0, 1000]` (default 3).
    pub fn multiplier(mut self, k: f64) -> Self {
        self.config.multiplier = k;
        self
    }

    /// The shortest timeout (default 10 ms).
    pub fn floor(mut self, d: Duration) -> Self {
        self.config.floor = d;
        self
    }

    /// The longest timeout (default 30 s): a sudden jump of the latency, or
    /// a dependency that hangs, raises the timeout no further (timeouts are
    /// samples, so it climbs there by the multiplier per refresh).
    pub fn ceiling(mut self, d: Duration) -> Self {
        self.config.ceiling = d;
        self
    }

    /// The fixed timeout used while the window holds fewer than
    /// `min_samples` samples (default 1 s). It is not clamped by
    /// floor and ceiling.
    pub fn initial_timeout(mut self, d: Duration) -> Self {
        self.config.initial = d;
        self
    }

    /// Samples the window must hold before the percentile is trusted
    /// (default 100, at least 1).
    pub fn min_samples(mut self, n: u64) -> Self {
        self.config.min_samples = n;
        self
    }

    /// How far back latencies count (default 30 s, at most 1 day).
    pub fn window(mut self, d: Duration) -> Self {
        self.config.window = d;
        self
    }

    /// Slices the window is divided into, in `[2, 64]` (default 10). The
    /// window slides one slice at a time, so it covers between
    /// `window * (slices - 1) / slices` and `window` of history; each slice
    /// costs 8 KiB.
    pub fn slices(mut self, n: u32) -> Self {
        self.config.slices = n;
        self
    }

    /// How often the timeout is recomputed from the window (default
    /// 100 ms, at most the window). In between, calls read a cached value.
    pub fn refresh(mut self, d: Duration) -> Self {
        self.config.refresh = d;
        self
    }

    /// The name used in events (default `"timeout"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Which results feed the estimate: only those it calls
    /// [`Outcome::Success`](seawall_core::Outcome::Success).
    pub fn classifier<C2>(self, classifier: C2) -> AdaptiveTimeoutBuilder<C2, D, L> {
        AdaptiveTimeoutBuilder {
            config: self.config,
            classifier,
            deadlines: self.deadlines,
            listener: self.listener,
            name: self.name,
        }
    }

    /// How the deadline a request carries is read.
    pub fn deadlines<D2>(self, deadlines: D2) -> AdaptiveTimeoutBuilder<C, D2, L> {
        AdaptiveTimeoutBuilder {
            config: self.config,
            classifier: self.classifier,
            deadlines,
            listener: self.listener,
            name: self.name,
        }
    }

    /// For `http` services: requests carry deadlines in `grpc-timeout` or a
    /// [`Deadline`](crate::Deadline) extension ([`HttpDeadline`]), and only
    /// responses [`HttpClassifier`] calls successes feed the estimate (a
    /// fast `503` says nothing about how long a real answer takes).
    pub fn http(self) -> AdaptiveTimeoutBuilder<HttpClassifier, HttpDeadline, L> {
        self.classifier(HttpClassifier::new())
            .deadlines(HttpDeadline)
    }

    /// The listener of [`TimeoutEvent`](crate::TimeoutEvent)s.
    pub fn listener<L2>(self, listener: L2) -> AdaptiveTimeoutBuilder<C, D, L2> {
        AdaptiveTimeoutBuilder {
            config: self.config,
            classifier: self.classifier,
            deadlines: self.deadlines,
            listener,
            name: self.name,
        }
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<AdaptiveTimeoutLayer<C, D, L>, ConfigError> {
        self.config.validate(LAYER)?;
        Ok(AdaptiveTimeoutLayer {
            shared: Arc::new(TimeoutShared {
                estimator: Estimator::new(self.config),
                classifier: self.classifier,
                deadlines: self.deadlines,
                listener: self.listener,
                name: self.name,
            }),
        })
    }
}
