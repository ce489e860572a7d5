//! The bounded registry of one limit's keys.
//!
//! Keys live in shards, each a `hashbrown::HashTable` of cells (the key,
//! its hash and its theoretical arrival time, TAT, in an `AtomicU64`)
//! stored inline, under a reader-writer lock. The key is hashed once: the
//! hash picks the shard and probes its table, where one probe finds the key
//! and its TAT together; each key is stored once, in its cell. A shard owns
//! an equal share of the registry's capacity in entries and in bytes.
//!
//! A decision for a key that has a cell takes the shard's lock *shared*
//! ([`Registry::update`]) and moves the TAT with a compare-and-swap, so
//! decisions for the keys of one shard (or for one hot key) do not wait for
//! each other; a failed swap means another decision moved the TAT first, and
//! the decision is made again against the new TAT, so every admission is
//! computed from the TAT the previous one left: exact. Only inserting a key
//! (and with it the sweep below) takes the lock exclusively; so does a
//! decision over several limits ([`Registry::lock`]), which must hold every
//! limit's TAT still while it checks them all. No TAT changes while a shard
//! is locked exclusively.
//!
//! A key whose TAT has passed has a full bucket, which is exactly the state
//! of a key never seen: removing it loses nothing. So "idle" needs no timer:
//! each insertion moves a clock hand over the table's next two buckets and
//! frees the idle keys it finds, which returns the memory of idle keys at the rate new
//! keys arrive (O(1) per insertion). When a shard is full, the insertion
//! scans at most [`SCAN_WHEN_FULL`] more buckets for an idle key.
//!
//! A shard full of keys that are all still limited (none idle within the
//! scan) never evicts one: that would hand its key a fresh burst and
//! silently weaken the limit. The new key is counted against the shard's
//! **overflow bucket** instead, one bucket with the limit's quota shared by
//! every key that found no room. A key that later gets a cell of its own
//! starts from the overflow bucket's TAT if it may have spent from it, so
//! moving out of overflow never grants a second burst: the shard remembers
//! the keys it sent to overflow in a 256-bit filter of their hashes,
//! cleared whenever the overflow bucket is full again (then it holds no
//! debt to carry). A key never sent there starts with a full bucket, as
//! GCRA says a key never seen has (only a key whose hash shares a bit
//! with one sent to overflow, while the overflow bucket is still in debt,
//! starts from that debt: at most one burst's time).
//!
//! Keys longer than `max_key_bytes` share a bucket of their own, the
//! **long-key bucket**, which seeds nothing: such a key can never get a
//! cell, so it has no second burst to be kept from, and whoever drains
//! that bucket (any client can send long keys) takes nothing from the
//! keys that fit. Under a flood of new keys the registry therefore stays
//! within its bounds, each lookup stays O(1), and no key ever gets more than
//! its quota; keys in overflow get less (they share one bucket), which is
//! the documented price of the bound.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use crate::key::RateKey;

/// Buckets examined by an insertion into a full shard.
pub(crate) const SCAN_WHEN_FULL: usize = 8;
/// Buckets examined by every insertion, full or not.
const SWEEP_STEP: usize = 2;
/// Shards of a registry with room for many keys (a power of two).
const MAX_SHARDS: usize = 16;

/// Where a key's TAT lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The table's bucket holding the key's entry (stable while the shard
    /// is locked).
    Cell(usize),
    /// The bucket shared by keys that found no room.
    Overflow,
    /// The bucket shared by keys longer than `max_key_bytes`.
    Long,
}

/// A key's entry, inline in its shard's table: one probe finds the key and
/// its TAT together.
struct Cell<K> {
    key: K,
    hash: u64,
    tat: AtomicU64,
}

pub(crate) struct Shard<K> {
    table: HashTable<Cell<K>>,
    /// The clock hand: the next bucket the sweep looks at.
    hand: usize,
    bytes: usize,
    overflow_tat: AtomicU64,
    /// Bits of the hashes of the keys sent to the overflow bucket since it
    /// was last full: a key getting a cell starts from the overflow
    /// bucket's TAT only if its bit is set.
    overflowed: [u64; 4],
    /// The bucket of keys longer than `max_key_bytes`; it seeds no cell.
    long_tat: AtomicU64,
    /// The latest `now` at which a sweep freed a cell. A new cell starts no
    /// earlier than this: a decision that read the clock before the sweep
    /// and locked the shard after it must not find a fresher bucket than
    /// the freed one (whose TAT was at most this).
    swept_at: u64,
    max_entries: usize,
    max_bytes: usize,
    max_key_bytes: usize,
}

impl<K: RateKey> Shard<K> {
    /// The bytes one key costs: its entry, the table's control byte and its
    /// heap bytes.
    fn entry_bytes(key: &K) -> usize {
        mem::size_of::<Cell<K>>() + 1 + key.heap_bytes()
    }

    /// The TAT of `slot`, to change under the exclusive lock.
    pub(crate) fn tat_mut(&mut self, slot: Slot) -> &mut u64 {
        match slot {
            Slot::Cell(i) => match self.table.get_bucket_mut(i) {
                Some(cell) => cell.tat.get_mut(),
                // Unreachable: a slot is only used under the lock it was
                // found under. The overflow bucket is the safe answer.
                None => self.overflow_tat.get_mut(),
            },
            Slot::Overflow => self.overflow_tat.get_mut(),
            Slot::Long => self.long_tat.get_mut(),
        }
    }

    /// The TAT of `slot`, read under the exclusive lock.
    pub(crate) fn tat(&self, slot: Slot) -> u64 {
        self.tat_cell(slot).load(Ordering::Relaxed)
    }

    fn tat_cell(&self, slot: Slot) -> &AtomicU64 {
        match slot {
            Slot::Cell(i) => self
                .table
                .get_bucket(i)
                .map_or(&self.overflow_tat, |cell| &cell.tat),
            Slot::Overflow => &self.overflow_tat,
            Slot::Long => &self.long_tat,
        }
    }

    /// The TAT of `key` if it has a cell (or is too long for one), found
    /// under the shared lock.
    #[inline]
    fn find(&self, key: &K, hash: u64) -> Option<&AtomicU64> {
        if let Some(cell) = self.table.find(hash, |cell| cell.key == *key) {
            return Some(&cell.tat);
        }
        if key.heap_bytes() > self.max_key_bytes {
            return Some(&self.long_tat);
        }
        None
    }

    fn slot(&mut self, key: &K, hash: u64, now: u64) -> Slot {
        if let Some(i) = self.table.find_bucket_index(hash, |cell| cell.key == *key) {
            return Slot::Cell(i);
        }
        self.insert(key, hash, now)
    }

    fn insert(&mut self, key: &K, hash: u64, now: u64) -> Slot {
        if key.heap_bytes() > self.max_key_bytes {
            return Slot::Long;
        }
        self.sweep(now, SWEEP_STEP);
        let cost = Self::entry_bytes(key);
        // The overflow bucket full again carries no debt: forget who spent
        // from it.
        if *self.overflow_tat.get_mut() <= now {
            self.overflowed = [0; 4];
        }
        let (word, bit) = filter_bit(hash);
        if !self.has_room(cost) {
            self.sweep(now, SCAN_WHEN_FULL);
            if !self.has_room(cost) {
                self.overflowed[word] |= bit;
                return Slot::Overflow;
            }
        }
        // No new cell is fresher than the last one swept; a key that may
        // have spent from the overflow bucket carries its debt. A key never
        // sent there starts with a full bucket.
        let mut seed = self.swept_at;
        if self.overflowed[word] & bit != 0 {
            seed = seed.max(*self.overflow_tat.get_mut());
        }
        let cell = Cell {
            // A detached copy: a key borrowed from the request's buffers
            // must not keep them alive.
            key: key.to_stored(),
            hash,
            tat: AtomicU64::new(seed),
        };
        self.bytes += cost;
        let entry = self.table.insert_unique(hash, cell, |cell| cell.hash);
        Slot::Cell(entry.bucket_index())
    }

    fn has_room(&self, cost: usize) -> bool {
        self.table.len() < self.max_entries && self.bytes.saturating_add(cost) <= self.max_bytes
    }

    /// Moves the clock hand over `steps` buckets, freeing the idle keys.
    fn sweep(&mut self, now: u64, steps: usize) {
        let buckets = self.table.num_buckets();
        for _ in 0..steps.min(buckets) {
            if self.hand >= buckets {
                self.hand = 0;
            }
            if let Ok(mut entry) = self.table.get_bucket_entry(self.hand) {
                if *entry.get_mut().tat.get_mut() <= now {
                    let (cell, _) = entry.remove();
                    self.bytes -= Self::entry_bytes(&cell.key);
                    self.swept_at = self.swept_at.max(now);
                }
            }
            self.hand += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    fn stored(&self, key: &K, hash: u64) -> Option<&K> {
        self.table
            .find(hash, |cell| cell.key == *key)
            .map(|cell| &cell.key)
    }
}

/// The word and bit of the overflow filter for `hash` (bits the table and
/// the shard choice do not use).
fn filter_bit(hash: u64) -> (usize, u64) {
    let n = (hash >> 48) as usize & 255;
    (n >> 6, 1 << (n & 63))
}

/// One limit's keys.
pub(crate) struct Registry<K> {
    shards: Box<[RwLock<Shard<K>>]>,
    hasher: RandomState,
}

/// The bounds of a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) entries: usize,
    pub(crate) bytes: usize,
    pub(crate) key_bytes: usize,
}

impl<K: RateKey> Registry<K> {
    pub(crate) fn new(bounds: Bounds) -> Self {
        // A power of two, so that picking a shard is a mask, not a division.
        let count = 1 << bounds.entries.clamp(1, MAX_SHARDS).ilog2();
        let shards = (0..count)
            .map(|_| {
                RwLock::new(Shard {
                    table: HashTable::new(),
                    hand: 0,
                    bytes: 0,
                    overflow_tat: AtomicU64::new(0),
                    overflowed: [0; 4],
                    long_tat: AtomicU64::new(0),
                    swept_at: 0,
                    max_entries: (bounds.entries / count).max(1),
                    max_bytes: bounds.bytes / count,
                    max_key_bytes: bounds.key_bytes,
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
        }
    }

    /// A registry for the constant key: one shard, one cell.
    pub(crate) fn single() -> Self {
        Self::new(Bounds {
            entries: 1,
            bytes: usize::MAX,
            key_bytes: usize::MAX,
        })
    }

    #[inline]
    fn shard(&self, key: &K) -> (&RwLock<Shard<K>>, u64) {
        let hash = self.hasher.hash_one(key);
        // The high bits pick the shard; the table probes with the low bits.
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        (&self.shards[shard], hash)
    }

    /// Locks `key`'s shard exclusively and finds (or makes) its slot: for a
    /// decision over several limits, which holds every TAT still.
    pub(crate) fn lock(&self, key: &K, now: u64) -> (RwLockWriteGuard<'_, Shard<K>>, Slot) {
        let (shard, hash) = self.shard(key);
        let mut guard = write(shard);
        let slot = guard.slot(key, hash, now);
        (guard, slot)
    }

    /// Moves `key`'s TAT by `step` atomically: `step` gets the current TAT
    /// and says the new one (`None`: leave it) and what to return. A key
    /// with a cell (the common case) needs only the shard's shared lock; a
    /// new key takes it exclusively once, to get a cell.
    ///
    /// `step` may run more than once (when another decision moves the TAT
    /// between its read and the swap); only its last answer counts.
    #[inline]
    pub(crate) fn update<R>(
        &self,
        key: &K,
        now: u64,
        step: impl FnMut(u64) -> (Option<u64>, R),
    ) -> R {
        let (shard, hash) = self.shard(key);
        let mut step = step;
        {
            let guard = read(shard);
            if let Some(tat) = guard.find(key, hash) {
                return swap(tat, &mut step);
            }
        }
        let mut guard = write(shard);
        let slot = guard.slot(key, hash, now);
        swap(guard.tat_cell(slot), &mut step)
    }

    #[cfg(test)]
    /// Keys with a cell of their own (idle ones included until swept).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    #[cfg(test)]
    /// Bytes counted against the bound.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| read(s).bytes).sum()
    }
}

/// The compare-and-swap loop of [`Registry::update`].
#[inline]
fn swap<R>(tat: &AtomicU64, step: &mut impl FnMut(u64) -> (Option<u64>, R)) -> R {
    // The TAT is the only state a swap publishes (the cell itself is
    // published by the lock), so relaxed ordering suffices: each successful
    // swap is computed from the value the previous one left, in the
    // atomic's single modification order.
    let mut current = tat.load(Ordering::Relaxed);
    loop {
        let (new, answer) = step(current);
        let Some(new) = new else {
            return answer;
        };
        match tat.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return answer,
            Err(actual) => current = actual,
        }
    }
}

// A shard's state is valid between statements: a panic while it was locked
// (a panicking `Hash` or `Eq` impl) leaves nothing half-written, so a
// poisoned lock is used as it is.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(entries: usize) -> Bounds {
        Bounds {
            entries,
            bytes: usize::MAX,
            key_bytes: 64,
        }
    }

    #[test]
    fn idle_keys_are_reclaimed_by_later_insertions() {
        let reg = Registry::<u64>::new(bounds(1));
        for k in 0..1000u64 {
            let (mut g, slot) = reg.lock(&k, k * 10);
            assert!(matches!(slot, Slot::Cell(_)), "key {k} got {slot:?}");
            *g.tat_mut(slot) = k * 10 + 5;
        }
        // Each key was idle by the time the next one arrived.
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn full_of_limited_keys_sends_new_keys_to_overflow_without_evicting() {
        let reg = Registry::<u64>::new(bounds(1));
        for k in 0..1u64 {
            let (mut g, slot) = reg.lock(&k, 0);
            assert!(matches!(slot, Slot::Cell(_)));
            *g.tat_mut(slot) = 1_000;
        }
        let (mut g, slot) = reg.lock(&99, 10);
        assert_eq!(slot, Slot::Overflow);
        *g.tat_mut(slot) = 2_000;
        drop(g);
        // Every limited key kept its state.
        for k in 0..1u64 {
            let (g, slot) = reg.lock(&k, 10);
            assert_eq!(g.tat(slot), 1_000);
        }
        // Once the keys are idle, a new key takes a cell and inherits the
        // overflow bucket's debt.
        let (g, slot) = reg.lock(&99, 1_500);
        assert!(matches!(slot, Slot::Cell(_)));
        assert_eq!(g.tat(slot), 2_000);
    }

    #[test]
    fn only_keys_sent_to_overflow_inherit_its_debt() {
        let reg = Registry::<u64>::new(bounds(1));
        let (mut g, slot) = reg.lock(&0, 0);
        *g.tat_mut(slot) = 1_000;
        drop(g);
        // Full of a limited key: 99 spends from the overflow bucket.
        let (mut g, slot) = reg.lock(&99, 10);
        assert_eq!(slot, Slot::Overflow);
        *g.tat_mut(slot) = 2_000;
        drop(g);
        // A key never sent to overflow (and not sharing 99's filter bit)
        // gets the cell swept at 1,500 with a full bucket, not the
        // overflow bucket's debt.
        let bit99 = filter_bit(reg.hasher.hash_one(99u64));
        let fresh = (100u64..10_000)
            .find(|k| filter_bit(reg.hasher.hash_one(k)) != bit99)
            .unwrap();
        let (g, slot) = reg.lock(&fresh, 1_500);
        assert!(matches!(slot, Slot::Cell(_)));
        assert_eq!(g.tat(slot), 1_500);
        drop(g);
        // 99, which did spend from overflow, carries its debt into a cell.
        let (g, slot) = reg.lock(&99, 1_600);
        assert!(matches!(slot, Slot::Cell(_)));
        assert_eq!(g.tat(slot), 2_000);
    }

    #[test]
    fn stored_header_keys_do_not_share_the_request_buffer() {
        let reg = Registry::<Option<http::HeaderValue>>::new(bounds(16));
        // As hyper hands it over: the request owns the value's buffer.
        let req = http::Request::builder()
            .header("x-api-key", "k-123")
            .body(())
            .unwrap();
        let key = req.headers().get("x-api-key").cloned();
        let theirs = key.as_ref().unwrap().as_bytes().as_ptr();
        reg.update(&key, 0, |tat| (Some(tat + 1), ()));
        let (shard, hash) = reg.shard(&key);
        let guard = read(shard);
        let stored = guard.stored(&key, hash).unwrap().as_ref().unwrap();
        assert_eq!(stored.as_bytes(), b"k-123");
        assert_ne!(
            stored.as_bytes().as_ptr(),
            theirs,
            "the stored key shares the request's buffer"
        );
        // Lookups of the stored key find it without storing again.
        drop(guard);
        assert_eq!(reg.update(&key, 0, |tat| (None::<u64>, tat)), 1);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn long_keys_never_seed_new_cells() {
        let reg = Registry::<String>::new(Bounds {
            entries: 16,
            bytes: usize::MAX,
            key_bytes: 8,
        });
        // An attacker drains the long-key bucket far ahead.
        for i in 0..100 {
            let long = format!("{i:0>9}");
            reg.update(&long, 10, |tat| (Some(tat.max(10) + 1_000_000), ()));
        }
        // Every new short key still starts with a full bucket.
        for i in 0..16 {
            let tat = reg.update(&format!("k{i}"), 20, |tat| (None::<u64>, tat));
            assert!(tat <= 20, "new key k{i} starts with a debt: {tat}");
        }
    }

    #[test]
    fn a_new_cell_is_never_fresher_than_the_cell_swept_for_it() {
        let reg = Registry::<u64>::new(bounds(1));
        let (mut g, slot) = reg.lock(&0, 0);
        *g.tat_mut(slot) = 100;
        drop(g);
        // Key 1 arrives at 200: key 0 is idle (TAT 100) and swept.
        let (g, slot) = reg.lock(&1, 200);
        assert!(matches!(slot, Slot::Cell(_)));
        // A decision that read the clock before 200 must not find a bucket
        // fuller than key 0's was: the cell starts at the sweep's time.
        assert_eq!(g.tat(slot), 200);
    }

    #[test]
    fn update_swaps_under_the_shared_lock_and_inserts_once() {
        let reg = Registry::<String>::new(Bounds {
            entries: 16,
            bytes: usize::MAX,
            key_bytes: 8,
        });
        let k = "k".to_string();
        // New key: inserted, then moved.
        assert_eq!(reg.update(&k, 0, |tat| (Some(tat + 10), tat)), 0);
        assert_eq!(reg.update(&k, 0, |tat| (Some(tat + 10), tat)), 10);
        // `None` leaves the TAT.
        assert_eq!(reg.update(&k, 0, |tat| (None::<u64>, tat)), 20);
        assert_eq!(reg.update(&k, 0, |tat| (None::<u64>, tat)), 20);
        assert_eq!(reg.len(), 1);
        // Too long: the overflow bucket, found without a cell.
        let long = "x".repeat(9);
        assert_eq!(reg.update(&long, 0, |tat| (Some(tat + 5), tat)), 0);
        assert_eq!(reg.update(&long, 0, |tat| (Some(tat + 5), tat)), 5);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn long_keys_and_byte_bound_use_overflow() {
        let reg = Registry::<String>::new(Bounds {
            entries: 1000,
            bytes: 16 * 200,
            key_bytes: 8,
        });
        let (guard, slot) = reg.lock(&"x".repeat(9), 0);
        drop(guard);
        assert_eq!(slot, Slot::Long);
        let mut cells = 0;
        for k in 0..1000 {
            let (mut g, slot) = reg.lock(&format!("{k:08}"), 0);
            if let Slot::Cell(_) = slot {
                cells += 1;
                *g.tat_mut(slot) = 1;
            }
        }
        assert!(cells > 0 && cells < 1000, "{cells}");
        assert!(reg.bytes() <= 16 * 200, "{}", reg.bytes());
    }
}
