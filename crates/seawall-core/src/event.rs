//! Typed events and the listeners that receive them.
//!
//! Each layer defines its own event type (state transitions, rejections,
//! scheduled retries, ...) implementing [`Event`], and takes a listener as a
//! type parameter that defaults to [`NoopListener`]. A layer only builds an
//! event when its listener's [`Listener::ENABLED`] is `true`, so the default
//! costs nothing: the check is a constant and the branch is removed at
//! compile time.
//!
//! Listeners combine: `(a, b)` sends each event to both, [`FnListener`] wraps
//! a closure, `Arc<L>` shares one. With the `tracing` and `metrics` features,
//! [`TracingListener`] and [`MetricsListener`] are ready-made.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use seawall_core::event::{Event, FnListener, Listener, NoopListener};
//!
//! #[derive(Debug)]
//! struct Tripped { layer: Arc<str> }
//! impl Event for Tripped {
//!     fn kind(&self) -> &'static str { "tripped" }
//!     fn layer(&self) -> &str { &self.layer }
//! }
//!
//! fn emit<L: Listener<Tripped>>(listener: &L, name: &Arc<str>) {
//!     if L::ENABLED {
//!         listener.on_event(&Tripped { layer: name.clone() });
//!     }
//! }
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let listener = FnListener::new(move |e: &Tripped| log.lock().unwrap().push(e.kind()));
//! let name: Arc<str> = "payments".into();
//! emit(&listener, &name);
//! emit(&NoopListener, &name); // builds nothing
//! assert_eq!(*seen.lock().unwrap(), vec!["tripped"]);
//! ```

use std::fmt;
use std::sync::Arc;

/// How much an event matters, used by [`TracingListener`] to pick a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Routine detail (a retry scheduled).
    Debug,
    /// Worth knowing (a state change back to healthy).
    Info,
    /// Something is wrong (a breaker tripped, a budget ran out).
    Warn,
}

/// An event emitted by a seawall layer.
pub trait Event: fmt::Debug + Send + Sync {
    /// A short snake-case name of what happened, e.g. `"state_transition"`;
    /// used as the `event` label of metrics.
    fn kind(&self) -> &'static str;

    /// The name of the layer instance that emitted it; used as the `layer`
    /// label of metrics.
    fn layer(&self) -> &str;

    /// How much the event matters.
    fn severity(&self) -> Severity {
        Severity::Info
    }

    /// Which pattern emitted it, e.g. `"circuit_breaker"`, `"bulkhead"`,
    /// `"retry"`; used as the `pattern` label of metrics and tracing field.
    fn pattern(&self) -> &'static str {
        "seawall"
    }

    /// The structured facts of the event that [`MetricsListener`] turns
    /// into gauges, counters and histograms and [`TracingListener`] into
    /// fields. The default has none.
    fn facts(&self) -> Facts {
        Facts::NONE
    }
}

/// The structured facts of an [`Event`]: what operators alert on.
///
/// Every field is optional; a layer fills in those its event knows. Values
/// are plain copies, so building one allocates nothing.
///
/// ```
/// use seawall_core::event::Facts;
///
/// let facts = Facts::NONE.transition("closed", "open").refusal("circuit_open");
/// assert_eq!(facts.transition, Some(("closed", "open")));
/// assert_eq!(facts.refusal, Some("circuit_open"));
/// assert_eq!(facts.outcome, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Facts {
    /// A state change: `(from, to)`, snake-case state names.
    pub transition: Option<(&'static str, &'static str)>,
    /// The outcome of a call: `"success"`, `"failure"` or `"ignored"`.
    pub outcome: Option<&'static str>,
    /// How long the call took.
    pub latency: Option<std::time::Duration>,
    /// A refusal, by its rejection kind (e.g. `"bulkhead_full"`).
    pub refusal: Option<&'static str>,
    /// A retry attempt was started (its number, the first attempt being 1).
    pub attempt: Option<u32>,
    /// Calls in flight after the event.
    pub in_flight: Option<u64>,
    /// Calls waiting after the event.
    pub queued: Option<u64>,
    /// The concurrency limit after the event.
    pub limit: Option<u64>,
    /// Tokens left in a retry (or hedge) budget after the event.
    pub budget: Option<f64>,
}

impl Facts {
    /// No facts.
    pub const NONE: Facts = Facts {
        transition: None,
        outcome: None,
        latency: None,
        refusal: None,
        attempt: None,
        in_flight: None,
        queued: None,
        limit: None,
        budget: None,
    };

    /// With a state change from `from` to `to`.
    pub const fn transition(mut self, from: &'static str, to: &'static str) -> Self {
        self.transition = Some((from, to));
        self
    }

    /// With a call's outcome.
    pub const fn outcome(mut self, outcome: &'static str) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// With a call's latency.
    pub const fn latency(mut self, latency: std::time::Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// With a refusal of `kind`.
    pub const fn refusal(mut self, kind: &'static str) -> Self {
        self.refusal = Some(kind);
        self
    }

    /// With a retry attempt number.
    pub const fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// With occupancy: in flight, queued and the limit.
    pub const fn occupancy(mut self, in_flight: u64, queued: u64, limit: u64) -> Self {
        self.in_flight = Some(in_flight);
        self.queued = Some(queued);
        self.limit = Some(limit);
        self
    }

    /// With the tokens left in a budget.
    pub const fn budget(mut self, tokens: f64) -> Self {
        self.budget = Some(tokens);
        self
    }
}

/// Receives the events of a layer.
///
/// Layers call [`on_event`](Listener::on_event) synchronously on the request
/// path, so a listener should be quick and must not block.
pub trait Listener<E>: Send + Sync + 'static {
    /// `false` only for listeners that ignore every event; layers skip
    /// building events when it is `false`.
    const ENABLED: bool = true;

    /// Called once per event.
    fn on_event(&self, event: &E);
}

/// The default listener: ignores everything, and so costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoopListener;

impl<E> Listener<E> for NoopListener {
    const ENABLED: bool = false;

    #[inline(always)]
    fn on_event(&self, _event: &E) {}
}

/// A listener made of a closure.
#[derive(Clone, Copy)]
pub struct FnListener<F>(F);

impl<F> FnListener<F> {
    /// Wraps `f`, which is called with every event.
    pub const fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> fmt::Debug for FnListener<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnListener").finish_non_exhaustive()
    }
}

impl<E, F> Listener<E> for FnListener<F>
where
    F: Fn(&E) + Send + Sync + 'static,
{
    fn on_event(&self, event: &E) {
        (self.0)(event);
    }
}

impl<E, L: Listener<E>> Listener<E> for Arc<L> {
    const ENABLED: bool = L::ENABLED;

    #[inline]
    fn on_event(&self, event: &E) {
        (**self).on_event(event);
    }
}

impl<E, A: Listener<E>, B: Listener<E>> Listener<E> for (A, B) {
    const ENABLED: bool = A::ENABLED || B::ENABLED;

    #[inline]
    fn on_event(&self, event: &E) {
        if A::ENABLED {
            self.0.on_event(event);
        }
        if B::ENABLED {
            self.1.on_event(event);
        }
    }
}

/// Sends every event to `tracing` under the target `seawall`, with the
/// structured fields `pattern` (e.g. `circuit_breaker`), `name` (the layer
/// instance), `event`, and, when the event has them, `from`, `to`,
/// `outcome`, `refusal`, `latency_ms` and `attempt`; the level follows
/// [`Event::severity`].
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingListener;

#[cfg(feature = "tracing")]
impl<E: Event> Listener<E> for TracingListener {
    fn on_event(&self, event: &E) {
        let name = event.layer();
        let kind = event.kind();
        let pattern = event.pattern();
        let facts = event.facts();
        let from = facts.transition.map(|(from, _)| from);
        let to = facts.transition.map(|(_, to)| to);
        let outcome = facts.outcome;
        let refusal = facts.refusal;
        let latency_ms = facts.latency.map(|d| d.as_secs_f64() * 1_000.0);
        let attempt = facts.attempt;
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "seawall",
                    pattern,
                    name,
                    event = kind,
                    from,
                    to,
                    outcome,
                    refusal,
                    latency_ms,
                    attempt,
                )
            };
        }
        match event.severity() {
            Severity::Debug => emit!(debug),
            Severity::Info => emit!(info),
            Severity::Warn => emit!(warn),
        }
    }
}

/// Turns events into the `metrics` operators alert on; with a Prometheus
/// exporter installed these are scrapeable as they are.
///
/// Every metric carries the labels `pattern` (e.g. `circuit_breaker`) and
/// `name` (the layer instance's name):
///
/// | metric | type | from |
/// |---|---|---|
/// | `seawall_events_total{event}` | counter | every event |
/// | `seawall_state_transitions_total{from,to}` | counter | state changes |
/// | `seawall_circuit_breaker_state{state}` | gauge, 1 for the current state and 0 for the one left | state changes |
/// | `seawall_calls_total{outcome}` | counter | calls the layer judged |
/// | `seawall_call_duration_seconds{outcome}` | histogram | calls with a latency, when [`with_latency`](Self::with_latency) |
/// | `seawall_rejections_total{kind}` | counter | refusals, by rejection kind |
/// | `seawall_retry_attempts_total` | counter | retry attempts started |
/// | `seawall_in_flight`, `seawall_queued`, `seawall_limit` | gauges | bulkhead occupancy |
/// | `seawall_budget_tokens` | gauge | retry budget level |
///
/// Call [`describe`](Self::describe) once at start-up to register the
/// metrics' descriptions and units with the installed recorder.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsListener {
    latency: bool,
}

/// The name of the counter of every event, labelled `event`.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub const EVENTS_TOTAL: &str = "seawall_events_total";

#[cfg(feature = "metrics")]
const TRANSITIONS_TOTAL: &str = "seawall_state_transitions_total";
#[cfg(feature = "metrics")]
const BREAKER_STATE: &str = "seawall_circuit_breaker_state";
#[cfg(feature = "metrics")]
const CALLS_TOTAL: &str = "seawall_calls_total";
#[cfg(feature = "metrics")]
const CALL_DURATION: &str = "seawall_call_duration_seconds";
#[cfg(feature = "metrics")]
const REJECTIONS_TOTAL: &str = "seawall_rejections_total";
#[cfg(feature = "metrics")]
const RETRY_ATTEMPTS_TOTAL: &str = "seawall_retry_attempts_total";
#[cfg(feature = "metrics")]
const IN_FLIGHT: &str = "seawall_in_flight";
#[cfg(feature = "metrics")]
const QUEUED: &str = "seawall_queued";
#[cfg(feature = "metrics")]
const LIMIT: &str = "seawall_limit";
#[cfg(feature = "metrics")]
const BUDGET_TOKENS: &str = "seawall_budget_tokens";

#[cfg(feature = "metrics")]
impl MetricsListener {
    /// A listener without latency histograms.
    pub const fn new() -> Self {
        Self { latency: false }
    }

    /// Also records `seawall_call_duration_seconds` histograms (one sample
    /// per judged call that carries a latency).
    pub const fn with_latency(mut self) -> Self {
        self.latency = true;
        self
    }

    /// Registers every metric's description and unit with the installed
    /// recorder. Call once at start-up, after installing the recorder.
    pub fn describe() {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_counter!(EVENTS_TOTAL, "Events emitted by seawall layers.");
        describe_counter!(TRANSITIONS_TOTAL, "State changes of seawall layers.");
        describe_gauge!(
            BREAKER_STATE,
            "1 for a circuit breaker's current state, 0 for the states it left."
        );
        describe_counter!(CALLS_TOTAL, "Calls judged by seawall layers, by outcome.");
        describe_histogram!(CALL_DURATION, Unit::Seconds, "Duration of judged calls.");
        describe_counter!(
            REJECTIONS_TOTAL,
            "Calls refused by seawall layers, by kind."
        );
        describe_counter!(RETRY_ATTEMPTS_TOTAL, "Retry attempts started.");
        describe_gauge!(IN_FLIGHT, "Calls in flight through a bulkhead.");
        describe_gauge!(QUEUED, "Calls waiting for a bulkhead permit.");
        describe_gauge!(LIMIT, "A bulkhead's current concurrency limit.");
        describe_gauge!(BUDGET_TOKENS, "Tokens left in a retry budget.");
    }
}

#[cfg(feature = "metrics")]
impl<E: Event> Listener<E> for MetricsListener {
    fn on_event(&self, event: &E) {
        let pattern = event.pattern();
        let name = event.layer().to_owned();
        metrics::counter!(
            EVENTS_TOTAL,
            "pattern" => pattern,
            "name" => name.clone(),
            "event" => event.kind(),
        )
        .increment(1);
        let facts = event.facts();
        if let Some((from, to)) = facts.transition {
            metrics::counter!(
                TRANSITIONS_TOTAL,
                "pattern" => pattern,
                "name" => name.clone(),
                "from" => from,
                "to" => to,
            )
            .increment(1);
            if pattern == "circuit_breaker" {
                metrics::gauge!(BREAKER_STATE, "name" => name.clone(), "state" => from).set(0.0);
                metrics::gauge!(BREAKER_STATE, "name" => name.clone(), "state" => to).set(1.0);
            }
        }
        if let Some(outcome) = facts.outcome {
            metrics::counter!(
                CALLS_TOTAL,
                "pattern" => pattern,
                "name" => name.clone(),
                "outcome" => outcome,
            )
            .increment(1);
            if let (true, Some(latency)) = (self.latency, facts.latency) {
                metrics::histogram!(
                    CALL_DURATION,
                    "pattern" => pattern,
                    "name" => name.clone(),
                    "outcome" => outcome,
                )
                .record(latency.as_secs_f64());
            }
        }
        if let Some(kind) = facts.refusal {
            metrics::counter!(
                REJECTIONS_TOTAL,
                "pattern" => pattern,
                "name" => name.clone(),
                "kind" => kind,
            )
            .increment(1);
        }
        if facts.attempt.is_some() {
            metrics::counter!(RETRY_ATTEMPTS_TOTAL, "pattern" => pattern, "name" => name.clone())
                .increment(1);
        }
        let gauges = [
            (IN_FLIGHT, facts.in_flight.map(|v| v as f64)),
            (QUEUED, facts.queued.map(|v| v as f64)),
            (LIMIT, facts.limit.map(|v| v as f64)),
            (BUDGET_TOKENS, facts.budget),
        ];
        for (metric, value) in gauges {
            if let Some(value) = value {
                metrics::gauge!(metric, "pattern" => pattern, "name" => name.clone()).set(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Ping;
    impl Event for Ping {
        fn kind(&self) -> &'static str {
            "ping"
        }
        fn layer(&self) -> &str {
            "test-layer"
        }
        fn severity(&self) -> Severity {
            Severity::Warn
        }
    }

    fn enabled<L: Listener<Ping>>(_: &L) -> bool {
        L::ENABLED
    }

    #[test]
    fn noop_is_disabled_and_combinations_follow() {
        let counter = Arc::new(AtomicUsize::new(0));
        let c = counter.clone();
        let counting = FnListener::new(move |_: &Ping| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert!(!enabled(&NoopListener));
        assert!(!enabled(&(NoopListener, NoopListener)));
        assert!(enabled(&counting));
        let both = Arc::new((counting.clone(), counting));
        assert!(enabled(&both));
        both.on_event(&Ping);
        (NoopListener, both.clone()).on_event(&Ping);
        assert_eq!(counter.load(Ordering::Relaxed), 4);
    }

    #[derive(Debug)]
    struct Tripped;
    impl Event for Tripped {
        fn kind(&self) -> &'static str {
            "state_transition"
        }
        fn layer(&self) -> &str {
            "payments"
        }
        fn pattern(&self) -> &'static str {
            "circuit_breaker"
        }
        fn facts(&self) -> Facts {
            Facts::NONE
                .transition("closed", "open")
                .outcome("failure")
                .latency(std::time::Duration::from_millis(250))
                .refusal("circuit_open")
                .occupancy(3, 1, 8)
        }
    }

    #[cfg(feature = "metrics")]
    fn labels_of(key: &metrics::Key) -> Vec<(String, String)> {
        key.labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect()
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn metrics_listener_counts_by_pattern_name_and_kind() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            MetricsListener::new().on_event(&Ping);
            MetricsListener::new().on_event(&Ping);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let (key, _, _, value) = snapshot
            .iter()
            .find(|(k, ..)| k.key().name() == EVENTS_TOTAL)
            .expect("counter recorded");
        assert_eq!(value, &DebugValue::Counter(2));
        let labels = labels_of(key.key());
        assert!(labels.contains(&("name".to_owned(), "test-layer".to_owned())));
        assert!(labels.contains(&("pattern".to_owned(), "seawall".to_owned())));
        assert!(labels.contains(&("event".to_owned(), "ping".to_owned())));
        assert_eq!(snapshot.len(), 1, "an event without facts only counts");
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn metrics_listener_turns_facts_into_operator_metrics() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            MetricsListener::new().with_latency().on_event(&Tripped);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let find = |name: &str, label: (&str, &str)| {
            snapshot
                .iter()
                .find(|(k, ..)| {
                    k.key().name() == name
                        && labels_of(k.key()).contains(&(label.0.to_owned(), label.1.to_owned()))
                })
                .map(|(_, _, _, v)| v)
        };
        assert_eq!(
            find("seawall_state_transitions_total", ("to", "open")),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            find("seawall_circuit_breaker_state", ("state", "open")),
            Some(&DebugValue::Gauge(1.0.into()))
        );
        assert_eq!(
            find("seawall_circuit_breaker_state", ("state", "closed")),
            Some(&DebugValue::Gauge(0.0.into()))
        );
        assert_eq!(
            find("seawall_calls_total", ("outcome", "failure")),
            Some(&DebugValue::Counter(1))
        );
        assert!(matches!(
            find("seawall_call_duration_seconds", ("outcome", "failure")),
            Some(DebugValue::Histogram(v)) if v.len() == 1
        ));
        assert_eq!(
            find("seawall_rejections_total", ("kind", "circuit_open")),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            find("seawall_in_flight", ("name", "payments")),
            Some(&DebugValue::Gauge(3.0.into()))
        );
        assert_eq!(
            find("seawall_limit", ("pattern", "circuit_breaker")),
            Some(&DebugValue::Gauge(8.0.into()))
        );
    }

    #[cfg(feature = "tracing")]
    #[test]
    fn tracing_listener_emits_at_severity() {
        use std::io::Write;
        use std::sync::Mutex;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            TracingListener.on_event(&Ping);
            TracingListener.on_event(&Tripped);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("name=\"test-layer\""), "{text}");
        assert!(text.contains("event=\"ping\""), "{text}");
        assert!(text.contains("pattern=\"circuit_breaker\""), "{text}");
        assert!(text.contains("from=\"closed\""), "{text}");
        assert!(text.contains("to=\"open\""), "{text}");
        assert!(text.contains("outcome=\"failure\""), "{text}");
        assert!(text.contains("latency_ms=250"), "{text}");
    }
}
