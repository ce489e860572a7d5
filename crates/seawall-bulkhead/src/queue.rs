//! The wait queue: one FIFO per priority class over a slab of waiter slots.
//!
//! Only ever touched under the pool's mutex. A slot is freed only by the
//! waiter that owns it, so a key is never reused while its owner can still
//! look at it.

use std::collections::VecDeque;
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

#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    slots: Vec<Slot>,
    free: Vec<usize>,
    classes: [VecDeque<usize>; 3],
    len: usize,
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
        self.classes[..=class.index()].iter().any(|q| !q.is_empty())
    }

    pub(crate) fn push(&mut self, class: Priority) -> usize {
        let slot = Slot::Waiting { waker: None, class };
        let key = if let Some(key) = self.free.pop() {
            self.slots[key] = slot;
            key
        } else {
            self.slots.push(slot);
            self.slots.len() - 1
        };
        self.classes[class.index()].push_back(key);
        self.len += 1;
        key
    }

    /// Hands a permit to the oldest waiter of `class` and wakes it.
    pub(crate) fn grant_front(&mut self, class: Priority, in_flight: usize) {
        if let Some(key) = self.classes[class.index()].pop_front() {
            self.len -= 1;
            if let Slot::Waiting {
                waker: Some(waker), ..
            } = std::mem::replace(&mut self.slots[key], Slot::Granted { in_flight })
            {
                waker.wake();
            }
        }
    }

    /// Evicts the newest waiter of the least important class below `class`,
    /// if any, to make room for a more important request.
    pub(crate) fn evict_below(&mut self, class: Priority) -> bool {
        for lower in Priority::ALL[class.index() + 1..].iter().rev() {
            if let Some(key) = self.classes[lower.index()].pop_back() {
                self.len -= 1;
                if let Slot::Waiting {
                    waker: Some(waker), ..
                } = std::mem::replace(&mut self.slots[key], Slot::Evicted)
                {
                    waker.wake();
                }
                return true;
            }
        }
        false
    }

    pub(crate) fn slot_mut(&mut self, key: usize) -> &mut Slot {
        &mut self.slots[key]
    }

    /// Removes a waiter that gave up (timed out or dropped) from its class
    /// and frees its slot. Returns what the slot held.
    pub(crate) fn remove(&mut self, key: usize) -> Slot {
        let slot = std::mem::replace(&mut self.slots[key], Slot::Vacant);
        if let Slot::Waiting { class, .. } = &slot {
            let q = &mut self.classes[class.index()];
            // Waiters mostly give up in arrival order, so search from the front.
            if let Some(pos) = q.iter().position(|&k| k == key) {
                q.remove(pos);
                self.len -= 1;
            }
        }
        self.free.push(key);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let key = *q.classes[class.index()].front().unwrap();
            q.grant_front(class, 0);
            order.push(key);
        }
        assert_eq!(order, vec![c1, n1, n2, s1]);
        assert_eq!(q.len(), 0);
        for k in order {
            assert!(matches!(q.remove(k), Slot::Granted { .. }));
        }
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
}
