//! The ledger of one partition: what the shared state in Redis must learn, and when.
//!
//! * A batch moves its key's flushed watermark only once it **and every earlier batch of the key**
//!   are acknowledged: a replay may skip only what was delivered, so acknowledgements that come
//!   back out of order wait for the ones before them.
//! * The open windows that changed since the last write are published as `pending:{key}`
//!   summaries, once per write however many fragments changed them; a window that opened and went
//!   out between two writes is never published. A summary is deleted once its window's batch is
//!   delivered and the key has no open window — only if this owner published it, or the batch
//!   holds input an earlier owner may have published a summary of.
//! * In exactly_once the state topic records delivered batches (in their transactions); Redis
//!   gets the flushed records only in at_least_once.
//! * Summaries go to Redis at most every [`SYNC_EVERY`] (or at once past [`SYNC_BATCH`] keys);
//!   in at_least_once an acknowledged batch is recorded within [`RECORD_EVERY`], since until then
//!   a crash repeats it: the records (and the deletions they allow) are written then, with the
//!   summaries only when those are due too. One round trip per write. If Redis is down they
//!   wait, and go once it is back.
//!
//! Without Redis the ledger stays empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::io::store::{Flushed, PendingSummary};
use crate::model::window::WindowEngine;

/// A changed window's summary is written to Redis within this, and not more often.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);

/// ... and at once when this many keys are waiting.
pub const SYNC_BATCH: usize = 4096;

/// at_least_once: an acknowledged batch is recorded within this (a crash before it repeats the
/// batch).
pub const RECORD_EVERY: Duration = Duration::from_millis(50);

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
    /// Whether delivered batches are recorded in Redis (at_least_once).
    records: bool,
    /// Keys whose summary this owner published and has not deleted.
    published: HashSet<Arc<str>>,
    /// Deletions of a failed write, to go with the next.
    undeleted: Vec<String>,
    /// Per key, batches emitted and not yet recorded: first offset → facts.
    unrecorded: HashMap<Arc<str>, BTreeMap<i64, Unrecorded>>,
    /// The latest recordable batch per key.
    to_record: HashMap<Arc<str>, Flushed>,
    /// Keys whose open window changed since its summary was last written.
    dirty: HashSet<Arc<str>>,
    /// When the summaries are due.
    due: Option<Instant>,
    /// When the records (and deletions) are due.
    records_due: Option<Instant>,
}

/// One write to Redis: window summaries and acknowledged batches.
#[derive(Debug, Default)]
pub struct SyncBatch {
    /// Summaries of open windows that changed.
    pub windows: Vec<PendingSummary>,
    /// Keys whose summary goes: their window went out, and none is open.
    pub gone: Vec<String>,
    /// The latest acknowledged batch per key.
    pub batches: Vec<Flushed>,
}

impl SyncBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.gone.is_empty() && self.batches.is_empty()
    }
}

impl Ledger {
    /// A ledger that records delivered batches in Redis when `records` (at_least_once).
    pub fn new(records: bool) -> Self {
        Self {
            records,
            ..Self::default()
        }
    }

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
            self.schedule_records();
        }
    }

    fn schedule(&mut self) {
        if self.due.is_none() {
            self.due = Some(Instant::now() + SYNC_EVERY);
        }
    }

    fn schedule_records(&mut self) {
        if self.records_due.is_none() {
            let wait = if self.records {
                RECORD_EVERY
            } else {
                SYNC_EVERY
            };
            self.records_due = Some(Instant::now() + wait);
        }
    }

    /// When the next write is due, if anything waits.
    pub fn due(&self) -> Option<Instant> {
        match (self.due, self.records_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether enough waits to write without waiting for [`SYNC_EVERY`].
    pub fn full(&self) -> bool {
        self.to_record.len() + self.dirty.len() + self.undeleted.len() >= SYNC_BATCH
    }

    /// Everything that waits (the last write of a drain or a revocation); see
    /// [`Ledger::take_due`].
    pub fn take(&mut self, engine: &WindowEngine, inherited_below: i64) -> SyncBatch {
        self.take_with(engine, true, inherited_below)
    }

    /// What is due at `now`: the records and deletions, and the summaries when they are due too
    /// (or the ledger is [`full`](Ledger::full)). Summaries are read from `engine` (a window
    /// flushed meanwhile has none). `inherited_below`: input below this offset may have been an
    /// earlier owner's, who may have published summaries of it. Hand the batch back with
    /// [`Ledger::retry`] if the write fails.
    pub fn take_due(
        &mut self,
        engine: &WindowEngine,
        inherited_below: i64,
        now: Instant,
    ) -> SyncBatch {
        let summaries = self.full() || self.due.is_some_and(|at| at <= now);
        self.take_with(engine, summaries, inherited_below)
    }

    fn take_with(
        &mut self,
        engine: &WindowEngine,
        summaries: bool,
        inherited_below: i64,
    ) -> SyncBatch {
        self.records_due = None;
        let mut windows = Vec::new();
        if summaries {
            self.due = None;
            windows.reserve(self.dirty.len());
            for key in self.dirty.drain() {
                if let Some(w) = engine.summary(&key) {
                    windows.push(PendingSummary {
                        key: key.to_string(),
                        first_ts: w.first_ts,
                        last_ts: w.last_ts,
                        count: w.count,
                        flush_at: w.flush_at,
                        first_offset: w.first_offset,
                    });
                    self.published.insert(key);
                }
            }
        }
        let mut gone: Vec<String> = self
            .undeleted
            .drain(..)
            .filter(|key| engine.summary(key).is_none())
            .collect();
        let mut batches = Vec::new();
        for (key, b) in self.to_record.drain() {
            let open = engine.summary(&key).is_some();
            if !open && (self.published.remove(&key) || b.first_offset < inherited_below) {
                gone.push(b.key.clone());
            }
            if self.records {
                batches.push(b);
            }
        }
        SyncBatch {
            windows,
            gone,
            batches,
        }
    }

    /// Takes back a write that failed (Redis down): it goes with the next one, and a newer
    /// record of the same key wins.
    pub fn retry(&mut self, failed: SyncBatch) {
        for w in failed.windows {
            self.dirty.insert(Arc::from(w.key.as_str()));
        }
        if !self.dirty.is_empty() {
            self.schedule();
        }
        self.undeleted.extend(failed.gone);
        for b in failed.batches {
            let key: Arc<str> = Arc::from(b.key.as_str());
            self.to_record.entry(key).or_insert(b);
        }
        if !self.undeleted.is_empty() || !self.to_record.is_empty() {
            self.schedule_records();
        }
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
        let mut l = Ledger::new(true);
        let k: Arc<str> = Arc::from("u");
        l.emitted(&k, "t/0/1".into(), 1, 3, 10);
        l.emitted(&k, "t/0/4".into(), 4, 6, 20);
        l.acknowledged(&k, 4);
        assert!(
            l.take(&engine(), 0).batches.is_empty(),
            "batch 4 waits for batch 1"
        );
        l.acknowledged(&k, 1);
        let taken = l.take(&engine(), 0);
        assert_eq!(taken.batches.len(), 1);
        assert_eq!(
            (taken.batches[0].first_offset, taken.batches[0].last_offset),
            (4, 6)
        );
        assert!(l.due().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn at_least_once_records_a_delivered_batch_sooner_than_it_publishes_summaries() {
        let mut engine = engine();
        let mut out = Vec::new();
        let mut l = Ledger::new(true);
        engine.push(fragment("open", 5, 1_000), 1_000, &mut out);
        l.touched("open");
        let k: Arc<str> = Arc::from("u");
        l.emitted(&k, "t/0/1".into(), 1, 1, 10);
        l.acknowledged(&k, 1);
        let start = Instant::now();
        assert_eq!(l.due(), Some(start + RECORD_EVERY));
        tokio::time::advance(RECORD_EVERY).await;
        let records = l.take_due(&engine, 0, Instant::now());
        assert_eq!(records.batches.len(), 1, "the record goes at once");
        assert!(
            records.windows.is_empty(),
            "the summary waits for its period"
        );
        assert_eq!(l.due(), Some(start + SYNC_EVERY));
        tokio::time::advance(SYNC_EVERY - RECORD_EVERY).await;
        let summaries = l.take_due(&engine, 0, Instant::now());
        assert_eq!(summaries.windows.len(), 1);
        assert!(l.due().is_none());

        // exactly_once records nothing in Redis: its deletions keep the summaries' period.
        let mut l = Ledger::new(false);
        l.emitted(&k, "t/0/2".into(), 2, 2, 11);
        l.acknowledged(&k, 2);
        assert_eq!(l.due(), Some(Instant::now() + SYNC_EVERY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_goes_again_with_the_next_one() {
        let mut l = Ledger::new(true);
        let k: Arc<str> = Arc::from("u");
        l.emitted(&k, "t/0/1".into(), 1, 1, 10);
        l.acknowledged(&k, 1);
        let failed = l.take(&engine(), 0);
        l.emitted(&k, "t/0/2".into(), 2, 2, 11);
        l.acknowledged(&k, 2);
        l.retry(failed);
        let again = l.take(&engine(), 0);
        assert_eq!(again.batches.len(), 1);
        assert_eq!(again.batches[0].last_offset, 2, "the newer record wins");
    }

    fn fragment(key: &str, offset: i64, ts: i64) -> crate::model::fragment::Fragment {
        use crate::model::fragment::{Fields, Fragment};
        Fragment::new(key, offset, ts, b"{}", Fields::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_summary_goes_once_its_window_went_out_and_only_if_someone_published_it() {
        let mut engine = engine();
        let mut out = Vec::new();
        let mut l = Ledger::new(false);
        let (u, v): (Arc<str>, Arc<str>) = (Arc::from("u"), Arc::from("v"));
        engine.push(fragment("u", 10, 1_000), 1_000, &mut out);
        l.touched("u");
        let first = l.take(&engine, 0);
        assert_eq!(first.windows.len(), 1, "published");
        // u's window goes out, v's opens and goes out between two writes.
        engine.push(fragment("v", 11, 1_050), 1_050, &mut out);
        l.touched("v");
        engine.advance(5_000, &mut out);
        assert_eq!(out.len(), 2);
        for (key, first) in [(&u, 10), (&v, 11)] {
            l.emitted(key, "id".into(), first, first, 1_000);
            l.acknowledged(key, first);
        }
        let second = l.take(&engine, 0);
        assert!(second.windows.is_empty(), "v's window never showed");
        assert_eq!(second.gone, vec!["u".to_string()], "only u's was published");
        assert!(
            second.batches.is_empty(),
            "exactly_once: no records in redis"
        );

        // A window of input an earlier owner may have published is deleted either way, and a key
        // with a newer window open keeps its summary.
        engine.push(fragment("w", 20, 6_000), 6_000, &mut out);
        engine.advance(9_000, &mut out);
        engine.push(fragment("w", 30, 9_100), 9_100, &mut out);
        let w: Arc<str> = Arc::from("w");
        l.emitted(&w, "id".into(), 20, 20, 6_000);
        l.acknowledged(&w, 20);
        assert!(l.take(&engine, 25).gone.is_empty(), "w has a window open");
        engine.advance(20_000, &mut out);
        l.emitted(&w, "id".into(), 30, 30, 9_100);
        l.acknowledged(&w, 30);
        assert!(
            l.take(&engine, 25).gone.is_empty(),
            "above the inherited input, never published"
        );
        engine.push(fragment("x", 21, 20_000), 20_000, &mut out);
        engine.advance(30_000, &mut out);
        let x: Arc<str> = Arc::from("x");
        l.emitted(&x, "id".into(), 21, 21, 20_000);
        l.acknowledged(&x, 21);
        assert_eq!(
            l.take(&engine, 25).gone,
            vec!["x".to_string()],
            "inherited input"
        );
    }
}
