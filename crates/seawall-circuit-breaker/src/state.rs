//! The breaker's states, the packed state word and the half-open probe gate.
//!
//! The state word is `epoch << 3 | state`. Every transition bumps the epoch,
//! so "is this still the state I was admitted under?" is one load and one
//! comparison, and an outcome from an earlier epoch is recognised and dropped.

use std::fmt;
use std::sync::atomic::Ordering;

use crate::sync::AtomicU64;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass through and their outcomes are recorded.
    Closed,
    /// Calls are rejected with [`CircuitOpen`](crate::CircuitOpen) until the
    /// open duration has passed.
    Open,
    /// A limited number of probe calls pass; their outcomes decide whether
    /// the breaker closes or opens again.
    HalfOpen,
    /// Opened through a [`Handle`](crate::Handle): every call is rejected
    /// until the handle resets the breaker.
    ForcedOpen,
    /// Switched off through a [`Handle`](crate::Handle): every call passes
    /// and nothing is recorded until the handle resets the breaker.
    Disabled,
}

impl State {
    /// Every state, e.g. to export one gauge series per state.
    ///
    /// ```
    /// use seawall_circuit_breaker::State;
    ///
    /// let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    /// assert_eq!(names, ["closed", "open", "half_open", "forced_open", "disabled"]);
    /// ```
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    pub(crate) const fn tag(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }

    /// `true` when calls are refused (open or forced open).
    pub const fn is_open(self) -> bool {
        matches!(self, State::Open | State::ForcedOpen)
    }

    /// A lowercase snake-case name, e.g. `"half_open"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Packs an epoch and a state into one word.
pub(crate) const fn pack(epoch: u64, state: State) -> u64 {
    (epoch << TAG_BITS) | state.tag()
}

pub(crate) const fn epoch_of(word: u64) -> u64 {
    word >> TAG_BITS
}

#[inline]
pub(crate) fn state_of(word: u64) -> State {
    // The tag is only ever written by `pack`, so it is always in range.
    State::ALL[(word & TAG_MASK) as usize % State::ALL.len()]
}

/// `true` for a closed word.
#[inline]
pub(crate) const fn is_closed(word: u64) -> bool {
    word & TAG_MASK == State::Closed.tag()
}

/// `true` when the state admits every call without asking anything else
/// (closed or disabled): the tags 0 and 4 are the only ones with the low
/// two bits clear.
#[inline]
pub(crate) const fn admits_all(word: u64) -> bool {
    word.trailing_zeros() >= 2
}

/// The most probes the gate can count (10-bit fields).
pub(crate) const MAX_PROBES: u32 = 1000;

const FIELD: u32 = 10;
const FIELD_MASK: u64 = (1 << FIELD) - 1;
const SLOW_SHIFT: u32 = 0;
const FAILED_SHIFT: u32 = FIELD;
const DONE_SHIFT: u32 = 2 * FIELD;
const TAKEN_SHIFT: u32 = 3 * FIELD;
const EPOCH_SHIFT: u32 = 4 * FIELD;
const EPOCH_MASK: u64 = (1 << (64 - EPOCH_SHIFT)) - 1;

/// What the probes of one half-open period said, once all of them finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeVerdict {
    pub(crate) done: u32,
    pub(crate) failed: u32,
    pub(crate) slow: u32,
}

/// Admits exactly `limit` probes per half-open epoch.
///
/// One word holds the epoch it belongs to and the counts of probes taken,
/// finished, failed and slow, so admission, release and completion are each
/// one CAS and can never mix up two half-open periods: an operation whose
/// epoch does not match the word's is refused.
pub(crate) struct ProbeGate {
    word: AtomicU64,
}

impl fmt::Debug for ProbeGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Relaxed);
        f.debug_struct("ProbeGate")
            .field("epoch", &(w >> EPOCH_SHIFT))
            .field("taken", &field(w, TAKEN_SHIFT))
            .field("done", &field(w, DONE_SHIFT))
            .finish()
    }
}

const fn field(word: u64, shift: u32) -> u32 {
    ((word >> shift) & FIELD_MASK) as u32
}

const fn epoch_bits(epoch: u64) -> u64 {
    epoch & EPOCH_MASK
}

/// How an admission attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Admitted,
    Full,
    /// The gate belongs to another epoch: the state changed meanwhile.
    Stale,
}

impl ProbeGate {
    pub(crate) fn new() -> Self {
        Self {
            // Epoch bits of all ones never match a real half-open epoch
            // before the first `open`.
            word: AtomicU64::new(EPOCH_MASK << EPOCH_SHIFT),
        }
    }

    /// Starts a half-open period. Called before the state word announces it,
    /// so the `Release` store of the state word publishes this write too.
    ///
    /// A swap rather than a store: as a read-modify-write it is ordered
    /// against the CASes of probes still finishing in the previous epoch, so
    /// none of them can land after it.
    pub(crate) fn open(&self, epoch: u64) {
        self.word
            .swap(epoch_bits(epoch) << EPOCH_SHIFT, Ordering::AcqRel);
    }

    pub(crate) fn try_admit(&self, epoch: u64, limit: u32) -> Admit {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur >> EPOCH_SHIFT != epoch_bits(epoch) {
                return Admit::Stale;
            }
            if field(cur, TAKEN_SHIFT) >= limit {
                return Admit::Full;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur + (1 << TAKEN_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Admit::Admitted,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives a probe slot back (the probe was cancelled or its outcome is
    /// ignored), so another caller can probe in its place.
    pub(crate) fn release(&self, epoch: u64) {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur >> EPOCH_SHIFT != epoch_bits(epoch) || field(cur, TAKEN_SHIFT) == 0 {
                return;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur - (1 << TAKEN_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records a finished probe. Returns the verdict to exactly one caller:
    /// the one whose probe was the `limit`-th to finish in this epoch.
    pub(crate) fn complete(
        &self,
        epoch: u64,
        limit: u32,
        failed: bool,
        slow: bool,
    ) -> Option<ProbeVerdict> {
        let add = (1 << DONE_SHIFT)
            | (u64::from(failed) << FAILED_SHIFT)
            | (u64::from(slow) << SLOW_SHIFT);
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur >> EPOCH_SHIFT != epoch_bits(epoch) || field(cur, DONE_SHIFT) >= limit {
                return None;
            }
            let next = cur + add;
            match self
                .word
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let done = field(next, DONE_SHIFT);
                    return (done == limit).then(|| ProbeVerdict {
                        done,
                        failed: field(next, FAILED_SHIFT),
                        slow: field(next, SLOW_SHIFT),
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// The finished probes of `epoch` so far, if the gate is on it.
    pub(crate) fn progress(&self, epoch: u64) -> Option<ProbeVerdict> {
        let w = self.word.load(Ordering::Acquire);
        (w >> EPOCH_SHIFT == epoch_bits(epoch)).then(|| ProbeVerdict {
            done: field(w, DONE_SHIFT),
            failed: field(w, FAILED_SHIFT),
            slow: field(w, SLOW_SHIFT),
        })
    }

    /// Probes taken and finished in `epoch`, if the gate is on it.
    pub(crate) fn counts(&self, epoch: u64) -> Option<(u32, u32)> {
        let w = self.word.load(Ordering::Acquire);
        (w >> EPOCH_SHIFT == epoch_bits(epoch))
            .then(|| (field(w, TAKEN_SHIFT), field(w, DONE_SHIFT)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn state_word_round_trips() {
        for s in State::ALL {
            let w = pack(41, s);
            assert_eq!(epoch_of(w), 41);
            assert_eq!(state_of(w), s);
        }
        assert_eq!(State::HalfOpen.to_string(), "half_open");
        assert!(State::ForcedOpen.is_open() && State::Open.is_open());
        assert!(!State::HalfOpen.is_open());
    }

    #[test]
    fn gate_admits_limit_and_decides_once() {
        let gate = ProbeGate::new();
        assert_eq!(gate.try_admit(3, 2), Admit::Stale);
        gate.open(3);
        assert_eq!(gate.try_admit(3, 2), Admit::Admitted);
        assert_eq!(gate.try_admit(3, 2), Admit::Admitted);
        assert_eq!(gate.try_admit(3, 2), Admit::Full);
        assert_eq!(gate.try_admit(2, 2), Admit::Stale);
        gate.release(3);
        assert_eq!(gate.counts(3), Some((1, 0)));
        assert_eq!(gate.try_admit(3, 2), Admit::Admitted);
        assert_eq!(gate.complete(3, 2, true, false), None);
        assert_eq!(gate.complete(4, 2, false, false), None);
        assert_eq!(
            gate.complete(3, 2, false, true),
            Some(ProbeVerdict {
                done: 2,
                failed: 1,
                slow: 1
            })
        );
        assert_eq!(gate.complete(3, 2, false, false), None);
        gate.open(4);
        assert_eq!(gate.counts(3), None);
        assert_eq!(gate.counts(4), Some((0, 0)));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Bounded like tokio's loom suite: three preemptions find the classic
    /// lost-update and double-admission races while keeping the CAS loops'
    /// state space small enough to finish in seconds.
    fn model<F: Fn() + Sync + Send + 'static>(f: F) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// Three racing callers, two probe slots: exactly two are admitted, and
    /// exactly one of the admitted sees the verdict.
    #[test]
    fn loom_gate_admits_exactly_limit() {
        model(|| {
            let gate = Arc::new(ProbeGate::new());
            gate.open(7);
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let gate = gate.clone();
                    thread::spawn(move || match gate.try_admit(7, 2) {
                        Admit::Admitted => {
                            let verdict = gate.complete(7, 2, i == 0, false);
                            (1, u32::from(verdict.is_some()))
                        }
                        Admit::Full => (0, 0),
                        Admit::Stale => panic!("epoch did not change"),
                    })
                })
                .collect();
            let (admitted, verdicts) = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, 0), |(a, v), (x, y)| (a + x, v + y));
            assert_eq!(admitted, 2);
            assert_eq!(verdicts, 1);
        });
    }

    /// A transition to a new epoch races admissions and completions of the
    /// old one: nothing from the old epoch is counted in the new one.
    #[test]
    fn loom_old_epoch_never_leaks_into_new() {
        model(|| {
            let gate = Arc::new(ProbeGate::new());
            gate.open(1);
            let g = gate.clone();
            let prober = thread::spawn(move || {
                if g.try_admit(1, 1) == Admit::Admitted {
                    g.complete(1, 1, true, false)
                } else {
                    None
                }
            });
            let g = gate.clone();
            let transition = thread::spawn(move || g.open(3));
            let verdict = prober.join().unwrap();
            transition.join().unwrap();
            if let Some(v) = verdict {
                assert_eq!(
                    v,
                    ProbeVerdict {
                        done: 1,
                        failed: 1,
                        slow: 0
                    }
                );
            }
            assert_eq!(gate.counts(3), Some((0, 0)));
            assert_eq!(gate.try_admit(3, 1), Admit::Admitted);
        });
    }
}
