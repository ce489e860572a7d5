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
/// fields `layer`, `event` and the event's `Debug` form; the level follows
/// [`Event::severity`].
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingListener;

#[cfg(feature = "tracing")]
impl<E: Event> Listener<E> for TracingListener {
    fn on_event(&self, event: &E) {
        let layer = event.layer();
        let kind = event.kind();
        match event.severity() {
            Severity::Debug => {
                tracing::debug!(target: "seawall", layer, event = kind, details = ?event);
            }
            Severity::Info => {
                tracing::info!(target: "seawall", layer, event = kind, details = ?event);
            }
            Severity::Warn => {
                tracing::warn!(target: "seawall", layer, event = kind, details = ?event);
            }
        }
    }
}

/// Counts every event in the `metrics` counter `seawall_events_total`,
/// labelled `layer` and `event`; with a Prometheus exporter installed this is
/// scrapeable as is.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsListener;

/// The name of the counter [`MetricsListener`] increments.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub const EVENTS_TOTAL: &str = "seawall_events_total";

#[cfg(feature = "metrics")]
impl<E: Event> Listener<E> for MetricsListener {
    fn on_event(&self, event: &E) {
        metrics::counter!(
            EVENTS_TOTAL,
            "layer" => event.layer().to_owned(),
            "event" => event.kind(),
        )
        .increment(1);
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

    #[cfg(feature = "metrics")]
    #[test]
    fn metrics_listener_counts_by_layer_and_kind() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            MetricsListener.on_event(&Ping);
            MetricsListener.on_event(&Ping);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let (key, _, _, value) = snapshot
            .iter()
            .find(|(k, ..)| k.key().name() == EVENTS_TOTAL)
            .expect("counter recorded");
        assert_eq!(value, &DebugValue::Counter(2));
        let labels: Vec<_> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert!(labels.contains(&("layer".to_owned(), "test-layer".to_owned())));
        assert!(labels.contains(&("event".to_owned(), "ping".to_owned())));
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
        tracing::subscriber::with_default(subscriber, || TracingListener.on_event(&Ping));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("layer=\"test-layer\""), "{text}");
        assert!(text.contains("event=\"ping\""), "{text}");
    }
}
