//! The window engine's timer queue: a min-queue of deadline entries that costs O(1) for the
//! common case and O(log n) otherwise.
//!
//! A partition's windows mostly open in time order, so their first deadlines arrive already
//! sorted. Those go to the back of a plain queue; only an entry that would break its order (a
//! rescheduled window, a fragment from a slow producer clock) goes to a binary heap. The smallest
//! entry is the smaller of the two fronts, so entries come out in exactly the order one binary
//! heap would give — the engine's output does not depend on which side held an entry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A min-queue; see the module documentation.
#[derive(Debug)]
pub struct Deadlines<T: Ord> {
    /// Entries pushed in non-decreasing order, oldest first.
    sorted: VecDeque<T>,
    /// Everything else.
    heap: BinaryHeap<Reverse<T>>,
}

impl<T: Ord> Default for Deadlines<T> {
    fn default() -> Self {
        Self {
            sorted: VecDeque::new(),
            heap: BinaryHeap::new(),
        }
    }
}

impl<T: Ord> Deadlines<T> {
    /// Adds an entry.
    pub fn push(&mut self, entry: T) {
        match self.sorted.back() {
            Some(last) if entry < *last => self.heap.push(Reverse(entry)),
            _ => self.sorted.push_back(entry),
        }
    }

    /// Whether the smallest entry is at the front of the sorted queue (else the heap's top).
    fn front_is_sorted(&self) -> Option<bool> {
        match (self.sorted.front(), self.heap.peek()) {
            (Some(a), Some(Reverse(b))) => Some(a <= b),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    /// The smallest entry.
    pub fn peek(&self) -> Option<&T> {
        if self.front_is_sorted()? {
            self.sorted.front()
        } else {
            self.heap.peek().map(|Reverse(e)| e)
        }
    }

    /// Removes and returns the smallest entry.
    pub fn pop(&mut self) -> Option<T> {
        if self.front_is_sorted()? {
            self.sorted.pop_front()
        } else {
            self.heap.pop().map(|Reverse(e)| e)
        }
    }

    /// Number of entries (stale ones included: the engine drops those lazily).
    pub fn len(&self) -> usize {
        self.sorted.len() + self.heap.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_entries_never_touch_the_heap() {
        let mut d = Deadlines::default();
        for due in [5, 5, 7, 9] {
            d.push(due);
        }
        assert!(d.heap.is_empty());
        d.push(6);
        assert_eq!(d.heap.len(), 1);
        let out: Vec<i32> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(out, vec![5, 5, 6, 7, 9]);
        assert!(d.is_empty());
    }

    proptest! {
        /// Any mix of pushes and pops gives what one binary heap gives.
        #[test]
        fn same_order_as_a_binary_heap(ops in prop::collection::vec((any::<bool>(), 0i64..50), 0..400)) {
            let mut d = Deadlines::default();
            let mut reference = BinaryHeap::new();
            for (push, v) in ops {
                if push {
                    d.push(v);
                    reference.push(Reverse(v));
                } else {
                    prop_assert_eq!(d.peek().copied(), reference.peek().map(|r| r.0));
                    prop_assert_eq!(d.pop(), reference.pop().map(|r| r.0));
                }
                prop_assert_eq!(d.len(), reference.len());
            }
        }
    }
}
