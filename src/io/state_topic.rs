//! The state topic on Kafka (exactly_once): making sure it exists, and reading one partition of
//! it to its end when that input partition is assigned.
//!
//! The topic is compacted, with short segments and a low dirty ratio, so the log cleaner keeps it
//! near one record per key active within the last minutes (lull deletes the others with
//! tombstones): a takeover reads about the active keys, not every key ever seen. It has the
//! input's partition count; record `p` describes input partition `p`.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::model::state::{decode, FlushedKeys, StateEntry};

/// Topic settings of the state topic: compacted; a segment rolls after a minute (only closed
/// segments are compacted) and is cleaned once a tenth of it is dead; tombstones are kept a
/// minute (a reader that misses one still sees nothing wrong: the record it deleted is below the
/// committed offset and too old for `follows`).
pub const TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.ms", "60000"),
    ("segment.bytes", "16777216"),
    ("min.cleanable.dirty.ratio", "0.1"),
    ("max.compaction.lag.ms", "600000"),
    ("delete.retention.ms", "60000"),
];

/// Why the state topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateTopicError {
    /// The cluster could not be asked (unreachable, timeout).
    #[error("cannot check the state topic {topic}: {error}")]
    Request {
        /// The state topic.
        topic: String,
        /// What failed.
        error: KafkaError,
    },
    /// The input topic does not exist, so the state topic's shape is unknown.
    #[error("the input topic {0} does not exist (create it first: lull topics)")]
    NoInput(String),
    /// The state topic exists with another partition count than the input.
    #[error(
        "the state topic {topic} has {has} partitions but the input topic has {input}: \
             they must match (delete it, or name another with LULL_STATE_TOPIC)"
    )]
    Partitions {
        /// The state topic.
        topic: String,
        /// Its partitions.
        has: usize,
        /// The input's.
        input: usize,
    },
    /// The cluster did not take the request to create it (librdkafka's mock cluster, behind `lull
    /// dev-broker`, cannot create topics on request).
    #[error(
        "cannot create the state topic {topic}: {error} (create it with lull topics; lull \
             dev-broker creates it at start for LULL_GROUP_ID and for each --group)"
    )]
    Refused {
        /// The state topic.
        topic: String,
        /// What the cluster answered.
        error: String,
    },
    /// The broker refused to create it.
    #[error(
        "cannot create the state topic {topic}: {code} (create it with lull topics, or give \
             lull's principal Create on it)"
    )]
    Create {
        /// The state topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

impl StateTopicError {
    /// Whether the operator's setup is at fault (exit 2), not a passing outage.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, StateTopicError::Request { .. })
    }
}

/// The state reader's context: its end of partition is how it knows it is done, not an error;
/// the rest goes to the process's Kafka log.
struct ReaderLog;

impl rdkafka::ClientContext for ReaderLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::ops::kafka_log::kafka_log().librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::PartitionEOF)
        ) {
            crate::ops::kafka_log::kafka_log().client_error("state reader error", &error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderLog {}

/// What [`ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// It was there, with the input's partition count.
    Exists,
    /// It was missing and was created like this.
    Created {
        /// Partitions (the input's).
        partitions: usize,
        /// Replicas per partition (the input's).
        replication: usize,
    },
}

/// Makes sure the state topic exists with the input's partition count, creating it (compacted,
/// replicated like the input) when missing — as Kafka Streams does with its internal topics.
pub async fn ensure(config: &Config) -> Result<Ensured, StateTopicError> {
    let topic = config.state_topic();
    let request = |error| StateTopicError::Request {
        topic: topic.clone(),
        error,
    };
    let admin: AdminClient<DefaultClientContext> = crate::io::kafka::admin_config(config)
        .create()
        .map_err(request)?;
    // Every topic's metadata, not the two by name: asking for a topic by name can create it on
    // brokers that auto-create topics (librdkafka's mock does, with its own partition count).
    let md =
        tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, Duration::from_secs(10)))
            .map_err(request)?;
    let shape = |name: &str| -> Option<(usize, usize)> {
        md.topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| {
                let replicas = t.partitions().iter().map(|p| p.replicas().len()).max();
                (t.partitions().len(), replicas.unwrap_or(1).max(1))
            })
    };
    let input = shape(&config.input_topic)
        .ok_or_else(|| StateTopicError::NoInput(config.input_topic.clone()))?;
    let state = shape(&topic);
    drop(md);
    if let Some((has, _)) = state {
        if has != input.0 {
            return Err(StateTopicError::Partitions {
                topic,
                has,
                input: input.0,
            });
        }
        return Ok(Ensured::Exists);
    }
    let (partitions, replication) = input;
    let mut new = NewTopic::new(
        &topic,
        i32::try_from(partitions).unwrap_or(i32::MAX),
        TopicReplication::Fixed(i32::try_from(replication).unwrap_or(1)),
    );
    for (k, v) in TOPIC_CONFIG {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(15)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results =
        admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| StateTopicError::Refused {
                topic: topic.clone(),
                error: e.to_string(),
            })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(StateTopicError::Create { topic, code }),
        }
    }
    Ok(Ensured::Created {
        partitions,
        replication,
    })
}

/// What reading one partition of the state topic found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Messages read (records and tombstones, including the look for the last partition record).
    pub read: u64,
    /// Records ignored because they cannot describe this log.
    pub ignored: u64,
    /// Where the read started: the last partition record's `restore_from`, else the start.
    pub from: i64,
    /// The partition's end: where this owner's first records will lie at the earliest.
    pub end: i64,
    /// How long it took.
    pub took: Duration,
}

/// How many messages back from the end the last partition record is looked for first (every
/// commit writes one, last in its transaction, so it is near the end); each further look goes
/// four times as far.
const TAIL: i64 = 256;

/// Reads partition `partition` of the state topic into `keys`: only what committed transactions
/// wrote, from the last partition record's `restore_from` (below it no key has a live record:
/// the log cleaner may not have removed them yet, but a takeover need not read them) to the
/// partition's end when the read began. A transaction still open there (a previous owner that died
/// with one open) is waited for until it is committed or aborted, so what is read is exactly what
/// was committed. `topic_id` and `input_end` (the input partition's end) let records of another
/// log be ignored. Blocks; gives up at `deadline`.
pub fn read(
    config: &Config,
    partition: i32,
    topic_id: Option<&str>,
    input_end: Option<i64>,
    keys: &mut FlushedKeys,
    deadline: Instant,
) -> Result<Restored, String> {
    let started = Instant::now();
    let topic = config.state_topic();
    let consumer: BaseConsumer<ReaderLog> = crate::io::kafka::state_reader_config(config)
        .create_with_context(ReaderLog)
        .map_err(|e| e.to_string())?;
    let left = || deadline.saturating_duration_since(Instant::now());
    let (low, high) = consumer
        .fetch_watermarks(&topic, partition, left())
        .map_err(|e| format!("cannot read the end of {topic}/{partition}: {e}"))?;
    let low = low.max(0);
    let mut restored = Restored {
        from: low,
        end: high.max(low),
        ..Restored::default()
    };
    if high <= low {
        restored.took = started.elapsed();
        return Ok(restored);
    }
    let reader = Reader {
        consumer: &consumer,
        topic: &topic,
        partition,
        deadline,
    };
    // The last partition record's restore_from, looked for from the end backwards.
    let same_topic = |id: &str| topic_id.is_none_or(|live| id.is_empty() || id == live);
    let mut to = high;
    let mut span = TAIL;
    let from = loop {
        let start = (to - span).max(low);
        let mut found = None;
        reader.range(start, to, &mut restored.read, |_, key, value| {
            if let StateEntry::Partition(p) = decode(key, value) {
                if p.partition == partition && same_topic(&p.topic_id) {
                    found = p.restore_from.or(found);
                }
            }
        })?;
        if let Some(from) = found {
            break from.clamp(low, high);
        }
        if start == low {
            break low;
        }
        to = start;
        span = span.saturating_mul(4);
    };
    restored.from = from;
    let mut ignored = 0;
    reader.range(from, high, &mut restored.read, |at, key, value| {
        if keys
            .restore(decode(key, value), at, topic_id, input_end)
            .is_err()
        {
            ignored += 1;
        }
    })?;
    restored.ignored = ignored;
    restored.took = started.elapsed();
    Ok(restored)
}

/// Reads offset ranges of one state partition.
struct Reader<'a> {
    consumer: &'a BaseConsumer<ReaderLog>,
    topic: &'a str,
    partition: i32,
    deadline: Instant,
}

impl Reader<'_> {
    /// Hands every committed message in `[from, to)` to `each` (its offset, key and value), in
    /// order, counting them into `read`. Past control records (transaction markers) the
    /// consumer's position is further than the last message read, which is how the end of a
    /// range that ends in one is known.
    fn range(
        &self,
        from: i64,
        to: i64,
        read: &mut u64,
        mut each: impl FnMut(i64, Option<&[u8]>, Option<&[u8]>),
    ) -> Result<(), String> {
        let (topic, partition) = (self.topic, self.partition);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| e.to_string())?;
        self.consumer.assign(&tpl).map_err(|e| e.to_string())?;
        drop(tpl);
        let mut next = from;
        while next < to {
            if Instant::now() >= self.deadline {
                return Err(format!(
                    "reading {topic}/{partition} did not reach offset {to} in time (at {next}); \
                     a transaction left open there ends within the transaction timeout"
                ));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    next = next.max(m.offset() + 1);
                    if m.offset() < to {
                        *read += 1;
                        each(m.offset(), m.key(), m.payload());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    if let Ok(position) = self.consumer.position() {
                        if let Some(Offset::Offset(o)) = position
                            .find_partition(topic, partition)
                            .map(|e| e.offset())
                        {
                            next = next.max(o);
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("cannot read {topic}/{partition}: {e}")),
            }
        }
        Ok(())
    }
}
