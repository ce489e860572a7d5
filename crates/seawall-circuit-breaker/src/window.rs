//! Sliding windows of call outcomes: the last N calls, or the last D of time.
//!
//! Both windows are lock-free and cost O(1) per recorded call whatever they
//! hold. Counts are packed into single `u64` words so a reader gets calls,
//! failures and slow calls from one atomic load.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use crate::sync::{backoff, fence, lock, AtomicU64, Mutex};

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

impl Counts {
    fn add(&mut self, other: Counts) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }
}

/// The largest count window: three counts of up to this size must fit the
/// totals word's 21-bit fields.
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

/// Reads three 21-bit fields out of a word that was only ever changed by
/// wrapping adds of packed deltas.
///
/// Writers of one slot take turns (see [`CountWindow`]), so every slot
/// always contributes one whole outcome and no field is ever negative; the
/// fields are still read as signed and clamped, so that a bug could never
/// borrow one field into the next.
#[inline]
fn unpack_totals(word: u64) -> Counts {
    let calls = sign_extend(word, F21);
    let rest = word.wrapping_sub(calls as u64) >> F21;
    let failures = sign_extend(rest, F21);
    let rest = rest.wrapping_sub(failures as u64) >> F21;
    let slow = sign_extend(rest, 64 - 2 * F21);
    let calls = calls.max(0) as u64;
    Counts {
        calls,
        failures: (failures.max(0) as u64).min(calls),
        slow: (slow.max(0) as u64).min(calls),
    }
}

/// The bits of a slot word that hold the outcome; the rest is the index of
/// the writer whose turn it is.
const TURN_SHIFT: u32 = 3;
const OUTCOME_MASK: u64 = (1 << TURN_SHIFT) - 1;

/// Exactly the last `size` recorded outcomes.
///
/// A ring of one word per call plus running totals. A writer claims the
/// next index `i` with `fetch_add`; slot `i % size` is its. Writers of one
/// slot take turns in index order: the slot word holds the index of the
/// writer whose turn it is, and writer `i` waits until it reads `i` (that
/// is, until writer `i - size` is done), puts its outcome in, adds the
/// difference from the one it replaces to the totals, and hands the slot to
/// `i + size` with one `Release` store. So an older outcome never replaces a
/// newer one, the deltas of one slot reach the totals in order, and every
/// slot always contributes exactly one whole outcome to them: the totals
/// never show more failures (or slow calls) than calls. A success replacing
/// a success writes nothing to the totals.
///
/// A writer waits only if the writer `size` calls before it on the same
/// slot has claimed its index and not yet published (a handful of
/// instructions, unless that thread was descheduled in between).
///
/// The totals can still hold an outcome older than the last `size` calls
/// while a later writer of its slot has claimed but not published; a trip
/// is therefore confirmed on [`CountWindow::snapshot`], which counts only
/// outcomes of one run of `size` consecutive calls.
pub(crate) struct CountWindow {
    head: Padded<AtomicU64>,
    totals: Padded<AtomicU64>,
    /// `u128::MAX / size + 1`, for Lemire's division-free remainder.
    magic: u128,
    size: u64,
    /// `turn << TURN_SHIFT | outcome bits`.
    slots: Box<[AtomicU64]>,
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
            magic: (u128::MAX / size as u128).wrapping_add(1),
            size: size as u64,
            // Slot `s` waits for writer `s`, and holds no outcome.
            slots: (0..size as u64)
                .map(|s| AtomicU64::new(s << TURN_SHIFT))
                .collect(),
        }
    }

    /// `i % size` without a division (Lemire, Kaser, Kurz 2019, on the full
    /// 64-bit index: the slot of an index must never change, since writers
    /// take turns by index).
    #[inline]
    fn slot(&self, i: u64) -> usize {
        let low = self.magic.wrapping_mul(u128::from(i));
        let d = u128::from(self.size);
        let high = (low >> 64) * d;
        let carry = ((low & u128::from(u64::MAX)) * d) >> 64;
        ((high + carry) >> 64) as usize
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Counts {
        let i = self.head.fetch_add(1, Ordering::Relaxed);
        match self.write(i, outcome_bits(failed, slow)) {
            Some(counts) => counts,
            None => self.counts(),
        }
    }

    /// Writer `i`'s turn on its slot: puts `new` in, and returns the totals
    /// if they changed.
    #[inline]
    fn write(&self, i: u64, new: u8) -> Option<Counts> {
        let slot = &self.slots[self.slot(i)];
        let mut word = slot.load(Ordering::Acquire);
        if word >> TURN_SHIFT != i {
            word = Self::wait_turn(slot, i);
        }
        let old = (word & OUTCOME_MASK) as u8;
        let mut counts = None;
        if old != new {
            let delta = slot_weight(new).wrapping_sub(slot_weight(old));
            let prev = self.totals.fetch_add(delta, Ordering::Relaxed);
            counts = Some(unpack_totals(prev.wrapping_add(delta)));
        }
        // `Release`: the next writer of this slot adds its delta after ours.
        slot.store(
            ((i + self.size) << TURN_SHIFT) | u64::from(new),
            Ordering::Release,
        );
        counts
    }

    #[cold]
    #[inline(never)]
    fn wait_turn(slot: &AtomicU64, i: u64) -> u64 {
        let mut spins = 0;
        loop {
            backoff(&mut spins);
            let word = slot.load(Ordering::Acquire);
            if word >> TURN_SHIFT == i {
                return word;
            }
        }
    }

    #[inline]
    pub(crate) fn counts(&self) -> Counts {
        unpack_totals(self.totals.load(Ordering::Relaxed))
    }

    /// The outcomes of one run of `size` consecutive calls, read slot by
    /// slot: what a trip is confirmed on. A scan that saw every slot from
    /// one run is returned whole; if writers kept moving (or one has
    /// claimed its turn and not published), a few scans are tried, then the
    /// last one counts only the slots of the run ending at the newest
    /// outcome it saw. Never counts an outcome older than that run. O(size).
    #[cold]
    pub(crate) fn snapshot(&self) -> Counts {
        let mut newest = None;
        for _ in 0..4 {
            let (counts, run) = self.scan(None);
            if run.is_none() {
                return counts;
            }
            newest = run;
        }
        self.scan(newest).0
    }

    /// One pass over the slots. Without `newest`: the sum of every written
    /// slot, and the newest writer's index if they were not all from one
    /// run of `size` calls. With it: the sum of the slots written by
    /// `newest - size + 1 ..= newest` only.
    fn scan(&self, newest: Option<u64>) -> (Counts, Option<u64>) {
        let mut sum = Counts::default();
        let (mut min, mut max) = (u64::MAX, 0);
        for slot in &*self.slots {
            let word = slot.load(Ordering::Acquire);
            let turn = word >> TURN_SHIFT;
            if turn < self.size {
                // Never written.
                continue;
            }
            let writer = turn - self.size;
            if let Some(newest) = newest {
                if writer > newest || writer + self.size <= newest {
                    continue;
                }
            }
            min = min.min(writer);
            max = max.max(writer);
            let b = word & OUTCOME_MASK;
            sum.calls += b & 1;
            sum.failures += (b >> 1) & 1;
            sum.slow += (b >> 2) & 1;
        }
        let whole = newest.is_some() || min == u64::MAX || max - min < self.size;
        (sum, (!whole).then_some(max))
    }

    /// What the ring holds, counted slot by slot.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn slot_sum(&self) -> Counts {
        let mut sum = Counts::default();
        for slot in &*self.slots {
            let b = slot.load(Ordering::Relaxed) & OUTCOME_MASK;
            sum.calls += b & 1;
            sum.failures += (b >> 1) & 1;
            sum.slow += (b >> 2) & 1;
        }
        sum
    }

    /// Empties the window: `size` writes of "no call", one per slot, each
    /// taking its turn like any writer, so a writer racing the reset can
    /// never leave the totals out of step with the ring.
    pub(crate) fn reset(&self) {
        let base = self.head.fetch_add(self.size, Ordering::Relaxed);
        for k in 0..self.size {
            self.write(base + k, 0);
        }
    }
}

// A time bucket counts calls in the low half of a word and failures (or
// slow calls) in the high half, so one `fetch_add` records a call and its
// outcome together and one load reads a consistent pair.
const LOW32: u64 = (1 << 32) - 1;
/// When a bucket word's calls reach this, its counts are carried into the
/// bucket's wide counters, long before the 32-bit halves could overflow.
pub(crate) const CARRY_AT: u64 = 1 << 31;
/// The slice of a bucket that holds none.
const NO_SLICE: u64 = u64::MAX;

const fn pair(flag: bool) -> u64 {
    1 | ((flag as u64) << 32)
}

const fn calls_of(word: u64) -> u64 {
    word & LOW32
}

const fn flagged_of(word: u64) -> u64 {
    word >> 32
}

/// One slice of a time window.
///
/// `slice` is the full slice number (never a lap modulo anything), so a
/// bucket left untouched for any number of laps can never pass for a fresh
/// one. `seq` is odd while the bucket is being reset or its words carried
/// into the wide counters; those changes happen only under the window's
/// lock, and readers that need the whole bucket at once retry around them
/// like a seqlock. Recording a call takes no part in it: it is one
/// `fetch_add` per word.
#[derive(Debug)]
struct Bucket {
    seq: AtomicU64,
    slice: AtomicU64,
    /// calls | failures << 32.
    failed: AtomicU64,
    /// calls | slow calls << 32 (only when slow calls are detected).
    slow: AtomicU64,
    /// Counts carried out of the words: calls and failures, calls and slow.
    carried: [AtomicU64; 4],
}

impl Bucket {
    fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            slice: AtomicU64::new(NO_SLICE),
            failed: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            carried: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        }
    }

    /// The bucket's slice and counts, read as one snapshot. `None` while a
    /// reset or carry is under way.
    fn try_read(&self) -> Option<(u64, Counts)> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let slice = self.slice.load(Ordering::Relaxed);
        // The slow word first: a writer adds to it after the failure word,
        // so its calls never run ahead of the failure word's.
        let slow = self.slow.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let carried = [
            self.carried[0].load(Ordering::Relaxed),
            self.carried[1].load(Ordering::Relaxed),
            self.carried[2].load(Ordering::Relaxed),
            self.carried[3].load(Ordering::Relaxed),
        ];
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != seq {
            return None;
        }
        let calls = calls_of(failed) + carried[0];
        let failures = flagged_of(failed) + carried[1];
        // A writer stalled across a reset can leave its slow half in the
        // new slice without its failure half: never let slow outrun calls.
        let slow = (flagged_of(slow) + carried[3]).min(calls);
        Some((
            slice,
            Counts {
                calls,
                failures,
                slow,
            },
        ))
    }

    /// Starts a writer-exclusive change (caller holds the window's lock).
    fn begin(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Release);
    }

    /// Gives the bucket to `slice`, empty (caller holds the window's lock).
    ///
    /// The words are emptied before the tag is published (`Release`), so a
    /// writer that sees the new tag (`Acquire`) adds after the emptying and
    /// is never wiped by it.
    fn reset(&self, slice: u64) {
        self.begin();
        // Swaps, not stores: as read-modify-writes they are ordered against
        // the `fetch_add`s of writers still adding to the old slice.
        self.failed.swap(0, Ordering::AcqRel);
        self.slow.swap(0, Ordering::AcqRel);
        for c in &self.carried {
            c.store(0, Ordering::Relaxed);
        }
        self.slice.store(slice, Ordering::Release);
        self.end();
    }

    /// Moves the words' counts into the wide counters (caller holds the
    /// window's lock). A `swap` takes every add made before it; adds made
    /// after it land in the emptied word: none is lost or counted twice.
    fn carry(&self) {
        self.begin();
        let failed = self.failed.swap(0, Ordering::AcqRel);
        let slow = self.slow.swap(0, Ordering::AcqRel);
        let add = [
            calls_of(failed),
            flagged_of(failed),
            calls_of(slow),
            flagged_of(slow),
        ];
        for (c, n) in self.carried.iter().zip(add) {
            c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        }
        self.end();
    }
}

/// The totals of the slices before the newest one, summed when the newest
/// one was opened; `head` is that newest slice. Written under the window's
/// lock, read like a seqlock.
#[derive(Debug)]
struct Closed {
    seq: AtomicU64,
    head: AtomicU64,
    /// The open slice's time range `[start, end)` and bucket, so the fast
    /// path needs no division to find them.
    start: AtomicU64,
    end: AtomicU64,
    index: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl Closed {
    fn read(&self) -> Option<(u64, Counts)> {
        self.read_open().map(|open| (open.head, open.closed))
    }

    #[inline]
    fn read_open(&self) -> Option<OpenSlice> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let open = OpenSlice {
            head: self.head.load(Ordering::Relaxed),
            start: self.start.load(Ordering::Relaxed),
            end: self.end.load(Ordering::Relaxed),
            index: self.index.load(Ordering::Relaxed),
            closed: Counts {
                calls: self.calls.load(Ordering::Relaxed),
                failures: self.failures.load(Ordering::Relaxed),
                slow: self.slow.load(Ordering::Relaxed),
            },
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(open)
    }

    fn write(&self, head: u64, range: (u64, u64, u64), c: Counts) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.head.store(head, Ordering::Relaxed);
        self.start.store(range.0, Ordering::Relaxed);
        self.end.store(range.1, Ordering::Relaxed);
        self.index.store(range.2, Ordering::Relaxed);
        self.calls.store(c.calls, Ordering::Relaxed);
        self.failures.store(c.failures, Ordering::Relaxed);
        self.slow.store(c.slow, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// One consistent read of [`Closed`].
struct OpenSlice {
    head: u64,
    start: u64,
    end: u64,
    index: u64,
    closed: Counts,
}

/// The outcomes of the last `buckets × bucket width` of time.
///
/// Time is cut into slices of one bucket width; slice `s` lives in bucket
/// `s % buckets`, which is tagged with `s` in full. A call is recorded with
/// one `fetch_add` on its bucket's word (two with slow-call detection): no
/// compare-and-swap, and a call and its outcome land together, so a bucket
/// never shows more failures than calls. Counts are 32-bit halves carried
/// into 64-bit counters at 2³¹, so no number of calls saturates a bucket.
///
/// Opening a new slice (once per bucket width) and giving a bucket to a new
/// slice take the window's lock; the opener sums the other slices of the
/// window once, so a writer judges the window from that sum and its own
/// bucket's word, in O(1). That sum misses calls recorded late into older
/// slices, so it only *triggers* a judgement: a trip is confirmed by
/// [`TimeWindow::counts`], which reads every bucket as a consistent
/// snapshot and counts only the slices of the window (see the breaker).
///
/// A call whose writer stalls for a whole window between reading its
/// bucket's tag and adding lands in the slice that holds the bucket by
/// then: it is counted as recorded when it lands.
pub(crate) struct TimeWindow {
    closed: Padded<Closed>,
    lock: Mutex<()>,
    bucket_nanos: u64,
    track_slow: bool,
    buckets: Box<[Padded<Bucket>]>,
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
    pub(crate) fn new(buckets: usize, bucket_nanos: u64, track_slow: bool) -> Self {
        Self {
            closed: Padded(Closed {
                seq: AtomicU64::new(0),
                head: AtomicU64::new(NO_SLICE),
                // An empty range: the first call takes the slow path.
                start: AtomicU64::new(u64::MAX),
                end: AtomicU64::new(0),
                index: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                slow: AtomicU64::new(0),
            }),
            lock: Mutex::new(()),
            bucket_nanos: bucket_nanos.max(1),
            track_slow,
            buckets: (0..buckets.max(1)).map(|_| Padded(Bucket::new())).collect(),
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn bucket(&self, slice: u64) -> &Bucket {
        &self.buckets[(slice % self.len()) as usize]
    }

    /// Records one call finished at `now_nanos` and returns the window's
    /// counts as a trigger for judgement: exact unless calls were recorded
    /// late into older slices (see [`TimeWindow`]).
    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        if let Some(open) = self.closed.read_open() {
            // The open slice's range saves two divisions per call.
            if open.start <= now_nanos && now_nanos < open.end {
                let bucket = &self.buckets[open.index as usize % self.buckets.len()];
                if bucket.slice.load(Ordering::Acquire) == open.head {
                    let (own, full) = self.add(bucket, failed, slow);
                    if full {
                        self.carry(bucket);
                    }
                    let closed = open.closed;
                    return Counts {
                        calls: closed.calls + own.calls,
                        failures: closed.failures + own.failures,
                        slow: closed.slow + own.slow,
                    };
                }
            }
        }
        self.record_slow(now_nanos / self.bucket_nanos, failed, slow)
    }

    /// Adds one call to a bucket of the right slice; returns the bucket's
    /// counts, carried ones included, and whether its words need carrying.
    #[inline]
    fn add(&self, bucket: &Bucket, failed: bool, slow: bool) -> (Counts, bool) {
        let f = bucket.failed.fetch_add(pair(failed), Ordering::AcqRel) + pair(failed);
        let mut own = Counts {
            calls: calls_of(f),
            failures: flagged_of(f),
            slow: 0,
        };
        let mut full = own.calls >= CARRY_AT;
        if self.track_slow {
            let s = bucket.slow.fetch_add(pair(slow), Ordering::AcqRel) + pair(slow);
            own.slow = flagged_of(s).min(own.calls);
            full |= calls_of(s) >= CARRY_AT;
        }
        let carried = bucket.carried[0].load(Ordering::Relaxed);
        if carried != 0 {
            own.calls += carried;
            own.failures += bucket.carried[1].load(Ordering::Relaxed);
            own.slow = (own.slow + bucket.carried[3].load(Ordering::Relaxed)).min(own.calls);
        }
        (own, full)
    }

    #[cold]
    #[inline(never)]
    fn carry(&self, bucket: &Bucket) {
        let _guard = lock(&self.lock);
        if calls_of(bucket.failed.load(Ordering::Acquire)) >= CARRY_AT
            || calls_of(bucket.slow.load(Ordering::Acquire)) >= CARRY_AT
        {
            bucket.carry();
        }
    }

    /// A call of a slice that is not the open one, or whose bucket has not
    /// been given to it yet: opens the slice, gives the bucket, or drops a
    /// call too old to count, under the lock.
    #[cold]
    #[inline(never)]
    fn record_slow(&self, slice: u64, failed: bool, slow: bool) -> Counts {
        let guard = lock(&self.lock);
        let head = self.closed.head.load(Ordering::Relaxed);
        if head == NO_SLICE || slice > head {
            // Open the slice: sum the rest of its window once.
            let mut closed = Counts::default();
            let first = slice.saturating_sub(self.len() - 1);
            for bucket in &*self.buckets {
                // Under the lock no reset or carry is under way.
                if let Some((s, c)) = bucket.try_read() {
                    if s != NO_SLICE && s >= first && s < slice {
                        closed.add(c);
                    }
                }
            }
            let start = slice.saturating_mul(self.bucket_nanos);
            let end = start.saturating_add(self.bucket_nanos);
            self.closed
                .write(slice, (start, end, slice % self.len()), closed);
        } else if slice + self.len() <= head {
            // Older than the window: it must never count.
            drop(guard);
            return self.trigger();
        }
        let bucket = self.bucket(slice);
        let tag = bucket.slice.load(Ordering::Acquire);
        if tag == NO_SLICE || tag < slice {
            bucket.reset(slice);
        } else if tag > slice {
            // The bucket already holds a slice a whole window later: this
            // call is older than the window.
            drop(guard);
            return self.trigger();
        }
        if self.add(bucket, failed, slow).1 {
            bucket.carry();
        }
        drop(guard);
        self.trigger()
    }

    /// The closed slices' sum plus the open slice's bucket: O(1), a trigger
    /// for judgement like the fast path's (a trip is confirmed on
    /// [`counts`](Self::counts)).
    fn trigger(&self) -> Counts {
        let Some((head, mut total)) = self.closed.read() else {
            return Counts::default();
        };
        if head == NO_SLICE {
            return total;
        }
        let (s, open) = self.read_bucket(self.bucket(head));
        if s == head {
            total.add(open);
        }
        total
    }

    /// Every call of the window ending at `now_nanos`, each bucket read as
    /// one consistent snapshot and only the window's slices counted: O(buckets).
    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        let head = self.closed.head.load(Ordering::Acquire);
        let slice = now_nanos / self.bucket_nanos;
        let slice = if head == NO_SLICE {
            slice
        } else {
            slice.max(head)
        };
        self.counts_at(slice)
    }

    fn counts_at(&self, slice: u64) -> Counts {
        let first = slice.saturating_sub(self.len() - 1);
        let mut total = Counts::default();
        for bucket in &*self.buckets {
            let (s, c) = self.read_bucket(bucket);
            if s != NO_SLICE && s >= first && s <= slice {
                total.add(c);
            }
        }
        total
    }

    fn read_bucket(&self, bucket: &Bucket) -> (u64, Counts) {
        // Under loom a spin is an unbounded branch; go to the lock at once.
        let spins = if cfg!(loom) { 0 } else { 64 };
        for _ in 0..spins {
            if let Some(read) = bucket.try_read() {
                return read;
            }
            std::hint::spin_loop();
        }
        // A reset or carry is under way and its holder may be descheduled:
        // wait for it on the lock it holds.
        loop {
            drop(lock(&self.lock));
            if let Some(read) = bucket.try_read() {
                return read;
            }
        }
    }

    /// Empties the window (under the lock, bucket by bucket, as resets).
    pub(crate) fn reset(&self) {
        let _guard = lock(&self.lock);
        for bucket in &*self.buckets {
            bucket.reset(NO_SLICE);
        }
        self.closed
            .write(NO_SLICE, (u64::MAX, 0, 0), Counts::default());
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

    /// The counts a trip is confirmed on: one consistent snapshot of what
    /// the window holds at `now_nanos`.
    #[cold]
    pub(crate) fn confirm(&self, now_nanos: u64) -> Counts {
        match self {
            // The totals can hold an outcome a later writer of its slot has
            // claimed to replace and not yet replaced: count one run of
            // consecutive calls, slot by slot.
            Window::Count(w) => w.snapshot(),
            Window::Time(w) => w.counts(now_nanos),
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
        let expect = w.slot_sum();
        assert_eq!(w.counts(), expect);
        assert_eq!(w.snapshot(), expect);
        assert_eq!(expect.calls, 7);
    }

    /// The slot of an index is its exact remainder, also past 2^32 (the
    /// old low-32-bit remainder reused a slot early there, which writers
    /// taking turns by index must never see).
    #[test]
    fn slot_is_the_exact_remainder() {
        for size in [1u64, 2, 3, 7, 100, 4096, 499_999, 500_000] {
            let w = CountWindow::new(size as usize);
            for i in (0..2_000u64)
                .chain((1u64 << 32) - 1_000..(1u64 << 32) + 1_000)
                .chain([u64::MAX >> 3, (u64::MAX >> 3) - 1, 123_456_789_012_345])
            {
                assert_eq!(w.slot(i) as u64, i % size, "{i} % {size}");
            }
        }
    }

    /// How long the multi-thread stress tests run: short by default (CI),
    /// longer with `SEAWALL_STRESS_SECS`.
    fn stress_time() -> std::time::Duration {
        let secs = std::env::var("SEAWALL_STRESS_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0);
        std::time::Duration::from_secs_f64(secs)
    }

    /// Three writers on a window of 1: writers of one slot used to apply
    /// their deltas out of order, so the totals (and the judgement made on
    /// them) showed more failures than calls, millions of times a second.
    #[test]
    fn racing_writers_of_one_slot_never_show_a_rate_above_one() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let w = Arc::new(CountWindow::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let torn = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let (w, stop, torn) = (w.clone(), stop.clone(), torn.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = w.record((i + t).is_multiple_of(2), i.is_multiple_of(3));
                        if c.failures > c.calls || c.slow > c.calls || c.calls > 1 {
                            torn.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        let start = std::time::Instant::now();
        let mut seen = 0u64;
        while start.elapsed() < stress_time() {
            let c = w.counts();
            let s = w.snapshot();
            if c.failures > c.calls || c.calls > 1 || s.failures > s.calls || s.calls > 1 {
                seen += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((torn.load(Ordering::Relaxed), seen), (0, 0));
        assert_eq!(w.counts(), w.slot_sum());
        assert_eq!(w.snapshot(), w.slot_sum());
    }

    /// Window of 2; one writer strictly alternates failure, success, two
    /// always succeed: no two consecutive calls both fail, so no run of 2
    /// calls, the snapshot a trip is confirmed on, ever holds 2 failures;
    /// and the totals never show more failures than calls.
    #[test]
    fn snapshots_never_hold_failures_no_run_of_calls_held() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let w = Arc::new(CountWindow::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let (w, stop, bad) = (w.clone(), stop.clone(), bad.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = w.record(t == 0 && i.is_multiple_of(2), false);
                        if c.failures > c.calls || (c.failures >= 2 && w.snapshot().failures >= 2) {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        let start = std::time::Instant::now();
        let mut seen = 0u64;
        while start.elapsed() < stress_time() {
            let c = w.counts();
            if c.failures > c.calls || w.snapshot().failures >= 2 {
                seen += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((bad.load(Ordering::Relaxed), seen), (0, 0));
    }

    /// A snapshot counts only one run of consecutive calls: an outcome
    /// whose replacement is claimed but not written yet is left out.
    #[test]
    fn snapshot_leaves_out_outcomes_older_than_the_run() {
        let w = CountWindow::new(2);
        w.record(true, false); // index 0, slot 0
        w.record(false, false); // index 1, slot 1

        // Index 2 (slot 0) is claimed and not written; index 3 is written.
        let i = w.head.fetch_add(1, Ordering::Relaxed);
        assert_eq!(i, 2);
        w.record(true, false);
        // The totals still hold index 0's failure; no run of 2 calls
        // holds two failures.
        assert_eq!(w.counts(), counts(2, 2, 0));
        assert_eq!(w.snapshot(), counts(1, 1, 0));
        w.write(2, outcome_bits(false, false));
        assert_eq!(w.counts(), counts(2, 1, 0));
        assert_eq!(w.snapshot(), counts(2, 1, 0));
    }

    fn counts(calls: u64, failures: u64, slow: u64) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn time_window_forgets_old_buckets_and_idle_gaps() {
        // 4 buckets of 10 ns: a 40 ns window.
        let w = TimeWindow::new(4, 10, true);
        w.record(0, true, false);
        w.record(15, false, false);
        assert_eq!(w.counts(39), counts(2, 1, 0));
        // At 40 the bucket of slice 0 has left the window.
        assert_eq!(w.counts(40), counts(1, 0, 0));
        assert_eq!(w.record(41, false, true), counts(2, 0, 1));
        w.reset();
        assert_eq!(w.counts(41), Counts::default());
        assert_eq!(w.record(41, true, false), counts(1, 1, 0));
    }

    /// The old window kept each bucket's lap modulo 16, so after an idle
    /// gap of a multiple of 16 laps a bucket's stale tag matched again.
    /// Full slice tags never alias, whatever the gap.
    #[test]
    fn idle_gaps_of_any_number_of_laps_never_resurrect_old_calls() {
        for laps in [2u64, 15, 16, 17, 32, 48, 1 << 20] {
            let w = TimeWindow::new(4, 10, false);
            for t in [0, 10, 20, 30] {
                w.record(t, true, false);
            }
            let later = 30 + laps * 40;
            assert_eq!(w.counts(later), Counts::default(), "{laps} laps");
            // A call in a later lap's slice 0 sees only itself, then a call
            // in every other bucket position sees only the new lap.
            assert_eq!(w.record(later - 30, false, false), counts(1, 0, 0));
            assert_eq!(w.record(later, false, false), counts(2, 0, 0));
            assert_eq!(w.counts(later), counts(2, 0, 0), "{laps} laps");
        }
    }

    /// A call recorded late into an older slice that is still inside the
    /// window counts; one older than the window never does, not even when
    /// its bucket was never reused.
    #[test]
    fn late_calls_count_only_inside_the_window() {
        let w = TimeWindow::new(4, 10, false);
        w.record(35, false, false);
        w.record(12, true, false);
        assert_eq!(w.counts(35), counts(2, 1, 0));
        // Slice 1 is still inside the window of slice 4.
        assert_eq!(w.record(45, false, false), counts(3, 1, 0));
        // Slice 0 (time 5) is a whole window before slice 4.
        w.record(5, true, false);
        assert_eq!(w.counts(45), counts(3, 1, 0));
    }

    /// More than 2²⁰ calls in one bucket (the old bucket's limit, past which
    /// failures were dropped): every one is counted.
    #[test]
    fn a_bucket_counts_millions_of_calls_exactly() {
        let w = TimeWindow::new(10, 1_000_000_000, true);
        let successes = 1_100_000u64;
        let failures = 2_200_000u64;
        for i in 0..successes {
            w.record(i % 1000, false, false);
        }
        for i in 0..failures {
            w.record(i % 1000, true, i % 2 == 0);
        }
        let c = w.counts(999);
        assert_eq!(c, counts(successes + failures, failures, failures / 2));
    }

    /// Past 2³¹ calls a bucket's words are carried into 64-bit counters:
    /// nothing saturates, and the rates stay exact past 2³² calls.
    #[test]
    fn bucket_words_carry_instead_of_saturating() {
        let w = TimeWindow::new(2, 1_000, true);
        w.record(0, false, false);
        let bucket = w.bucket(0);
        // As if CARRY_AT - 2 more successes, 7 of them slow, had been
        // recorded, then twice more after each carry.
        let seed = (CARRY_AT - 2) | (7 << 32);
        let mut want = counts(1, 0, 0);
        for round in 0..3u64 {
            bucket.failed.fetch_add(CARRY_AT - 2, Ordering::Relaxed);
            bucket.slow.fetch_add(seed, Ordering::Relaxed);
            want.calls += CARRY_AT - 2;
            want.slow += 7;
            let got = w.record(1, true, true);
            want.calls += 1;
            want.failures += 1;
            want.slow += 1;
            assert_eq!(got, want, "round {round}");
            assert!(calls_of(bucket.failed.load(Ordering::Relaxed)) < CARRY_AT);
            assert_eq!(w.counts(1), want);
        }
        assert!(want.calls > 1 << 32);
    }

    /// Several threads record M calls, crossing many bucket boundaries, all
    /// inside one window: the window holds exactly M, the right failures,
    /// and its totals never show more failures than calls.
    #[test]
    fn racing_writers_inside_one_window_lose_nothing() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 40_000;
        let w = Arc::new(TimeWindow::new(4096, 1, false));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        // Time moves forward through 4000 slices, each
                        // thread at its own pace, so slices open and
                        // buckets are handed over under every writer.
                        let now = i * 4_000 / PER_THREAD + t;
                        let c = w.record(now, i % 3 == 0, false);
                        assert!(c.failures <= c.calls);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = w.counts(4_003);
        assert_eq!(c.calls, THREADS * PER_THREAD);
        assert_eq!(c.failures, THREADS * PER_THREAD.div_ceil(3));
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
            let w = TimeWindow::new(buckets, width, true);
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

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn model<F: Fn() + Sync + Send + 'static>(f: F) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// Two writers of the one slot of a window of 1 (indices 0 and 1) race
    /// while a reader reads the totals: the writers take turns by index, so
    /// the totals never show more failures than calls or more than one
    /// call, and the slot ends with index 1's outcome, whichever thread
    /// claimed it.
    #[test]
    fn loom_count_window_writers_of_one_slot_take_turns() {
        model(|| {
            let w = Arc::new(CountWindow::new(1));
            let writers: Vec<_> = [true, false]
                .into_iter()
                .map(|failed| {
                    let w = w.clone();
                    thread::spawn(move || {
                        let c = w.record(failed, false);
                        assert!(c.failures <= c.calls && c.calls == 1, "{c:?}");
                    })
                })
                .collect();
            let c = w.counts();
            assert!(c.failures <= c.calls && c.calls <= 1, "{c:?}");
            let s = w.snapshot();
            assert!(s.failures <= s.calls && s.calls <= 1, "{s:?}");
            for t in writers {
                t.join().unwrap();
            }
            let c = w.counts();
            assert_eq!(c.calls, 1);
            assert_eq!(c, w.snapshot());
            // Index 1 wrote last: its outcome is the slot's.
            let word = w.slots[0].load(Ordering::Relaxed);
            assert_eq!(word >> TURN_SHIFT, 2);
            assert_eq!(u64::from(c.failures == 1), (word >> 1) & 1);
        });
    }

    /// Two writers of the same new slice race to open it while a third
    /// thread reads: both calls are kept, and no snapshot shows more
    /// failures than calls.
    #[test]
    fn loom_writers_opening_a_slice_lose_nothing() {
        model(|| {
            let w = Arc::new(TimeWindow::new(2, 10, false));
            w.record(0, false, false);
            let writers: Vec<_> = [true, false]
                .into_iter()
                .map(|failed| {
                    let w = w.clone();
                    thread::spawn(move || {
                        let c = w.record(15, failed, false);
                        assert!(c.failures <= c.calls);
                    })
                })
                .collect();
            let c = w.counts(15);
            assert!(c.failures <= c.calls && c.calls <= 3, "{c:?}");
            for t in writers {
                t.join().unwrap();
            }
            assert_eq!(
                w.counts(15),
                Counts {
                    calls: 3,
                    failures: 1,
                    slow: 0
                }
            );
        });
    }

    /// A writer of an old slice races the writer that hands its bucket to a
    /// slice a whole window later: the old call is either gone or counted in
    /// the new slice (never its failure without its call), and the new call
    /// is always kept.
    #[test]
    fn loom_bucket_handover_keeps_calls_whole() {
        model(|| {
            let w = Arc::new(TimeWindow::new(2, 10, true));
            w.record(0, false, false);
            let old = {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(5, true, true);
                })
            };
            let new = {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(20, false, false);
                })
            };
            old.join().unwrap();
            new.join().unwrap();
            let c = w.counts(20);
            // The new call is always there; the old one is gone, or counted
            // in the new slice; a writer stalled between its two words may
            // leave one half in each slice, but never more failures or slow
            // calls than calls.
            assert!(c.calls >= 1 && c.calls <= 2, "{c:?}");
            assert!(c.failures <= c.calls - 1 && c.slow <= c.calls, "{c:?}");
        });
    }

    /// A reader racing a carry sees the bucket before or after it, never
    /// half-carried.
    #[test]
    fn loom_reads_never_see_a_half_carried_bucket() {
        model(|| {
            let w = Arc::new(TimeWindow::new(1, 10, false));
            w.record(0, true, false);
            let bucket = w.bucket(0);
            bucket.failed.fetch_add(CARRY_AT - 1, Ordering::Relaxed);
            let reader = {
                let w = w.clone();
                thread::spawn(move || w.counts(0))
            };
            w.carry(w.bucket(0));
            let seen = reader.join().unwrap();
            assert_eq!(
                seen,
                Counts {
                    calls: CARRY_AT,
                    failures: 1,
                    slow: 0
                }
            );
        });
    }
}
