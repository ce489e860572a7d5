//! A rolling latency window: a ring of time slices, each a log-linear
//! histogram of atomic counters.
//!
//! Recording is O(1) and lock-free (one load of the slice tag, one relaxed
//! `fetch_add`); memory is fixed at construction (`slices * BUCKETS` 64-bit
//! counters, 8 KiB per slice). Reading a percentile scans every counter, so
//! the estimator caches its result and reads the window only every
//! `refresh` of time.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: 32, so a bucket is at most 1/32 of its
/// lower bound wide and its midpoint is within 1/64 (1.6%) of any value in
/// it.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies are counted in microseconds up to 2^36 µs (about 19 hours);
/// longer ones count in the last bucket.
const MAX_EXP: u32 = 36;
/// Buckets per histogram: values below 64 µs exactly, then 32 per octave.
pub(crate) const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;
const MAX_VALUE: u64 = (1 << MAX_EXP) - 1;

/// Set in a slot's tag while its counters are being emptied.
const RESETTING: u64 = 1 << 63;

/// The bucket of a latency of `micros`.
#[inline]
pub(crate) fn bucket_of(micros: u64) -> usize {
    let v = micros.min(MAX_VALUE);
    if v < SUB {
        return v as usize;
    }
    let exp = v.ilog2();
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (u64::from(exp - SUB_BITS + 1) * SUB + sub) as usize
}

/// The value that stands for bucket `index`: its midpoint, in microseconds.
pub(crate) fn value_of(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let group = index / SUB;
    let sub = index % SUB;
    let shift = group - 1;
    let low = (SUB + sub) << shift;
    let width = 1u64 << shift;
    low + width / 2
}

/// Microseconds in `d`, saturating.
#[inline]
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

struct Slot {
    /// `slice + 1` of the time slice the counters belong to (0: never
    /// used), with [`RESETTING`] set while they are emptied.
    tag: AtomicU64,
    counts: Box<[AtomicU64]>,
}

/// A ring of `slices` histograms, one per `slice` of time.
pub(crate) struct LatencyWindow {
    slots: Box<[Slot]>,
    slice_micros: u64,
}

impl std::fmt::Debug for LatencyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyWindow")
            .field("slices", &self.slots.len())
            .field("slice_micros", &self.slice_micros)
            .finish_non_exhaustive()
    }
}

impl LatencyWindow {
    /// `slices` slices of `slice_micros` each (both at least 1).
    pub(crate) fn new(slices: usize, slice_micros: u64) -> Self {
        let slots = (0..slices.max(1))
            .map(|_| Slot {
                tag: AtomicU64::new(0),
                counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            })
            .collect();
        Self {
            slots,
            slice_micros: slice_micros.max(1),
        }
    }

    /// Counts a latency of `latency` µs observed at `now` (µs since the
    /// estimator's epoch).
    #[inline]
    pub(crate) fn record(&self, now: u64, latency: u64) {
        let slice = now / self.slice_micros;
        let tag = slice + 1;
        let slot = &self.slots[(slice % self.slots.len() as u64) as usize];
        let seen = slot.tag.load(Ordering::Acquire);
        if seen != tag && !Self::claim(slot, seen, tag) {
            return;
        }
        slot.counts[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a slot last used for an older slice, empties it and publishes
    /// it for `tag`. `false` when the sample should be dropped: another
    /// thread is emptying the slot, or the caller's clock reading is older
    /// than the slot's slice. Dropping one sample is harmless to a
    /// percentile; waiting for the other thread would not be lock-free.
    #[cold]
    fn claim(slot: &Slot, seen: u64, tag: u64) -> bool {
        if seen & RESETTING != 0 || seen > tag {
            return false;
        }
        if slot
            .tag
            .compare_exchange(seen, tag | RESETTING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Seqlock writer: a reader that sees any of the zeroes below also
        // sees the RESETTING mark when it checks the tag again (its Acquire
        // fence pairs with this Release fence), and drops the slot.
        fence(Ordering::Release);
        for count in &*slot.counts {
            count.store(0, Ordering::Relaxed);
        }
        slot.tag.store(tag, Ordering::Release);
        true
    }

    /// Adds the counts of every slice of the window ending at `now` into
    /// `into` and returns their total. Each slot is read as one consistent
    /// histogram: one that was emptied while being read is left out.
    ///
    /// A thread that read a slot's tag and was then descheduled for a whole
    /// window may add its one sample to the slot's next slice: one sample
    /// off, never a torn total, since the total is summed from the very
    /// counts read.
    pub(crate) fn collect(&self, now: u64, into: &mut [u64; BUCKETS]) -> u64 {
        let current = now / self.slice_micros;
        let len = self.slots.len() as u64;
        let mut scratch = [0u64; BUCKETS];
        let mut total = 0;
        for slot in &*self.slots {
            let tag = slot.tag.load(Ordering::Acquire);
            if tag == 0 || tag & RESETTING != 0 {
                continue;
            }
            let slice = tag - 1;
            if slice > current || slice + len <= current {
                continue;
            }
            for (copy, count) in scratch.iter_mut().zip(&*slot.counts) {
                *copy = count.load(Ordering::Relaxed);
            }
            // Seqlock reader: pairs with the Release fence in `claim`.
            fence(Ordering::Acquire);
            if slot.tag.load(Ordering::Relaxed) != tag {
                // Emptied for a newer slice while being read: that slice
                // only begins, so leaving it out loses next to nothing.
                continue;
            }
            for (sum, copy) in into.iter_mut().zip(&scratch) {
                *sum += copy;
                total += copy;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_within_two_percent() {
        let mut last = 0;
        for v in (0..5_000u64).chain((5_000..100_000_000).step_by(997)) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket of {v} went down");
            last = b;
            let mid = value_of(b) as f64;
            assert!(
                (mid - v as f64).abs() <= (v as f64 / 64.0).max(0.5),
                "{v} -> bucket {b} ({mid})"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(MAX_VALUE), BUCKETS - 1);
    }

    #[test]
    fn old_slices_leave_the_window() {
        let w = LatencyWindow::new(4, 1_000);
        w.record(0, 10);
        w.record(3_999, 20);
        let mut h = [0; BUCKETS];
        assert_eq!(w.collect(3_999, &mut h), 2);
        assert_eq!(h[10], 1);
        let mut h = [0; BUCKETS];
        assert_eq!(w.collect(4_000, &mut h), 1, "slice 0 expired");
        assert_eq!(h[20], 1);
        // Slice 4 reuses slice 0's slot: emptied first.
        w.record(4_500, 30);
        let mut h = [0; BUCKETS];
        assert_eq!(w.collect(4_500, &mut h), 2);
        assert_eq!((h[10], h[20], h[30]), (0, 1, 1));
    }

    #[test]
    fn a_stale_clock_reading_is_dropped() {
        let w = LatencyWindow::new(2, 1_000);
        w.record(2_100, 5);
        // A caller that read the clock a slice earlier maps to the same
        // slot, already taken by the newer slice.
        w.record(100, 7);
        let mut h = [0; BUCKETS];
        assert_eq!(w.collect(2_100, &mut h), 1);
        assert_eq!(h[7], 0);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let w = LatencyWindow::new(4, 1_000_000);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        w.record(0, t * 100 + i % 100);
                    }
                });
            }
        });
        let mut h = [0; BUCKETS];
        assert_eq!(w.collect(0, &mut h), 40_000);
        assert_eq!(h.iter().sum::<u64>(), 40_000);
    }

    #[test]
    fn snapshots_stay_consistent_while_slices_rotate() {
        // Writers sweep the clock through thousands of slices (each rotation
        // empties a slot) while a reader collects. A slice holds at most
        // 3 threads x 40 records, so a window of 4 slices at most 480: a
        // snapshot that mixed a slot's old counts into its new slice (an
        // emptying it did not notice) could exceed that.
        let w = LatencyWindow::new(4, 10);
        let clock = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let (w, clock) = (&w, &clock);
                s.spawn(move || {
                    for i in 0..200_000u64 {
                        let now = i / 4;
                        clock.fetch_max(now, Ordering::Relaxed);
                        w.record(now, t + i % 7);
                    }
                });
            }
            let (w, clock) = (&w, &clock);
            s.spawn(move || {
                let mut h = [0; BUCKETS];
                for _ in 0..5_000 {
                    h.fill(0);
                    let total = w.collect(clock.load(Ordering::Relaxed), &mut h);
                    assert_eq!(total, h.iter().sum::<u64>());
                    assert!(total <= 480, "{total}");
                    assert!(h[9..].iter().all(|&n| n == 0), "only values 0..9");
                }
            });
        });
        let mut h = [0; BUCKETS];
        let last = w.collect(49_999, &mut h);
        assert!(last <= 480 && last > 0, "{last}");
    }
}
