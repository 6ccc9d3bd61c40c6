//! Reading one topic for the audit: the part of it a time span covers (found with the broker's
//! time index), to the end it has now, reporting how far it got.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::VerifyError;
use crate::config::Config;

/// How far the audit read one topic: `read` messages of the `total` its span holds (a
/// transactional topic's commit markers take offsets too: `total` is an upper bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadProgress {
    /// The topic being read.
    pub topic: String,
    /// Messages read so far.
    pub read: u64,
    /// Offsets in its span.
    pub total: u64,
}

/// Messages read between two progress reports.
const REPORT_EVERY: u64 = 2048;

/// Message timestamps lie by up to this much (producer clocks, batching): time windows are
/// widened by it on each side and filtered exactly afterwards.
const CLOCK_MARGIN_MS: i64 = 60_000;

/// Which part of a topic to read, by message timestamp (Unix ms): `None` = from the earliest
/// offset / to the end the topic has now.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Span {
    pub(super) from_ms: Option<i64>,
    pub(super) to_ms: Option<i64>,
}

/// Reads the messages of `topic` whose offsets lie within `span` (found with the broker's time
/// index, so only that part of the topic is fetched) up to the end it has now.
pub(super) fn read_all(
    config: &Config,
    topic: &str,
    span: Span,
    timeout: Duration,
    progress: Option<&tokio::sync::mpsc::UnboundedSender<ReadProgress>>,
) -> Result<Vec<rdkafka::message::OwnedMessage>, VerifyError> {
    // What a downstream consumer sees: nothing of an aborted transaction, each committed batch
    // once.
    let mut cc =
        crate::io::kafka::reader_config(config, &format!("lull-verify-{}", std::process::id()));
    cc.set("enable.partition.eof", "true");
    // Its errors and librdkafka's lines go through the process's Kafka log: a broker that is
    // down is one line, and the ends of partitions it asked for are no error.
    let consumer: BaseConsumer<crate::ops::kafka_log::ClientLog> =
        cc.create_with_context(crate::ops::kafka_log::ClientLog::CONSUMER)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    // Offsets of the first message at or after a time, per partition (None: no such message).
    let offsets_at = |ms: i64| -> Result<HashMap<i32, Option<i64>>, VerifyError> {
        let mut ask = TopicPartitionList::new();
        for &p in &partitions {
            ask.add_partition_offset(topic, p, Offset::Offset(ms))?;
        }
        let found = consumer.offsets_for_times(ask, Duration::from_secs(10))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect())
    };
    let starts = span
        .from_ms
        .map(|ms| offsets_at(ms - CLOCK_MARGIN_MS))
        .transpose()?;
    let stops = span
        .to_ms
        .map(|ms| offsets_at(ms + CLOCK_MARGIN_MS))
        .transpose()?;
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let start = match &starts {
            // Nothing at or after the start time: nothing to read here.
            Some(s) => s.get(&p).copied().flatten().unwrap_or(high).max(low),
            None => low,
        };
        let end = match &stops {
            Some(s) => s.get(&p).copied().flatten().unwrap_or(high).min(high),
            None => high,
        };
        if end > start {
            ends.insert(p, end);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
    }
    let total: u64 = tpl
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(start) => Some((ends.get(&e.partition())? - start).max(0) as u64),
            _ => None,
        })
        .sum();
    let report = |read: u64| {
        if let Some(tx) = progress {
            let _ = tx.send(ReadProgress {
                topic: topic.to_string(),
                read,
                total,
            });
        }
    };
    report(0);
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let mut deadline = std::time::Instant::now() + timeout;
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < ends.len() {
        if std::time::Instant::now() > deadline {
            return Err(VerifyError::Timeout(topic.to_string()));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                deadline = std::time::Instant::now() + timeout;
                let p = m.partition();
                if m.offset() + 1 >= ends.get(&p).copied().unwrap_or(0) {
                    done.insert(p);
                }
                if m.offset() < ends.get(&p).copied().unwrap_or(0) {
                    out.push(m.detach());
                    if out.len() as u64 % REPORT_EVERY == 0 {
                        report(out.len() as u64);
                    }
                }
            }
            // The end of a transactional topic is a commit marker, never delivered: past it the
            // consumer's position says how far the partition was read.
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {
                let position = consumer.position()?;
                for e in position.elements_for_topic(topic) {
                    if let (Offset::Offset(o), Some(end)) = (e.offset(), ends.get(&e.partition())) {
                        if o >= *end {
                            done.insert(e.partition());
                        }
                    }
                }
            }
            // A broker that restarted shows as a transport failure until librdkafka reconnects:
            // passing, like every fetch error (a stall ends the read at the timeout above).
            Some(Err(e)) if crate::ops::kafka_log::is_unreachable(&e) => {}
            Some(Err(e)) => return Err(VerifyError::Kafka(e)),
        }
    }
    report(out.len() as u64);
    Ok(out)
}
