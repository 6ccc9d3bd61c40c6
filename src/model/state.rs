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
mod tests;
