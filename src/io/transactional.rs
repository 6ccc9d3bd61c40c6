//! The transactional producer of one input partition (exactly_once).
//!
//! Each input partition has its own producer, with the transactional id
//! [`crate::io::kafka::transactional_id`]: whichever process owns the partition uses the same id,
//! so the next owner's `init_transactions` aborts whatever the previous owner left open and fences
//! it (a crashed process, or a paused one that wakes up later: its next call fails with
//! [`TxnError::Fenced`] and nothing it wrote becomes visible). ARCHITECTURE.md says why one per
//! partition rather than one per process.
//!
//! Every call here blocks (librdkafka waits for the coordinator): the worker runs them on a
//! blocking thread. Errors are classified once, in [`TxnError::classify`], into what the worker
//! does next: retry, abort and replay, stop touching the partition, or stop the process.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::model::wire::{Destination, Record};
use crate::ops::kafka_log::kafka_log;

/// What went wrong in a transactional call, by what the caller must do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    /// The producer could not be created (bad client settings).
    #[error("cannot create the transactional producer: {0}")]
    Create(String),
    /// A passing problem (a timeout, a coordinator moving): the same call may be made again.
    #[error("transaction call failed for now: {0}")]
    Retriable(String),
    /// The open transaction cannot commit (a delivery failed, the group moved on): abort it and
    /// replay from the last commit. The producer stays usable.
    #[error("transaction must be aborted: {0}")]
    Abortable(String),
    /// Another producer took this transactional id (the partition's next owner): this process
    /// no longer owns the partition and must not write for it again.
    #[error("fenced: another owner of this partition took over its transactions ({0})")]
    Fenced(String),
    /// The brokers refuse transactions to this client: no transaction support, or no ACL for the
    /// transactional id. A configuration matter (exit 2).
    #[error("{0}")]
    Refused(String),
    /// Anything else the producer cannot recover from.
    #[error("transactional producer failed: {0}")]
    Fatal(String),
}

impl TxnError {
    /// Sorts a librdkafka error from a transactional call.
    pub fn classify(error: &KafkaError) -> TxnError {
        let text = error.to_string();
        let KafkaError::Transaction(e) = error else {
            return match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::OperationTimedOut) => {
                    TxnError::Retriable(text)
                }
                _ => TxnError::Abortable(text),
            };
        };
        if let Some(refusal) = refusal(e.code()) {
            return TxnError::Refused(format!("{refusal} ({})", e.string()));
        }
        if e.is_fatal() {
            return match e.code() {
                RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced => TxnError::Fenced(e.string()),
                _ => TxnError::Fatal(e.string()),
            };
        }
        if e.txn_requires_abort() {
            TxnError::Abortable(e.string())
        } else if e.is_retriable() {
            TxnError::Retriable(e.string())
        } else {
            TxnError::Abortable(e.string())
        }
    }
}

/// What an error code says about the brokers' willingness to run transactions for this client,
/// when it says something.
fn refusal(code: RDKafkaErrorCode) -> Option<&'static str> {
    match code {
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => Some(
            "the Kafka principal may not use lull's transactional ids (an ACL on transactional id \
             prefix <LULL_GROUP_ID>/ with Write and Describe is needed)",
        ),
        RDKafkaErrorCode::ClusterAuthorizationFailed => Some(
            "the Kafka principal may not write transactionally (the cluster refused \
             IdempotentWrite)",
        ),
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedForMessageFormat => {
            Some("the brokers do not support transactions")
        }
        _ => None,
    }
}

/// Why a record could not be handed to the open transaction.
#[derive(Debug, Clone)]
pub enum SendError {
    /// librdkafka's queue is full: send it again in a moment.
    QueueFull,
    /// The transaction (or the producer) cannot take it: see the error.
    Txn(TxnError),
}

/// The context of a transactional producer: librdkafka's log lines and errors go to the process's
/// Kafka log; a failed delivery needs nothing here (the commit reports it and the transaction is
/// aborted). It notes how far the partition's state records reach (each delivery says its
/// offset), so a record can be placed before it is delivered.
pub struct TxnContext {
    state_topic: String,
    partition: i32,
    /// One past the highest state-partition offset delivered; -1 before any.
    state_end: AtomicI64,
}

impl TxnContext {
    fn new(config: &Config, partition: i32) -> Self {
        Self {
            state_topic: config.state_topic(),
            partition,
            state_end: AtomicI64::new(-1),
        }
    }
}

impl ClientContext for TxnContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // librdkafka's transaction errors (and the fatal ones, which fence or refuse a
        // transactional producer) come back from the calls that met them, where lull says what it
        // does about them (abort and replay, fenced, refused): not twice. GETPID retries while a
        // new owner's coordinator aborts the previous owner's transaction: expected, retried.
        if fac.starts_with("TXN") || matches!(fac, "FATAL" | "GETPID") {
            tracing::debug!(target: "librdkafka", facility = fac, "{log_message}");
            return;
        }
        kafka_log().librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::Fenced)
        ) {
            tracing::debug!(error = %error, reason, "transactional producer error");
            return;
        }
        kafka_log().client_error("kafka producer error", &error, reason);
    }
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.partition() == self.partition && m.topic() == self.state_topic => {
                self.state_end.fetch_max(m.offset() + 1, Ordering::AcqRel);
            }
            Ok(_) => {}
            Err((e, _)) => kafka_log().client_error("transactional delivery failed", e, ""),
        }
    }
}

/// One input partition's transactional producer.
pub struct TxnProducer {
    producer: ThreadedProducer<TxnContext>,
    input_topic: Arc<str>,
    output_topic: Arc<str>,
    dlq_topic: Arc<str>,
    events_topic: Option<Arc<str>>,
    state_topic: Arc<str>,
    partition: i32,
    id: String,
    /// How long a commit or an abort is retried.
    patience: Duration,
}

/// How many transaction timeouts a commit or an abort is retried before the producer is given
/// up for a new one (whose registration fences this one, whatever state it is stuck in): by then
/// the coordinator has ended the transaction anyway.
const PATIENCE_TIMEOUTS: u32 = 1;

impl TxnProducer {
    /// Creates the producer of `partition` (not yet initialised: see [`TxnProducer::init`]).
    pub fn create(config: &Config, partition: i32) -> Result<Self, TxnError> {
        let c = crate::io::kafka::transactional_producer_config(config, partition);
        Self::with(config, c, partition)
    }

    /// A producer of `partition` (-1: none) made from `c`, whose `transactional.id` names it.
    fn with(config: &Config, c: rdkafka::ClientConfig, partition: i32) -> Result<Self, TxnError> {
        let id = c.get("transactional.id").unwrap_or_default().to_string();
        let producer = c
            .create_with_context(TxnContext::new(config, partition))
            .map_err(|e| TxnError::Create(e.to_string()))?;
        Ok(Self {
            producer,
            input_topic: Arc::from(config.input_topic.as_str()),
            output_topic: Arc::from(config.output_topic.as_str()),
            dlq_topic: Arc::from(config.dlq_topic.as_str()),
            events_topic: config.events_topic.as_deref().map(Arc::from),
            state_topic: Arc::from(config.state_topic().as_str()),
            partition,
            id,
            patience: config.transaction_timeout() * PATIENCE_TIMEOUTS,
        })
    }

    /// One past the highest offset of the partition's state records delivered so far, if any
    /// was: where the next transaction's records will lie at the earliest.
    pub fn state_end(&self) -> Option<i64> {
        let end = self.producer.context().state_end.load(Ordering::Acquire);
        (end >= 0).then_some(end)
    }

    /// A producer with an id of its own (`{group}/{topic}/probe`, under the same ACL prefix as
    /// the partitions' ids), for checking at start that the brokers run transactions for lull.
    pub fn probe(config: &Config) -> Result<Self, TxnError> {
        let mut c = crate::io::kafka::transactional_producer_config(config, 0);
        c.set(
            "transactional.id",
            format!("{}/{}/probe", config.group_id, config.input_topic),
        );
        Self::with(config, c, -1)
    }

    /// How long a commit or an abort is retried before the producer is given up (the
    /// transaction timeout).
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Registers the transactional id with its coordinator: aborts whatever an earlier owner of
    /// the partition left open, and fences that owner. Blocks.
    pub fn init(&self, timeout: Duration) -> Result<(), TxnError> {
        self.producer
            .init_transactions(timeout)
            .map_err(|e| TxnError::classify(&e))
    }

    /// Opens a transaction (a local step: the coordinator learns of it with the first record).
    pub fn begin(&self) -> Result<(), TxnError> {
        self.producer
            .begin_transaction()
            .map_err(|e| TxnError::classify(&e))
    }

    /// The error that made the producer unusable, if any, sorted like a call's.
    fn fatal(&self) -> Option<TxnError> {
        let (code, reason) = self.producer.client().fatal_error()?;
        Some(match code {
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced => TxnError::Fenced(reason),
            _ => TxnError::Fatal(reason),
        })
    }

    /// What names this incarnation of `topic` (see [`crate::io::kafka::topic_identity`]); blocks.
    pub fn topic_identity(&self, topic: &str, timeout: Duration) -> Result<Option<String>, String> {
        crate::io::kafka::topic_identity(self.producer.client(), topic, timeout)
    }

    /// Hands a record to the open transaction. State records go to the state topic's partition
    /// of the same number as the input partition; everything else is partitioned by key.
    pub fn send(&self, record: &Record) -> Result<(), SendError> {
        if let Some(e) = self.fatal() {
            return Err(SendError::Txn(e));
        }
        let topic: &str = match record.destination {
            Destination::Output => &self.output_topic,
            Destination::DeadLetter => &self.dlq_topic,
            Destination::State => &self.state_topic,
            Destination::Events => match &self.events_topic {
                Some(topic) => topic,
                None => {
                    return Err(SendError::Txn(TxnError::Fatal(
                        "a lifecycle event with LULL_EVENTS_TOPIC unset".into(),
                    )))
                }
            },
        };
        let headers = crate::io::headers::build(&record.headers);
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if record.destination == Destination::State {
            r = r.partition(self.partition);
        }
        if let Some(key) = &record.key {
            r = r.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            r = r.payload(payload.as_slice());
        }
        self.producer.send(r).map_err(|(error, _)| match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
            other => SendError::Txn(
                self.fatal()
                    .unwrap_or_else(|| TxnError::Abortable(other.to_string())),
            ),
        })
    }

    /// Commits the open transaction together with the input offset `commit` (the next offset
    /// to read) of this partition, for the consumer group `group`. Retries what may be retried
    /// for [`TxnProducer::patience`]. Blocks.
    pub fn commit(
        &self,
        commit: Option<i64>,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        let deadline = Instant::now() + self.patience;
        if let (Some(offset), Some(group)) = (commit, group) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.input_topic, self.partition, Offset::Offset(offset))
                .map_err(|e| TxnError::Fatal(e.to_string()))?;
            retrying(deadline, |timeout| {
                self.producer
                    .send_offsets_to_transaction(&tpl, group, timeout)
            })?;
        }
        retrying(deadline, |timeout| {
            self.producer.commit_transaction(timeout)
        })
    }

    /// Aborts the open transaction: nothing it wrote becomes visible. Blocks.
    pub fn abort(&self) -> Result<(), TxnError> {
        let deadline = Instant::now() + self.patience;
        retrying(deadline, |timeout| self.producer.abort_transaction(timeout))
    }
}

/// Makes `call` (given the time left) until it succeeds or fails for good. A retriable failure
/// (a coordinator not available yet; a timeout, after which making the call again resumes it) is
/// retried until `deadline`; past it the producer is given up ([`TxnError::Fatal`]: a new one
/// takes over the transactional id).
fn retrying(
    deadline: Instant,
    mut call: impl FnMut(Duration) -> Result<(), KafkaError>,
) -> Result<(), TxnError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match call(left.max(Duration::from_millis(100))) {
            Ok(()) => return Ok(()),
            Err(e) => match TxnError::classify(&e) {
                TxnError::Retriable(why) if Instant::now() >= deadline => {
                    return Err(TxnError::Fatal(format!("gave up retrying: {why}")))
                }
                TxnError::Retriable(why) => {
                    tracing::debug!(error = %why, "transactional call retried");
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => return Err(other),
            },
        }
    }
}
