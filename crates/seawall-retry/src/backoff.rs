//! Backoff schedules and the jitter strategies of Marc Brooker's
//! "Exponential Backoff and Jitter" (AWS Architecture Blog, 2015).

use std::time::Duration;

use rand::{Rng, RngCore};

/// How the un-jittered delay before a retry grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same delay before every retry.
    Constant(Duration),
    /// `base * 2^n` before retry `n` (counting from zero), capped at the
    /// layer's `max_delay`.
    Exponential {
        /// The delay before the first retry.
        base: Duration,
    },
}

impl Backoff {
    /// `base * 2^n`, capped at `max_delay`.
    pub const fn exponential(base: Duration) -> Self {
        Backoff::Exponential { base }
    }

    /// The same delay every time.
    pub const fn constant(delay: Duration) -> Self {
        Backoff::Constant(delay)
    }

    /// The base delay of the schedule.
    pub const fn base(&self) -> Duration {
        match *self {
            Backoff::Constant(d) => d,
            Backoff::Exponential { base } => base,
        }
    }

    /// The un-jittered delay before retry `n` (zero-based), capped at `cap`.
    pub fn delay(&self, n: u32, cap: Duration) -> Duration {
        let raw = match *self {
            Backoff::Constant(d) => d,
            Backoff::Exponential { base } => {
                // Saturate instead of overflowing: a shift of 64 or more, or
                // a product beyond `u64` nanoseconds, is past any cap anyway.
                let factor = 1u128.checked_shl(n.min(127)).unwrap_or(u128::MAX);
                let nanos = base.as_nanos().saturating_mul(factor);
                duration_from_nanos(nanos)
            }
        };
        raw.min(cap)
    }
}

/// How randomness spreads the delays of clients that failed together.
///
/// With `t = min(cap, base * 2^n)`, exactly as in the AWS study:
///
/// | jitter | delay |
/// |---|---|
/// | `None` | `t` |
/// | `Full` | `U(0, t)` |
/// | `Equal` | `t/2 + U(0, t/2)` |
/// | `Decorrelated` | `min(cap, U(base, prev * 3))`, `prev` starting at `base` |
///
/// Full and decorrelated jitter cut the total work of contending clients the
/// most; un-jittered exponential backoff keeps clients that failed together
/// in lock-step, so they collide again on every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness.
    None,
    /// `U(0, t)`.
    #[default]
    Full,
    /// `t/2 + U(0, t/2)`: never less than half of the schedule.
    Equal,
    /// `min(cap, U(base, prev * 3))`: grows from the previous delay rather
    /// than from the retry count.
    Decorrelated,
}

/// The delays of one request's retries: a backoff schedule, a jitter and the
/// state decorrelated jitter carries from one delay to the next.
///
/// ```
/// use std::time::Duration;
/// use rand::{rngs::SmallRng, SeedableRng};
/// use seawall_retry::{Backoff, Delays, Jitter};
///
/// let mut rng = SmallRng::seed_from_u64(7);
/// let mut delays = Delays::new(
///     Backoff::exponential(Duration::from_millis(100)),
///     Jitter::Full,
///     Duration::from_secs(1),
/// );
/// for n in 0..6 {
///     let d = delays.next_delay(&mut rng);
///     let t = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(1));
///     assert!(d <= t);
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    jitter: Jitter,
    cap: Duration,
    retries: u32,
    prev: Duration,
}

impl Delays {
    /// The delays of a fresh request.
    pub fn new(backoff: Backoff, jitter: Jitter, cap: Duration) -> Self {
        Self {
            backoff,
            jitter,
            cap,
            retries: 0,
            prev: backoff.base(),
        }
    }

    /// How many delays have been drawn.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The delay before the next retry.
    pub fn next_delay<R: RngCore + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let n = self.retries;
        self.retries = self.retries.saturating_add(1);
        let t = self.backoff.delay(n, self.cap);
        match self.jitter {
            Jitter::None => t,
            Jitter::Full => uniform(rng, Duration::ZERO, t),
            Jitter::Equal => {
                let half = t / 2;
                // `t - half` rather than `half` so an odd number of
                // nanoseconds still reaches `t` at the top of the range.
                half + uniform(rng, Duration::ZERO, t.saturating_sub(half))
            }
            Jitter::Decorrelated => {
                let base = self.backoff.base();
                let upper = self.prev.saturating_mul(3).max(base);
                let d = uniform(rng, base, upper).min(self.cap);
                self.prev = d;
                d
            }
        }
    }
}

/// A uniform draw in `[lo, hi]` at nanosecond resolution.
fn uniform<R: RngCore + ?Sized>(rng: &mut R, lo: Duration, hi: Duration) -> Duration {
    let lo = nanos_u64(lo);
    let hi = nanos_u64(hi);
    if hi <= lo {
        return Duration::from_nanos(lo);
    }
    Duration::from_nanos(rng.random_range(lo..=hi))
}

fn nanos_u64(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn duration_from_nanos(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_secs(1);

    fn draws(jitter: Jitter, seed: u64, n: usize) -> Vec<Duration> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut d = Delays::new(Backoff::exponential(BASE), jitter, CAP);
        (0..n).map(|_| d.next_delay(&mut rng)).collect()
    }

    fn schedule(n: usize) -> Duration {
        Backoff::exponential(BASE).delay(n as u32, CAP)
    }

    #[test]
    fn exponential_doubles_and_caps_without_overflow() {
        let b = Backoff::exponential(BASE);
        assert_eq!(b.delay(0, CAP), BASE);
        assert_eq!(b.delay(1, CAP), BASE * 2);
        assert_eq!(b.delay(6, CAP), BASE * 64);
        assert_eq!(b.delay(7, CAP), CAP);
        assert_eq!(b.delay(200, CAP), CAP);
        assert_eq!(
            b.delay(u32::MAX, Duration::MAX),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(Backoff::constant(BASE).delay(50, CAP), BASE);
        assert_eq!(draws(Jitter::None, 1, 9)[8], CAP);
    }

    #[test]
    fn full_jitter_stays_in_zero_to_schedule_and_spreads() {
        for seed in 0..50 {
            for (n, d) in draws(Jitter::Full, seed, 12).into_iter().enumerate() {
                assert!(d <= schedule(n), "retry {n}: {d:?}");
            }
        }
        // At the cap, the mean of U(0, cap) is cap/2 and draws cover both halves.
        let capped: Vec<_> = (0..2000).map(|s| draws(Jitter::Full, s, 10)[9]).collect();
        let mean = capped.iter().sum::<Duration>() / capped.len() as u32;
        assert!(mean > CAP * 45 / 100 && mean < CAP * 55 / 100, "{mean:?}");
        assert!(capped.iter().any(|d| *d < CAP / 10));
        assert!(capped.iter().any(|d| *d > CAP * 9 / 10));
    }

    #[test]
    fn equal_jitter_keeps_half_the_schedule() {
        let mut saw_low_half = false;
        for seed in 0..200 {
            for (n, d) in draws(Jitter::Equal, seed, 12).into_iter().enumerate() {
                let t = schedule(n);
                assert!(
                    d >= t / 2 && d <= t,
                    "retry {n}: {d:?} not in [t/2, t] for {t:?}"
                );
                saw_low_half |= d < t * 3 / 4;
            }
        }
        assert!(saw_low_half);
    }

    #[test]
    fn decorrelated_never_below_base_grows_from_previous_and_caps() {
        for seed in 0..200 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut d = Delays::new(Backoff::exponential(BASE), Jitter::Decorrelated, CAP);
            let mut prev = BASE;
            for _ in 0..30 {
                let next = d.next_delay(&mut rng);
                assert!(next >= BASE, "{next:?} below base");
                assert!(next <= CAP, "{next:?} above cap");
                assert!(next <= prev * 3, "{next:?} above 3 x {prev:?}");
                prev = next;
            }
        }
        // It does reach the cap after enough retries.
        let reached = (0..100).any(|s| draws(Jitter::Decorrelated, s, 30).contains(&CAP));
        assert!(reached);
    }

    #[test]
    fn a_seed_reproduces_the_same_delays() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            assert_eq!(draws(jitter, 42, 20), draws(jitter, 42, 20));
            assert_ne!(draws(jitter, 42, 20), draws(jitter, 43, 20));
        }
        assert_eq!(draws(Jitter::None, 1, 5), draws(Jitter::None, 2, 5));
    }

    #[test]
    fn zero_and_degenerate_schedules_do_not_panic() {
        let mut rng = SmallRng::seed_from_u64(0);
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ] {
            let mut d = Delays::new(Backoff::constant(Duration::ZERO), jitter, Duration::ZERO);
            assert_eq!(d.next_delay(&mut rng), Duration::ZERO);
            let mut d = Delays::new(Backoff::exponential(Duration::MAX), jitter, Duration::MAX);
            for _ in 0..3 {
                let _ = d.next_delay(&mut rng);
            }
            assert_eq!(d.retries(), 3);
        }
    }

    proptest::proptest! {
        /// Whatever the base, cap and seed, every draw stays within its
        /// formula's bounds.
        #[test]
        fn every_draw_is_within_its_formula(
            base_ms in 1u64..10_000,
            cap_factor in 1u64..1000,
            seed in proptest::num::u64::ANY,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = base * cap_factor as u32;
            let backoff = Backoff::exponential(base);
            let mut rng = SmallRng::seed_from_u64(seed);
            for jitter in [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
                let mut delays = Delays::new(backoff, jitter, cap);
                let mut prev = base;
                for n in 0..40u32 {
                    let t = backoff.delay(n, cap);
                    let d = delays.next_delay(&mut rng);
                    proptest::prop_assert!(d <= cap);
                    match jitter {
                        Jitter::None => proptest::prop_assert_eq!(d, t),
                        Jitter::Full => proptest::prop_assert!(d <= t),
                        Jitter::Equal => proptest::prop_assert!(d >= t / 2 && d <= t),
                        Jitter::Decorrelated => {
                            proptest::prop_assert!(d >= base && d <= prev * 3);
                            prev = d;
                        }
                    }
                }
            }
        }
    }
}
