//! The output and dead-letter producer, and the retry policy around it.
//!
//! One idempotent, `acks=all` producer serves every partition worker. The sink only sends; the
//! partition worker keeps each record until its delivery is acknowledged, re-sends failed ones
//! in their original order after [`Backoff`], and only then lets the commit point pass them.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::model::wire::{Destination, Record};

/// What went wrong while sending, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer could not be created (bad client settings).
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    /// librdkafka's local queue is full: wait a moment and send again.
    #[error("producer queue is full")]
    QueueFull,
    /// The record was refused or its delivery failed; it will be sent again.
    #[error("delivery failed: {0}")]
    Delivery(#[source] KafkaError),
    /// The producer hit a fatal error (e.g. idempotence broken) and cannot be used again.
    #[error("producer fatal error: {0}")]
    Fatal(String),
}

impl SinkError {
    /// Whether the process must stop (a supervisor restarts it) rather than retry.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SinkError::Fatal(_) | SinkError::Create(_))
    }
}

/// The producer lull writes batches and dead letters with.
#[derive(Clone)]
pub struct Sink {
    producer: FutureProducer<crate::ops::kafka_log::ClientLog>,
    output_topic: Arc<str>,
    dlq_topic: Arc<str>,
    /// `LULL_EVENTS_TOPIC`, when lifecycle events are on.
    events_topic: Option<Arc<str>>,
}

impl Sink {
    /// Creates the producer from the configuration.
    pub fn new(config: &Config) -> Result<Self, SinkError> {
        let producer = crate::io::kafka::producer_config(config)
            .create_with_context(crate::ops::kafka_log::ClientLog::PRODUCER)
            .map_err(SinkError::Create)?;
        Ok(Self {
            producer,
            output_topic: Arc::from(config.output_topic.as_str()),
            dlq_topic: Arc::from(config.dlq_topic.as_str()),
            events_topic: config.events_topic.as_deref().map(Arc::from),
        })
    }

    /// Hands a record to the producer; the returned future resolves on acknowledgement.
    pub fn send(&self, record: &Record) -> Result<DeliveryFuture, SinkError> {
        if let Some((_, reason)) = self.producer.client().fatal_error() {
            return Err(SinkError::Fatal(reason));
        }
        let topic = match record.destination {
            Destination::Output => &self.output_topic,
            Destination::DeadLetter => &self.dlq_topic,
            Destination::State => {
                return Err(SinkError::Fatal(
                    "a state record outside a transaction (at_least_once writes none)".into(),
                ))
            }
            Destination::Events => match &self.events_topic {
                Some(topic) => topic,
                None => {
                    return Err(SinkError::Fatal(
                        "a lifecycle event with LULL_EVENTS_TOPIC unset".into(),
                    ))
                }
            },
        };
        let headers = crate::io::headers::build(&record.headers);
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &record.key {
            fr = fr.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            fr = fr.payload(payload.as_slice());
        }
        self.producer
            .send_result(fr)
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SinkError::QueueFull,
                other => SinkError::Delivery(other),
            })
    }

    /// Classifies a failed delivery: fatal if the producer itself is broken.
    pub fn classify(&self, error: KafkaError) -> SinkError {
        match self.producer.client().fatal_error() {
            Some((_, reason)) => SinkError::Fatal(reason),
            None => SinkError::Delivery(error),
        }
    }

    /// What names this incarnation of `topic` (see [`crate::io::kafka::topic_identity`]); blocks.
    pub fn topic_identity(&self, topic: &str, timeout: Duration) -> Result<Option<String>, String> {
        crate::io::kafka::topic_identity(self.producer.client(), topic, timeout)
    }

    /// The high watermark of `topic`'s `partition` (one past its last offset); blocks.
    pub fn high_watermark(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<i64, KafkaError> {
        self.producer
            .client()
            .fetch_watermarks(topic, partition, timeout)
            .map(|(_, high)| high)
    }

    /// Waits up to `timeout` for everything queued to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
