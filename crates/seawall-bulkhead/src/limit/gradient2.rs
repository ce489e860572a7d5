use seawall_core::ConfigError;

use super::{check_bounds, check_ratio, AdaptiveLimit, Sample, LAYER};

/// Latency-gradient limit (Netflix's `Gradient2Limit`).
///
/// Keeps a long-term exponential average of latency (`long_rtt`, a window of
/// `long_window` samples after a plain average over the first 10) and
/// compares each call's latency (`short_rtt`) with it:
///
/// ```text
/// gradient  = clamp(long_rtt / short_rtt, 0.5, 1.0)
/// new_limit = limit × gradient + queue_size
/// limit     = limit × (1 − smoothing) + new_limit × smoothing
/// ```
///
/// clamped to `[min_limit, max_limit]`. While latency is flat the gradient is
/// 1 and the limit grows by `queue_size × smoothing` per call; once queueing
/// raises latency the gradient falls and the limit with it. The gradient is
/// never below 0.5, so one outlier cannot halve the limit. When the long
/// average is more than twice the current latency (load has just gone away),
/// it is cut by 10% per call to recover quickly. Calls made while fewer than
/// half the permits were in use do not move the limit.
///
/// Defaults (Netflix's): initial 20, min 20, max 200, smoothing 0.2, queue
/// size 4, long window 600.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    limit: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    queue_size: f64,
    long_rtt: ExpAverage,
}

/// Netflix's `ExpAvgMeasurement`: a plain mean over a warm-up, then an
/// exponential moving average with factor `2 / (window + 1)`.
#[derive(Debug, Clone)]
struct ExpAverage {
    value: f64,
    sum: f64,
    count: usize,
    warmup: usize,
    factor: f64,
}

impl ExpAverage {
    fn new(window: usize, warmup: usize) -> Self {
        Self {
            value: 0.0,
            sum: 0.0,
            count: 0,
            warmup,
            factor: 2.0 / (window as f64 + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / self.count as f64;
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

impl Gradient2 {
    /// A builder with Netflix's defaults.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            initial: 20,
            min: 20,
            max: 200,
            smoothing: 0.2,
            queue_size: 4,
            long_window: 600,
        }
    }
}

impl AdaptiveLimit for Gradient2 {
    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        // Latency in nanoseconds; a zero-length call would make the ratio
        // infinite, so floor it at one nanosecond.
        let short_rtt = (sample.rtt().as_nanos() as f64).max(1.0);
        let long_rtt = self.long_rtt.add(short_rtt);
        if long_rtt / short_rtt > 2.0 {
            self.long_rtt.value *= 0.9;
        }
        if (sample.in_flight() as f64) < self.limit / 2.0 {
            return self.limit();
        }
        let gradient = (long_rtt / short_rtt).clamp(0.5, 1.0);
        let next = self.limit * gradient + self.queue_size;
        let next = self.limit * (1.0 - self.smoothing) + next * self.smoothing;
        self.limit = next.clamp(self.min as f64, self.max as f64);
        self.limit()
    }
}

/// Configures a [`Gradient2`] limit.
#[derive(Debug, Clone)]
#[must_use]
pub struct Gradient2Builder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    queue_size: usize,
    long_window: usize,
}

impl Gradient2Builder {
    /// The limit before any sample (default 20).
    pub fn initial_limit(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }

    /// The floor of the limit (default 20, at least 1).
    pub fn min_limit(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The ceiling of the limit (default 200).
    pub fn max_limit(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// How much of each new estimate is blended in, in `(0, 1]` (default 0.2).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// The headroom added to each estimate, so the limit keeps probing
    /// upwards while latency is flat (default 4).
    pub fn queue_size(mut self, n: usize) -> Self {
        self.queue_size = n;
        self
    }

    /// The number of samples the long-term latency average spans (default
    /// 600, at least 10).
    pub fn long_window(mut self, n: usize) -> Self {
        self.long_window = n;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        check_bounds(self.initial, self.min, self.max)?;
        check_ratio("smoothing", self.smoothing, 0.0, 1.0)?;
        if self.long_window < 10 {
            return Err(ConfigError::new(
                LAYER,
                "long_window",
                format!("must be at least 10, got {}", self.long_window),
            ));
        }
        Ok(Gradient2 {
            limit: self.initial as f64,
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            queue_size: self.queue_size as f64,
            long_rtt: ExpAverage::new(self.long_window, 10),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_while_flat_and_shrinks_when_latency_rises() {
        let mut l = Gradient2::builder()
            .initial_limit(20)
            .min_limit(1)
            .build()
            .unwrap();
        for _ in 0..20 {
            l.update(&Sample::new(ms(10), 20, false));
        }
        // 20 calls at flat latency: +0.8 each.
        assert_eq!(l.limit(), 36);
        let before = l.limit;
        l.update(&Sample::new(ms(20), 36, false));
        // long ≈ 10.0x ms, short 20 ms: gradient ≈ 0.5.
        let expected = before * 0.8 + (before * 0.5 + 4.0) * 0.2;
        assert!(
            (l.limit - expected).abs() < 0.1,
            "{} vs {expected}",
            l.limit
        );
        // App-limited samples change nothing.
        let now = l.limit;
        l.update(&Sample::new(ms(50), 1, false));
        assert!((l.limit - now).abs() < f64::EPSILON);
    }

    #[test]
    fn long_average_warms_up_then_decays() {
        let mut avg = ExpAverage::new(600, 10);
        assert!((avg.add(10.0) - 10.0).abs() < 1e-9);
        assert!((avg.add(20.0) - 15.0).abs() < 1e-9);
        for _ in 0..8 {
            avg.add(15.0);
        }
        let v = avg.add(616.0);
        assert!((v - (15.0 * (1.0 - 2.0 / 601.0) + 616.0 * 2.0 / 601.0)).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(
            Gradient2::builder()
                .smoothing(0.0)
                .build()
                .unwrap_err()
                .field(),
            "smoothing"
        );
        assert_eq!(
            Gradient2::builder()
                .long_window(3)
                .build()
                .unwrap_err()
                .field(),
            "long_window"
        );
        assert_eq!(
            Gradient2::builder()
                .max_limit(10)
                .build()
                .unwrap_err()
                .field(),
            "max_limit"
        );
    }
}
