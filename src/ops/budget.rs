//! The process-wide memory budget (`LULL_MAX_OPEN_BYTES`): bytes held in open windows and
//! unacknowledged output, summed over every partition worker.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// What an open window is counted as against the budget: the most its batch can take once
/// encoded, so a flush never makes the held bytes jump. A batch carries every fragment's value and,
/// when they have one, the joined `text` (a part of each value: at most the value's size again),
/// plus an envelope (ids, key, source, timestamps, headers) of a few hundred bytes. Counting windows at
/// their raw size let a flush under a full budget grow the held bytes by up to ~90 % of the
/// windows flushed (seen as a 57 % overshoot of a 1 MiB budget on a loaded machine).
pub fn held_by_windows(fragment_bytes: usize, windows: usize) -> usize {
    /// An encoded batch's envelope, beyond its fragments and text.
    const ENVELOPE: usize = 512;
    2 * fragment_bytes + ENVELOPE * windows
}

/// The global memory budget: input bytes waiting for their partition worker, fragment bytes held
/// in open windows, and output bytes not yet acknowledged, across every partition of the process
/// (`LULL_MAX_OPEN_BYTES`). librdkafka's own prefetch comes on top, bounded per partition by
/// `queued.max.messages.kbytes`.
#[derive(Debug)]
pub struct Budget {
    limit: i64,
    used: AtomicI64,
    /// Set while the consumer has paused fetching for the budget. Workers then let partition
    /// time follow the wall clock: with fetching paused no input can move it, and windows must
    /// still close, or memory held between the resume threshold and the limit would never free.
    paused: AtomicBool,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            used: AtomicI64::new(0),
            paused: AtomicBool::new(false),
        }
    }

    /// Adds `delta` bytes (negative to give back); `lull_held_bytes` follows.
    pub fn add(&self, delta: i64) {
        let now = self.used.fetch_add(delta, Ordering::AcqRel) + delta;
        crate::ops::metrics::metrics().held_bytes.set(now);
    }

    /// Bytes held now.
    pub fn used(&self) -> i64 {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Whether the budget is used up.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Records whether fetching is paused for the budget.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Whether windows must close by the wall clock to free memory: fetching is paused for the
    /// budget (from the limit until usage is back under 90 % of it), or the limit is reached.
    pub fn starved(&self) -> bool {
        self.paused.load(Ordering::Acquire) || self.exhausted()
    }
}
