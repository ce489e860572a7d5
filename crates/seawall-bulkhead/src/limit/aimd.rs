use std::time::Duration;

use seawall_core::ConfigError;

use super::{check_bounds, check_ratio, AdaptiveLimit, Sample, LAYER};

/// Additive increase, multiplicative decrease (Netflix's `AIMDLimit`).
///
/// On a dropped call (classified failure) or a call slower than `timeout`:
/// `limit = limit × backoff_ratio`. Otherwise, if the pool was at least half
/// used when the call started (`in_flight × 2 ≥ limit`; growing an idle
/// pool's limit proves nothing): `limit = limit + 1`. The result is clamped
/// to `[min_limit, max_limit]`.
///
/// Defaults (Netflix's): initial 20, min 20, max 200, backoff ratio 0.9,
/// timeout 5 s.
///
/// ```
/// use seawall_bulkhead::limit::{AdaptiveLimit, Aimd, Sample};
/// use std::time::Duration;
///
/// let mut aimd = Aimd::builder().initial_limit(10).min_limit(1).build().unwrap();
/// let fast = Duration::from_millis(5);
/// assert_eq!(aimd.update(&Sample::new(fast, 10, false)), 11);
/// assert_eq!(aimd.update(&Sample::new(fast, 11, true)), 9); // 11 × 0.9, floored
/// ```
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Aimd {
    /// A builder with Netflix's defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            initial: 20,
            min: 20,
            max: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AdaptiveLimit for Aimd {
    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let next = if sample.dropped() || sample.rtt() > self.timeout {
            (self.limit as f64 * self.backoff_ratio) as usize
        } else if sample.in_flight().saturating_mul(2) >= self.limit {
            self.limit.saturating_add(1)
        } else {
            self.limit
        };
        self.limit = next.clamp(self.min, self.max);
        self.limit
    }
}

/// Configures an [`Aimd`] limit.
#[derive(Debug, Clone)]
#[must_use]
pub struct AimdBuilder {
    initial: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl AimdBuilder {
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

    /// The factor applied on a drop, in `(0, 1)` (default 0.9).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// Calls slower than this count as drops (default 5 s; longer than 365
    /// days is clamped to 365 days).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.min(crate::pool::MAX_DURATION);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        check_bounds(self.initial, self.min, self.max)?;
        check_ratio("backoff_ratio", self.backoff_ratio, 0.0, 1.0)?;
        if (self.backoff_ratio - 1.0).abs() < f64::EPSILON {
            return Err(ConfigError::new(LAYER, "backoff_ratio", "must be below 1"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(LAYER, "timeout", "must be positive"));
        }
        Ok(Aimd {
            limit: self.initial,
            min: self.min,
            max: self.max,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_when_busy_and_backs_off_on_drop_or_slow_call() {
        let mut l = Aimd::builder()
            .initial_limit(20)
            .min_limit(5)
            .max_limit(22)
            .timeout(100 * MS)
            .build()
            .unwrap();
        // App-limited: fewer than half the permits in use, no growth.
        assert_eq!(l.update(&Sample::new(MS, 9, false)), 20);
        assert_eq!(l.update(&Sample::new(MS, 10, false)), 21);
        assert_eq!(l.update(&Sample::new(MS, 21, false)), 22);
        assert_eq!(l.update(&Sample::new(MS, 22, false)), 22, "clamped to max");
        assert_eq!(
            l.update(&Sample::new(200 * MS, 22, false)),
            19,
            "slow = drop"
        );
        assert_eq!(l.update(&Sample::new(MS, 19, true)), 17);
        for _ in 0..50 {
            l.update(&Sample::new(MS, 1, true));
        }
        assert_eq!(l.limit(), 5, "clamped to min");
    }

    #[test]
    fn extreme_samples_and_bounds_do_not_overflow() {
        let mut l = Aimd::builder()
            .initial_limit(usize::MAX - 1)
            .min_limit(1)
            .max_limit(usize::MAX)
            .build()
            .unwrap();
        assert_eq!(l.update(&Sample::new(MS, usize::MAX, false)), usize::MAX);
        assert_eq!(l.update(&Sample::new(MS, usize::MAX, false)), usize::MAX);
        assert!(l.update(&Sample::new(Duration::MAX, 1, false)) < usize::MAX);
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(
            Aimd::builder()
                .backoff_ratio(1.0)
                .build()
                .unwrap_err()
                .field(),
            "backoff_ratio"
        );
        assert_eq!(
            Aimd::builder()
                .backoff_ratio(0.0)
                .build()
                .unwrap_err()
                .field(),
            "backoff_ratio"
        );
        assert_eq!(
            Aimd::builder()
                .timeout(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            "timeout"
        );
        assert_eq!(
            Aimd::builder().min_limit(0).build().unwrap_err().field(),
            "min_limit"
        );
    }
}
