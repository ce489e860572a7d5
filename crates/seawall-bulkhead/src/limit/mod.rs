//! Adaptive concurrency limits: let the bulkhead find the concurrency a
//! dependency can really take.
//!
//! A fixed limit is a guess that goes stale as soon as the dependency scales,
//! slows down or shares its capacity with someone else. An adaptive limit
//! treats the limit like a TCP congestion window: every finished call is a
//! [`Sample`] (its latency, the concurrency it ran at, and whether it was
//! "dropped", i.e. classified as a failure or timed out), and the algorithm
//! raises the limit while latency stays flat and lowers it once latency rises
//! or calls fail. The three algorithms follow the formulas of Netflix's
//! [concurrency-limits](https://github.com/Netflix/concurrency-limits):
//!
//! - [`Aimd`]: additive increase, multiplicative decrease on a drop or a call
//!   slower than a timeout. Needs a failure signal; simple and predictable.
//! - [`Gradient2`]: compares each call's latency with a long-term average;
//!   the ratio (the gradient) scales the limit down when latency rises.
//! - [`Vegas`]: estimates the queue at the dependency from the ratio of the
//!   no-load latency to the current one, as TCP Vegas does.
//!
//! Each can take every call as a sample, or, wrapped in [`Windowed`], one
//! aggregate sample per time window, which is steadier at high call rates.
//!
//! Calls the classifier marks [`Ignore`](seawall_core::Outcome::Ignore), and
//! calls cancelled before they finish, are not sampled.
//!
//! Any type implementing [`AdaptiveLimit`] can drive a pool.

mod aimd;
mod gradient2;
mod vegas;
mod windowed;

use std::fmt;
use std::time::Duration;

pub use aimd::{Aimd, AimdBuilder};
pub use gradient2::{Gradient2, Gradient2Builder};
pub use vegas::{Vegas, VegasBuilder};
pub use windowed::{Windowed, WindowedBuilder};

use seawall_core::ConfigError;

pub(crate) const LAYER: &str = "bulkhead";

/// One finished call, as an adaptive limit sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    rtt: Duration,
    in_flight: usize,
    dropped: bool,
}

impl Sample {
    /// A call that took `rtt`, started when `in_flight` calls (itself
    /// included) held permits, and was dropped (failed or timed out) or not.
    pub const fn new(rtt: Duration, in_flight: usize, dropped: bool) -> Self {
        Self {
            rtt,
            in_flight,
            dropped,
        }
    }

    /// How long the call took.
    pub const fn rtt(&self) -> Duration {
        self.rtt
    }

    /// How many calls held permits when this one started, itself included.
    pub const fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// `true` if the call failed or timed out.
    pub const fn dropped(&self) -> bool {
        self.dropped
    }
}

/// An algorithm that moves a pool's limit from call samples.
///
/// The pool calls [`update`](Self::update) once per sampled call, under a
/// lock, and uses the returned value (at least 1) as its new limit.
///
/// ```
/// use seawall_bulkhead::limit::{AdaptiveLimit, Sample};
/// use std::time::Duration;
///
/// /// Halves on a failure, grows by one otherwise.
/// #[derive(Debug)]
/// struct Halving(usize);
///
/// impl AdaptiveLimit for Halving {
///     fn limit(&self) -> usize { self.0 }
///     fn update(&mut self, sample: &Sample) -> usize {
///         self.0 = if sample.dropped() { (self.0 / 2).max(1) } else { self.0 + 1 };
///         self.0
///     }
/// }
///
/// let mut l = Halving(10);
/// assert_eq!(l.update(&Sample::new(Duration::from_millis(5), 10, true)), 5);
/// ```
pub trait AdaptiveLimit: fmt::Debug + Send + 'static {
    /// The current limit (the initial one before any sample).
    fn limit(&self) -> usize;

    /// Takes one sample and returns the new limit.
    fn update(&mut self, sample: &Sample) -> usize;
}

/// `floor(max(1, log10(n)))`: the step function Netflix's Vegas uses for its
/// thresholds and steps.
pub(crate) fn log10_step(n: f64) -> f64 {
    n.max(1.0).log10().floor().max(1.0)
}

pub(crate) fn check_bounds(initial: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::new(LAYER, "min_limit", "must be at least 1"));
    }
    if max < min {
        return Err(ConfigError::new(
            LAYER,
            "max_limit",
            format!("must be at least min_limit ({min}), got {max}"),
        ));
    }
    if initial < min || initial > max {
        return Err(ConfigError::new(
            LAYER,
            "initial_limit",
            format!("must be within [{min}, {max}], got {initial}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_ratio(
    field: &'static str,
    value: f64,
    lo_open: f64,
    hi_closed: f64,
) -> Result<(), ConfigError> {
    if value.is_finite() && value > lo_open && value <= hi_closed {
        Ok(())
    } else {
        Err(ConfigError::new(
            LAYER,
            field,
            format!("must be in ({lo_open}, {hi_closed}], got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log10_step_matches_netflix_table() {
        assert!((log10_step(0.0) - 1.0).abs() < f64::EPSILON);
        assert!((log10_step(9.0) - 1.0).abs() < f64::EPSILON);
        assert!((log10_step(99.0) - 1.0).abs() < f64::EPSILON);
        assert!((log10_step(100.0) - 2.0).abs() < f64::EPSILON);
        assert!((log10_step(1500.0) - 3.0).abs() < f64::EPSILON);
    }

    #[test]
    fn bounds_are_validated() {
        assert!(check_bounds(10, 1, 100).is_ok());
        assert_eq!(check_bounds(10, 0, 100).unwrap_err().field(), "min_limit");
        assert_eq!(check_bounds(10, 5, 4).unwrap_err().field(), "max_limit");
        assert_eq!(check_bounds(1, 5, 40).unwrap_err().field(), "initial_limit");
        assert!(check_ratio("r", 0.5, 0.0, 1.0).is_ok());
        assert!(check_ratio("r", f64::NAN, 0.0, 1.0).is_err());
        assert!(check_ratio("r", 0.0, 0.0, 1.0).is_err());
    }
}
