use std::time::Duration;

use seawall_core::ConfigError;
use tokio::time::Instant;

use super::{AdaptiveLimit, Sample, LAYER};
use crate::pool::MAX_DURATION;

/// Feeds another limit one aggregate sample per time window instead of one
/// per call (Netflix's `WindowedLimit`).
///
/// Per-call updates react to every outlier and, at high rates, move the
/// limit many times before the effect of a change can even be measured.
/// `Windowed` collects the calls of a window and then hands the inner limit
/// a single sample: the mean latency, the largest in-flight count, and
/// "dropped" if any call was. A window lasts twice the smallest latency it
/// saw, clamped to `[min_window, max_window]`; windows with fewer than
/// `min_samples` calls are discarded, and calls faster than `min_rtt` are
/// ignored (they are usually answered from a cache and say nothing about
/// the dependency).
///
/// Defaults (Netflix's): windows of exactly 1 s (`min_window` =
/// `max_window` = 1 s), 10 samples, `min_rtt` 100 µs.
///
/// ```
/// use std::time::Duration;
/// use seawall_bulkhead::limit::{Vegas, Windowed};
///
/// let limit = Windowed::builder(Vegas::builder().build().unwrap())
///     .min_window(Duration::from_millis(100))
///     .build()
///     .unwrap();
/// # let _ = limit;
/// ```
#[derive(Debug, Clone)]
pub struct Windowed<L> {
    inner: L,
    min_window: Duration,
    max_window: Duration,
    min_samples: usize,
    min_rtt: Duration,
    window: Window,
    next_update: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct Window {
    count: usize,
    sum_nanos: u128,
    min_rtt: Option<Duration>,
    max_in_flight: usize,
    dropped: bool,
}

impl Window {
    fn add(&mut self, s: &Sample) {
        self.count += 1;
        self.sum_nanos += s.rtt().as_nanos();
        self.min_rtt = Some(self.min_rtt.map_or(s.rtt(), |m| m.min(s.rtt())));
        self.max_in_flight = self.max_in_flight.max(s.in_flight());
        self.dropped |= s.dropped();
    }
}

impl<L: AdaptiveLimit> Windowed<L> {
    /// A builder wrapping `inner`, with Netflix's defaults.
    pub fn builder(inner: L) -> WindowedBuilder<L> {
        WindowedBuilder {
            inner,
            min_window: Duration::from_secs(1),
            max_window: Duration::from_secs(1),
            min_samples: 10,
            min_rtt: Duration::from_micros(100),
        }
    }

    /// The wrapped limit.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }
}

impl<L: AdaptiveLimit> AdaptiveLimit for Windowed<L> {
    fn limit(&self) -> usize {
        self.inner.limit()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.rtt() < self.min_rtt {
            return self.inner.limit();
        }
        self.window.add(sample);
        let now = Instant::now();
        let next = *self
            .next_update
            .get_or_insert_with(|| deadline(now, self.min_window));
        if now < next {
            return self.inner.limit();
        }
        let window = std::mem::take(&mut self.window);
        let candidate = window.min_rtt.unwrap_or_default();
        let length = candidate
            .saturating_mul(2)
            .clamp(self.min_window, self.max_window);
        self.next_update = Some(deadline(now, length));
        if window.count < self.min_samples {
            return self.inner.limit();
        }
        let mean = u64::try_from(window.sum_nanos / window.count as u128)
            .map_or(Duration::MAX, Duration::from_nanos);
        self.inner
            .update(&Sample::new(mean, window.max_in_flight, window.dropped))
    }
}

/// `now + length`, for window lengths up to `Duration::MAX`: one too long
/// for the clock ends in 30 years, which is never (as Tokio's own far-future
/// deadline).
fn deadline(now: Instant, length: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(30 * 365 * 86_400);
    now.checked_add(length).unwrap_or_else(|| now + NEVER)
}

/// Configures a [`Windowed`] limit.
#[derive(Debug, Clone)]
#[must_use]
pub struct WindowedBuilder<L> {
    inner: L,
    min_window: Duration,
    max_window: Duration,
    min_samples: usize,
    min_rtt: Duration,
}

impl<L: AdaptiveLimit> WindowedBuilder<L> {
    /// The shortest window (default 1 s; longer than 365 days is clamped to
    /// 365 days).
    pub fn min_window(mut self, d: Duration) -> Self {
        self.min_window = d.min(MAX_DURATION);
        self
    }

    /// The longest window (default 1 s; longer than 365 days is clamped to
    /// 365 days).
    pub fn max_window(mut self, d: Duration) -> Self {
        self.max_window = d.min(MAX_DURATION);
        self
    }

    /// Windows with fewer calls are discarded (default 10, at least 1).
    pub fn min_samples(mut self, n: usize) -> Self {
        self.min_samples = n;
        self
    }

    /// Calls faster than this are ignored (default 100 µs; longer than 365
    /// days is clamped to 365 days).
    pub fn min_rtt(mut self, d: Duration) -> Self {
        self.min_rtt = d.min(MAX_DURATION);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Windowed<L>, ConfigError> {
        if self.max_window < self.min_window || self.max_window.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "max_window",
                "must be positive and at least min_window",
            ));
        }
        if self.min_samples == 0 {
            return Err(ConfigError::new(LAYER, "min_samples", "must be at least 1"));
        }
        Ok(Windowed {
            inner: self.inner,
            min_window: self.min_window,
            max_window: self.max_window,
            min_samples: self.min_samples,
            min_rtt: self.min_rtt,
            window: Window::default(),
            next_update: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Aimd;

    #[tokio::test(start_paused = true)]
    async fn one_aggregate_sample_per_window() {
        let aimd = Aimd::builder()
            .initial_limit(10)
            .min_limit(1)
            .build()
            .unwrap();
        let mut w = Windowed::builder(aimd)
            .min_window(Duration::from_millis(100))
            .max_window(Duration::from_millis(100))
            .min_samples(3)
            .build()
            .unwrap();
        let ok = Sample::new(Duration::from_millis(5), 10, false);
        // Within the first window nothing moves, however many samples.
        for _ in 0..50 {
            assert_eq!(w.update(&ok), 10);
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(w.update(&ok), 11, "one +1 for the whole window");
        // A window with a single drop among successes counts as dropped.
        for _ in 0..5 {
            w.update(&ok);
        }
        w.update(&Sample::new(Duration::from_millis(5), 10, true));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(w.update(&ok), 9, "11 × 0.9");
        // Too few samples: discarded.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            w.update(&Sample::new(Duration::from_millis(5), 10, true)),
            9
        );
        // Sub-threshold latencies are ignored entirely.
        assert_eq!(
            w.update(&Sample::new(Duration::from_micros(10), 10, true)),
            9
        );
        assert_eq!(w.get_ref().limit(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_windows_and_latencies_do_not_overflow() {
        let aimd = Aimd::builder()
            .initial_limit(10)
            .min_limit(1)
            .build()
            .unwrap();
        let mut forever = Windowed::builder(aimd.clone())
            .min_window(Duration::MAX)
            .max_window(Duration::MAX)
            .min_samples(1)
            .build()
            .unwrap();
        let ok = Sample::new(Duration::from_millis(5), 10, false);
        assert_eq!(forever.update(&ok), 10, "a window that never ends");
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(forever.update(&ok), 10);

        let mut w = Windowed::builder(aimd)
            .min_window(Duration::ZERO)
            .min_samples(1)
            .build()
            .unwrap();
        let slow = Sample::new(Duration::MAX, 10, false);
        assert_eq!(w.update(&slow), 9, "slower than the timeout: a drop");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.update(&slow), 8);
    }

    #[test]
    fn rejects_bad_settings() {
        let aimd = || Aimd::builder().build().unwrap();
        assert_eq!(
            Windowed::builder(aimd())
                .min_window(Duration::from_secs(2))
                .build()
                .unwrap_err()
                .field(),
            "max_window"
        );
        assert_eq!(
            Windowed::builder(aimd())
                .min_samples(0)
                .build()
                .unwrap_err()
                .field(),
            "min_samples"
        );
    }
}
