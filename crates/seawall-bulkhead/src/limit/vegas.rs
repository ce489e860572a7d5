use std::time::Duration;

use seawall_core::ConfigError;

use super::{check_bounds, check_ratio, log10_step, AdaptiveLimit, Sample, LAYER};

/// Delay-based limit after TCP Vegas (Netflix's `VegasLimit`).
///
/// Tracks the no-load latency `rtt_noload` (the smallest latency seen) and
/// estimates how many calls are queued at the dependency:
///
/// ```text
/// queue = ceil(limit × (1 − rtt_noload / rtt))
/// ```
///
/// With `step = max(1, floor(log10(limit)))`, `alpha = 3 × step`,
/// `beta = 6 × step`, `threshold = step`:
///
/// - a dropped call: `limit − step`;
/// - otherwise, while at least half the permits are in use:
///   `queue ≤ threshold` → `limit + beta` (nothing queued, grow fast);
///   `queue < alpha` → `limit + step`; `queue > beta` → `limit − step`;
///   else unchanged.
///
/// The result is clamped to `[min_limit, max_limit]` and blended in with
/// `smoothing`. Every `probe_multiplier × limit` samples (scaled by a random
/// jitter in `[0.5, 1)`) the current latency is taken as the new no-load
/// latency, so a dependency that got permanently slower is not mistaken for
/// a queue forever.
///
/// Defaults (Netflix's): initial 20, max 1000, smoothing 1.0, probe
/// multiplier 30; min 1.
#[derive(Debug, Clone)]
pub struct Vegas {
    limit: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: usize,
    rtt_noload: Option<Duration>,
    probe_count: usize,
    probe_jitter: f64,
    rng: u64,
}

impl Vegas {
    /// A builder with Netflix's defaults.
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            smoothing: 1.0,
            probe_multiplier: 30,
            seed: 0x5eed_ba11_0fc0_ffee,
        }
    }

    /// splitmix64: the jitter only needs to keep pools from probing in
    /// lockstep, not to be unpredictable.
    fn next_jitter(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        0.5 + 0.5 * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn should_probe(&self) -> bool {
        self.probe_jitter * self.probe_multiplier as f64 * self.limit <= self.probe_count as f64
    }
}

impl AdaptiveLimit for Vegas {
    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let rtt = sample.rtt().max(Duration::from_nanos(1));
        self.probe_count += 1;
        if self.should_probe() {
            self.probe_jitter = self.next_jitter();
            self.probe_count = 0;
            self.rtt_noload = Some(rtt);
            return self.limit();
        }
        let noload = match self.rtt_noload {
            Some(noload) if rtt >= noload => noload,
            _ => {
                self.rtt_noload = Some(rtt);
                return self.limit();
            }
        };

        let limit = self.limit;
        let step = log10_step(limit);
        let next = if sample.dropped() {
            limit - step
        } else if (sample.in_flight() as f64) * 2.0 < limit {
            return self.limit();
        } else {
            let queue = (limit * (1.0 - noload.as_secs_f64() / rtt.as_secs_f64())).ceil();
            let (alpha, beta, threshold) = (3.0 * step, 6.0 * step, step);
            if queue <= threshold {
                limit + beta
            } else if queue < alpha {
                limit + step
            } else if queue > beta {
                limit - step
            } else {
                return self.limit();
            }
        };
        let next = next.clamp(self.min as f64, self.max as f64);
        self.limit = (1.0 - self.smoothing) * limit + self.smoothing * next;
        self.limit()
    }
}

/// Configures a [`Vegas`] limit.
#[derive(Debug, Clone)]
#[must_use]
pub struct VegasBuilder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: usize,
    seed: u64,
}

impl VegasBuilder {
    /// The limit before any sample (default 20).
    pub fn initial_limit(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }

    /// The floor of the limit (default 1).
    pub fn min_limit(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The ceiling of the limit (default 1000).
    pub fn max_limit(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// How much of each new estimate is blended in, in `(0, 1]` (default
    /// 1.0: no smoothing).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// Re-measure the no-load latency about every `n × limit` samples
    /// (default 30, at least 1).
    pub fn probe_multiplier(mut self, n: usize) -> Self {
        self.probe_multiplier = n;
        self
    }

    /// Seed of the probe jitter, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        check_bounds(self.initial, self.min, self.max)?;
        check_ratio("smoothing", self.smoothing, 0.0, 1.0)?;
        if self.probe_multiplier == 0 {
            return Err(ConfigError::new(
                LAYER,
                "probe_multiplier",
                "must be at least 1",
            ));
        }
        let mut vegas = Vegas {
            limit: self.initial as f64,
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            probe_multiplier: self.probe_multiplier,
            rtt_noload: None,
            probe_count: 0,
            probe_jitter: 1.0,
            rng: self.seed,
        };
        vegas.probe_jitter = vegas.next_jitter();
        Ok(vegas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn follows_the_queue_estimate() {
        let mut l = Vegas::builder()
            .initial_limit(20)
            .probe_multiplier(1000)
            .build()
            .unwrap();
        // The first sample only sets the no-load latency.
        assert_eq!(l.update(&Sample::new(ms(10), 20, false)), 20);
        // No queue: + beta (6 × 1).
        assert_eq!(l.update(&Sample::new(ms(10), 20, false)), 26);
        // queue = ceil(26 × (1 − 10/11)) = 3 → below alpha (3)? no, equal:
        // within [alpha, beta], unchanged.
        assert_eq!(l.update(&Sample::new(ms(11), 26, false)), 26);
        // queue = ceil(26 × 0.5) = 13 > beta: − 1.
        assert_eq!(l.update(&Sample::new(ms(20), 26, false)), 25);
        // A drop: − 1 whatever the latency.
        assert_eq!(l.update(&Sample::new(ms(10), 25, true)), 24);
        // App-limited: unchanged.
        assert_eq!(l.update(&Sample::new(ms(10), 3, false)), 24);
        // queue = ceil(24 × (1 − 10/10.5)) = 2 → between threshold and alpha: + 1.
        assert_eq!(
            l.update(&Sample::new(Duration::from_micros(10_500), 24, false)),
            25
        );
    }

    #[test]
    fn probes_the_noload_latency_periodically() {
        let mut l = Vegas::builder()
            .initial_limit(10)
            .probe_multiplier(1)
            .build()
            .unwrap();
        l.update(&Sample::new(ms(10), 10, false));
        assert_eq!(l.rtt_noload, Some(ms(10)));
        // Within at most `limit` samples the no-load latency is re-measured.
        for _ in 0..40 {
            l.update(&Sample::new(ms(30), 1, false));
        }
        assert_eq!(l.rtt_noload, Some(ms(30)));
        let j = l.next_jitter();
        assert!((0.5..1.0).contains(&j));
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(
            Vegas::builder()
                .probe_multiplier(0)
                .build()
                .unwrap_err()
                .field(),
            "probe_multiplier"
        );
        assert_eq!(
            Vegas::builder().smoothing(2.0).build().unwrap_err().field(),
            "smoothing"
        );
    }
}
