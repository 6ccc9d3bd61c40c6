//! Intake: the next chunk of input from the partition's own librdkafka queue, turned, message by
//! message and in offset order, into fragments or dead letters — plus the partition's end, when
//! the chunk reached it.
//!
//! Reading in chunks (up to [`READ_CHUNK`] messages that are already there) keeps a busy
//! partition's turn short, so acknowledgements and timers are not starved; with Redis a thin
//! stream lingers a little (a quarter of the grace period at most) so one admit call covers many
//! fragments.

use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::time::Instant;
use tracing::warn;

use crate::config::{Config, TimestampSource};
use crate::io::headers;
use crate::model::fragment::{self, Amend, Fragment, Parsed, RawMessage, Rules, Signal};
use crate::model::wire::{self, Record, Rejected};
use crate::ops::metrics::metrics;

/// Messages taken in one step at most.
pub const READ_CHUNK: usize = 512;

/// Bytes (keys and values) taken in one step at most. The memory budget is checked between
/// chunks, so this bounds how far one partition can overshoot it.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// With Redis, how long a chunk may wait for more input before it is admitted in one call.
const ADMIT_LINGER: Duration = Duration::from_millis(10);

/// What the partition's queue yields: a message, or an event such as its end.
pub type Received<'q> = Result<BorrowedMessage<'q>, KafkaError>;

/// One message of a chunk, parsed.
#[derive(Debug)]
pub enum Item {
    /// A valid fragment.
    Fragment(Fragment),
    /// A chat signal.
    Signal(Signal),
    /// An `edit` or `delete` of an earlier fragment.
    Amend(Amend),
    /// Invalid input, encoded for the dead-letter topic.
    DeadLetter(Record),
    /// The partition's end: everything there is was read.
    End,
}

/// A chunk of input, in offset order.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The items.
    pub items: Vec<Item>,
    /// Bytes of keys and values read.
    pub bytes: usize,
    /// The partition's high watermark as librdkafka last saw it, if known.
    pub high: Option<i64>,
}

/// Reads and parses one partition's input.
pub struct Intake {
    topic: Arc<str>,
    topic_c: CString,
    partition: i32,
    rules: Rules,
    timestamp: TimestampSource,
    linger: Option<Duration>,
    /// One past the last offset read.
    next: Option<i64>,
    /// The partition's `lull_partition_fragments_received_total`.
    received: prometheus::IntCounter,
}

impl Intake {
    /// Intake for `partition` of the configured input topic; `linger` when a Redis gate wants
    /// fuller chunks.
    pub fn new(
        config: &Config,
        topic: Arc<str>,
        partition: i32,
        lingers: bool,
        received: prometheus::IntCounter,
    ) -> Self {
        // Topic names are validated at start ([a-zA-Z0-9._-]): no NUL byte.
        let topic_c = CString::new(topic.as_bytes()).unwrap_or_default();
        Self {
            topic,
            topic_c,
            partition,
            rules: config.rules(),
            timestamp: config.timestamp,
            linger: lingers.then(|| ADMIT_LINGER.min(config.grace / 4)),
            next: None,
            received,
        }
    }

    /// Takes what the partition's queue holds now (up to [`READ_CHUNK`] messages, the `first`
    /// one already received). A live partition (`live`: the last chunk reached its end) lingers
    /// a little for more when a Redis gate wants full chunks; one catching up does not — its
    /// next fetch is on its way anyway.
    pub async fn chunk<'q, C: ConsumerContext + 'static>(
        &mut self,
        first: Received<'q>,
        stream: &mut MessageStream<'q, C>,
        client: &rdkafka::client::Client<C>,
        live: bool,
    ) -> Chunk {
        let now = crate::ops::clock::now_ms();
        let mut chunk = Chunk::default();
        let mut last_offset = None;
        self.take(first, now, &mut chunk, &mut last_offset);
        while chunk.items.len() < READ_CHUNK && chunk.bytes < READ_CHUNK_BYTES {
            match stream.next().now_or_never() {
                Some(Some(next)) => self.take(next, now, &mut chunk, &mut last_offset),
                _ => break,
            }
        }
        if let Some(linger) = self.linger.filter(|_| live) {
            let until = Instant::now() + linger;
            while chunk.items.len() < READ_CHUNK && chunk.bytes < READ_CHUNK_BYTES {
                match tokio::time::timeout_at(until, stream.next()).await {
                    Ok(Some(next)) => self.take(next, now, &mut chunk, &mut last_offset),
                    _ => break,
                }
            }
        }
        chunk.high = crate::io::kafka::cached_high_watermark(client, &self.topic_c, self.partition);
        if let Some(last) = last_offset {
            self.next = Some(last + 1);
        }
        // The end of the partition is said once, as the chunk's last item. An end-of-partition
        // event queued before more messages is stale (a worker that started after its queue
        // filled, or fell behind): taken as the end, it would let the wall clock close windows
        // that the messages behind it join. librdkafka says "end of partition" only with the
        // next, empty fetch (up to fetch.wait.max.ms later); the high watermark it last saw
        // tells at once.
        let said_end = matches!(chunk.items.last(), Some(Item::End));
        chunk.items.retain(|i| !matches!(i, Item::End));
        let at_end =
            said_end || matches!((self.next, chunk.high), (Some(next), Some(high)) if next >= high);
        if at_end {
            chunk.items.push(Item::End);
        }
        chunk
    }

    fn take(
        &self,
        received: Received<'_>,
        now: i64,
        chunk: &mut Chunk,
        last_offset: &mut Option<i64>,
    ) {
        match received {
            Ok(m) => {
                metrics().fragments_received.inc();
                self.received.inc();
                *last_offset = Some(m.offset());
                chunk.bytes += m.key_len() + m.payload_len();
                chunk.items.push(self.parse(&m, now));
            }
            Err(KafkaError::PartitionEOF(_)) => chunk.items.push(Item::End),
            Err(e) => crate::ops::kafka_log::kafka_log().error("consumer error", &e),
        }
    }

    /// Turns a message into a fragment or a signal, or a dead letter saying why it is neither.
    fn parse(&self, m: &BorrowedMessage<'_>, now: i64) -> Item {
        let ts = match self.timestamp {
            TimestampSource::Kafka => m.timestamp().to_millis().unwrap_or(now),
            TimestampSource::Arrival => now,
        };
        let raw = RawMessage {
            key: m.key(),
            value: m.payload(),
            event_id_header: m
                .headers()
                .and_then(|h| headers::last_value(h, b"event_id")),
            offset: m.offset(),
            ts,
        };
        match fragment::parse(raw, &self.rules) {
            Ok(Parsed::Fragment(f)) => {
                crate::ops::fault::fragment_read(&f.key);
                Item::Fragment(f)
            }
            Ok(Parsed::Signal(s)) => Item::Signal(s),
            Ok(Parsed::Amend(a)) => Item::Amend(a),
            Err(invalid) => {
                metrics()
                    .fragments_invalid
                    .with_label_values(&[invalid.label()])
                    .inc();
                warn!(
                    partition = self.partition,
                    offset = m.offset(),
                    reason = invalid.label(),
                    "invalid input sent to the dead-letter topic"
                );
                let original = m.headers().map(headers::read).unwrap_or_default();
                Item::DeadLetter(wire::encode_dead_letter(Rejected {
                    key: m.key(),
                    value: m.payload(),
                    headers: &original,
                    topic: &self.topic,
                    partition: self.partition,
                    offset: m.offset(),
                    error: &invalid.to_string(),
                    failed_at: SystemTime::now(),
                }))
            }
        }
    }
}
