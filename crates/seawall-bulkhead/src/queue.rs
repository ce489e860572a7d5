//! The wait queue: one FIFO per priority class, threaded through a slab of
//! waiter slots as doubly linked lists.
//!
//! Only ever touched under the pool's mutex. A slot is freed only by the
//! waiter that owns it, so a key is never reused while its owner can still
//! look at it.
//!
//! Every operation is O(1): joining the back of a class, granting its front,
//! evicting its back, and above all a waiter leaving from anywhere in the
//! middle (a timeout or a dropped future). With the lists kept in `VecDeque`s
//! a waiter that gave up had to be searched for, which made cancelling a
//! queue of n waiters O(n²) under the pool's lock.

use std::task::Waker;

use crate::priority::Priority;

#[derive(Debug)]
pub(crate) enum Slot {
    Vacant,
    Waiting {
        waker: Option<Waker>,
        class: Priority,
    },
    /// A permit was handed over; `in_flight` is the count before it.
    Granted {
        in_flight: usize,
    },
    /// A more important request took this place in a full queue.
    Evicted,
}

/// No neighbour: the end of a list.
const NIL: usize = usize::MAX;

/// A slot and its neighbours in its class's list. An entry is linked exactly
/// while its slot is `Waiting`.
#[derive(Debug)]
struct Entry {
    slot: Slot,
    prev: usize,
    next: usize,
}

/// The oldest and newest waiter of one class.
#[derive(Debug, Clone, Copy)]
struct List {
    head: usize,
    tail: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    fn is_empty(self) -> bool {
        self.head == NIL
    }
}

#[derive(Debug)]
pub(crate) struct WaitQueue {
    entries: Vec<Entry>,
    free: Vec<usize>,
    classes: [List; 3],
    len: usize,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            classes: [List::EMPTY; 3],
            len: 0,
        }
    }
}

impl WaitQueue {
    /// Number of requests waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The most important class with someone waiting.
    pub(crate) fn highest(&self) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|p| !self.classes[p.index()].is_empty())
    }

    /// `true` if someone of `class` or a more important class is waiting:
    /// a newcomer of `class` must then queue behind them.
    pub(crate) fn has_waiting_at_or_above(&self, class: Priority) -> bool {
        self.classes[..=class.index()]
            .iter()
            .any(|list| !list.is_empty())
    }

    /// Adds a waiter of `class` at the back of its class; returns its key.
    pub(crate) fn push(&mut self, class: Priority) -> usize {
        let list = &mut self.classes[class.index()];
        let entry = Entry {
            slot: Slot::Waiting { waker: None, class },
            prev: list.tail,
            next: NIL,
        };
        let key = if let Some(key) = self.free.pop() {
            self.entries[key] = entry;
            key
        } else {
            self.entries.push(entry);
            self.entries.len() - 1
        };
        match list.tail {
            NIL => list.head = key,
            tail => self.entries[tail].next = key,
        }
        list.tail = key;
        self.len += 1;
        key
    }

    /// Takes `key` out of `class`'s list; it must be linked there.
    fn unlink(&mut self, key: usize, class: Priority) {
        let Entry { prev, next, .. } = self.entries[key];
        let list = &mut self.classes[class.index()];
        match prev {
            NIL => list.head = next,
            prev => self.entries[prev].next = next,
        }
        match next {
            NIL => list.tail = prev,
            next => self.entries[next].prev = prev,
        }
        let entry = &mut self.entries[key];
        entry.prev = NIL;
        entry.next = NIL;
        self.len -= 1;
    }

    /// Unlinks the waiter `key` of `class`, gives its slot the verdict
    /// `to`, and wakes it.
    fn settle(&mut self, key: usize, class: Priority, to: Slot) {
        self.unlink(key, class);
        if let Slot::Waiting {
            waker: Some(waker), ..
        } = std::mem::replace(&mut self.entries[key].slot, to)
        {
            waker.wake();
        }
    }

    /// Hands a permit to the oldest waiter of `class` and wakes it.
    pub(crate) fn grant_front(&mut self, class: Priority, in_flight: usize) {
        let key = self.classes[class.index()].head;
        if key != NIL {
            self.settle(key, class, Slot::Granted { in_flight });
        }
    }

    /// Evicts the newest waiter of the least important class below `class`,
    /// if any, to make room for a more important request.
    pub(crate) fn evict_below(&mut self, class: Priority) -> bool {
        for lower in Priority::ALL[class.index() + 1..].iter().rev() {
            let key = self.classes[lower.index()].tail;
            if key != NIL {
                self.settle(key, *lower, Slot::Evicted);
                return true;
            }
        }
        false
    }

    pub(crate) fn slot_mut(&mut self, key: usize) -> &mut Slot {
        &mut self.entries[key].slot
    }

    /// Removes a waiter that gave up (timed out or dropped) from its class
    /// and frees its slot. Returns what the slot held.
    pub(crate) fn remove(&mut self, key: usize) -> Slot {
        let slot = std::mem::replace(&mut self.entries[key].slot, Slot::Vacant);
        match &slot {
            Slot::Waiting { class, .. } => self.unlink(key, *class),
            // Already free: freeing it twice would hand one key to two
            // waiters.
            Slot::Vacant => return slot,
            Slot::Granted { .. } | Slot::Evicted => {}
        }
        self.free.push(key);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    impl WaitQueue {
        /// The keys of `class`, oldest first, checked against the backward
        /// links.
        fn order(&self, class: Priority) -> Vec<usize> {
            let list = self.classes[class.index()];
            let mut forward = Vec::new();
            let mut key = list.head;
            while key != NIL {
                forward.push(key);
                key = self.entries[key].next;
            }
            let mut backward = Vec::new();
            let mut key = list.tail;
            while key != NIL {
                backward.push(key);
                key = self.entries[key].prev;
            }
            backward.reverse();
            assert_eq!(forward, backward, "links of {class} disagree");
            forward
        }
    }

    #[test]
    fn serves_highest_class_first_fifo_within_class() {
        let mut q = WaitQueue::default();
        let s1 = q.push(Priority::Sheddable);
        let n1 = q.push(Priority::Normal);
        let c1 = q.push(Priority::Critical);
        let n2 = q.push(Priority::Normal);
        assert_eq!(q.len(), 4);
        assert!(q.has_waiting_at_or_above(Priority::Critical));
        let mut order = Vec::new();
        while let Some(class) = q.highest() {
            let key = q.classes[class.index()].head;
            q.grant_front(class, 0);
            order.push(key);
        }
        assert_eq!(order, vec![c1, n1, n2, s1]);
        assert_eq!(q.len(), 0);
        for k in order {
            assert!(matches!(q.remove(k), Slot::Granted { .. }));
        }
        assert!(matches!(q.remove(s1), Slot::Vacant), "a second removal");
        assert_eq!(q.free.len(), 4, "freed once each");
        // Freed slots are reused.
        let again = q.push(Priority::Normal);
        assert!(again <= 3);
    }

    #[test]
    fn evicts_newest_of_lowest_class_only_for_more_important_work() {
        let mut q = WaitQueue::default();
        let _n = q.push(Priority::Normal);
        let s1 = q.push(Priority::Sheddable);
        let s2 = q.push(Priority::Sheddable);
        assert!(!q.evict_below(Priority::Sheddable));
        assert!(q.evict_below(Priority::Normal));
        assert!(matches!(q.slot_mut(s2), Slot::Evicted));
        assert!(matches!(q.slot_mut(s1), Slot::Waiting { .. }));
        assert!(q.evict_below(Priority::Critical));
        assert!(matches!(q.slot_mut(s1), Slot::Evicted));
        assert!(q.evict_below(Priority::Critical), "then normal work");
        assert!(!q.evict_below(Priority::Critical));
        assert_eq!(q.len(), 0);
        assert!(!q.has_waiting_at_or_above(Priority::Sheddable));
    }

    #[test]
    fn a_waiter_leaves_from_the_middle_and_the_rest_keep_their_order() {
        let mut q = WaitQueue::default();
        let keys: Vec<usize> = (0..5).map(|_| q.push(Priority::Normal)).collect();
        assert!(matches!(q.remove(keys[2]), Slot::Waiting { .. }));
        assert!(matches!(q.remove(keys[0]), Slot::Waiting { .. }));
        assert!(matches!(q.remove(keys[4]), Slot::Waiting { .. }));
        assert_eq!(q.order(Priority::Normal), vec![keys[1], keys[3]]);
        assert_eq!(q.len(), 2);
        let late = q.push(Priority::Normal);
        assert_eq!(q.order(Priority::Normal), vec![keys[1], keys[3], late]);
        q.grant_front(Priority::Normal, 0);
        assert!(matches!(q.slot_mut(keys[1]), Slot::Granted { .. }));
        assert_eq!(q.order(Priority::Normal), vec![keys[3], late]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(Priority),
        GrantFront(Priority),
        EvictBelow(Priority),
        /// Removes the n-th key handed out and not yet removed.
        Remove(usize),
    }

    fn class() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::Critical),
            Just(Priority::Normal),
            Just(Priority::Sheddable)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => class().prop_map(Op::Push),
            1 => class().prop_map(Op::GrantFront),
            1 => class().prop_map(Op::EvictBelow),
            3 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The linked lists behave exactly like one `VecDeque` per class:
        /// same order, same verdicts, same length, whatever the sequence of
        /// arrivals, grants, evictions and departures from anywhere.
        #[test]
        fn behaves_like_one_fifo_per_class(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = WaitQueue::default();
            let mut model: [VecDeque<usize>; 3] = Default::default();
            // Keys handed out and not yet removed, with the verdict the
            // model expects for them once they stop waiting.
            let mut live: Vec<(usize, Option<&'static str>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(class) => {
                        let key = q.push(class);
                        prop_assert!(live.iter().all(|(k, _)| *k != key), "a live key reused");
                        model[class.index()].push_back(key);
                        live.push((key, None));
                    }
                    Op::GrantFront(class) => {
                        q.grant_front(class, 7);
                        if let Some(key) = model[class.index()].pop_front() {
                            prop_assert!(matches!(q.slot_mut(key), Slot::Granted { in_flight: 7 }), "not granted");
                            live.iter_mut().find(|(k, _)| *k == key).unwrap().1 = Some("granted");
                        }
                    }
                    Op::EvictBelow(class) => {
                        let victim = Priority::ALL[class.index() + 1..]
                            .iter()
                            .rev()
                            .find_map(|lower| model[lower.index()].pop_back());
                        prop_assert_eq!(q.evict_below(class), victim.is_some());
                        if let Some(key) = victim {
                            prop_assert!(matches!(q.slot_mut(key), Slot::Evicted), "not evicted");
                            live.iter_mut().find(|(k, _)| *k == key).unwrap().1 = Some("evicted");
                        }
                    }
                    Op::Remove(n) => {
                        if live.is_empty() {
                            continue;
                        }
                        let (key, verdict) = live.remove(n % live.len());
                        let slot = q.remove(key);
                        match verdict {
                            None => {
                                prop_assert!(matches!(slot, Slot::Waiting { .. }), "not waiting");
                                for list in &mut model {
                                    list.retain(|k| *k != key);
                                }
                            }
                            Some("granted") => prop_assert!(matches!(slot, Slot::Granted { .. }), "not granted"),
                            Some(_) => prop_assert!(matches!(slot, Slot::Evicted), "not evicted"),
                        }
                    }
                }
                for class in Priority::ALL {
                    prop_assert_eq!(q.order(class), Vec::from(model[class.index()].clone()));
                }
                prop_assert_eq!(q.len(), model.iter().map(VecDeque::len).sum::<usize>());
                prop_assert_eq!(
                    q.highest(),
                    Priority::ALL.into_iter().find(|p| !model[p.index()].is_empty())
                );
            }
        }
    }
}
