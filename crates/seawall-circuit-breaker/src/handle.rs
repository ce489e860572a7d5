//! Reading and steering a breaker from outside the request path.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use seawall_core::SharedState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::State;

/// A breaker together with the classifier its calls are judged by; the one
/// allocation a service and its response futures share.
pub(crate) struct Shared<C> {
    pub(crate) breaker: Breaker,
    pub(crate) classifier: C,
}

impl<C> fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.breaker.fmt(f)
    }
}

/// Lets a [`Handle`] hold any `Shared<C>` without naming the classifier.
pub(crate) trait AsBreaker: Send + Sync + 'static {
    fn breaker(&self) -> &Breaker;
}

impl<C: Send + Sync + 'static> AsBreaker for Shared<C> {
    fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

/// A layer's state, counted or leaked: the handle holds a clone of it, so
/// it reaches the same breaker whichever it is, and keeps a counted one
/// alive.
impl<C: Send + Sync + 'static> AsBreaker for SharedState<Shared<C>> {
    fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

/// Reads and steers one circuit breaker: its state, a metrics snapshot, a
/// stream of state changes, and manual overrides.
///
/// Get one from [`CircuitBreakerLayer::handle`](crate::CircuitBreakerLayer::handle)
/// or, in keyed mode, from [`KeyedHandle`](crate::KeyedHandle). Cloning is
/// cheap; every clone steers the same breaker.
///
/// ```
/// use seawall_circuit_breaker::{CircuitBreakerLayer, State};
///
/// let layer = CircuitBreakerLayer::new();
/// let handle = layer.handle();
/// let mut changes = handle.subscribe();
///
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// assert!(changes.has_changed().unwrap());
/// assert_eq!(*changes.borrow_and_update(), State::ForcedOpen);
///
/// handle.reset();
/// assert_eq!(handle.metrics().state, State::Closed);
/// ```
#[derive(Clone)]
pub struct Handle {
    shared: Arc<dyn AsBreaker>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", self.breaker().name())
            .field("state", &self.state())
            .finish()
    }
}

impl Handle {
    pub(crate) fn new<C: Send + Sync + 'static>(shared: Arc<Shared<C>>) -> Self {
        Self { shared }
    }

    /// A handle on a layer's breaker. `SharedState` gives no way back to
    /// its `Arc` (and a leaked one has none to give), so the handle boxes a
    /// clone of it: one allocation per handle, none per call, and handles
    /// taken before and after a leak reach the same breaker.
    pub(crate) fn from_state<C: Send + Sync + 'static>(shared: SharedState<Shared<C>>) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        self.shared.breaker()
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        self.breaker().name()
    }

    /// In keyed mode, the key (its `Debug` form) of this breaker.
    pub fn key(&self) -> Option<&str> {
        self.breaker().key().map(|k| &**k)
    }

    /// The current state.
    ///
    /// An open breaker becomes half-open when the next call arrives after its
    /// open duration, so a breaker with no traffic reports `Open` until then;
    /// [`Metrics::open_remaining`] tells how long is left.
    pub fn state(&self) -> State {
        self.breaker().state()
    }

    /// A snapshot of the breaker's window and counters.
    pub fn metrics(&self) -> Metrics {
        self.breaker().metrics()
    }

    /// A receiver that sees every state change. The current state is marked
    /// as seen.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.breaker().subscribe()
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.breaker().force(State::ForcedOpen);
    }

    /// Lets every call through and records nothing until
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.breaker().force(State::Disabled);
    }

    /// Closes the breaker with an empty window and forgets earlier trips
    /// (the next open duration starts from its base again).
    pub fn reset(&self) {
        self.breaker().force(State::Closed);
    }
}

/// A snapshot of one breaker, from [`Handle::metrics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The state.
    pub state: State,
    /// When the breaker entered `state`.
    pub state_since: Instant,
    /// Calls in the sliding window (outcomes from the closed state only);
    /// while half-open, the probes finished so far, and while open again
    /// after probing, the probes of that attempt (see
    /// [`probe_window`](Self::probe_window)).
    pub calls: u64,
    /// Calls that did not fail (`calls - failures`).
    pub successes: u64,
    /// Failed calls.
    pub failures: u64,
    /// Slow calls.
    pub slow_calls: u64,
    /// `true` when `calls`, `failures`, `slow_calls` and the rates describe
    /// half-open probes (the ones running now, or the verdict of the last
    /// attempt while open again after it) rather than the sliding window.
    pub probe_window: bool,
    /// `failures / calls`, once the window holds at least `minimum_calls`
    /// (for probes, once one finished).
    pub failure_rate: Option<f64>,
    /// `slow_calls / calls`, once the window holds at least
    /// `minimum_calls` and slow calls are detected.
    pub slow_call_rate: Option<f64>,
    /// Failures in a row, in the closed state.
    pub consecutive_failures: u64,
    /// Calls rejected since the breaker was created.
    pub rejected: u64,
    /// Trips since the breaker last closed after probing (drives an
    /// exponential open duration).
    pub consecutive_trips: u32,
    /// While `Open`, the time left before probes are let through.
    pub open_remaining: Option<Duration>,
    /// While `HalfOpen`, probes admitted and not yet finished.
    pub probes_in_flight: u32,
}
