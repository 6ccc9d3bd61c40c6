//! What the store's calls take and give: its errors, the verdicts on fragments, the records of
//! delivered batches, the summaries of open windows.

/// Why a store call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or failed; the caller carries on without it (degraded).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Another instance owns the partition now; the caller must stop touching it.
    #[error("fenced off: partition owned by a newer generation ({0})")]
    Stale(String),
}

impl StoreError {
    /// Whether Redis refused lull's credentials (a wrong password or user in `REDIS_URL`, or
    /// none given to a server that wants one) rather than being out of reach.
    pub fn is_authentication(&self) -> bool {
        let StoreError::Unavailable(why) = self else {
            return false;
        };
        let why = why.to_ascii_lowercase();
        ["wrongpass", "noauth", "authentication"]
            .iter()
            .any(|w| why.contains(w))
    }
}

/// What [`Store::admit`] says about one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: batch it.
    New,
    /// Already emitted in an acknowledged batch (a replay after a crash or handoff): skip it.
    Emitted,
    /// Its event id was first seen at another offset (a producer retry): drop it.
    Duplicate,
    /// New; its key's flushed record could not describe this log and was ignored.
    NewPastStale(Stale),
}

/// Why a flushed record in Redis was ignored rather than used to skip fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// It was written for another incarnation of the topic (another Kafka topic id): the topic
    /// was deleted and created again, or the cluster replaced, while Redis kept its keys.
    TopicId,
    /// It names an offset at or above the partition's high watermark: no such message exists.
    BeyondHighWatermark,
    /// It would skip a fragment more than [`LOG_TIME_TOLERANCE_MS`] newer than the record's own
    /// last fragment: it describes another log under the same name (a cluster without topic
    /// ids, such as the mock behind `lull dev-broker`, replaced while Redis kept its keys).
    LogTime,
}

/// How far a fragment's timestamp may lie past a flushed record's last fragment for the record
/// to still describe it. A fragment at or below the record's offset is older in the log, so it is
/// normally older in time too; only producer clocks running backwards by more than this (or a
/// replaced log) break that. Not used with `LULL_TIMESTAMP=arrival`, where a replay carries new
/// timestamps.
pub const LOG_TIME_TOLERANCE_MS: i64 = 60_000;

impl Stale {
    /// A short, fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Stale::TopicId => "topic_id",
            Stale::BeyondHighWatermark => "beyond_high_watermark",
            Stale::LogTime => "log_time",
        }
    }
}

/// Proof of partition ownership, carried by every fenced write.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The partition's keys (its owner key among them).
    pub(super) keys: super::PartitionKeys,
    /// The generation taken by [`Store::claim`].
    pub generation: u64,
    /// The partition it covers.
    pub partition: i32,
    /// The Kafka topic id of the input topic as the owner saw it ("" when unknown): records
    /// written under it are recognised as this incarnation's.
    pub topic_id: String,
}

/// One fragment as [`Store::admit`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Grouping key.
    pub key: &'a str,
    /// Input offset.
    pub offset: i64,
    /// Event id, if any.
    pub event_id: Option<&'a str>,
    /// Timestamp, Unix ms.
    pub ts: i64,
    /// Whether the key's `flushed:` record must be read to judge it: only in at_least_once, and
    /// only where a record could tell the owner something it does not know (input an earlier
    /// owner may have delivered, or a key whose last batch only an earlier owner knows).
    /// Otherwise the verdict is about the event id alone.
    pub needs_record: bool,
}

/// An open window's summary, as published to `pending:{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    /// Grouping key.
    pub key: String,
    /// Earliest fragment timestamp.
    pub first_ts: i64,
    /// Latest fragment timestamp.
    pub last_ts: i64,
    /// Fragments so far.
    pub count: usize,
    /// When the batch is expected to go out (close time + grace), Unix ms.
    pub flush_at: i64,
    /// Offset of the window's first fragment.
    pub first_offset: i64,
}

/// A batch the output topic acknowledged, as [`Store::record_flushed`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Grouping key.
    pub key: String,
    /// The batch's first offset.
    pub first_offset: i64,
    /// The batch's last offset.
    pub last_offset: i64,
    /// The batch's last fragment timestamp, Unix ms.
    pub last_ts: i64,
    /// The batch's id.
    pub batch_id: String,
}

/// A key's last batch as Redis remembers it, for `follows` after a restart or handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Index of the fragment (in the admitted chunk) whose key it is.
    pub index: usize,
    /// The batch's id.
    pub batch_id: String,
    /// Its last fragment's timestamp.
    pub last_ts: i64,
}

/// What [`Store::admit`] says about a chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// One verdict per fragment.
    pub verdicts: Vec<Verdict>,
    /// Last batches of keys in the chunk, as recorded.
    pub seeds: Vec<Seed>,
}

/// `pending:{key}` as read back by [`Store::read_pending`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingView {
    /// Grouping key.
    pub key: String,
    /// Input partition of the window.
    pub partition: i32,
    /// Instance that holds the window.
    pub owner: String,
    /// Fragments so far.
    pub count: u64,
    /// Earliest fragment timestamp, Unix ms.
    pub first_ts: i64,
    /// Latest fragment timestamp, Unix ms.
    pub last_ts: i64,
    /// Expected flush time, Unix ms.
    pub flush_at: i64,
    /// Offset of the window's first fragment.
    pub first_offset: i64,
    /// Milliseconds until Redis drops the summary (if its owner died).
    pub ttl_ms: i64,
}
