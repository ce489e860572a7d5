//! When a fault is active, measured from the layer's start instant.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::ConfigError;

use crate::layer::LAYER;

/// When a fault is active, as offsets from the layer's start instant.
///
/// The start instant is when the layer was built, or the instant given to
/// [`ChaosBuilder::start_at`](crate::ChaosBuilder::start_at), or the one set
/// later with [`ChaosHandle::restart`](crate::ChaosHandle::restart). Time is
/// `tokio::time::Instant`, so schedules follow paused virtual time in tests
/// and simulations. Before the start instant, only [`always`](Self::always)
/// is active.
///
/// A fault whose schedule is not `always` reads the clock once per call
/// (shared by all the faults of that call); an `always` fault never does.
///
/// ```
/// use std::time::Duration;
/// use seawall_chaos::Schedule;
///
/// let secs = Duration::from_secs;
/// // An outage from 10 s to 40 s after the start.
/// let outage = Schedule::between(secs(10), secs(40));
/// assert!(!outage.is_active(secs(9)));
/// assert!(outage.is_active(secs(10)));
/// assert!(!outage.is_active(secs(40)));
///
/// // A flapping dependency: down for 2 s of every 10 s, from 30 s on.
/// let flapping = Schedule::flapping(secs(2), secs(10)).starting(secs(30));
/// assert!(!flapping.is_active(secs(5)));
/// assert!(flapping.is_active(secs(41)));
/// assert!(!flapping.is_active(secs(43)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Always,
    Windows(Arc<[(Duration, Duration)]>),
    Flapping {
        on: Duration,
        every: Duration,
        from: Duration,
        until: Option<Duration>,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Self::always()
    }
}

impl Schedule {
    /// Always active (the default).
    pub const fn always() -> Self {
        Self { kind: Kind::Always }
    }

    /// Active from `from` (included) to `to` (excluded) after the start.
    ///
    /// `build()` refuses a window whose `to` is not after its `from`.
    pub fn between(from: Duration, to: Duration) -> Self {
        Self::windows([(from, to)])
    }

    /// Active from `from` after the start on.
    pub fn after(from: Duration) -> Self {
        Self::windows([(from, Duration::MAX)])
    }

    /// Active during any of the windows `(from, to)` (from included, to
    /// excluded), e.g. two outages. Windows may overlap.
    pub fn windows(windows: impl IntoIterator<Item = (Duration, Duration)>) -> Self {
        Self {
            kind: Kind::Windows(windows.into_iter().collect()),
        }
    }

    /// Active for the first `on` of every `every`, e.g. down 5 s of every
    /// 20 s: a flapping dependency. Periods start at the start instant,
    /// or at [`starting`](Self::starting).
    ///
    /// `build()` refuses a zero `every`, a zero `on`, or an `on` longer
    /// than `every`.
    pub const fn flapping(on: Duration, every: Duration) -> Self {
        Self {
            kind: Kind::Flapping {
                on,
                every,
                from: Duration::ZERO,
                until: None,
            },
        }
    }

    /// For a [`flapping`](Self::flapping) schedule: the first period begins
    /// `from` after the start. Other schedules are returned unchanged.
    #[must_use]
    pub fn starting(mut self, from: Duration) -> Self {
        if let Kind::Flapping { from: f, .. } = &mut self.kind {
            *f = from;
        }
        self
    }

    /// For a [`flapping`](Self::flapping) schedule: no longer active from
    /// `until` after the start on. Other schedules are returned unchanged.
    #[must_use]
    pub fn until(mut self, until: Duration) -> Self {
        if let Kind::Flapping { until: u, .. } = &mut self.kind {
            *u = Some(until);
        }
        self
    }

    /// `true` for [`always`](Self::always).
    pub const fn is_always(&self) -> bool {
        matches!(self.kind, Kind::Always)
    }

    /// Whether the schedule is active `elapsed` after the start instant.
    pub fn is_active(&self, elapsed: Duration) -> bool {
        match &self.kind {
            Kind::Always => true,
            Kind::Windows(windows) => windows
                .iter()
                .any(|&(from, to)| from <= elapsed && elapsed < to),
            Kind::Flapping {
                on,
                every,
                from,
                until,
            } => {
                if until.is_some_and(|u| elapsed >= u) {
                    return false;
                }
                let every = every.as_nanos();
                match elapsed.checked_sub(*from) {
                    Some(since) if every > 0 => since.as_nanos() % every < on.as_nanos(),
                    _ => false,
                }
            }
        }
    }

    /// Whether the schedule is active at the instant a call happens:
    /// `elapsed` is `None` before the start instant.
    pub(crate) fn is_active_at(&self, elapsed: Option<Duration>) -> bool {
        match elapsed {
            Some(elapsed) => self.is_active(elapsed),
            None => self.is_always(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match &self.kind {
            Kind::Always => Ok(()),
            Kind::Windows(windows) => {
                if windows.is_empty() {
                    return Err(ConfigError::new(
                        LAYER,
                        "schedule",
                        "needs at least one window",
                    ));
                }
                for &(from, to) in windows.iter() {
                    if to <= from {
                        return Err(ConfigError::new(
                            LAYER,
                            "schedule",
                            format!("window must end after it starts, got {from:?}..{to:?}"),
                        ));
                    }
                }
                Ok(())
            }
            Kind::Flapping {
                on,
                every,
                from,
                until,
            } => {
                if every.is_zero() || on.is_zero() || on > every {
                    return Err(ConfigError::new(
                        LAYER,
                        "schedule",
                        format!("flapping needs 0 < on <= every, got on {on:?} every {every:?}"),
                    ));
                }
                if until.is_some_and(|u| u <= *from) {
                    return Err(ConfigError::new(
                        LAYER,
                        "schedule",
                        "flapping must end after it starts",
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn windows_are_half_open_and_may_be_several() {
        let s = Schedule::windows([(ms(10), ms(20)), (ms(50), ms(60))]);
        let active: Vec<u64> = (0..70).filter(|&t| s.is_active(ms(t))).collect();
        let expected: Vec<u64> = (10..20).chain(50..60).collect();
        assert_eq!(active, expected);
        assert!(s.validate().is_ok());
        assert!(!s.is_active_at(None));
    }

    #[test]
    fn after_and_always() {
        assert!(Schedule::after(ms(5)).is_active(ms(1_000_000)));
        assert!(!Schedule::after(ms(5)).is_active(ms(4)));
        assert!(Schedule::always().is_active_at(None));
        assert!(Schedule::default().is_always());
    }

    #[test]
    fn flapping_repeats_with_offset_and_end() {
        let s = Schedule::flapping(ms(2), ms(5))
            .starting(ms(10))
            .until(ms(25));
        let active: Vec<u64> = (0..40).filter(|&t| s.is_active(ms(t))).collect();
        assert_eq!(active, vec![10, 11, 15, 16, 20, 21]);
        assert!(s.validate().is_ok());
        // starting/until leave other schedules alone
        assert_eq!(
            Schedule::always().starting(ms(3)).until(ms(4)),
            Schedule::always()
        );
    }

    #[test]
    fn invalid_schedules_are_refused() {
        for bad in [
            Schedule::between(ms(5), ms(5)),
            Schedule::between(ms(6), ms(5)),
            Schedule::windows([]),
            Schedule::flapping(ms(0), ms(5)),
            Schedule::flapping(ms(6), ms(5)),
            Schedule::flapping(ms(1), ms(0)),
            Schedule::flapping(ms(1), ms(5))
                .starting(ms(10))
                .until(ms(10)),
        ] {
            let err = bad.validate().expect_err("invalid");
            assert_eq!(err.field(), "schedule");
        }
    }
}
