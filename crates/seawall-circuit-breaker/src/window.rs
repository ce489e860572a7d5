//! Sliding windows of call outcomes: the last N calls, or the last D of time.
//!
//! Both windows are lock-free and cost O(1) per recorded call whatever they
//! hold. Counts are packed into single `u64` words so a reader gets calls,
//! failures and slow calls from one atomic load.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Keeps a hot atomic on its own cache line pair so that writers of one
/// counter do not evict readers of another (adjacent-line prefetch makes 128
/// bytes the unit that matters on x86).
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What a window holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// The largest count window: three counts of up to this size, plus the
/// transient negatives of racing writers, must fit 21-bit signed fields.
pub(crate) const MAX_COUNT_WINDOW: usize = 500_000;

const F21: u32 = 21;

const fn outcome_bits(failed: bool, slow: bool) -> u8 {
    1 | ((failed as u8) << 1) | ((slow as u8) << 2)
}

/// The packed contribution of one slot value to the totals word.
const fn slot_weight(bits: u8) -> u64 {
    let b = bits as u64;
    (b & 1) | (((b >> 1) & 1) << F21) | (((b >> 2) & 1) << (2 * F21))
}

const fn sign_extend(x: u64, bits: u32) -> i64 {
    ((x << (64 - bits)) as i64) >> (64 - bits)
}

/// Reads three 21-bit two's-complement fields out of a word that was only
/// ever changed by wrapping adds of packed deltas.
///
/// Two writers that hit the same slot can apply their deltas in the other
/// order than their swaps, so a field may be briefly negative; taking the
/// low field as signed and removing it before shifting keeps its borrow out
/// of the next field, and the clamp hides the transient.
#[inline]
fn unpack_totals(word: u64) -> Counts {
    let calls = sign_extend(word, F21);
    let rest = word.wrapping_sub(calls as u64) >> F21;
    let failures = sign_extend(rest, F21);
    let rest = rest.wrapping_sub(failures as u64) >> F21;
    let slow = sign_extend(rest, 64 - 2 * F21);
    Counts {
        calls: calls.max(0) as u64,
        failures: failures.max(0) as u64,
        slow: slow.max(0) as u64,
    }
}

/// Exactly the last `size` recorded outcomes.
///
/// A ring of one byte per call plus running totals: a writer claims the next
/// slot with `fetch_add`, swaps its outcome in, and adds the difference
/// between what it wrote and what it replaced to the totals. Because every
/// slot change is an atomic swap and its delta is applied exactly once, the
/// totals always converge to the sum of the ring, and a success replacing a
/// success (the common case) writes nothing to the totals at all.
pub(crate) struct CountWindow {
    head: Padded<AtomicU64>,
    totals: Padded<AtomicU64>,
    /// `u64::MAX / size + 1`, for Lemire's division-free remainder.
    magic: u64,
    slots: Box<[AtomicU8]>,
}

impl fmt::Debug for CountWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountWindow")
            .field("size", &self.slots.len())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            head: Padded(AtomicU64::new(0)),
            totals: Padded(AtomicU64::new(0)),
            magic: (u64::MAX / size as u64).wrapping_add(1),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// `i % size` without a division (Lemire, Kaser, Kurz 2019), on the low
    /// 32 bits of `i`. When the position wraps at 2³² one slot is reused
    /// early; once in four billion calls that is harmless.
    #[inline]
    fn slot(&self, i: u64) -> usize {
        let low = self.magic.wrapping_mul(u64::from(i as u32));
        ((u128::from(low) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Counts {
        let i = self.head.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[self.slot(i)];
        let new = outcome_bits(failed, slow);
        // The common case, a success replacing a success, writes nothing.
        if slot.load(Ordering::Relaxed) != new {
            let old = slot.swap(new, Ordering::Relaxed);
            if old != new {
                let delta = slot_weight(new).wrapping_sub(slot_weight(old));
                let prev = self.totals.fetch_add(delta, Ordering::Relaxed);
                return unpack_totals(prev.wrapping_add(delta));
            }
        }
        self.counts()
    }

    #[inline]
    pub(crate) fn counts(&self) -> Counts {
        unpack_totals(self.totals.load(Ordering::Relaxed))
    }

    /// What the ring holds, counted slot by slot.
    #[cfg(test)]
    pub(crate) fn slot_sum(&self) -> Counts {
        let mut sum = Counts::default();
        for slot in &*self.slots {
            let b = slot.load(Ordering::Relaxed);
            sum.calls += u64::from(b & 1);
            sum.failures += u64::from((b >> 1) & 1);
            sum.slow += u64::from((b >> 2) & 1);
        }
        sum
    }

    /// Empties the window. Each slot is swapped out and its weight taken
    /// off the totals, exactly as a writer changes a slot, so a writer racing
    /// the reset cannot leave the totals out of step with the ring.
    pub(crate) fn reset(&self) {
        for slot in &*self.slots {
            let old = slot.swap(0, Ordering::Relaxed);
            if old != 0 {
                self.totals.fetch_sub(slot_weight(old), Ordering::Relaxed);
            }
        }
        self.head.store(0, Ordering::Relaxed);
    }
}

// A time bucket word: lap (4 bits) | slow (20) | failures (20) | calls (20).
const B20: u32 = 20;
const MASK20: u64 = (1 << B20) - 1;
const LAP_SHIFT: u32 = 60;
const LAP_MASK: u64 = 0xF;
/// The most calls one time bucket counts; beyond it calls of that bucket are
/// not recorded, which keeps the rates of the bucket as they were.
pub(crate) const MAX_BUCKET_CALLS: u64 = MASK20;

const fn bucket_add(failed: bool, slow: bool) -> u64 {
    1 | ((failed as u64) << B20) | ((slow as u64) << (2 * B20))
}

const fn bucket_lap(word: u64) -> u64 {
    word >> LAP_SHIFT
}

const fn bucket_counts(word: u64) -> Counts {
    Counts {
        calls: word & MASK20,
        failures: (word >> B20) & MASK20,
        slow: (word >> (2 * B20)) & MASK20,
    }
}

/// The outcomes of the last `buckets × bucket width` of time.
///
/// Time is cut into slices of one bucket width; slice `s` lives in bucket
/// `s % buckets`, tagged with its lap `s / buckets` (mod 16). A writer adds
/// to its bucket with one CAS, or resets it when the tag shows an older lap.
/// When a writer is the first of a new slice it also sweeps every bucket
/// that does not hold one of the window's slices, so a bucket's tag only has
/// to tell the current lap from the one before. A reader sums the buckets whose
/// lap matches the slice they should hold: O(buckets), a constant, however
/// many calls the window holds.
///
/// Running totals mirror the buckets (whoever changes a bucket applies the
/// same change to them), so a writer judges the window with three loads
/// instead of a scan; right after its own sweep they equal the scan.
pub(crate) struct TimeWindow {
    head: Padded<AtomicU64>,
    totals: Padded<[AtomicU64; 3]>,
    bucket_nanos: u64,
    buckets: Box<[Padded<AtomicU64>]>,
}

impl fmt::Debug for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeWindow")
            .field("buckets", &self.buckets.len())
            .field("bucket_nanos", &self.bucket_nanos)
            .finish_non_exhaustive()
    }
}

impl TimeWindow {
    pub(crate) fn new(buckets: usize, bucket_nanos: u64) -> Self {
        Self {
            head: Padded(AtomicU64::new(0)),
            totals: Padded([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            bucket_nanos: bucket_nanos.max(1),
            buckets: (0..buckets.max(1))
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Applies a bucket change to the totals. Racing changes may apply out
    /// of order, so a total can dip below zero for a moment: the fields are
    /// wrapping and read back as signed.
    #[inline]
    fn adjust(&self, plus: Counts, minus: Counts) {
        let fields = [
            (plus.calls, minus.calls),
            (plus.failures, minus.failures),
            (plus.slow, minus.slow),
        ];
        for (total, (p, m)) in self.totals.iter().zip(fields) {
            if p != m {
                total.fetch_add(p.wrapping_sub(m), Ordering::Relaxed);
            }
        }
    }

    fn totals(&self) -> Counts {
        let read = |i: usize| (self.totals[i].load(Ordering::Relaxed) as i64).max(0) as u64;
        Counts {
            calls: read(0),
            failures: read(1),
            slow: read(2),
        }
    }

    fn lap(&self, slice: u64) -> u64 {
        (slice / self.len()) & LAP_MASK
    }

    /// The latest slice not after `slice` that lives in bucket `j`, if any.
    fn slice_of_bucket(&self, slice: u64, j: u64) -> Option<u64> {
        let back = (slice % self.len() + self.len() - j) % self.len();
        slice.checked_sub(back)
    }

    /// Empties every bucket that does not hold one of the slices ending at
    /// `slice`, now that the head moved there from `previous`.
    ///
    /// A bucket whose slice is after `previous` cannot hold data of that
    /// slice written before the head moved (writers move the head first), so
    /// it is emptied whatever its tag says: after an idle gap of a multiple
    /// of 16 laps its stale tag would match. A racing writer of a slice
    /// between `previous` and `slice` may lose its call to this; a stale
    /// bucket is never counted as fresh.
    ///
    /// A sweeper whose `slice` is no longer the head stops: a later slice's
    /// writer has taken over. The head is read after the bucket, so a bucket
    /// filled by that writer is either seen with the newer head (stop) or
    /// changes under the CAS (which then fails).
    fn sweep(&self, slice: u64, previous: u64) {
        for (j, bucket) in self.buckets.iter().enumerate() {
            let Some(owner) = self.slice_of_bucket(slice, j as u64) else {
                continue;
            };
            let empty = self.lap(owner) << LAP_SHIFT;
            let cur = bucket.load(Ordering::Acquire);
            if self.head.load(Ordering::Acquire) != slice {
                return;
            }
            let stale = if owner > previous {
                cur != empty
            } else {
                bucket_lap(cur) != self.lap(owner)
            };
            if stale {
                // Losing this CAS means a writer of the current lap got
                // there first, which is all the sweep wants.
                if bucket
                    .compare_exchange(cur, empty, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.adjust(Counts::default(), bucket_counts(cur));
                }
            }
        }
    }

    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        let slice = now_nanos / self.bucket_nanos;
        let mut head = self.head.load(Ordering::Acquire);
        while slice > head {
            match self
                .head
                .compare_exchange_weak(head, slice, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(previous) => {
                    self.sweep(slice, previous);
                    head = slice;
                }
                Err(actual) => head = actual,
            }
        }
        if slice + self.len() > head {
            self.add(slice, failed, slow);
        }
        self.totals()
    }

    /// Adds one call to the bucket of `slice`. Every writer moves the head
    /// to its slice before it adds, so a bucket whose lap is not this
    /// slice's holds an older slice (reset it) unless the head has since
    /// moved a whole window past this slice (the call is too old to count).
    fn add(&self, slice: u64, failed: bool, slow: bool) {
        let bucket = &self.buckets[(slice % self.len()) as usize];
        let lap = self.lap(slice);
        let add = bucket_add(failed, slow);
        let mut cur = bucket.load(Ordering::Acquire);
        loop {
            let (next, replaced) = if bucket_lap(cur) == lap {
                if cur & MASK20 >= MAX_BUCKET_CALLS {
                    return;
                }
                (cur + add, Counts::default())
            } else if slice + self.len() <= self.head.load(Ordering::Acquire) {
                return;
            } else {
                ((lap << LAP_SHIFT) | add, bucket_counts(cur))
            };
            match bucket.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.adjust(bucket_counts(add), replaced);
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        let head = self.head.load(Ordering::Acquire);
        let slice = (now_nanos / self.bucket_nanos).max(head);
        let mut total = Counts::default();
        if slice >= head + self.len() {
            return total;
        }
        // Buckets up to the current one hold this lap's slices, the rest the
        // previous lap's: no division per bucket.
        let current = (slice % self.len()) as usize;
        let lap = self.lap(slice);
        let previous_lap = lap.wrapping_sub(1) & LAP_MASK;
        let has_previous_lap = slice >= self.len();
        for (j, bucket) in self.buckets.iter().enumerate() {
            let expected = if j <= current {
                lap
            } else if has_previous_lap {
                previous_lap
            } else {
                continue;
            };
            let word = bucket.load(Ordering::Acquire);
            if bucket_lap(word) == expected {
                let c = bucket_counts(word);
                total.calls += c.calls;
                total.failures += c.failures;
                total.slow += c.slow;
            }
        }
        total
    }

    /// Empties the window the way writers change buckets (swap, then adjust
    /// the totals by what was taken out), so racing writers cannot leave the
    /// totals out of step with the buckets.
    pub(crate) fn reset(&self) {
        for bucket in &*self.buckets {
            let old = bucket.swap(0, Ordering::AcqRel);
            self.adjust(Counts::default(), bucket_counts(old));
        }
        self.head.store(0, Ordering::Release);
    }
}

/// The window a breaker was configured with.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) const fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(now_nanos, failed, slow),
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now_nanos),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::sync::Arc;

    #[test]
    fn totals_survive_transient_negatives() {
        // failures -1, calls +3, slow +2, packed the way racing writers leave it.
        let word = 3u64
            .wrapping_add((-1i64 as u64) << F21)
            .wrapping_add(2u64 << (2 * F21));
        assert_eq!(
            unpack_totals(word),
            Counts {
                calls: 3,
                failures: 0,
                slow: 2
            }
        );
        let word = 5u64
            .wrapping_add(4u64 << F21)
            .wrapping_add((-2i64 as u64) << (2 * F21));
        assert_eq!(
            unpack_totals(word),
            Counts {
                calls: 5,
                failures: 4,
                slow: 0
            }
        );
    }

    #[test]
    fn count_window_slides_and_resets() {
        let w = CountWindow::new(3);
        w.record(true, false);
        w.record(false, true);
        let c = w.record(true, true);
        assert_eq!(
            c,
            Counts {
                calls: 3,
                failures: 2,
                slow: 2
            }
        );
        let c = w.record(false, false);
        assert_eq!(
            c,
            Counts {
                calls: 3,
                failures: 1,
                slow: 2
            }
        );
        w.reset();
        assert_eq!(w.counts(), Counts::default());
        assert_eq!(
            w.record(true, false),
            Counts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn count_window_totals_are_exact_after_racing_writers() {
        let w = Arc::new(CountWindow::new(7));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        w.record((i + t) % 3 == 0, (i * 7 + t) % 5 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut expect = Counts::default();
        for slot in &*w.slots {
            let b = slot.load(Ordering::Relaxed);
            expect.calls += u64::from(b & 1);
            expect.failures += u64::from((b >> 1) & 1);
            expect.slow += u64::from((b >> 2) & 1);
        }
        assert_eq!(w.counts(), expect);
        assert_eq!(expect.calls, 7);
    }

    #[test]
    fn time_window_forgets_old_buckets_and_idle_gaps() {
        // 4 buckets of 10 ns: a 40 ns window.
        let w = TimeWindow::new(4, 10);
        w.record(0, true, false);
        w.record(15, false, false);
        assert_eq!(
            w.counts(39),
            Counts {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // At 40 the bucket of slice 0 has left the window.
        assert_eq!(
            w.counts(40),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(
            w.record(41, false, true),
            Counts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        // An idle gap of exactly 16 laps must not resurrect anything.
        let later = 41 + 16 * 40;
        assert_eq!(w.counts(later), Counts::default());
        assert_eq!(
            w.record(later, true, false),
            Counts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        w.reset();
        assert_eq!(w.counts(later), Counts::default());
    }

    #[test]
    fn time_window_bucket_saturates_without_skewing_rates() {
        let w = TimeWindow::new(1, 1_000);
        // As if MAX - 1 successes had been recorded.
        w.buckets[0].store(MAX_BUCKET_CALLS - 1, Ordering::Relaxed);
        w.totals[0].store(MAX_BUCKET_CALLS - 1, Ordering::Relaxed);
        w.record(5, true, false);
        let c = w.record(5, true, false);
        assert_eq!(c.calls, MAX_BUCKET_CALLS);
        assert_eq!(c.failures, 1);
        assert_eq!(w.counts(5), c);
    }

    #[test]
    fn time_window_totals_mirror_the_buckets_after_racing_writers() {
        let w = Arc::new(TimeWindow::new(5, 10));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        w.record(i / 7 + t, (i + t) % 3 == 0, i % 5 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut sum = Counts::default();
        for bucket in &*w.buckets {
            let c = bucket_counts(bucket.load(Ordering::Relaxed));
            sum.calls += c.calls;
            sum.failures += c.failures;
            sum.slow += c.slow;
        }
        assert_eq!(w.totals(), sum);
        assert!(sum.calls > 0);
    }

    #[derive(Debug, Clone)]
    struct Step {
        advance: u64,
        failed: bool,
        slow: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            prop_oneof![4 => 0u64..3, 2 => 3u64..40, 1 => 40u64..2_000],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(advance, failed, slow)| Step {
                advance,
                failed,
                slow,
            })
    }

    fn rates(c: Counts) -> (f64, f64) {
        if c.calls == 0 {
            return (0.0, 0.0);
        }
        (
            c.failures as f64 / c.calls as f64,
            c.slow as f64 / c.calls as f64,
        )
    }

    proptest! {
        #[test]
        fn count_window_matches_last_n(size in 1usize..40, steps in proptest::collection::vec(step(), 0..300)) {
            let w = CountWindow::new(size);
            let mut model: VecDeque<(bool, bool)> = VecDeque::new();
            for s in steps {
                let got = w.record(s.failed, s.slow);
                model.push_back((s.failed, s.slow));
                if model.len() > size {
                    model.pop_front();
                }
                let want = Counts {
                    calls: model.len() as u64,
                    failures: model.iter().filter(|o| o.0).count() as u64,
                    slow: model.iter().filter(|o| o.1).count() as u64,
                };
                prop_assert_eq!(got, want);
                prop_assert_eq!(rates(got), rates(want));
            }
        }

        #[test]
        fn time_window_matches_naive_scan(buckets in 1usize..12, width in 1u64..50, steps in proptest::collection::vec(step(), 0..300)) {
            let w = TimeWindow::new(buckets, width);
            let mut now = 0u64;
            let mut log: Vec<(u64, bool, bool)> = Vec::new();
            for s in steps {
                now += s.advance;
                let got = w.record(now, s.failed, s.slow);
                log.push((now, s.failed, s.slow));
                // The reference: every call whose slice is one of the last
                // `buckets` slices, found by scanning everything.
                let slice = now / width;
                let live = |t: u64| t / width + buckets as u64 > slice;
                let want = Counts {
                    calls: log.iter().filter(|e| live(e.0)).count() as u64,
                    failures: log.iter().filter(|e| live(e.0) && e.1).count() as u64,
                    slow: log.iter().filter(|e| live(e.0) && e.2).count() as u64,
                };
                prop_assert_eq!(got, want);
                prop_assert_eq!(rates(got), rates(want));
                let peek = now + s.advance / 2;
                let live_then = |t: u64| t / width + buckets as u64 > peek / width;
                let want_then = log.iter().filter(|e| live_then(e.0)).count() as u64;
                prop_assert_eq!(w.counts(peek).calls, want_then);
            }
        }
    }
}
