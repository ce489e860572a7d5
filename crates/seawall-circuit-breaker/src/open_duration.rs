//! How long the breaker stays open after a trip.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use seawall_core::ConfigError;

use crate::layer::LAYER;

/// How long the breaker stays open after it trips, before it lets probes
/// through.
///
/// [`fixed`](OpenDuration::fixed) always waits the same time.
/// [`exponential`](OpenDuration::exponential) waits longer after each trip
/// that follows a failed half-open attempt (`base × multiplierⁿ`, capped at
/// `max`), so a dependency that keeps failing its probes is probed less and
/// less often; a successful close starts again from `base`. With
/// [`jitter`](OpenDuration::jitter), each wait is shortened by a random
/// fraction so that many breakers tripped together do not probe together.
///
/// A `Duration` converts into a fixed open duration.
///
/// ```
/// use std::time::Duration;
/// use seawall_circuit_breaker::OpenDuration;
///
/// let backoff = OpenDuration::exponential(Duration::from_secs(1), Duration::from_secs(60))
///     .multiplier(3.0)
///     .jitter(0.2);
/// assert_eq!(backoff.base(), Duration::from_secs(1));
/// assert_eq!(OpenDuration::from(Duration::from_secs(5)), OpenDuration::fixed(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenDuration {
    base: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
    seed: Option<u64>,
}

impl OpenDuration {
    /// Always stay open for `duration`.
    pub const fn fixed(duration: Duration) -> Self {
        Self {
            base: duration,
            max: duration,
            multiplier: 1.0,
            jitter: 0.0,
            seed: None,
        }
    }

    /// Stay open `base` after the first trip, twice as long after each
    /// further trip without a successful close, never more than `max`.
    pub const fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            multiplier: 2.0,
            jitter: 0.0,
            seed: None,
        }
    }

    /// The growth factor between consecutive trips (at least 1).
    #[must_use]
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Shortens each wait by a uniformly random fraction in `[0, jitter]`
    /// (`jitter` in `[0, 1]`).
    #[must_use]
    pub const fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter so a test sees the same waits every run.
    #[must_use]
    pub const fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The wait after the first trip.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The longest wait.
    pub const fn max(&self) -> Duration {
        self.max
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.base.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "open_duration",
                "must be greater than zero",
            ));
        }
        if self.max < self.base {
            return Err(ConfigError::new(
                LAYER,
                "open_duration",
                format!(
                    "max ({:?}) must not be below base ({:?})",
                    self.max, self.base
                ),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::new(
                LAYER,
                "open_duration",
                format!(
                    "multiplier must be a finite number of at least 1, got {}",
                    self.multiplier
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                LAYER,
                "open_duration",
                format!("jitter must be in [0, 1], got {}", self.jitter),
            ));
        }
        Ok(())
    }

    pub(crate) fn initial_rng(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            // A per-process random seed without an RNG dependency.
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        })
    }

    /// The wait after the `trips`-th consecutive trip (1-based).
    pub(crate) fn for_trip(&self, trips: u32, rng: &mut u64) -> Duration {
        let exp = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.base.as_secs_f64() * self.multiplier.powi(exp);
        let capped = if grown.is_finite() {
            grown.min(self.max.as_secs_f64())
        } else {
            self.max.as_secs_f64()
        };
        let jittered = if self.jitter > 0.0 {
            capped * (1.0 - self.jitter * unit(rng))
        } else {
            capped
        };
        Duration::try_from_secs_f64(jittered)
            .unwrap_or(self.max)
            .max(Duration::from_nanos(1))
    }
}

impl From<Duration> for OpenDuration {
    fn from(duration: Duration) -> Self {
        Self::fixed(duration)
    }
}

/// splitmix64 (Steele, Lea, Flood 2014) mapped to `[0, 1)`: plenty for
/// jitter and keeps the crate free of an RNG dependency.
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn exponential_grows_and_caps() {
        let d = OpenDuration::exponential(S(1), S(10));
        let mut rng = 0;
        let waits: Vec<_> = (1..=6).map(|t| d.for_trip(t, &mut rng)).collect();
        assert_eq!(waits, vec![S(1), S(2), S(4), S(8), S(10), S(10)]);
        assert_eq!(d.for_trip(u32::MAX, &mut rng), S(10));
        let fixed = OpenDuration::fixed(S(3));
        assert_eq!(fixed.for_trip(5, &mut rng), S(3));
    }

    #[test]
    fn jitter_stays_in_range_and_is_seeded() {
        let d = OpenDuration::exponential(S(10), S(10)).jitter(0.5).seed(9);
        let mut a = d.initial_rng();
        let mut b = d.initial_rng();
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let w = d.for_trip(1, &mut a);
            assert!(w >= S(5) && w <= S(10), "{w:?}");
            assert_eq!(w, d.for_trip(1, &mut b));
            distinct.insert(w);
        }
        assert!(distinct.len() > 100);
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(OpenDuration::fixed(Duration::ZERO).validate().is_err());
        assert!(OpenDuration::exponential(S(2), S(1)).validate().is_err());
        assert!(OpenDuration::exponential(S(1), S(2))
            .multiplier(0.5)
            .validate()
            .is_err());
        assert!(OpenDuration::exponential(S(1), S(2))
            .multiplier(f64::NAN)
            .validate()
            .is_err());
        let err = OpenDuration::fixed(S(1))
            .jitter(1.5)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "open_duration");
        assert!(OpenDuration::exponential(S(1), S(2))
            .jitter(1.0)
            .validate()
            .is_ok());
    }
}
