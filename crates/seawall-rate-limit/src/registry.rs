//! The bounded registry of one limit's keys.
//!
//! Keys live in shards, each a slab of cells (the key, its hash and its
//! theoretical arrival time, TAT) indexed by a `hashbrown::HashTable` of
//! cell numbers, under a short mutex. The key is hashed once: the hash picks
//! the shard and probes its table, and each key is stored once, in its cell.
//! A shard owns an equal share of the registry's capacity in entries and in
//! bytes.
//!
//! A key whose TAT has passed has a full bucket, which is exactly the state
//! of a key never seen: removing it loses nothing. So "idle" needs no timer:
//! each insertion moves a clock hand over the next two cells and frees the
//! idle ones it finds, which returns the memory of idle keys at the rate new
//! keys arrive (O(1) per insertion). When a shard is full, the insertion
//! scans at most [`SCAN_WHEN_FULL`] more cells for an idle one.
//!
//! A shard full of keys that are all still limited (none idle within the
//! scan) never evicts one: that would hand its key a fresh burst and
//! silently weaken the limit. The new key is counted against the shard's
//! **overflow bucket** instead, one bucket with the limit's quota shared by
//! every key that found no room. A key that later gets a cell of its own
//! starts from the overflow bucket's TAT, so moving out of overflow never
//! grants a second burst. The same overflow bucket counts keys longer than
//! `max_key_bytes`. Under a flood of new keys the registry therefore stays
//! within its bounds, each lookup stays O(1), and no key ever gets more than
//! its quota; keys in overflow get less (they share one bucket), which is
//! the documented price of the bound.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::mem;

use hashbrown::HashTable;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::key::RateKey;

/// Cells examined by an insertion into a full shard.
pub(crate) const SCAN_WHEN_FULL: usize = 8;
/// Cells examined by every insertion, full or not.
const SWEEP_STEP: usize = 2;
/// Shards of a registry with room for many keys (a power of two).
const MAX_SHARDS: usize = 16;

/// Where a key's TAT lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Cell(u32),
    Overflow,
}

struct Cell<K> {
    key: Option<K>,
    hash: u64,
    tat: u64,
}

pub(crate) struct Shard<K> {
    index: HashTable<u32>,
    cells: Vec<Cell<K>>,
    free: Vec<u32>,
    hand: usize,
    bytes: usize,
    overflow_tat: u64,
    max_entries: usize,
    max_bytes: usize,
    max_key_bytes: usize,
}

impl<K: RateKey> Shard<K> {
    /// The bytes one key costs: its cell, its table slot, the table's
    /// control byte and its heap bytes.
    fn entry_bytes(key: &K) -> usize {
        mem::size_of::<Cell<K>>() + mem::size_of::<u32>() + 1 + key.heap_bytes()
    }

    pub(crate) fn tat_mut(&mut self, slot: Slot) -> &mut u64 {
        match slot {
            Slot::Cell(i) => &mut self.cells[i as usize].tat,
            Slot::Overflow => &mut self.overflow_tat,
        }
    }

    pub(crate) fn tat(&self, slot: Slot) -> u64 {
        match slot {
            Slot::Cell(i) => self.cells[i as usize].tat,
            Slot::Overflow => self.overflow_tat,
        }
    }

    fn slot(&mut self, key: &K, hash: u64, now: u64) -> Slot {
        let cells = &self.cells;
        if let Some(&i) = self
            .index
            .find(hash, |&i| cells[i as usize].key.as_ref() == Some(key))
        {
            return Slot::Cell(i);
        }
        self.insert(key, hash, now)
    }

    fn insert(&mut self, key: &K, hash: u64, now: u64) -> Slot {
        if key.heap_bytes() > self.max_key_bytes {
            return Slot::Overflow;
        }
        self.sweep(now, SWEEP_STEP);
        let cost = Self::entry_bytes(key);
        if !self.has_room(cost) {
            self.sweep(now, SCAN_WHEN_FULL);
            if !self.has_room(cost) {
                return Slot::Overflow;
            }
        }
        let cell = Cell {
            key: Some(key.clone()),
            hash,
            // A key leaving overflow carries the overflow bucket's debt.
            tat: self.overflow_tat,
        };
        let i = if let Some(i) = self.free.pop() {
            self.cells[i as usize] = cell;
            i
        } else {
            self.cells.push(cell);
            (self.cells.len() - 1) as u32
        };
        let cells = &self.cells;
        self.index
            .insert_unique(hash, i, |&j| cells[j as usize].hash);
        self.bytes += cost;
        Slot::Cell(i)
    }

    fn has_room(&self, cost: usize) -> bool {
        let entries_ok = !self.free.is_empty() || self.cells.len() < self.max_entries;
        entries_ok && self.bytes.saturating_add(cost) <= self.max_bytes
    }

    /// Moves the clock hand over `steps` cells, freeing the idle ones.
    fn sweep(&mut self, now: u64, steps: usize) {
        for _ in 0..steps.min(self.cells.len()) {
            if self.hand >= self.cells.len() {
                self.hand = 0;
            }
            let cell = &mut self.cells[self.hand];
            if cell.tat <= now {
                if let Some(key) = cell.key.take() {
                    let hand = self.hand as u32;
                    if let Ok(entry) = self.index.find_entry(cell.hash, |&j| j == hand) {
                        entry.remove();
                    }
                    self.bytes -= Self::entry_bytes(&key);
                    self.free.push(hand);
                }
            }
            self.hand += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

/// One limit's keys.
pub(crate) struct Registry<K> {
    shards: Box<[Mutex<Shard<K>>]>,
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
                Mutex::new(Shard {
                    index: HashTable::new(),
                    cells: Vec::new(),
                    free: Vec::new(),
                    hand: 0,
                    bytes: 0,
                    overflow_tat: 0,
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

    /// Locks `key`'s shard and finds (or makes) its slot.
    pub(crate) fn lock(&self, key: &K, now: u64) -> (MutexGuard<'_, Shard<K>>, Slot) {
        let hash = self.hasher.hash_one(key);
        // The high bits pick the shard; the table probes with the low bits.
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        let mut guard = lock(&self.shards[shard]);
        let slot = guard.slot(key, hash, now);
        (guard, slot)
    }

    #[cfg(test)]
    /// Keys with a cell of their own (idle ones included until swept).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    #[cfg(test)]
    /// Bytes counted against the bound.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A shard's state is valid between statements: a panic while it was
    // locked (a panicking `Hash` impl) leaves nothing half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn long_keys_and_byte_bound_use_overflow() {
        let reg = Registry::<String>::new(Bounds {
            entries: 1000,
            bytes: 16 * 200,
            key_bytes: 8,
        });
        let (guard, slot) = reg.lock(&"x".repeat(9), 0);
        drop(guard);
        assert_eq!(slot, Slot::Overflow);
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
