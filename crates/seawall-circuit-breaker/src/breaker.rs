//! The breaker engine: admission, recording, trip rules and transitions.
//!
//! The closed happy path is one `Acquire` load of the state word to admit,
//! and on completion one load to check the epoch plus the window's atomics.
//! Transitions are rare and take a mutex, which serialises them and lets the
//! winner prepare the new state (fresh window, probe gate, open deadline)
//! before one `Release` store of the state word publishes it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use seawall_core::Outcome;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::CircuitOpen;
use crate::event::{CircuitBreakerEvent, Emitter, EventKind};
use crate::handle::Metrics;
use crate::open_duration::OpenDuration;
use crate::state::{
    admits_all, epoch_of, is_closed, pack, state_of, Admit, ProbeGate, ProbeVerdict, State,
};
use crate::window::{CountWindow, Counts, Padded, TimeWindow, Window};

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The window a breaker records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowConfig {
    Count(usize),
    Time { duration: Duration, buckets: usize },
}

/// Validated settings, shared by every breaker of a keyed registry.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) failure_rate: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate: f64,
    pub(crate) minimum_calls: u64,
    pub(crate) consecutive_failures: Option<u64>,
    pub(crate) window: WindowConfig,
    pub(crate) open: OpenDuration,
    pub(crate) probes: u32,
    pub(crate) max_half_open_wait: Duration,
    pub(crate) count_inner_rejections: bool,
    pub(crate) metrics_only: bool,
}

/// Why the breaker tripped.
#[derive(Debug, Clone, Copy)]
enum Trip {
    FailureRate(f64),
    SlowCallRate(f64),
    Consecutive(u64),
}

/// What a call was admitted as, carried from admission to its outcome.
///
/// Plain words only: an `Option<Instant>` (written in pieces, read back
/// whole) costs a store-forwarding stall on every move. The ticket is made
/// in `call` and written once, into the response future.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    /// The state word the call was admitted under; its state says what
    /// kind of call this is (closed, probe, or untracked when disabled).
    word: u64,
    /// Nanoseconds since the breaker's base instant, or [`NO_START`].
    start: u64,
}

/// The start of a call whose duration nobody needs.
const NO_START: u64 = u64::MAX;

impl Ticket {
    #[inline]
    fn state(&self) -> State {
        state_of(self.word)
    }

    #[inline]
    pub(crate) fn is_probe(&self) -> bool {
        self.state() == State::HalfOpen
    }
}

/// The probes of one half-open period, by admission time.
#[derive(Debug, Default)]
struct ProbeClock {
    epoch: u64,
    started: Vec<u64>,
}

#[derive(Debug)]
struct Control {
    /// What the probes of the last half-open period said, while the
    /// breaker is open again after it.
    last_probes: Option<ProbeVerdict>,
    trips: u32,
    rng: u64,
    since: Instant,
}

/// One circuit breaker.
pub(crate) struct Breaker {
    state: Padded<AtomicU64>,
    /// Two windows used in turn: closing empties the other one and switches
    /// to it, so a caller that passed its epoch check just before the switch
    /// writes into the retired window, not the fresh one. (Only a caller
    /// stalled across two closes could reach the fresh one; emptying is
    /// done slot by slot like a write, so even then the totals stay exact.)
    windows: [Window; 2],
    active: AtomicUsize,
    consecutive: Padded<AtomicU64>,
    gate: ProbeGate,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    /// Admission times of the probes of the current half-open period that
    /// hold a slot (admitted, called or not, and not finished), and the
    /// earliest moment one of them has waited `max_half_open_wait`
    /// (`u64::MAX` if none). A slot is taken and given back only under
    /// this lock, together with its time.
    probe_clock: Mutex<ProbeClock>,
    probe_deadline: AtomicU64,
    rejected: AtomicU64,
    /// `cfg.slow_call_duration`, kept here so the call path does not chase
    /// the config's pointer.
    slow_call: Option<Duration>,
    base: Instant,
    cfg: Arc<Config>,
    key: Option<Arc<str>>,
    control: Mutex<Control>,
    watch: watch::Sender<State>,
    emit: Option<Emitter>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.cfg.name)
            .field("key", &self.key)
            .field("state", &self.state())
            .field("window", self.window())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(cfg: Arc<Config>, key: Option<Arc<str>>, emit: Option<Emitter>) -> Self {
        let window = || match cfg.window {
            WindowConfig::Count(size) => Window::Count(CountWindow::new(size)),
            WindowConfig::Time { duration, buckets } => {
                let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
                Window::Time(TimeWindow::new(
                    buckets,
                    nanos / buckets.max(1) as u64,
                    cfg.slow_call_duration.is_some(),
                ))
            }
        };
        let now = Instant::now();
        Self {
            state: Padded(AtomicU64::new(pack(0, State::Closed))),
            windows: [window(), window()],
            active: AtomicUsize::new(0),
            consecutive: Padded(AtomicU64::new(0)),
            gate: ProbeGate::new(),
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            probe_clock: Mutex::new(ProbeClock::default()),
            probe_deadline: AtomicU64::new(u64::MAX),
            rejected: AtomicU64::new(0),
            slow_call: cfg.slow_call_duration,
            base: now,
            control: Mutex::new(Control {
                last_probes: None,
                trips: 0,
                rng: cfg.open.initial_rng(),
                since: now,
            }),
            cfg,
            key,
            watch: watch::Sender::new(State::Closed),
            emit,
        }
    }

    /// The window of the current closed period. Read after the state word,
    /// whose `Release` store follows the switch, so a caller that saw the
    /// new state sees the new window.
    #[inline]
    fn window(&self) -> &Window {
        &self.windows[self.active.load(Ordering::Relaxed) & 1]
    }

    /// Whether a seawall rejection raised inside the breaker counts as a
    /// failure (see `Builder::count_inner_rejections`).
    pub(crate) fn counts_inner_rejections(&self) -> bool {
        self.cfg.count_inner_rejections
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.cfg.name
    }

    pub(crate) fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }

    /// Whether the breaker is open with an open period that ended at least
    /// `ago` before `now`.
    pub(crate) fn open_ended_before(&self, now: Instant, ago: Duration) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        self.nanos(now) >= until.saturating_add(duration_nanos(ago))
    }

    pub(crate) fn state(&self) -> State {
        state_of(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.watch.subscribe()
    }

    #[inline]
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // The guarded data stays consistent even if a listener panicked
        // while it was held, so a poisoned lock is still usable.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, kind: EventKind) {
        if let Some(emit) = &self.emit {
            emit(&CircuitBreakerEvent::new(
                self.cfg.name.clone(),
                self.key.clone(),
                kind,
            ));
        }
    }

    /// `true` if a call admitted under the state word `word` would now be
    /// admitted under another state (or refused). This holds for a disabled
    /// admission too: a breaker forced open after it must refuse the call.
    pub(crate) fn is_stale(&self, word: u64) -> bool {
        self.state.load(Ordering::Acquire) != word
    }

    /// Decides whether a call may go through, returning the state word it
    /// is admitted under and, for a half-open probe, its admission time
    /// ([`NO_START`] otherwise); the [`Ticket`] is made from them when the
    /// call starts ([`Breaker::ticket`]).
    ///
    /// Always inlined, with everything but the closed and disabled states
    /// out of line, so the word stays in registers instead of crossing a
    /// call boundary (measured in `benches/benches/circuit_breaker.rs`:
    /// returning an admission through memory cost a store-forwarding stall
    /// per call).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn admit(&self) -> Result<(u64, u64), CircuitOpen> {
        let word = self.state.load(Ordering::Acquire);
        if admits_all(word) {
            return Ok((word, NO_START));
        }
        self.admit_slow(word)
    }

    #[cold]
    #[inline(never)]
    fn admit_slow(&self, mut word: u64) -> Result<(u64, u64), CircuitOpen> {
        loop {
            match state_of(word) {
                State::Closed | State::Disabled => return Ok((word, NO_START)),
                // Forced open has no end the breaker knows of: hint the
                // open duration an automatic trip starts with.
                State::ForcedOpen => return Err(self.reject(word, Some(self.cfg.open.base()))),
                State::Open => {
                    let now = self.nanos(Instant::now());
                    let until = self.open_until.load(Ordering::Relaxed);
                    if now < until {
                        return Err(self.reject(word, Some(Duration::from_nanos(until - now))));
                    }
                    self.transition(word, State::HalfOpen, None);
                }
                State::HalfOpen => {
                    let now = self.nanos(Instant::now());
                    // Checked on every admission: a probe that has not
                    // finished `max_half_open_wait` after its admission is
                    // lost, and the breaker opens again as of that moment.
                    if let Some(lost_at) = self.lost_probe(now) {
                        self.reopen_lost(word, lost_at);
                    } else {
                        match self.admit_probe(word, now) {
                            Admit::Admitted => return Ok((word, now)),
                            Admit::Full => {
                                return Err(self.reject(word, Some(self.half_open_hint(now))));
                            }
                            Admit::Stale => {
                                if self.state.load(Ordering::Acquire) == word {
                                    return Err(self.reject(word, Some(self.half_open_hint(now))));
                                }
                            }
                        }
                    }
                }
            }
            word = self.state.load(Ordering::Acquire);
        }
    }

    /// When the oldest probe of the half-open period was lost, if one is:
    /// one not finished `max_half_open_wait` after its admission (whether
    /// or not it was called yet). Every probe slot taken has its admission
    /// time in the probe clock, noted under the same lock as the slot.
    fn lost_probe(&self, now: u64) -> Option<u64> {
        let deadline = self.probe_deadline.load(Ordering::Acquire);
        (now >= deadline).then_some(deadline)
    }

    /// Takes a probe slot of the half-open period `word` and notes its
    /// admission time, as one step under the probe clock's lock: no one
    /// ever sees a slot taken without its time, or a time without its slot.
    fn admit_probe(&self, word: u64, now: u64) -> Admit {
        let mut clock = lock(&self.probe_clock);
        let admit = self.gate.try_admit(epoch_of(word), self.cfg.probes);
        if admit == Admit::Admitted && clock.epoch == epoch_of(word) {
            clock.started.push(now);
            self.publish_deadline(&clock);
        }
        admit
    }

    /// How long a caller refused while half-open should wait: until the
    /// oldest probe's `max_half_open_wait` runs out, when the breaker has
    /// closed or opened again for sure.
    fn half_open_hint(&self, now: u64) -> Duration {
        let deadline = self.probe_deadline.load(Ordering::Acquire);
        let deadline = if deadline == u64::MAX {
            self.half_open_since
                .load(Ordering::Relaxed)
                .saturating_add(duration_nanos(self.cfg.max_half_open_wait))
        } else {
            deadline
        };
        Duration::from_nanos(deadline.saturating_sub(now))
    }

    #[cold]
    fn reopen_lost(&self, word: u64, lost_at: u64) {
        let mut control = self.control();
        if self.state.load(Ordering::Acquire) != word {
            return;
        }
        control.last_probes = self.gate.progress(epoch_of(word));
        let from = self.apply_at(&mut control, word, State::Open, Some(lost_at));
        drop(control);
        self.announce(from, State::Open, None);
    }

    /// Forgets the admission time `at` of a probe of the half-open period
    /// `word` that finished or gave its slot back, and runs `gate_op` (the
    /// gate's completion or release) under the same lock, so the probe's
    /// time and its slot go together.
    fn probe_done<R>(&self, word: u64, at: u64, gate_op: impl FnOnce() -> R) -> R {
        let mut clock = lock(&self.probe_clock);
        if clock.epoch == epoch_of(word) {
            if let Some(i) = clock.started.iter().position(|&t| t == at) {
                clock.started.swap_remove(i);
                self.publish_deadline(&clock);
            }
        }
        gate_op()
    }

    fn publish_deadline(&self, clock: &ProbeClock) {
        let wait = duration_nanos(self.cfg.max_half_open_wait);
        let deadline = clock
            .started
            .iter()
            .min()
            .map_or(u64::MAX, |t| t.saturating_add(wait));
        self.probe_deadline.store(deadline, Ordering::Release);
    }

    /// The ticket of a call admitted under `word`, as it starts. The clock
    /// is read only when slow calls are detected; the duration of a call
    /// runs from `call`, not from readiness.
    #[inline]
    pub(crate) fn ticket(&self, word: u64, probe_at: u64) -> Ticket {
        if !admits_all(word) {
            // A probe: its start is its admission time (for the slow-call
            // check too), noted for `max_half_open_wait` when its slot was
            // taken.
            return Ticket {
                word,
                start: probe_at,
            };
        }
        // A listener also gets each call's latency (`CallRecorded`).
        let start = if (self.slow_call.is_some() && state_of(word) != State::Disabled)
            || self.emit.is_some()
        {
            self.nanos(Instant::now())
        } else {
            NO_START
        };
        Ticket { word, start }
    }

    #[cold]
    fn reject(&self, word: u64, retry_after: Option<Duration>) -> CircuitOpen {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.emit(EventKind::CallRejected {
            state: state_of(word),
        });
        CircuitOpen::new(retry_after)
    }

    /// A probe admitted at `at` and never started: its slot is given back.
    pub(crate) fn abandon(&self, word: u64, at: u64) {
        if state_of(word) == State::HalfOpen {
            self.probe_done(word, at, || self.gate.release(epoch_of(word)));
        }
    }

    /// A probe that started and will never report (cancelled, or its
    /// outcome ignored): its slot is given back.
    pub(crate) fn abandon_probe(&self, ticket: &Ticket) {
        if ticket.is_probe() {
            self.probe_done(ticket.word, ticket.start, || {
                self.gate.release(epoch_of(ticket.word));
            });
        }
    }

    #[inline]
    fn is_slow(&self, ticket: &Ticket) -> bool {
        self.slow_call.is_some() && self.is_slow_at(ticket, self.nanos(Instant::now()))
    }

    /// Whether the call of `ticket`, finished at `now` (nanoseconds since
    /// the base instant), was slow.
    #[inline]
    fn is_slow_at(&self, ticket: &Ticket, now: u64) -> bool {
        match self.slow_call {
            Some(limit) if ticket.start != NO_START => {
                Duration::from_nanos(now.saturating_sub(ticket.start)) > limit
            }
            _ => false,
        }
    }

    /// Records the outcome of a call admitted with `ticket`.
    #[inline]
    pub(crate) fn record(&self, ticket: &Ticket, outcome: Outcome) {
        if self.emit.is_some() {
            self.emit_call(ticket, outcome);
        }
        if is_closed(ticket.word) {
            self.record_closed(ticket, outcome);
        } else if ticket.is_probe() {
            self.record_probe(ticket, outcome);
        }
        // Disabled: nothing is recorded. A ticket is never issued in the
        // open states.
    }

    #[cold]
    #[inline(never)]
    fn emit_call(&self, ticket: &Ticket, outcome: Outcome) {
        let latency = (ticket.start != NO_START)
            .then(|| Duration::from_nanos(self.nanos(Instant::now()).saturating_sub(ticket.start)));
        self.emit(EventKind::CallRecorded { outcome, latency });
    }

    #[cold]
    #[inline(never)]
    fn record_probe(&self, ticket: &Ticket, outcome: Outcome) {
        if outcome == Outcome::Ignore {
            self.abandon_probe(ticket);
            return;
        }
        let slow = self.is_slow(ticket);
        let verdict = self.probe_done(ticket.word, ticket.start, || {
            self.gate.complete(
                epoch_of(ticket.word),
                self.cfg.probes,
                outcome.is_failure(),
                slow,
            )
        });
        if let Some(verdict) = verdict {
            self.decide(ticket.word, verdict);
        }
    }

    #[inline]
    fn record_closed(&self, ticket: &Ticket, outcome: Outcome) {
        // An outcome of a call admitted under an earlier state says
        // nothing about the state the breaker is in now.
        if outcome == Outcome::Ignore || self.state.load(Ordering::Acquire) != ticket.word {
            return;
        }
        let failed = outcome.is_failure();
        let window = self.window();
        // One clock read serves both the slow-call check and the time window
        // (a read costs more than the rest of the closed path).
        let now = if self.slow_call.is_some() || window.needs_clock() {
            self.nanos(Instant::now())
        } else {
            0
        };
        let slow = self.is_slow_at(ticket, now);
        let counts = window.record(now, failed, slow);
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            // Read first so a run of successes never writes the line.
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            0
        };
        if self.trip_rule(counts, consecutive).is_some() {
            self.confirm_trip(ticket, window, now, consecutive);
        }
    }

    /// Trips only if the window's consistent snapshot agrees with the
    /// counts the recording returned (for a time window those can miss
    /// calls recorded late into older slices, and a judgement must never
    /// see a rate the window does not hold).
    #[cold]
    #[inline(never)]
    fn confirm_trip(&self, ticket: &Ticket, window: &Window, now: u64, consecutive: u64) {
        let counts = window.confirm(now);
        if let Some(trip) = self.trip_rule(counts, consecutive) {
            if self.cfg.metrics_only {
                // Record and report, never refuse: the rule's event, no
                // transition.
                self.announce(State::Closed, State::Closed, Some(trip));
            } else {
                self.transition(ticket.word, State::Open, Some(trip));
            }
        }
    }

    #[inline]
    fn trip_rule(&self, c: Counts, consecutive: u64) -> Option<Trip> {
        if c.failures == 0 && c.slow == 0 {
            return None;
        }
        if let Some(limit) = self.cfg.consecutive_failures {
            if consecutive >= limit {
                return Some(Trip::Consecutive(consecutive));
            }
        }
        if c.calls < self.cfg.minimum_calls || c.calls == 0 {
            return None;
        }
        let calls = c.calls as f64;
        let failure_rate = c.failures as f64 / calls;
        if failure_rate >= self.cfg.failure_rate {
            return Some(Trip::FailureRate(failure_rate));
        }
        if self.slow_call.is_some() {
            let slow_rate = c.slow as f64 / calls;
            if slow_rate >= self.cfg.slow_call_rate {
                return Some(Trip::SlowCallRate(slow_rate));
            }
        }
        None
    }

    #[cold]
    fn decide(&self, word: u64, v: ProbeVerdict) {
        let done = f64::from(v.done.max(1));
        let failure_rate = f64::from(v.failed) / done;
        let slow_rate = f64::from(v.slow) / done;
        let trip = if failure_rate >= self.cfg.failure_rate {
            Some(Trip::FailureRate(failure_rate))
        } else if self.cfg.slow_call_duration.is_some() && slow_rate >= self.cfg.slow_call_rate {
            Some(Trip::SlowCallRate(slow_rate))
        } else {
            None
        };
        match trip {
            Some(trip) => {
                let mut control = self.control();
                if self.state.load(Ordering::Acquire) == word {
                    control.last_probes = Some(v);
                    let from = self.apply_at(&mut control, word, State::Open, None);
                    drop(control);
                    self.announce(from, State::Open, Some(trip));
                }
            }
            None => {
                self.transition(word, State::Closed, None);
            }
        }
    }

    /// Moves from the state in `expected` to `to`, unless another thread
    /// moved first. Returns whether this call made the move.
    #[cold]
    fn transition(&self, expected: u64, to: State, trip: Option<Trip>) -> bool {
        let mut control = self.control();
        let current = self.state.load(Ordering::Acquire);
        if current != expected {
            return false;
        }
        let from = self.apply(&mut control, current, to);
        drop(control);
        self.announce(from, to, trip);
        true
    }

    /// Moves to `to` whatever the current state (the handle's commands).
    pub(crate) fn force(&self, to: State) {
        let mut control = self.control();
        let current = self.state.load(Ordering::Acquire);
        let from = self.apply(&mut control, current, to);
        drop(control);
        self.announce(from, to, None);
    }

    /// Prepares `to`, then publishes it. Runs under the control lock; the
    /// `Release` store of the state word makes everything prepared here
    /// visible to any caller that loads the new word.
    fn apply(&self, control: &mut Control, current: u64, to: State) -> State {
        if to != State::Open || state_of(current) != State::HalfOpen {
            control.last_probes = None;
        }
        self.apply_at(control, current, to, None)
    }

    /// [`apply`](Self::apply), with an open period that started at
    /// `opened_at` (nanoseconds since the base instant) instead of now.
    fn apply_at(
        &self,
        control: &mut Control,
        current: u64,
        to: State,
        opened_at: Option<u64>,
    ) -> State {
        let now = Instant::now();
        let epoch = epoch_of(current) + 1;
        match to {
            State::Closed => {
                let next = self.active.load(Ordering::Relaxed) ^ 1;
                self.windows[next].reset();
                self.active.store(next, Ordering::Relaxed);
                self.consecutive.store(0, Ordering::Relaxed);
                control.trips = 0;
            }
            State::Open => {
                control.trips = control.trips.saturating_add(1);
                let wait = self.cfg.open.for_trip(control.trips, &mut control.rng);
                let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                let from = opened_at.unwrap_or_else(|| self.nanos(now));
                self.open_until
                    .store(from.saturating_add(wait), Ordering::Relaxed);
            }
            State::HalfOpen => {
                self.half_open_since
                    .store(self.nanos(now), Ordering::Relaxed);
                // The gate opens under the probe clock's lock, so its slots
                // and their admission times change together.
                let mut clock = lock(&self.probe_clock);
                clock.epoch = epoch;
                clock.started.clear();
                self.publish_deadline(&clock);
                self.gate.open(epoch);
                drop(clock);
            }
            State::ForcedOpen | State::Disabled => {}
        }
        self.state.store(pack(epoch, to), Ordering::Release);
        let from = state_of(current);
        if from != to {
            control.since = now;
            self.watch.send_replace(to);
        }
        from
    }

    fn announce(&self, from: State, to: State, trip: Option<Trip>) {
        if self.emit.is_none() {
            return;
        }
        match trip {
            Some(Trip::FailureRate(rate)) => self.emit(EventKind::FailureRateExceeded {
                rate,
                threshold: self.cfg.failure_rate,
            }),
            Some(Trip::SlowCallRate(rate)) => self.emit(EventKind::SlowCallRateExceeded {
                rate,
                threshold: self.cfg.slow_call_rate,
            }),
            Some(Trip::Consecutive(failures)) => {
                self.emit(EventKind::ConsecutiveFailuresExceeded { failures });
            }
            None => {}
        }
        if from != to {
            self.emit(EventKind::StateTransition { from, to });
        }
    }

    /// The settings, for the fleet sync.
    #[cfg(feature = "redis")]
    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }

    /// The state word and what the window of the last closed period holds
    /// (one consistent snapshot of the window), for the fleet sync. Off the
    /// request path.
    #[cfg(feature = "redis")]
    pub(crate) fn fleet_snapshot(&self) -> (u64, Counts) {
        let word = self.state.load(Ordering::Acquire);
        (word, self.window().counts(self.nanos(Instant::now())))
    }

    /// For the fleet sync, off the request path: the check every half-open
    /// admission makes, without admitting anything. A probe not finished
    /// `max_half_open_wait` after its admission is lost and the breaker
    /// opens again as of that moment (an idle breaker gets no admission to
    /// notice it).
    #[cfg(feature = "redis")]
    pub(crate) fn fleet_reopen_lost_probe(&self) {
        let word = self.state.load(Ordering::Acquire);
        if state_of(word) != State::HalfOpen {
            return;
        }
        if let Some(lost_at) = self.lost_probe(self.nanos(Instant::now())) {
            self.reopen_lost(word, lost_at);
        }
    }

    /// The fleet's word: opens the breaker until `until`, or moves the end
    /// of its open period there if it is open already. Forced-open,
    /// disabled and metrics-only breakers are an operator's choice and are
    /// left alone. Returns the state left when the breaker moved.
    #[cfg(feature = "redis")]
    pub(crate) fn fleet_open_until(&self, until: Instant, fleet_epoch: u64) -> Option<State> {
        if self.cfg.metrics_only {
            return None;
        }
        let mut control = self.control();
        let current = self.state.load(Ordering::Acquire);
        let until = self.nanos(until);
        match state_of(current) {
            State::Open => {
                // Same open period: callers read either end, both decided.
                self.open_until.store(until, Ordering::Relaxed);
                None
            }
            from @ (State::Closed | State::HalfOpen) => {
                // `apply` publishes an open period of the configured (non-zero)
                // length before the fleet's end replaces it: a caller that
                // reads the first end is refused too.
                self.apply(&mut control, current, State::Open);
                self.open_until.store(until, Ordering::Relaxed);
                drop(control);
                self.announce(from, State::Open, None);
                self.emit(EventKind::FleetStateApplied {
                    from,
                    to: State::Open,
                    fleet_epoch,
                });
                Some(from)
            }
            State::ForcedOpen | State::Disabled => None,
        }
    }

    /// The fleet's word: closes an open or half-open breaker (after a
    /// healthy half-open verdict published by another replica). Returns the
    /// state left when the breaker moved.
    #[cfg(feature = "redis")]
    pub(crate) fn fleet_close(&self, fleet_epoch: u64) -> Option<State> {
        if self.cfg.metrics_only {
            return None;
        }
        let mut control = self.control();
        let current = self.state.load(Ordering::Acquire);
        match state_of(current) {
            from @ (State::Open | State::HalfOpen) => {
                self.apply(&mut control, current, State::Closed);
                drop(control);
                self.announce(from, State::Closed, None);
                self.emit(EventKind::FleetStateApplied {
                    from,
                    to: State::Closed,
                    fleet_epoch,
                });
                Some(from)
            }
            State::Closed | State::ForcedOpen | State::Disabled => None,
        }
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let control = self.control();
        let word = self.state.load(Ordering::Acquire);
        let now = Instant::now();
        let state = state_of(word);
        // While half-open, the probes so far; while open again after them,
        // their verdict; otherwise the sliding window.
        let probes = match state {
            State::HalfOpen => self.gate.progress(epoch_of(word)),
            State::Open => control.last_probes,
            _ => None,
        };
        let (counts, minimum) = match probes {
            Some(v) => (
                Counts {
                    calls: u64::from(v.done),
                    failures: u64::from(v.failed),
                    slow: u64::from(v.slow),
                },
                1,
            ),
            None => (
                self.window().counts(self.nanos(now)),
                self.cfg.minimum_calls,
            ),
        };
        let rate = |n: u64| {
            (counts.calls >= minimum && counts.calls > 0).then(|| n as f64 / counts.calls as f64)
        };
        let open_remaining = (state == State::Open).then(|| {
            Duration::from_nanos(
                self.open_until
                    .load(Ordering::Relaxed)
                    .saturating_sub(self.nanos(now)),
            )
        });
        let in_flight = if state == State::HalfOpen {
            self.gate.counts(epoch_of(word))
        } else {
            None
        };
        Metrics {
            state,
            state_since: control.since,
            calls: counts.calls,
            successes: counts.calls.saturating_sub(counts.failures),
            failures: counts.failures,
            slow_calls: counts.slow,
            failure_rate: rate(counts.failures),
            slow_call_rate: if self.cfg.slow_call_duration.is_some() {
                rate(counts.slow)
            } else {
                None
            },
            probe_window: probes.is_some(),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            consecutive_trips: control.trips,
            open_remaining,
            probes_in_flight: in_flight.map_or(0, |(taken, done)| taken.saturating_sub(done)),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::handle::Shared;

    fn config() -> Config {
        Config {
            name: Arc::from("test"),
            failure_rate: 1.0,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            minimum_calls: 64,
            consecutive_failures: None,
            window: WindowConfig::Count(64),
            open: OpenDuration::fixed(Duration::from_secs(1)),
            probes: 1,
            max_half_open_wait: Duration::from_secs(1),
            count_inner_rejections: false,
            metrics_only: false,
        }
    }

    /// Resets racing writers must leave every window's totals equal to
    /// what its ring holds (a reset that emptied a window under its writers
    /// would leave the totals off for good).
    #[test]
    fn resets_under_load_keep_totals_exact() {
        let shared = Arc::new(Shared {
            breaker: Breaker::new(Arc::new(config()), None, None),
            classifier: (),
        });
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..30_000u32 {
                        let b = &shared.breaker;
                        if let Ok((word, at)) = b.admit() {
                            let ticket = b.ticket(word, at);
                            let outcome = if (i + t) % 3 == 0 {
                                Outcome::Failure
                            } else {
                                Outcome::Success
                            };
                            b.record(&ticket, outcome);
                        }
                    }
                })
            })
            .collect();
        for _ in 0..2_000 {
            shared.breaker.force(State::Closed);
            std::thread::yield_now();
        }
        for w in writers {
            w.join().unwrap();
        }
        for window in &shared.breaker.windows {
            let Window::Count(w) = window else {
                unreachable!("configured with a count window")
            };
            assert_eq!(w.counts(), w.slot_sum());
        }
        assert_eq!(shared.breaker.state(), State::Closed);
    }
}
