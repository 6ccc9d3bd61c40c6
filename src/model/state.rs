//! The state topic (exactly_once): what one input partition's owner must know after a crash or
//! a handoff, written in the same transaction as the output it describes.
//!
//! * One **flushed record** per key that has been flushed: the last input offset already emitted
//!   in a committed batch (the skip rule: a replayed fragment of that key at or below it is not
//!   batched again), and the batch's id and `last_ts` (so `follows` survives restarts).
//! * One **partition record** under a key no fragment can have ([`PARTITION_KEY`]: not UTF-8):
//!   the next input offset whose outputs are not all committed yet. Dead letters and `opened`
//!   events of offsets below it were committed already and are not made again on a replay.
//!
//! [`FlushedKeys`] is the owner's view: it restores records read from the topic, answers the
//! skip question, notes new batches, and says which records can be deleted (a tombstone): a
//! record below the committed input offset can never skip anything again, and once its batch is
//! older than the `follows` horizon nothing needs it, so a takeover reads about the keys active
//! within one max wait, not every key ever seen. Pure: no I/O, no clock of its own.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The key of the partition record: `0xFF` is never part of UTF-8, and fragment keys are UTF-8,
/// so no fragment's key can collide with it.
pub const PARTITION_KEY: &[u8] = b"\xfflull.partition";

/// The value of a key's flushed record (DESIGN.md, "State topic").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushedRecord {
    /// The input topic's identity (Kafka topic id, or `cluster:<id>`); empty when unknown.
    pub topic_id: String,
    /// The input partition it describes.
    pub partition: i32,
    /// The last input offset of this key already emitted in a committed batch.
    pub offset: i64,
    /// That batch's id.
    pub batch_id: String,
    /// That batch's last fragment timestamp.
    pub last_ts: i64,
}

/// The value of the partition record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The input topic's identity; empty when unknown.
    pub topic_id: String,
    /// The input partition it describes.
    pub partition: i32,
    /// Every dead letter and `opened` event of an input offset below this is committed.
    pub read: i64,
    /// No key's live record lies below this offset of the state partition: a takeover reads
    /// from here, not from the start (the log cleaner may not have removed what lies below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<i64>,
}

/// Encodes a record's value as JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// What a record read from the state topic is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateEntry {
    /// A key's flushed record.
    Flushed(String, FlushedRecord),
    /// A key's record was deleted.
    Deleted(String),
    /// The partition record.
    Partition(PartitionRecord),
    /// Not a record lull wrote (another program's, or a corrupt one): ignored.
    Foreign,
}

/// Reads one message of the state topic.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> StateEntry {
    let Some(key) = key else {
        return StateEntry::Foreign;
    };
    if key == PARTITION_KEY {
        return value
            .and_then(|v| serde_json::from_slice(v).ok())
            .map_or(StateEntry::Foreign, StateEntry::Partition);
    }
    let Ok(key) = std::str::from_utf8(key) else {
        return StateEntry::Foreign;
    };
    match value {
        None => StateEntry::Deleted(key.to_string()),
        Some(v) => serde_json::from_slice(v).map_or(StateEntry::Foreign, |r| {
            StateEntry::Flushed(key.to_string(), r)
        }),
    }
}

/// What the owner keeps of one key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The last input offset emitted.
    pub offset: i64,
    /// The batch that carried it.
    pub batch_id: Arc<str>,
    /// That batch's `last_ts`.
    pub last_ts: i64,
    /// The record's offset in the state partition, or an offset at or below it (a record not
    /// yet delivered is placed at the partition's end before its transaction).
    pub since: i64,
}

/// Why a record read at takeover is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// It describes another incarnation of the input topic (another topic id).
    OtherTopic,
    /// It names an offset the input partition does not have (at or above its end).
    PastTheEnd,
    /// It describes another partition (a state topic with another partition layout).
    OtherPartition,
}

/// One partition's flushed records, as the owner knows them.
#[derive(Debug)]
pub struct FlushedKeys {
    partition: i32,
    /// How long after a batch's `last_ts` its record still serves `follows`.
    horizon_ms: i64,
    records: HashMap<Arc<str>, Kept, foldhash::fast::RandomState>,
    /// `(offset, key)` of records not yet known to lie below the committed offset.
    by_offset: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    /// `(last_ts + horizon, offset, key)` of records below the committed offset.
    expiring: BinaryHeap<Reverse<(i64, i64, Arc<str>)>>,
    /// `(since, offset, key)` of records in the order they were placed (`since` never falls):
    /// the front, once stale entries are dropped, is the oldest live record.
    placed: VecDeque<(i64, i64, Arc<str>)>,
    /// The partition record's `read`, as restored or last written.
    read: Option<i64>,
}

impl FlushedKeys {
    /// Nothing known yet, for `partition`; records serve `follows` for `horizon_ms` after their
    /// batch's `last_ts` (LULL_FOLLOWUP_MS plus the grace: the engine's own horizon).
    pub fn new(partition: i32, horizon_ms: i64) -> Self {
        Self {
            partition,
            horizon_ms,
            records: HashMap::default(),
            by_offset: BinaryHeap::new(),
            expiring: BinaryHeap::new(),
            placed: VecDeque::new(),
            read: None,
        }
    }

    /// Takes one entry read from the state topic at offset `at`, in log order. `topic_id` is the
    /// live input topic's identity (when known) and `end` its partition's end offset: a record
    /// that cannot describe this log is ignored, never used to skip.
    pub fn restore(
        &mut self,
        entry: StateEntry,
        at: i64,
        topic_id: Option<&str>,
        end: Option<i64>,
    ) -> Result<(), Ignored> {
        let same_topic = |id: &str| match topic_id {
            Some(live) if !id.is_empty() => id == live,
            _ => true,
        };
        match entry {
            StateEntry::Flushed(key, r) => {
                if r.partition != self.partition {
                    return Err(Ignored::OtherPartition);
                }
                if !same_topic(&r.topic_id) {
                    self.records.remove(key.as_str());
                    return Err(Ignored::OtherTopic);
                }
                if end.is_some_and(|end| r.offset >= end) {
                    self.records.remove(key.as_str());
                    return Err(Ignored::PastTheEnd);
                }
                self.flushed(
                    Arc::from(key),
                    r.offset,
                    Arc::from(r.batch_id),
                    r.last_ts,
                    at,
                );
            }
            StateEntry::Deleted(key) => {
                self.records.remove(key.as_str());
            }
            StateEntry::Partition(r) => {
                if r.partition != self.partition {
                    return Err(Ignored::OtherPartition);
                }
                if !same_topic(&r.topic_id) {
                    self.read = None;
                    return Err(Ignored::OtherTopic);
                }
                if end.is_some_and(|end| r.read > end) {
                    self.read = None;
                    return Err(Ignored::PastTheEnd);
                }
                self.read = Some(r.read);
            }
            StateEntry::Foreign => {}
        }
        Ok(())
    }

    /// Notes that `key`'s batch `batch_id`, whose last fragment is at `offset`, was emitted, and
    /// that its record lies at or above offset `since` of the state partition.
    pub fn flushed(
        &mut self,
        key: Arc<str>,
        offset: i64,
        batch_id: Arc<str>,
        last_ts: i64,
        since: i64,
    ) {
        self.by_offset.push(Reverse((offset, key.clone())));
        self.placed.push_back((since, offset, key.clone()));
        self.records.insert(
            key,
            Kept {
                offset,
                batch_id,
                last_ts,
                since,
            },
        );
    }

    /// The lowest state-partition offset a takeover must read from to see every live record:
    /// the oldest live record's, or `end` (the partition's end) when there is none.
    pub fn restore_from(&mut self, end: i64) -> i64 {
        while let Some((since, offset, key)) = self.placed.front() {
            let live = self
                .records
                .get(key)
                .is_some_and(|k| k.offset == *offset && k.since == *since);
            if live {
                return (*since).min(end);
            }
            self.placed.pop_front();
        }
        end
    }

    /// Whether the fragment of `key` at `offset` was emitted already (at or below its key's
    /// record).
    pub fn skips(&self, key: &str, offset: i64) -> bool {
        self.records.get(key).is_some_and(|k| offset <= k.offset)
    }

    /// The input partition these records describe.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Every kept record, for seeding `follows`.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Kept)> {
        self.records.iter()
    }

    /// Every kept record, oldest batch first: the order to seed `follows` in (the engine
    /// forgets previous batches in the order they came).
    pub fn by_last_ts(&self) -> Vec<(&Arc<str>, &Kept)> {
        let mut all: Vec<_> = self.records.iter().collect();
        all.sort_by_key(|(_, k)| k.last_ts);
        all
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Dead letters and `opened` events of offsets below this were committed already.
    pub fn read(&self) -> Option<i64> {
        self.read
    }

    /// Notes the partition record written in the transaction now committing.
    pub fn set_read(&mut self, read: i64) {
        self.read = Some(self.read.map_or(read, |r| r.max(read)));
    }

    /// The keys whose records may be deleted once `committed` is the partition's committed
    /// offset and `time` the earliest log time a replay from it can start at (the engine's
    /// `replay_time`): below the committed offset, and their batch older than the horizon. They are forgotten here; the caller writes their tombstones in the
    /// transaction that commits `committed`.
    pub fn expired(&mut self, committed: i64, time: i64) -> Vec<Arc<str>> {
        while let Some(Reverse((offset, _))) = self.by_offset.peek() {
            if *offset >= committed {
                break;
            }
            let Some(Reverse((offset, key))) = self.by_offset.pop() else {
                break;
            };
            if let Some(k) = self.records.get(&key).filter(|k| k.offset == offset) {
                let until = k.last_ts.saturating_add(self.horizon_ms);
                self.expiring.push(Reverse((until, offset, key)));
            }
        }
        let mut out = Vec::new();
        while let Some(Reverse((until, _, _))) = self.expiring.peek() {
            if *until >= time {
                break;
            }
            let Some(Reverse((_, offset, key))) = self.expiring.pop() else {
                break;
            };
            if self.records.get(&key).is_some_and(|k| k.offset == offset) {
                self.records.remove(&key);
                out.push(key);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(offset: i64, last_ts: i64) -> FlushedRecord {
        FlushedRecord {
            topic_id: "T".into(),
            partition: 0,
            offset,
            batch_id: format!("in/0/{offset}"),
            last_ts,
        }
    }

    #[test]
    fn records_round_trip_and_the_partition_key_is_no_fragment_key() {
        let r = record(7, 100);
        assert_eq!(
            decode(Some(b"u"), Some(&encode(&r))),
            StateEntry::Flushed("u".into(), r)
        );
        assert_eq!(decode(Some(b"u"), None), StateEntry::Deleted("u".into()));
        let p = PartitionRecord {
            topic_id: "T".into(),
            partition: 0,
            read: 9,
            restore_from: Some(4),
        };
        assert_eq!(
            decode(Some(PARTITION_KEY), Some(&encode(&p))),
            StateEntry::Partition(p)
        );
        assert!(std::str::from_utf8(std::hint::black_box(PARTITION_KEY)).is_err());
        assert_eq!(decode(Some(b"u"), Some(b"nonsense")), StateEntry::Foreign);
        assert_eq!(decode(None, Some(b"{}")), StateEntry::Foreign);
    }

    #[test]
    fn a_record_skips_its_keys_fragments_up_to_its_offset() {
        let mut k = FlushedKeys::new(0, 1_000);
        k.restore(
            StateEntry::Flushed("u".into(), record(7, 100)),
            0,
            Some("T"),
            Some(50),
        )
        .unwrap();
        assert!(k.skips("u", 5));
        assert!(k.skips("u", 7));
        assert!(!k.skips("u", 8));
        assert!(!k.skips("v", 1));
        k.restore(StateEntry::Deleted("u".into()), 1, Some("T"), Some(50))
            .unwrap();
        assert!(!k.skips("u", 5));
    }

    #[test]
    fn records_of_another_log_are_never_used() {
        let mut k = FlushedKeys::new(0, 1_000);
        let other = FlushedRecord {
            topic_id: "OLD".into(),
            ..record(7, 100)
        };
        assert_eq!(
            k.restore(
                StateEntry::Flushed("u".into(), other),
                0,
                Some("T"),
                Some(50)
            ),
            Err(Ignored::OtherTopic)
        );
        assert_eq!(
            k.restore(
                StateEntry::Flushed("v".into(), record(60, 1)),
                0,
                Some("T"),
                Some(50)
            ),
            Err(Ignored::PastTheEnd)
        );
        let elsewhere = FlushedRecord {
            partition: 3,
            ..record(7, 100)
        };
        assert_eq!(
            k.restore(
                StateEntry::Flushed("w".into(), elsewhere),
                0,
                Some("T"),
                Some(50)
            ),
            Err(Ignored::OtherPartition)
        );
        assert!(k.is_empty());
    }

    #[test]
    fn a_record_expires_below_the_commit_and_past_the_horizon_only() {
        let mut k = FlushedKeys::new(0, 1_000);
        k.flushed("a".into(), 10, "in/0/8".into(), 5_000, 0);
        k.flushed("b".into(), 20, "in/0/15".into(), 5_000, 1);
        assert!(k.expired(15, 10_000).iter().map(|s| &**s).eq(["a"]));
        assert!(k.expired(15, 10_000).is_empty(), "b is above the commit");
        // Above the commit now, but its batch is recent: kept for follows.
        assert!(k.expired(30, 5_500).is_empty());
        assert!(k.expired(30, 6_001).iter().map(|s| &**s).eq(["b"]));
        assert!(k.is_empty());
    }

    #[test]
    fn a_newer_record_of_the_same_key_is_never_deleted_for_the_old_one() {
        let mut k = FlushedKeys::new(0, 0);
        k.flushed("a".into(), 10, "in/0/8".into(), 1, 0);
        k.flushed("a".into(), 40, "in/0/30".into(), 2, 1);
        assert!(k.expired(20, 100).is_empty());
        assert!(k.skips("a", 40));
        assert!(k.expired(41, 100).iter().map(|s| &**s).eq(["a"]));
    }

    mod crash {
        //! The skip rule against the model: a worker that commits at arbitrary points and
        //! crashes at an arbitrary point (everything not committed is lost), then restarts from
        //! its committed offset and state records, makes exactly the batches — ids, contents,
        //! reasons, `follows` — of a run that never crashed.

        use super::*;
        use crate::model::fragment::{Fields, Fragment};
        use crate::model::window::{Batch, Follows, WindowConfig, WindowEngine};

        const FAR: i64 = i64::MAX / 4;

        fn cfg() -> WindowConfig {
            WindowConfig {
                batching: true,
                quiet_ms: 100,
                max_wait_ms: 700,
                max_fragments: 4,
                max_batch_bytes: 10_000,
                grace_ms: 20,
                typing_ms: 0,
                followup_ms: 300,
            }
        }

        fn build(log: &[(u8, i64)]) -> Vec<Fragment> {
            let mut ts = 1_000;
            log.iter()
                .enumerate()
                .map(|(i, &(k, gap))| {
                    ts += gap;
                    Fragment::new(format!("k{k}"), i as i64, ts, b"{}", Fields::default())
                })
                .collect()
        }

        fn id(offset: i64) -> String {
            format!("t/0/{offset}")
        }

        /// What a downstream reader sees of a batch.
        fn seen(b: &Batch) -> (String, Vec<i64>, &'static str, Option<String>) {
            let follows = b.follows.as_ref().map(|f| match f {
                Follows::Offset(o) => id(*o),
                Follows::Id(s) => s.to_string(),
            });
            (
                id(b.first_offset()),
                b.fragments.iter().map(|f| f.offset).collect(),
                b.reason.as_str(),
                follows,
            )
        }

        /// The committed state: visible batches, the state partition (a log of entries, as
        /// the topic holds them: records, tombstones, partition records), the input offset.
        #[derive(Default, Clone)]
        struct Committed {
            visible: Vec<(String, Vec<i64>, &'static str, Option<String>)>,
            topic: Vec<StateEntry>,
            offset: i64,
        }

        fn record(b: &Batch) -> FlushedRecord {
            FlushedRecord {
                topic_id: "T".into(),
                partition: 0,
                offset: b.last_offset(),
                batch_id: id(b.first_offset()),
                last_ts: b.last_ts,
            }
        }

        /// What a takeover reads: from the last partition record's `restore_from` (the whole log
        /// when there is none) to the end.
        fn takeover(topic: &[StateEntry], keys: &mut FlushedKeys) {
            let from = topic
                .iter()
                .rev()
                .find_map(|e| match e {
                    StateEntry::Partition(p) => p.restore_from,
                    _ => None,
                })
                .unwrap_or(0);
            for (at, e) in topic.iter().enumerate().skip(from as usize) {
                keys.restore(e.clone(), at as i64, Some("T"), None)
                    .expect("own records");
            }
        }

        /// Runs `frags` from `c`'s committed offset with its records, committing where
        /// `commits` says, until `crash` (an index into `frags`) or the end; returns what is
        /// committed then.
        fn run(frags: &[Fragment], mut c: Committed, commits: &[bool], crash: usize) -> Committed {
            let horizon = cfg().followup_ms + cfg().grace_ms;
            let mut engine = WindowEngine::new(cfg());
            let mut keys = FlushedKeys::new(0, horizon);
            takeover(&c.topic, &mut keys);
            for (k, kept) in keys.by_last_ts() {
                engine.seed_follows(k, &kept.batch_id, kept.last_ts);
            }
            let mut out = Vec::new();
            let mut pending: Vec<Batch> = Vec::new();
            let mut next = c.offset;
            let start = usize::try_from(c.offset).expect("offset");
            // A transaction appends its batches' records, the tombstones, then the partition
            // record, and commits with the input offset.
            let commit = |engine: &mut WindowEngine,
                          keys: &mut FlushedKeys,
                          pending: &mut Vec<Batch>,
                          c: &mut Committed,
                          next: i64| {
                let point = engine.low_watermark().map_or(next, |low| low.min(next));
                for b in pending.drain(..) {
                    c.topic
                        .push(StateEntry::Flushed(b.key.to_string(), record(&b)));
                    c.visible.push(seen(&b));
                }
                for key in keys.expired(point, engine.replay_time().unwrap_or(i64::MIN)) {
                    c.topic.push(StateEntry::Deleted(key.to_string()));
                }
                let end = c.topic.len() as i64;
                c.topic.push(StateEntry::Partition(PartitionRecord {
                    topic_id: "T".into(),
                    partition: 0,
                    read: next,
                    restore_from: Some(keys.restore_from(end)),
                }));
                c.offset = c.offset.max(point);
            };
            // Where this transaction's records will lie at the earliest: the partition's end now.
            let flushed = |keys: &mut FlushedKeys, c: &Committed, b: &Batch| {
                keys.flushed(
                    b.key.clone(),
                    b.last_offset(),
                    Arc::from(id(b.first_offset())),
                    b.last_ts,
                    c.topic.len() as i64,
                );
            };
            for (i, f) in frags.iter().enumerate().skip(start) {
                if i >= crash {
                    return c;
                }
                if keys.skips(&f.key, f.offset) {
                    engine.skip(f.ts, FAR, &mut out);
                } else {
                    engine.push(f.clone(), FAR, &mut out);
                }
                next = f.offset + 1;
                for b in out.drain(..) {
                    flushed(&mut keys, &c, &b);
                    pending.push(b);
                }
                if commits.get(i).copied().unwrap_or(false) {
                    commit(&mut engine, &mut keys, &mut pending, &mut c, next);
                }
            }
            engine.advance(FAR, &mut out);
            for b in out.drain(..) {
                flushed(&mut keys, &c, &b);
                pending.push(b);
            }
            commit(&mut engine, &mut keys, &mut pending, &mut c, next);
            c
        }

        proptest! {
            #[test]
            fn a_crash_anywhere_gives_the_same_visible_output(
                log in proptest::collection::vec((0u8..5, 0i64..250), 1..120),
                commits in proptest::collection::vec(any::<bool>(), 120),
                crashes in proptest::collection::vec(0usize..120, 0..4),
            ) {
                let frags = build(&log);
                let never = run(&frags, Committed::default(), &commits, usize::MAX);
                let mut c = Committed::default();
                for crash in crashes {
                    c = run(&frags, c, &commits, crash);
                }
                let c = run(&frags, c, &commits, usize::MAX);
                prop_assert_eq!(c.visible, never.visible);
            }
        }
    }

    proptest! {
        /// Whatever is flushed and whenever the commit moves, a key's record is deleted only once
        /// its offset is below the committed offset and its batch is past the horizon, and a
        /// record that still skips something is never deleted.
        #[test]
        fn expiry_never_deletes_a_record_that_can_still_skip(
            steps in proptest::collection::vec((0u8..4, 0i64..50, 0i64..20), 1..200)
        ) {
            let horizon = 5;
            let mut k = FlushedKeys::new(0, horizon);
            let mut offset = 0i64;
            let mut committed = 0i64;
            let mut time = 0i64;
            let mut model: HashMap<String, (i64, i64)> = HashMap::new();
            for (kind, a, b) in steps {
                match kind {
                    0 | 1 => {
                        offset += 1 + a % 3;
                        time += b % 4;
                        let key = format!("k{}", a % 6);
                        k.flushed(Arc::from(key.as_str()), offset, "x".into(), time, offset);
                        model.insert(key, (offset, time));
                    }
                    _ => {
                        committed = committed.max((offset - a % 5).max(0));
                        time += b;
                        for key in k.expired(committed, time) {
                            let (o, ts) = model.remove(&*key).expect("a kept record");
                            prop_assert!(o < committed);
                            prop_assert!(ts + horizon < time);
                        }
                    }
                }
                for (key, (o, _)) in &model {
                    prop_assert!(k.skips(key, *o));
                }
                prop_assert_eq!(k.len(), model.len());
            }
        }
    }
}
