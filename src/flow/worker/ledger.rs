//! The ledger of one partition: what the shared state in Redis must learn, and when.
//!
//! * A batch moves its key's flushed watermark only once it **and every earlier batch of the key**
//!   are acknowledged: a replay may skip only what was delivered, so acknowledgements that come
//!   back out of order wait for the ones before them.
//! * The open windows that changed since the last write are published as `pending:{key}`
//!   summaries.
//! * Both go to Redis together, at most every [`SYNC_EVERY`] (or at once past [`SYNC_BATCH`]
//!   keys), in one round trip. If Redis is down they wait, and go once it is back.
//!
//! Without Redis the ledger stays empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::io::store::{Flushed, PendingSummary};
use crate::model::window::WindowEngine;

/// Changed windows and acknowledged batches are written to Redis at least this often.
pub const SYNC_EVERY: Duration = Duration::from_millis(50);

/// ... and at once when this many keys are waiting.
pub const SYNC_BATCH: usize = 256;

/// A batch emitted and not yet recorded.
#[derive(Debug, Clone)]
struct Unrecorded {
    last_offset: i64,
    last_ts: i64,
    batch_id: Arc<str>,
    acknowledged: bool,
}

/// What one partition owes Redis.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Per key, batches emitted and not yet recorded: first offset → facts.
    unrecorded: HashMap<Arc<str>, BTreeMap<i64, Unrecorded>>,
    /// The latest recordable batch per key.
    to_record: HashMap<Arc<str>, Flushed>,
    /// Keys whose open window changed since its summary was last written.
    dirty: HashSet<Arc<str>>,
    /// When the next write is due.
    due: Option<Instant>,
}

/// One write to Redis: window summaries and acknowledged batches.
#[derive(Debug, Default)]
pub struct SyncBatch {
    /// Summaries of open windows that changed.
    pub windows: Vec<PendingSummary>,
    /// The latest acknowledged batch per key.
    pub batches: Vec<Flushed>,
}

impl SyncBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.batches.is_empty()
    }
}

impl Ledger {
    /// Notes a batch emitted (sent, not yet acknowledged).
    pub fn emitted(
        &mut self,
        key: &Arc<str>,
        batch_id: Arc<str>,
        first_offset: i64,
        last_offset: i64,
        last_ts: i64,
    ) {
        self.unrecorded.entry(key.clone()).or_default().insert(
            first_offset,
            Unrecorded {
                last_offset,
                last_ts,
                batch_id,
                acknowledged: false,
            },
        );
    }

    /// Notes that the open window of `key` changed.
    pub fn touched(&mut self, key: &str) {
        if !self.dirty.contains(key) {
            self.dirty.insert(Arc::from(key));
        }
        self.schedule();
    }

    /// Notes the batch of `key` starting at `first_offset` acknowledged; once it and every
    /// earlier batch of the key are, the key's flushed watermark may move to the latest of them.
    pub fn acknowledged(&mut self, key: &Arc<str>, first_offset: i64) {
        let Some(batches) = self.unrecorded.get_mut(key) else {
            return;
        };
        if let Some(b) = batches.get_mut(&first_offset) {
            b.acknowledged = true;
        }
        let mut latest = None;
        while let Some(entry) = batches.first_entry() {
            if !entry.get().acknowledged {
                break;
            }
            latest = Some(entry.remove_entry());
        }
        if batches.is_empty() {
            self.unrecorded.remove(key);
        }
        if let Some((first_offset, b)) = latest {
            self.to_record.insert(
                key.clone(),
                Flushed {
                    key: key.to_string(),
                    first_offset,
                    last_offset: b.last_offset,
                    last_ts: b.last_ts,
                    batch_id: b.batch_id.to_string(),
                },
            );
            self.schedule();
        }
    }

    fn schedule(&mut self) {
        if self.due.is_none() {
            self.due = Some(Instant::now() + SYNC_EVERY);
        }
    }

    /// When the next write is due, if anything waits.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether enough waits to write without waiting for [`SYNC_EVERY`].
    pub fn full(&self) -> bool {
        self.to_record.len() + self.dirty.len() >= SYNC_BATCH
    }

    /// What to write now; summaries are read from `engine` (a window flushed meanwhile has none:
    /// its batch's record deletes the summary). Hand it back with [`Ledger::retry`] if the write
    /// fails.
    pub fn take(&mut self, engine: &WindowEngine) -> SyncBatch {
        self.due = None;
        let windows = self
            .dirty
            .drain()
            .filter_map(|key| {
                engine.summary(&key).map(|w| PendingSummary {
                    key: key.to_string(),
                    first_ts: w.first_ts,
                    last_ts: w.last_ts,
                    count: w.count,
                    flush_at: w.flush_at,
                    first_offset: w.first_offset,
                })
            })
            .collect();
        let batches = self.to_record.drain().map(|(_, b)| b).collect();
        SyncBatch { windows, batches }
    }

    /// Takes back a write that failed (Redis down): it goes with the next one, and a newer
    /// record of the same key wins.
    pub fn retry(&mut self, failed: SyncBatch) {
        for w in failed.windows {
            self.dirty.insert(Arc::from(w.key.as_str()));
        }
        for b in failed.batches {
            let key: Arc<str> = Arc::from(b.key.as_str());
            self.to_record.entry(key).or_insert(b);
        }
        self.schedule();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::window::WindowConfig;

    fn engine() -> WindowEngine {
        WindowEngine::new(WindowConfig {
            batching: true,
            quiet_ms: 100,
            max_wait_ms: 1_000,
            max_fragments: 10,
            max_batch_bytes: 1_000,
            grace_ms: 0,
            typing_ms: 0,
            followup_ms: 0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_recorded_only_after_every_earlier_batch_of_its_key() {
        let mut l = Ledger::default();
        let k: Arc<str> = Arc::from("u");
        l.emitted(&k, "t/0/1".into(), 1, 3, 10);
        l.emitted(&k, "t/0/4".into(), 4, 6, 20);
        l.acknowledged(&k, 4);
        assert!(
            l.take(&engine()).batches.is_empty(),
            "batch 4 waits for batch 1"
        );
        l.acknowledged(&k, 1);
        let taken = l.take(&engine());
        assert_eq!(taken.batches.len(), 1);
        assert_eq!(
            (taken.batches[0].first_offset, taken.batches[0].last_offset),
            (4, 6)
        );
        assert!(l.due().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_goes_again_with_the_next_one() {
        let mut l = Ledger::default();
        let k: Arc<str> = Arc::from("u");
        l.emitted(&k, "t/0/1".into(), 1, 1, 10);
        l.acknowledged(&k, 1);
        let failed = l.take(&engine());
        l.emitted(&k, "t/0/2".into(), 2, 2, 11);
        l.acknowledged(&k, 2);
        l.retry(failed);
        let again = l.take(&engine());
        assert_eq!(again.batches.len(), 1);
        assert_eq!(again.batches[0].last_offset, 2, "the newer record wins");
    }
}
