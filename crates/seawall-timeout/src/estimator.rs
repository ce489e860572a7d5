//! The percentile estimator shared by both layers: a rolling latency
//! window and the cached `clamp(percentile x multiplier, floor, ceiling)`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use seawall_core::ConfigError;
use tokio::time::Instant;

use crate::window::{micros, value_of, LatencyWindow, BUCKETS};

/// The longest duration any setting may have: one day. Longer ones are
/// almost certainly a unit mistake (milliseconds given as seconds).
pub(crate) const MAX_SETTING: Duration = Duration::from_secs(24 * 60 * 60);

/// The settings of an estimator, validated by [`EstimatorConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EstimatorConfig {
    pub(crate) quantile: f64,
    pub(crate) multiplier: f64,
    pub(crate) floor: Duration,
    pub(crate) ceiling: Duration,
    pub(crate) initial: Duration,
    pub(crate) min_samples: u64,
    pub(crate) window: Duration,
    pub(crate) slices: u32,
    pub(crate) refresh: Duration,
}

impl EstimatorConfig {
    pub(crate) fn validate(&self, layer: &'static str) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError::new(layer, field, reason));
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return err(
                "percentile",
                format!("must be in (0, 1), got {}", self.quantile),
            );
        }
        if !(self.multiplier.is_finite() && self.multiplier > 0.0 && self.multiplier <= 1000.0) {
            return err(
                "multiplier",
                format!("must be in (0, 1000], got {}", self.multiplier),
            );
        }
        for (field, value) in [
            ("floor", self.floor),
            ("ceiling", self.ceiling),
            ("initial", self.initial),
            ("window", self.window),
            ("refresh", self.refresh),
        ] {
            if value.is_zero() || value > MAX_SETTING {
                return err(field, format!("must be in (0, 1 day], got {value:?}"));
            }
        }
        if self.floor > self.ceiling {
            return err(
                "floor",
                format!(
                    "must not exceed the ceiling ({:?} > {:?})",
                    self.floor, self.ceiling
                ),
            );
        }
        if self.min_samples == 0 {
            return err("min_samples", "must be at least 1".to_owned());
        }
        if !(2..=64).contains(&self.slices) {
            return err("slices", format!("must be in [2, 64], got {}", self.slices));
        }
        if self.window / self.slices < Duration::from_millis(1) {
            return err(
                "window",
                format!(
                    "must give slices of at least 1ms, got {:?} in {} slices",
                    self.window, self.slices
                ),
            );
        }
        if self.refresh > self.window {
            return err(
                "refresh",
                format!(
                    "must not exceed the window ({:?} > {:?})",
                    self.refresh, self.window
                ),
            );
        }
        Ok(())
    }
}

/// A percentile of recent latencies (what the layers record: calls that
/// made the caller wait), times a multiplier, within bounds; a fixed value
/// until the window holds `min_samples`.
#[derive(Debug)]
pub(crate) struct Estimator {
    window: LatencyWindow,
    config: EstimatorConfig,
    epoch: Instant,
    /// The current value, in µs: read on every call.
    current: AtomicU64,
    /// When `current` was last computed, in µs since `epoch`.
    refreshed_at: AtomicU64,
    /// Samples in the window at the last refresh.
    samples: AtomicU64,
}

impl Estimator {
    pub(crate) fn new(config: EstimatorConfig) -> Self {
        let slice = micros(config.window / config.slices).max(1);
        Self {
            window: LatencyWindow::new(config.slices as usize, slice),
            epoch: Instant::now(),
            current: AtomicU64::new(micros(config.initial)),
            refreshed_at: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            config,
        }
    }

    #[inline]
    fn since_epoch(&self, now: Instant) -> u64 {
        micros(now.saturating_duration_since(self.epoch))
    }

    /// The value to use for a call starting at `now`. Recomputed at most
    /// once per `refresh` (by the one caller that wins the CAS on the
    /// refresh stamp); everyone else reads the cached atomic.
    #[inline]
    pub(crate) fn current(&self, now: Instant) -> Duration {
        let at = self.since_epoch(now);
        let last = self.refreshed_at.load(Ordering::Relaxed);
        if at.saturating_sub(last) >= micros(self.config.refresh)
            && self
                .refreshed_at
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refresh_at(at);
        }
        Duration::from_micros(self.current.load(Ordering::Relaxed))
    }

    /// The cached value, without reading the clock or refreshing.
    #[inline]
    pub(crate) fn cached(&self) -> Duration {
        Duration::from_micros(self.current.load(Ordering::Relaxed))
    }

    /// Records a latency observed at `now`.
    #[inline]
    pub(crate) fn record(&self, now: Instant, latency: Duration) {
        self.window.record(self.since_epoch(now), micros(latency));
    }

    /// Samples in the window at the last refresh.
    pub(crate) fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    #[cold]
    #[inline(never)]
    fn refresh_at(&self, at: u64) {
        let mut histogram = [0u64; BUCKETS];
        let total = self.window.collect(at, &mut histogram);
        self.samples.store(total, Ordering::Relaxed);
        let c = &self.config;
        let value = if total < c.min_samples {
            micros(c.initial)
        } else {
            let q = quantile(&histogram, total, c.quantile) as f64 * c.multiplier;
            // Float to int casts saturate; the clamp keeps it in bounds.
            (q.round() as u64).clamp(micros(c.floor), micros(c.ceiling))
        };
        self.current.store(value, Ordering::Relaxed);
    }

    /// Recomputes now, whatever the refresh interval (tests).
    #[cfg(test)]
    pub(crate) fn refresh_now(&self, now: Instant) -> Duration {
        let at = self.since_epoch(now);
        self.refreshed_at.store(at, Ordering::Relaxed);
        self.refresh_at(at);
        Duration::from_micros(self.current.load(Ordering::Relaxed))
    }
}

/// The `q` quantile (in µs) of `total` samples counted in `histogram`: the
/// midpoint of the bucket holding the sample of rank `ceil(q * total)`.
fn quantile(histogram: &[u64; BUCKETS], total: u64, q: f64) -> u64 {
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total.max(1));
    let mut seen = 0;
    for (index, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return value_of(index);
        }
    }
    value_of(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EstimatorConfig {
        EstimatorConfig {
            quantile: 0.99,
            multiplier: 3.0,
            floor: Duration::from_millis(10),
            ceiling: Duration::from_secs(30),
            initial: Duration::from_secs(1),
            min_samples: 100,
            window: Duration::from_secs(30),
            slices: 10,
            refresh: Duration::from_millis(100),
        }
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        type Mutate = Box<dyn Fn(&mut EstimatorConfig)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("percentile", Box::new(|c| c.quantile = 1.0)),
            ("percentile", Box::new(|c| c.quantile = 0.0)),
            ("percentile", Box::new(|c| c.quantile = f64::NAN)),
            ("multiplier", Box::new(|c| c.multiplier = 0.0)),
            ("multiplier", Box::new(|c| c.multiplier = -1.0)),
            ("multiplier", Box::new(|c| c.multiplier = f64::NAN)),
            ("multiplier", Box::new(|c| c.multiplier = f64::INFINITY)),
            ("floor", Box::new(|c| c.floor = Duration::ZERO)),
            ("floor", Box::new(|c| c.floor = Duration::from_secs(31))),
            ("ceiling", Box::new(|c| c.ceiling = Duration::MAX)),
            ("initial", Box::new(|c| c.initial = Duration::ZERO)),
            ("window", Box::new(|c| c.window = Duration::from_millis(5))),
            ("refresh", Box::new(|c| c.refresh = Duration::from_secs(31))),
            ("slices", Box::new(|c| c.slices = 1)),
            ("min_samples", Box::new(|c| c.min_samples = 0)),
        ];
        for (field, mutate) in cases {
            let mut c = config();
            mutate(&mut c);
            let err = c.validate("adaptive timeout").unwrap_err();
            assert_eq!(err.field(), field, "{err}");
        }
        assert!(config().validate("adaptive timeout").is_ok());
    }

    #[test]
    fn quantile_of_a_histogram() {
        let mut h = [0u64; BUCKETS];
        h[10] = 90;
        h[50] = 10;
        assert_eq!(quantile(&h, 100, 0.5), 10);
        assert_eq!(quantile(&h, 100, 0.9), 10);
        assert_eq!(quantile(&h, 100, 0.91), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_until_min_samples_then_clamped() {
        let e = Estimator::new(config());
        let now = Instant::now();
        for _ in 0..99 {
            e.record(now, Duration::from_micros(500));
        }
        assert_eq!(e.refresh_now(now), Duration::from_secs(1), "99 < 100");
        e.record(now, Duration::from_micros(500));
        // p99 = 0.5 ms, x3 = 1.5 ms, below the floor.
        assert_eq!(e.refresh_now(now), Duration::from_millis(10));
        assert_eq!(e.samples(), 100);
        for _ in 0..10_000 {
            e.record(now, Duration::from_secs(60));
        }
        assert_eq!(e.refresh_now(now), Duration::from_secs(30), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_once_per_interval() {
        let e = Estimator::new(config());
        let start = Instant::now();
        for _ in 0..200 {
            e.record(start, Duration::from_millis(20));
        }
        assert_eq!(e.current(start), Duration::from_secs(1), "not yet due");
        let later = start + Duration::from_millis(100);
        let value = e.current(later);
        assert!(
            (value.as_secs_f64() - 0.060).abs() < 0.060 * 0.02,
            "{value:?}"
        );
    }

    proptest::proptest! {
        /// The percentile read from the histogram is within half a bucket
        /// (1/64, 1.6%) of the exact order statistic of the same samples.
        #[test]
        fn quantiles_are_within_two_percent(
            samples in proptest::collection::vec(0u64..50_000_000, 1..2_000),
            q in 0.01f64..0.999,
        ) {
            let window = LatencyWindow::new(2, 1_000_000);
            for &s in &samples {
                window.record(0, s);
            }
            let mut histogram = [0u64; BUCKETS];
            let total = window.collect(0, &mut histogram);
            proptest::prop_assert_eq!(total, samples.len() as u64);
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            let rank = ((q * total as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1] as f64;
            let estimate = quantile(&histogram, total, q) as f64;
            proptest::prop_assert!(
                (estimate - exact).abs() <= (exact / 64.0).max(0.5),
                "q {} exact {} estimate {}", q, exact, estimate
            );
        }
    }
}
