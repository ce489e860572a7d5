//! The state a layer shares with its services and handles.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use seawall_core::ConfigError;
use tokio::time::Instant;

use crate::fault::Armed;
use crate::headers::HeaderFaults;
use crate::layer::LAYER;
use crate::schedule::Schedule;

/// Bit of the switch word: the master switch is on.
pub(crate) const MASTER_ON: u64 = 1 << 63;
/// Bit of the switch word: header-triggered faults are configured.
pub(crate) const HEADERS_ON: u64 = 1 << 62;
/// Faults take the low bits of the switch word.
pub(crate) const MAX_FAULTS: usize = 62;

/// One fault on the request path.
pub(crate) struct FaultState {
    pub(crate) name: Arc<str>,
    pub(crate) armed: Armed,
    pub(crate) schedule: Schedule,
    /// The rate's `f64` bits, so that the handle reads back what was set.
    pub(crate) rate: AtomicU64,
    pub(crate) injected: AtomicU64,
}

/// What a layer, its services and its handles share.
pub(crate) struct Core {
    pub(crate) name: Arc<str>,
    /// Master switch, header faults and one bit per fault in one word, so
    /// that a call reads a single atomic to learn whether anything can
    /// fire. Nothing else is published through it, so relaxed accesses are
    /// enough: a switch takes effect for calls that read it afterwards.
    pub(crate) switches: AtomicU64,
    pub(crate) faults: Box<[FaultState]>,
    pub(crate) headers: Option<HeaderFaults>,
    pub(crate) header_injections: AtomicU64,
    /// The fault name of header-triggered faults in events.
    pub(crate) header_fault: Arc<str>,
    origin: Instant,
    /// The start instant, in nanoseconds after `origin`.
    start: AtomicU64,
    seed: u64,
    streams: AtomicU64,
}

impl Core {
    pub(crate) fn new(
        name: Arc<str>,
        faults: Box<[FaultState]>,
        headers: Option<HeaderFaults>,
        switches: u64,
        start: Instant,
        seed: u64,
    ) -> Self {
        // Before the start instant is a valid time for a call (a start set
        // in the future), so measure from whichever comes first.
        let origin = start.min(Instant::now());
        let offset = u64::try_from(start.duration_since(origin).as_nanos()).unwrap_or(u64::MAX);
        Self {
            name,
            switches: AtomicU64::new(switches),
            faults,
            headers,
            header_injections: AtomicU64::new(0),
            header_fault: Arc::from("header"),
            origin,
            start: AtomicU64::new(offset),
            seed,
            streams: AtomicU64::new(0),
        }
    }

    /// The time since the start instant, or `None` before it.
    pub(crate) fn elapsed(&self, now: Instant) -> Option<Duration> {
        now.checked_duration_since(self.origin)?
            .checked_sub(Duration::from_nanos(self.start.load(Relaxed)))
    }

    /// An RNG for a new service or clone: the layer's seed and the next
    /// stream number, mixed so that neighbouring streams are unrelated.
    pub(crate) fn rng(&self) -> SmallRng {
        let stream = self.streams.fetch_add(1, Relaxed);
        SmallRng::seed_from_u64(splitmix(self.seed ^ splitmix(stream)))
    }

    fn find(&self, name: &str) -> Result<(usize, &FaultState), ConfigError> {
        self.faults
            .iter()
            .enumerate()
            .find(|(_, f)| &*f.name == name)
            .ok_or_else(|| ConfigError::new(LAYER, "fault", format!("no fault named `{name}`")))
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Switches a [`ChaosLayer`](crate::ChaosLayer)'s faults and changes their
/// rates at run time, and reads how often each fired.
///
/// Every service the layer makes, and every clone of the layer, sees the
/// changes at once: they share the switches, which are atomics read with
/// one load per call (no lock on the request path). Get one with
/// [`ChaosLayer::handle`](crate::ChaosLayer::handle); clones are cheap.
///
/// ```
/// use seawall_chaos::{ChaosLayer, Fault};
///
/// let layer = ChaosLayer::builder()
///     .fault(Fault::error().rate(0.1).named("flaky"))
///     .build()
///     .unwrap();
/// let handle = layer.handle();
///
/// handle.set_rate("flaky", 0.5).unwrap();
/// assert_eq!(handle.rate("flaky"), Some(0.5));
/// handle.disable_fault("flaky").unwrap();
/// assert_eq!(handle.is_fault_enabled("flaky"), Some(false));
/// handle.disable(); // everything off: the layer passes calls through
/// assert!(!handle.is_enabled());
/// assert!(handle.set_rate("flaky", 1.5).is_err());
/// assert!(handle.enable_fault("missing").is_err());
/// ```
#[derive(Clone)]
pub struct ChaosHandle {
    pub(crate) core: Arc<Core>,
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosHandle")
            .field("layer", &self.core.name)
            .field("enabled", &self.is_enabled())
            .field("faults", &self.fault_names())
            .finish_non_exhaustive()
    }
}

impl ChaosHandle {
    /// The layer's name.
    pub fn layer_name(&self) -> &str {
        &self.core.name
    }

    /// Turns the master switch on: faults that are enabled fire again.
    pub fn enable(&self) {
        self.core.switches.fetch_or(MASTER_ON, Relaxed);
    }

    /// Turns the master switch off: the layer passes every call through,
    /// whatever the faults' own switches say.
    pub fn disable(&self) {
        self.core.switches.fetch_and(!MASTER_ON, Relaxed);
    }

    /// Whether the master switch is on.
    pub fn is_enabled(&self) -> bool {
        self.core.switches.load(Relaxed) & MASTER_ON != 0
    }

    /// Switches the fault named `name` on.
    pub fn enable_fault(&self, name: &str) -> Result<(), ConfigError> {
        let (i, _) = self.core.find(name)?;
        self.core.switches.fetch_or(1 << i, Relaxed);
        Ok(())
    }

    /// Switches the fault named `name` off.
    pub fn disable_fault(&self, name: &str) -> Result<(), ConfigError> {
        let (i, _) = self.core.find(name)?;
        self.core.switches.fetch_and(!(1 << i), Relaxed);
        Ok(())
    }

    /// Whether the fault named `name` is switched on (regardless of the
    /// master switch and its schedule); `None` if there is no such fault.
    pub fn is_fault_enabled(&self, name: &str) -> Option<bool> {
        let (i, _) = self.core.find(name).ok()?;
        Some(self.core.switches.load(Relaxed) & (1 << i) != 0)
    }

    /// Whether the fault named `name` can fire now: the master switch and
    /// the fault are on and its schedule is active. Reads the clock.
    pub fn is_active(&self, name: &str) -> Option<bool> {
        let (i, fault) = self.core.find(name).ok()?;
        let word = self.core.switches.load(Relaxed);
        let on = word & MASTER_ON != 0 && word & (1 << i) != 0;
        Some(
            on && fault
                .schedule
                .is_active_at(self.core.elapsed(Instant::now())),
        )
    }

    /// Sets the rate of the fault named `name`; `rate` must be in `[0, 1]`.
    pub fn set_rate(&self, name: &str, rate: f64) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(ConfigError::new(
                LAYER,
                "rate",
                format!("must be in [0, 1], got {rate}"),
            ));
        }
        let (_, fault) = self.core.find(name)?;
        fault.rate.store(rate.to_bits(), Relaxed);
        Ok(())
    }

    /// The rate of the fault named `name`.
    pub fn rate(&self, name: &str) -> Option<f64> {
        let (_, fault) = self.core.find(name).ok()?;
        Some(f64::from_bits(fault.rate.load(Relaxed)))
    }

    /// The schedule of the fault named `name`.
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.core.find(name).ok().map(|(_, f)| &f.schedule)
    }

    /// How many times the fault named `name` has fired, over every service
    /// of the layer.
    pub fn injected(&self, name: &str) -> Option<u64> {
        let (_, fault) = self.core.find(name).ok()?;
        Some(fault.injected.load(Relaxed))
    }

    /// How many calls got a fault from their own headers.
    pub fn injected_by_headers(&self) -> u64 {
        self.core.header_injections.load(Relaxed)
    }

    /// The names of the faults, in the order they are evaluated.
    pub fn fault_names(&self) -> Vec<&str> {
        self.core.faults.iter().map(|f| &*f.name).collect()
    }

    /// The instant schedules are measured from.
    pub fn start(&self) -> Instant {
        self.core.origin + Duration::from_nanos(self.core.start.load(Relaxed))
    }

    /// Makes schedules start again now.
    pub fn restart(&self) {
        self.set_start(Instant::now());
    }

    /// Measures schedules from `start`. An instant before the layer was
    /// built (or before the builder's
    /// [`start_at`](crate::ChaosBuilder::start_at), if earlier) is taken as
    /// that instant.
    pub fn set_start(&self, start: Instant) {
        let nanos = start.saturating_duration_since(self.core.origin).as_nanos();
        self.core
            .start
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Relaxed);
    }
}
