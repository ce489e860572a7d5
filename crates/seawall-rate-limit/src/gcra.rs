//! The generic cell rate algorithm (GCRA): a token bucket kept as one number.
//!
//! A limit of `rate` units per `period` with a burst of `burst` units has an
//! emission interval `T = period / rate` (the time one unit takes to come
//! back) and a tolerance `tau = burst × T`. Each key keeps one theoretical
//! arrival time (TAT): the instant at which its bucket will be full again.
//! A request of cost `c` arriving at `now` moves the TAT to
//! `max(TAT, now) + c × T`, and conforms if the new TAT is no further than
//! `tau` ahead of `now`. When it does not, it would conform exactly
//! `new TAT − tau − now` later: that is the `Retry-After` the layer gives.
//! A TAT at or before `now` means a full bucket, the same as a key never
//! seen, so forgetting it loses nothing.
//!
//! Times are nanoseconds since the limiter's origin; all arithmetic
//! saturates.

use std::time::Duration;

use seawall_core::ConfigError;

const LAYER: &str = "rate limit";

/// Limits above this many units per period, or bursts above it, are refused
/// by [`Quota`]'s validation: no real limit needs more, and it keeps every
/// product of the arithmetic far from `u64::MAX`.
const MAX_UNITS: u64 = 1 << 32;

/// The longest period a quota may have (about 10 years), and the longest a
/// full burst may take to come back; longer ones are almost certainly a unit
/// mistake, and the bound keeps every sum of times far below `u64::MAX`
/// nanoseconds.
const MAX_PERIOD: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How many units a key may spend, how fast they come back, and how many may
/// be spent at once.
///
/// ```
/// use std::time::Duration;
/// use seawall_rate_limit::Quota;
///
/// // 10 requests a second, up to 20 at once.
/// let q = Quota::per_second(10).burst(20);
/// assert_eq!(q.rate(), 10);
/// assert_eq!(q.period(), Duration::from_secs(1));
/// assert_eq!(q.burst_size(), 20);
///
/// // 1,000 an hour; the burst defaults to the rate.
/// let hourly = Quota::per_hour(1000);
/// assert_eq!(hourly.burst_size(), 1000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    rate: u64,
    period: Duration,
    burst: Option<u64>,
}

impl Quota {
    /// `rate` units every `period`; the burst defaults to `rate`.
    pub const fn new(rate: u64, period: Duration) -> Self {
        Self {
            rate,
            period,
            burst: None,
        }
    }

    /// `rate` units a second.
    pub const fn per_second(rate: u64) -> Self {
        Self::new(rate, Duration::from_secs(1))
    }

    /// `rate` units a minute.
    pub const fn per_minute(rate: u64) -> Self {
        Self::new(rate, Duration::from_secs(60))
    }

    /// `rate` units an hour.
    pub const fn per_hour(rate: u64) -> Self {
        Self::new(rate, Duration::from_secs(3600))
    }

    /// How many units may be spent at once by a key whose bucket is full.
    #[must_use]
    pub const fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Units per period.
    pub const fn rate(&self) -> u64 {
        self.rate
    }

    /// The period of the rate.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst: the bucket's size.
    pub const fn burst_size(&self) -> u64 {
        match self.burst {
            Some(b) => b,
            None => self.rate,
        }
    }

    pub(crate) fn validate(&self, field: &'static str) -> Result<Gcra, ConfigError> {
        if self.rate == 0 || self.rate > MAX_UNITS {
            return Err(ConfigError::new(
                LAYER,
                field,
                format!("rate must be in 1..={MAX_UNITS}, got {}", self.rate),
            ));
        }
        if self.period.is_zero() || self.period > MAX_PERIOD {
            return Err(ConfigError::new(
                LAYER,
                field,
                format!(
                    "period must be positive and at most ten years, got {:?}",
                    self.period
                ),
            ));
        }
        let burst = self.burst_size();
        if burst == 0 || burst > MAX_UNITS {
            return Err(ConfigError::new(
                LAYER,
                field,
                format!("burst must be in 1..={MAX_UNITS}, got {burst}"),
            ));
        }
        // Rounded up: a unit never comes back sooner than the quota says.
        let period = self.period.as_nanos() as u64;
        let interval = period.div_ceil(self.rate);
        // Whole nanoseconds cannot represent every rate: above 1e9 units a
        // second the interval would be 1 ns (and the limit silently 1e9/s),
        // and near it the rounding is coarse. Refuse a rate the interval
        // would enforce more than 1% below what it advertises.
        if u128::from(interval) * u128::from(self.rate) * 100 > u128::from(period) * 101 {
            return Err(ConfigError::new(
                LAYER,
                field,
                format!(
                    "rate must be enforceable within 1% in whole nanoseconds per unit, \
                     got {} per {:?} (a unit every {interval} ns would be {} per {:?})",
                    self.rate,
                    self.period,
                    period / interval,
                    self.period
                ),
            ));
        }
        let tolerance = interval
            .checked_mul(burst)
            .filter(|&t| t <= MAX_PERIOD.as_nanos() as u64)
            .ok_or_else(|| {
                ConfigError::new(
                    LAYER,
                    field,
                    format!(
                        "burst must come back within ten years, got {burst} units of {:?}",
                        Duration::from_nanos(interval)
                    ),
                )
            })?;
        Ok(Gcra {
            interval,
            tolerance,
            burst,
        })
    }
}

/// A validated quota in the limiter's units (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// `T`: nanoseconds for one unit to come back.
    pub(crate) interval: u64,
    /// `tau`: `burst × T`.
    pub(crate) tolerance: u64,
    pub(crate) burst: u64,
}

/// What one limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Conforms; the key's TAT becomes `new_tat` if every limit agrees.
    Conforms { new_tat: u64 },
    /// Would conform after this many nanoseconds.
    WaitNanos(u64),
    /// Costs more than the whole burst: never conforms.
    Never,
}

impl Gcra {
    /// The verdict for a request of `cost` units at `now` against `tat`.
    pub(crate) fn check(&self, tat: u64, now: u64, cost: u64) -> Verdict {
        if cost > self.burst {
            return Verdict::Never;
        }
        // cost <= burst, so cost × T <= tau, which validation bounds.
        let Some(new_tat) = tat.max(now).checked_add(cost * self.interval) else {
            return Verdict::WaitNanos(u64::MAX);
        };
        let ahead = new_tat - now;
        if ahead <= self.tolerance {
            Verdict::Conforms { new_tat }
        } else {
            Verdict::WaitNanos(ahead - self.tolerance)
        }
    }

    /// Units a key could spend at `now` with its TAT at `tat`.
    pub(crate) fn remaining(&self, tat: u64, now: u64) -> u64 {
        let ahead = tat.saturating_sub(now);
        self.tolerance.saturating_sub(ahead) / self.interval
    }

    /// Nanoseconds until the bucket is full again.
    pub(crate) fn until_full(tat: u64, now: u64) -> u64 {
        tat.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn gcra(q: Quota) -> Gcra {
        q.validate("limit").unwrap()
    }

    #[test]
    fn burst_then_one_per_interval() {
        let g = gcra(Quota::per_second(10).burst(3));
        assert_eq!(g.interval, SEC / 10);
        let mut tat = 0;
        let now = 5 * SEC;
        for _ in 0..3 {
            match g.check(tat, now, 1) {
                Verdict::Conforms { new_tat } => tat = new_tat,
                other => panic!("burst refused: {other:?}"),
            }
        }
        assert_eq!(g.remaining(tat, now), 0);
        // The fourth waits exactly one interval.
        assert_eq!(g.check(tat, now, 1), Verdict::WaitNanos(SEC / 10));
        // One interval later exactly one more conforms.
        let later = now + SEC / 10;
        let Verdict::Conforms { new_tat } = g.check(tat, later, 1) else {
            panic!("refill refused")
        };
        assert_eq!(g.check(new_tat, later, 1), Verdict::WaitNanos(SEC / 10));
        assert_eq!(Gcra::until_full(new_tat, later), 3 * SEC / 10);
    }

    #[test]
    fn cost_counts_units_and_above_burst_never_conforms() {
        let g = gcra(Quota::per_second(10).burst(5));
        let Verdict::Conforms { new_tat } = g.check(0, SEC, 4) else {
            panic!()
        };
        assert_eq!(g.remaining(new_tat, SEC), 1);
        // Three more units are two too many: wait two intervals.
        assert_eq!(g.check(new_tat, SEC, 3), Verdict::WaitNanos(2 * SEC / 10));
        assert_eq!(g.check(0, SEC, 6), Verdict::Never);
    }

    #[test]
    fn interval_rounds_up_and_arithmetic_saturates() {
        let g = gcra(Quota::per_second(3));
        assert_eq!(g.interval, 333_333_334);
        assert!(g.interval * 3 >= SEC);
        let big = gcra(Quota::new(1, MAX_PERIOD));
        assert_eq!(
            big.check(u64::MAX - 5, u64::MAX - 10, 1),
            Verdict::WaitNanos(u64::MAX)
        );
        assert_eq!(big.remaining(u64::MAX, 0), 0);
    }

    #[test]
    fn rates_the_nanosecond_represents_within_one_percent_are_accepted() {
        for rate in [
            1_000_000_000,
            500_000_000,
            100_000_000,
            101_000_000,
            999_999,
            3,
        ] {
            let g = gcra(Quota::per_second(rate));
            let enforced = SEC as f64 / g.interval as f64;
            assert!(enforced >= rate as f64 / 1.01, "{rate}: {enforced}");
        }
    }

    #[test]
    fn invalid_quotas_are_config_errors() {
        for (q, what) in [
            (Quota::per_second(0), "rate"),
            (Quota::per_second(10).burst(0), "burst"),
            (Quota::new(1, Duration::ZERO), "period"),
            (Quota::new(1, Duration::from_secs(u64::MAX)), "period"),
            (Quota::per_second(MAX_UNITS + 1), "rate"),
            // 1 ns per unit would be 1e9/s: silently half the rate.
            (Quota::per_second(2_000_000_000), "rate"),
            // 7 ns per unit would be 5% slower than 150,000,000/s.
            (Quota::per_second(150_000_000), "rate"),
            (Quota::new(1, MAX_PERIOD).burst(2), "burst"),
        ] {
            let err = q.validate("limit").unwrap_err();
            assert_eq!(err.field(), "limit");
            assert!(err.reason().starts_with(what), "{err}");
        }
    }
}
