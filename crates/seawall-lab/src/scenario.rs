//! Scenarios as data: the TOML schema, its validation, and the embedded
//! default suite.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::stacks::StackKind;

/// The default suite, embedded so that the binary runs from anywhere.
pub const DEFAULT_SCENARIOS: &[(&str, &str)] = &[
    ("outage", include_str!("../scenarios/outage.toml")),
    ("brownout", include_str!("../scenarios/brownout.toml")),
    ("overload", include_str!("../scenarios/overload.toml")),
    ("retry-storm", include_str!("../scenarios/retry-storm.toml")),
    (
        "slow-dependency",
        include_str!("../scenarios/slow-dependency.toml"),
    ),
    (
        "duplicate-posts",
        include_str!("../scenarios/duplicate-posts.toml"),
    ),
    ("slow-tail", include_str!("../scenarios/slow-tail.toml")),
    (
        "fleet-outage",
        include_str!("../scenarios/fleet-outage.toml"),
    ),
];

/// A scenario file that could not be read, parsed or validated.
#[derive(Debug)]
pub struct ScenarioError {
    source_name: String,
    message: String,
}

impl ScenarioError {
    fn new(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source_name: source_name.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario {}: {}", self.source_name, self.message)
    }
}

impl std::error::Error for ScenarioError {}

/// A duration written as `"250ms"`, `"1.5s"`, `"2m"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `"250ms"`, `"1.5s"`, `"2m"`, `"100us"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} needs a unit (us, ms, s or m)"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("duration {text:?}: {number:?} is not a number"))?;
        let seconds = match unit.trim() {
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" | "min" => value * 60.0,
            other => {
                return Err(format!(
                    "duration {text:?}: unknown unit {other:?} (use us, ms, s or m)"
                ))
            }
        };
        Self::from_secs(seconds).map_err(|e| format!("duration {text:?}: {e}"))
    }

    fn from_secs(seconds: f64) -> Result<Self, String> {
        if !(0.0..=86_400.0).contains(&seconds) {
            return Err("must be between 0 and one day".to_owned());
        }
        Ok(Self(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_secs_f64() * 1e3;
        if ms >= 1000.0 {
            write!(f, "{}s", ms / 1000.0)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\" or \"30s\", or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Dur::from_secs(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Dur::from_secs(v as f64).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Dur::from_secs(v as f64).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// One scenario: the traffic, the upstreams it reaches, their faults, and
/// the knobs every client stack is built with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used by `--scenario`.
    pub name: String,
    /// One sentence: what happens and what to look for.
    #[serde(default)]
    pub description: String,
    /// How long requests arrive.
    pub duration: Dur,
    /// How long after the last arrival the run waits for answers; requests
    /// still open then count as unfinished (failures).
    #[serde(default = "default_drain")]
    pub drain: Dur,
    /// The traffic.
    pub arrivals: Arrivals,
    /// The dependencies; each request goes to one, picked by `share`.
    pub upstream: Vec<Upstream>,
    /// Settings shared by the client stacks.
    #[serde(default)]
    pub client: ClientSettings,
}

fn default_drain() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Open-loop arrivals: requests arrive on their own schedule whatever
/// happens to earlier ones, as users' requests do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    /// Requests per second outside surges.
    pub rate: f64,
    /// `"poisson"` (exponential gaps, the default) or `"fixed"` (even gaps).
    #[serde(default)]
    pub process: Process,
    /// Independent client instances (each with its own stack: its own
    /// breaker, budget, bulkhead) sharing the upstreams; requests are dealt
    /// to them round-robin.
    #[serde(default = "one")]
    pub clients: usize,
    /// Requests are `POST`s that create something (a side effect each time
    /// the handler runs); seawall's client sends an `Idempotency-Key`.
    #[serde(default)]
    pub post: bool,
    /// Windows with another arrival rate (e.g. an overload).
    #[serde(default)]
    pub surge: Vec<Surge>,
}

fn one() -> usize {
    1
}

/// An arrival process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Process {
    /// Exponentially distributed gaps.
    #[default]
    Poisson,
    /// Evenly spaced arrivals.
    Fixed,
}

/// A window `[start, end)` with another arrival rate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Surge {
    /// Window start, from the beginning of the run.
    pub start: Dur,
    /// Window end.
    pub end: Dur,
    /// Requests per second in the window.
    pub rate: f64,
}

/// A simulated dependency.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Its name (a route of the client).
    pub name: String,
    /// Relative share of the requests that go to it.
    #[serde(default = "one_f64")]
    pub share: f64,
    /// How many requests it works on at once; more wait in its queue (FIFO),
    /// so latency grows with load beyond capacity, as a real server's does.
    pub capacity: usize,
    /// Service time of one request once a worker has it.
    pub latency: Latency,
    /// How a lossy link between client and upstream behaves, in windows.
    #[serde(default)]
    pub fault: Vec<Fault>,
}

fn one_f64() -> f64 {
    1.0
}

/// A service-time distribution.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Latency {
    /// Always the same.
    Fixed {
        /// The service time.
        value: Dur,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Shortest.
        min: Dur,
        /// Longest.
        max: Dur,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean service time.
        mean: Dur,
    },
    /// Log-normal with this median and 99th percentile: a long tail, as
    /// measured services have.
    Lognormal {
        /// Median.
        median: Dur,
        /// 99th percentile (at least the median).
        p99: Dur,
    },
    /// A mixture: uniform in `[min, max]`, except that a share `slow_share`
    /// of the calls takes `slow_factor` times as long (a slow tail: a GC
    /// pause, a cold cache, a noisy neighbour).
    Mixture {
        /// Shortest fast call.
        min: Dur,
        /// Longest fast call.
        max: Dur,
        /// Share of the calls in the slow mode.
        slow_share: f64,
        /// How many times longer a slow call takes.
        slow_factor: f64,
    },
}

/// A fault window `[start, end)` of one upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Window start, from the beginning of the run.
    pub start: Dur,
    /// Window end.
    pub end: Dur,
    /// Share of calls that fail at once with an error.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of calls that get `spike` of extra service time.
    #[serde(default)]
    pub spike_rate: f64,
    /// The extra service time of a spiked call.
    #[serde(default)]
    pub spike: Dur,
    /// Share of calls that never answer (until the caller gives up).
    #[serde(default)]
    pub hang_rate: f64,
    /// Share of calls whose response is lost on the way back *after* the
    /// handler ran (the caller sees a connection reset).
    #[serde(default)]
    pub lose_response_rate: f64,
    /// Workers available during the window (a struggling dependency).
    #[serde(default)]
    pub capacity: Option<usize>,
}

/// Settings shared by the client stacks, so that they compete on equal
/// terms.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Connections each client instance has to all upstreams together
    /// (0: unlimited). A request waits for one, as in hyper's pool.
    #[serde(default)]
    pub pool: usize,
    /// Per-attempt timeout of the stacks that have one.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout: Dur,
    /// Total time a request may take, retries included, for the stacks that
    /// bound it.
    #[serde(default = "default_total_timeout")]
    pub total_timeout: Dur,
    /// Attempts per request (first included) for the retrying stacks.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Concurrent calls per route and client allowed by the bulkheads and
    /// concurrency limits.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a request may wait for a bulkhead slot.
    #[serde(default = "default_queue_wait")]
    pub queue_wait: Dur,
    /// How long the breakers stay open.
    #[serde(default = "default_breaker_open")]
    pub breaker_open: Dur,
    /// seawall's stacks time attempts out at the p99 x 3 of recent
    /// successful calls (`AdaptiveTimeoutLayer`), at most `attempt_timeout`,
    /// instead of at `attempt_timeout`.
    #[serde(default)]
    pub adaptive_timeout: bool,
    /// The run adds the stack "seawall preset" (`seawall::stack::client()`).
    #[serde(default)]
    pub preset: bool,
    /// When set, the scenario compares seawall's local breakers with
    /// breakers sharing one state through Redis ("seawall + fleet"), in
    /// wall time (see [`crate::fleet`]).
    #[serde(default)]
    pub fleet: Option<FleetSettings>,
    /// When set, the run adds the stack "seawall + hedge": seawall's stack
    /// with a `HedgeLayer` under the attempt timeout.
    #[serde(default)]
    pub hedge: Option<HedgeSettings>,
}

/// The `FleetSync` of the stack "seawall + fleet" (`[client.fleet]`): each
/// client instance is a replica whose breaker syncs through Redis.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// One Redis round trip per replica per interval.
    #[serde(default = "default_fleet_interval")]
    pub interval: Dur,
    /// Each round trip's bound; then local judgement.
    #[serde(default = "default_fleet_timeout")]
    pub timeout: Dur,
    /// Replicas that must fail on their own for the fleet to trip.
    #[serde(default = "default_fleet_min_replicas")]
    pub min_replicas: u32,
    /// The Redis URL and key prefix of a run: set by the lab, not the file.
    #[serde(skip)]
    pub redis: Option<(String, String)>,
}

fn default_fleet_interval() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_fleet_timeout() -> Dur {
    Dur(Duration::from_millis(50))
}
fn default_fleet_min_replicas() -> u32 {
    2
}

/// The `HedgeLayer` of the stack "seawall + hedge" (`[client.hedge]`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeSettings {
    /// Hedge after this percentile of the recent successful latencies
    /// (the layer's default, 0.95), unless `delay` is set.
    #[serde(default = "default_hedge_percentile")]
    pub percentile: f64,
    /// Hedge after this fixed delay instead.
    #[serde(default)]
    pub delay: Option<Dur>,
    /// Hedges may add at most this share of the requests (the layer's
    /// default, 0.05).
    #[serde(default = "default_hedge_budget")]
    pub budget: f64,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        Self {
            percentile: default_hedge_percentile(),
            delay: None,
            budget: default_hedge_budget(),
        }
    }
}

fn default_hedge_percentile() -> f64 {
    0.95
}
fn default_hedge_budget() -> f64 {
    0.05
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            pool: 0,
            attempt_timeout: default_attempt_timeout(),
            total_timeout: default_total_timeout(),
            max_attempts: default_attempts(),
            concurrency: default_concurrency(),
            queue_wait: default_queue_wait(),
            breaker_open: default_breaker_open(),
            adaptive_timeout: false,
            preset: false,
            fleet: None,
            hedge: None,
        }
    }
}

fn default_attempt_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_total_timeout() -> Dur {
    Dur(Duration::from_secs(3))
}
fn default_attempts() -> u32 {
    3
}
fn default_concurrency() -> usize {
    32
}
fn default_queue_wait() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_breaker_open() -> Dur {
    Dur(Duration::from_secs(5))
}

impl Scenario {
    /// Parses and validates a scenario; `source_name` names it in errors.
    pub fn from_toml(source_name: &str, text: &str) -> Result<Self, ScenarioError> {
        let scenario: Self = toml::from_str(text)
            .map_err(|e| ScenarioError::new(source_name, format!("invalid TOML: {e}")))?;
        scenario
            .validate()
            .map_err(|m| ScenarioError::new(source_name, m))?;
        Ok(scenario)
    }

    /// Reads a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::new(&name, format!("cannot read: {e}")))?;
        Self::from_toml(&name, &text)
    }

    /// Every `*.toml` file of a directory, sorted by file name.
    pub fn from_dir(dir: &Path) -> Result<Vec<Self>, ScenarioError> {
        let name = dir.display().to_string();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ScenarioError::new(&name, format!("cannot list directory: {e}")))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ScenarioError::new(&name, e.to_string()))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(ScenarioError::new(&name, "no *.toml files in directory"));
        }
        paths.sort();
        paths.iter().map(|p| Self::from_file(p)).collect()
    }

    /// The embedded default suite.
    pub fn defaults() -> Vec<Self> {
        DEFAULT_SCENARIOS
            .iter()
            .map(|(name, text)| {
                Self::from_toml(name, text).unwrap_or_else(|e| {
                    // The embedded files are tested (`defaults_parse`); a
                    // failure here is a bug of the lab, not of user input.
                    panic!("embedded scenario is invalid: {e}")
                })
            })
            .collect()
    }

    /// The window in which something is wrong: from the earliest fault or
    /// surge start to the latest end. `None` when nothing is scheduled.
    pub fn fault_window(&self) -> Option<(Duration, Duration)> {
        let windows = self
            .upstream
            .iter()
            .flat_map(|u| u.fault.iter().map(|f| (f.start.0, f.end.0)))
            .chain(self.arrivals.surge.iter().map(|s| (s.start.0, s.end.0)));
        windows.fold(None, |acc, (s, e)| match acc {
            None => Some((s, e)),
            Some((a, b)) => Some((a.min(s), b.max(e))),
        })
    }

    /// The stacks this scenario runs through, in table order: every
    /// [`StackKind::ALL`], plus "seawall preset" with `preset` and
    /// "seawall + hedge" with `[client.hedge]`; with `[client.fleet]`, only
    /// "seawall" and "seawall + fleet".
    pub fn stacks(&self) -> Vec<StackKind> {
        if self.client.fleet.is_some() {
            return vec![StackKind::Seawall, StackKind::SeawallFleet];
        }
        let mut kinds = StackKind::ALL.to_vec();
        if self.client.preset {
            kinds.push(StackKind::SeawallPreset);
        }
        if self.client.hedge.is_some() {
            kinds.push(StackKind::SeawallHedge);
        }
        kinds
    }

    /// Multiplies arrival rates and upstream capacities by `factor` (and
    /// the client's concurrency and pool), keeping the shape of the
    /// scenario; used to make tests fast.
    #[must_use]
    pub fn scaled(mut self, factor: f64) -> Self {
        let scale = |n: usize| ((n as f64 * factor).round() as usize).max(1);
        self.arrivals.rate *= factor;
        for surge in &mut self.arrivals.surge {
            surge.rate *= factor;
        }
        for upstream in &mut self.upstream {
            upstream.capacity = scale(upstream.capacity);
            for fault in &mut upstream.fault {
                fault.capacity = fault.capacity.map(scale);
            }
        }
        self.client.concurrency = scale(self.client.concurrency);
        if self.client.pool > 0 {
            self.client.pool = scale(self.client.pool);
        }
        self
    }

    fn validate(&self) -> Result<(), String> {
        fn rate(what: &str, r: f64) -> Result<(), String> {
            if r.is_finite() && r > 0.0 && r <= 1_000_000.0 {
                Ok(())
            } else {
                Err(format!(
                    "{what} must be a rate in (0, 1000000] per second, got {r}"
                ))
            }
        }
        fn share(what: &str, p: f64) -> Result<(), String> {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("{what} must be in [0, 1], got {p}"))
            }
        }
        fn window(what: &str, start: Dur, end: Dur, total: Duration) -> Result<(), String> {
            if start >= end {
                return Err(format!(
                    "{what}: start ({start}) must be before end ({end})"
                ));
            }
            if start.0 >= total {
                return Err(format!(
                    "{what}: start ({start}) must be within the duration ({})",
                    Dur(total)
                ));
            }
            Ok(())
        }
        if self.name.trim().is_empty() {
            return Err("name must not be empty".to_owned());
        }
        if self.duration.0 < Duration::from_secs(1) {
            return Err(format!(
                "duration must be at least 1s, got {}",
                self.duration
            ));
        }
        if self.duration.0 > Duration::from_secs(3600) {
            return Err(format!(
                "duration must be at most 1h, got {}",
                self.duration
            ));
        }
        rate("arrivals.rate", self.arrivals.rate)?;
        if self.arrivals.clients == 0 || self.arrivals.clients > 10_000 {
            return Err("arrivals.clients must be in 1..=10000".to_owned());
        }
        for (i, surge) in self.arrivals.surge.iter().enumerate() {
            rate(&format!("arrivals.surge[{i}].rate"), surge.rate)?;
            window(
                &format!("arrivals.surge[{i}]"),
                surge.start,
                surge.end,
                self.duration.0,
            )?;
        }
        let expected = self.arrivals.rate * self.duration.0.as_secs_f64()
            + self
                .arrivals
                .surge
                .iter()
                .map(|s| {
                    (s.rate - self.arrivals.rate) * s.end.0.saturating_sub(s.start.0).as_secs_f64()
                })
                .sum::<f64>();
        if expected > 2_000_000.0 {
            return Err(format!(
                "about {expected:.0} requests per stack: keep it under 2000000"
            ));
        }
        if self.upstream.is_empty() {
            return Err("at least one [[upstream]] is needed".to_owned());
        }
        for (i, up) in self.upstream.iter().enumerate() {
            let at = format!("upstream[{i}] ({})", up.name);
            if !(up.share.is_finite() && up.share > 0.0) {
                return Err(format!("{at}.share must be positive, got {}", up.share));
            }
            if up.capacity == 0 || up.capacity > 100_000 {
                return Err(format!("{at}.capacity must be in 1..=100000"));
            }
            match up.latency {
                Latency::Uniform { min, max } | Latency::Mixture { min, max, .. } if min > max => {
                    return Err(format!("{at}.latency: min ({min}) above max ({max})"));
                }
                Latency::Lognormal { median, p99 } if p99 < median || median.0.is_zero() => {
                    return Err(format!(
                        "{at}.latency: need 0 < median ({median}) <= p99 ({p99})"
                    ));
                }
                Latency::Mixture { slow_share, .. } if !(0.0..=1.0).contains(&slow_share) => {
                    return Err(format!(
                        "{at}.latency.slow_share must be in [0, 1], got {slow_share}"
                    ));
                }
                Latency::Mixture { slow_factor, .. }
                    if !(slow_factor.is_finite() && (1.0..=10_000.0).contains(&slow_factor)) =>
                {
                    return Err(format!(
                        "{at}.latency.slow_factor must be in [1, 10000], got {slow_factor}"
                    ));
                }
                _ => {}
            }
            for (j, f) in up.fault.iter().enumerate() {
                let fat = format!("{at}.fault[{j}]");
                window(&fat, f.start, f.end, self.duration.0)?;
                share(&format!("{fat}.error_rate"), f.error_rate)?;
                share(&format!("{fat}.spike_rate"), f.spike_rate)?;
                share(&format!("{fat}.hang_rate"), f.hang_rate)?;
                share(&format!("{fat}.lose_response_rate"), f.lose_response_rate)?;
                if f.error_rate + f.hang_rate > 1.0 {
                    return Err(format!("{fat}: error_rate + hang_rate must not exceed 1"));
                }
                if f.spike.0 > Duration::from_secs(3600) {
                    return Err(format!("{fat}.spike must be at most 1h"));
                }
                if let Some(c) = f.capacity {
                    if c == 0 || c > up.capacity {
                        return Err(format!(
                            "{fat}.capacity must be in 1..={} (the upstream's capacity)",
                            up.capacity
                        ));
                    }
                }
            }
        }
        let c = &self.client;
        if c.max_attempts == 0 || c.max_attempts > 10 {
            return Err("client.max_attempts must be in 1..=10".to_owned());
        }
        if c.concurrency == 0 || c.concurrency > 100_000 {
            return Err("client.concurrency must be in 1..=100000".to_owned());
        }
        if c.pool > 100_000 {
            return Err("client.pool must be at most 100000 (0: unlimited)".to_owned());
        }
        if c.attempt_timeout.0 > Duration::from_secs(3600)
            || c.total_timeout.0 > Duration::from_secs(3600)
            || c.breaker_open.0 > Duration::from_secs(3600)
            || c.queue_wait.0 > Duration::from_secs(3600)
            || self.drain.0 > Duration::from_secs(3600)
        {
            return Err("timeouts, waits and drain must be at most 1h".to_owned());
        }
        for (what, d) in [
            ("client.attempt_timeout", c.attempt_timeout),
            ("client.total_timeout", c.total_timeout),
            ("client.breaker_open", c.breaker_open),
        ] {
            if d.0.is_zero() {
                return Err(format!("{what} must be greater than zero"));
            }
        }
        if c.total_timeout < c.attempt_timeout {
            return Err("client.total_timeout must be at least client.attempt_timeout".to_owned());
        }
        if let Some(f) = &c.fleet {
            if f.interval.0 < Duration::from_millis(10) || f.interval.0 > Duration::from_secs(10) {
                return Err("client.fleet.interval must be in [10ms, 10s]".to_owned());
            }
            if f.timeout.0.is_zero() || f.timeout > f.interval {
                return Err("client.fleet.timeout must be in (0, interval]".to_owned());
            }
            if f.min_replicas == 0 {
                return Err("client.fleet.min_replicas must be at least 1".to_owned());
            }
        }
        if let Some(h) = c.hedge {
            if !(h.percentile > 0.0 && h.percentile < 1.0) {
                return Err(format!(
                    "client.hedge.percentile must be in (0, 1), got {}",
                    h.percentile
                ));
            }
            if !(h.budget > 0.0 && h.budget <= 1.0) {
                return Err(format!(
                    "client.hedge.budget must be in (0, 1], got {}",
                    h.budget
                ));
            }
            if h.delay
                .is_some_and(|d| d.0.is_zero() || d.0 > Duration::from_secs(10))
            {
                return Err("client.hedge.delay must be in (0, 10s]".to_owned());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let all = Scenario::defaults();
        assert_eq!(all.len(), DEFAULT_SCENARIOS.len());
        for (s, (name, _)) in all.iter().zip(DEFAULT_SCENARIOS) {
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Dur::parse("10").unwrap_err().contains("unit"));
        assert!(Dur::parse("3 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
    }

    const MINIMAL: &str = r#"
        name = "x"
        duration = "10s"
        [arrivals]
        rate = 10
        [[upstream]]
        name = "api"
        capacity = 4
        latency = { dist = "fixed", value = "10ms" }
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let s = Scenario::from_toml("x", MINIMAL).unwrap();
        assert_eq!(s.arrivals.process, Process::Poisson);
        assert_eq!(s.client.max_attempts, 3);
        assert_eq!(s.fault_window(), None);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let cases = [
            (MINIMAL.replace("rate = 10", "rate = -1"), "arrivals.rate"),
            (MINIMAL.replace("capacity = 4", "capacity = 0"), "capacity"),
            (MINIMAL.replace("\"10s\"", "\"10 parsecs\""), "unknown unit"),
            (
                MINIMAL.replace("name = \"api\"", "nmae = \"api\""),
                "unknown field",
            ),
            (
                format!("{MINIMAL}\n[[upstream.fault]]\nstart = \"5s\"\nend = \"2s\"\n"),
                "must be before end",
            ),
            (
                format!(
                    "{MINIMAL}\n[[upstream.fault]]\nstart = \"1s\"\nend = \"2s\"\nerror_rate = 2\n"
                ),
                "error_rate",
            ),
            ("not toml at all [".to_owned(), "invalid TOML"),
        ];
        for (text, expected) in cases {
            let err = Scenario::from_toml("bad.toml", &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
            assert!(err.starts_with("scenario bad.toml:"), "{err}");
        }
    }

    #[test]
    fn scaling_keeps_shape() {
        let s = Scenario::from_toml("x", MINIMAL).unwrap().scaled(0.5);
        assert!((s.arrivals.rate - 5.0).abs() < 1e-9);
        assert_eq!(s.upstream[0].capacity, 2);
    }
}
