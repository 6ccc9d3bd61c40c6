//! The offset tracker of one partition: which offset is safe to commit.
//!
//! Every fragment read is in one of three places: an open window (the window engine knows those),
//! an output record not yet acknowledged (a batch or a dead-letter message: this tracker knows
//! those, by the lowest offset each covers), or done. The commit point, the *low watermark*, is
//! the lowest offset in the first two places, or the next offset to read when both are empty.
//!
//! Offsets here follow Kafka's commit convention: the committed value is the next offset to read,
//! and it is passed to `commit` as given (lull never uses `store_offset`, which adds one).
//!
//! Invariant: the watermark never passes an offset that is held in a window or unacknowledged,
//! and it never moves backwards once reported (a property test below checks both).

use std::collections::BTreeMap;

/// Tracks read and unacknowledged offsets of one partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// One past the highest offset read.
    next: Option<i64>,
    /// Lowest offset of every output record not yet acknowledged, with how many records start
    /// there (a batch and its lifecycle events share their first offset).
    unacked: BTreeMap<i64, u32>,
    /// Highest watermark reported so far.
    reported: Option<i64>,
}

impl OffsetTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was read (whatever becomes of it).
    pub fn read(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Records an output record covering offsets from `first_offset` up, not yet acknowledged.
    pub fn hold(&mut self, first_offset: i64) {
        *self.unacked.entry(first_offset).or_default() += 1;
    }

    /// Records that the output record starting at `first_offset` was acknowledged.
    pub fn release(&mut self, first_offset: i64) {
        if let Some(n) = self.unacked.get_mut(&first_offset) {
            *n -= 1;
            if *n == 0 {
                self.unacked.remove(&first_offset);
            }
        }
    }

    /// One past the highest offset read; `None` until something was read.
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    /// Number of unacknowledged output records.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The offset that may be committed, given the lowest offset still in an open window.
    /// `None` until something was read.
    pub fn watermark(&mut self, open_low: Option<i64>) -> Option<i64> {
        let next = self.next?;
        let mut mark = next;
        if let Some((&low, _)) = self.unacked.first_key_value() {
            mark = mark.min(low);
        }
        if let Some(low) = open_low {
            mark = mark.min(low);
        }
        // The inputs above only ever rise, so this never lowers a reported mark; the max keeps
        // that true even if a caller hands in an older open_low.
        let mark = self.reported.map_or(mark, |r| r.max(mark));
        self.reported = Some(mark);
        Some(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn watermark_is_the_lowest_pending_offset() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.watermark(None), None);
        t.read(10);
        t.read(11);
        t.hold(10);
        assert_eq!(t.watermark(Some(11)), Some(10));
        t.release(10);
        assert_eq!(t.watermark(Some(11)), Some(11));
        assert_eq!(t.watermark(None), Some(12));
    }

    proptest! {
        /// Drives the window engine and the tracker together with random acknowledgement order,
        /// and checks the committed offset never passes a fragment that is not yet delivered.
        #[test]
        fn commit_never_passes_an_undelivered_fragment(
            log in prop::collection::vec((0u8..4, 0i64..300), 1..150),
            acks in prop::collection::vec(any::<prop::sample::Index>(), 0..150),
        ) {
            use crate::model::fragment::{Fields, Fragment};
            use crate::model::window::{WindowConfig, WindowEngine};
            let cfg = WindowConfig {
                batching: true, quiet_ms: 100, max_wait_ms: 500,
                max_fragments: 4, max_batch_bytes: 1_000, grace_ms: 10, typing_ms: 0, followup_ms: 0,
            };
            let mut engine = WindowEngine::new(cfg);
            let mut tracker = OffsetTracker::new();
            let mut in_flight: Vec<Vec<i64>> = Vec::new();
            let mut delivered: BTreeSet<i64> = BTreeSet::new();
            let mut out = Vec::new();
            let mut ts = 0;
            let mut last_mark = None;
            for (i, &(k, gap)) in log.iter().enumerate() {
                ts += gap;
                let offset = i as i64;
                tracker.read(offset);
                engine.push(
                    Fragment::new(format!("k{k}"), offset, ts, b"{}", Fields::default()),
                    i64::MAX / 4,
                    &mut out,
                );
                for b in out.drain(..) {
                    tracker.hold(b.first_offset());
                    in_flight.push(b.fragments.iter().map(|f| f.offset).collect());
                }
                if let Some(ix) = acks.get(i) {
                    if !in_flight.is_empty() {
                        let batch = in_flight.swap_remove(ix.index(in_flight.len()));
                        tracker.release(batch[0]);
                        delivered.extend(batch);
                    }
                }
                let mark = tracker.watermark(engine.low_watermark());
                if let Some(m) = mark {
                    prop_assert!((0..m).all(|o| delivered.contains(&o)),
                        "watermark {} passes an undelivered fragment", m);
                    prop_assert!(last_mark.is_none_or(|l| l <= m), "watermark moved back");
                }
                last_mark = mark;
            }
        }
    }
}
