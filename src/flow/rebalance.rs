//! The consumer's context: what librdkafka calls back. The rebalance callbacks do two things
//! only — split each newly assigned partition off into a queue of its own, and forward
//! assignments and revocations to the one task that owns the partition set
//! ([`crate::flow::partitions`]) — and the error callback tells the poll loop when every broker
//! is down. They write no state: the owner and the poll loop own every fact they report.
//!
//! A revocation waits for the owner's answer (its workers settled what they had sent, up to the
//! drain timeout, below the session timeout, and their final offsets are committed) before the
//! partitions go to their next owner: it must start from a commit point, and from Redis records,
//! that include every batch already out.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use crate::ops::kafka_log::kafka_log;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// lull's consumer.
pub type LullConsumer = StreamConsumer<LullContext>;

/// What the callbacks tell the owner of the partition set.
pub enum Event {
    /// Partitions assigned to this member, each with its own queue.
    Assigned(Vec<(i32, StreamPartitionQueue<LullContext>)>),
    /// Partitions taken away: stop their workers, commit their final offsets, then answer.
    Revoked {
        /// The partitions.
        partitions: Vec<i32>,
        /// Answered once the workers settled and their offsets are committed.
        done: SyncSender<()>,
    },
}

/// The consumer context.
pub struct LullContext {
    topic: String,
    /// The consumer itself, to split partition queues off (set once it exists).
    consumer: OnceLock<Weak<LullConsumer>>,
    events: UnboundedSender<Event>,
    /// Notified when every broker is down (the poll loop records it).
    brokers_down: Arc<Notify>,
    /// How long a revocation waits for the workers to settle.
    revoke_wait: Duration,
}

impl LullContext {
    /// A context forwarding to `events`.
    pub fn new(
        topic: &str,
        events: UnboundedSender<Event>,
        brokers_down: Arc<Notify>,
        revoke_wait: Duration,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            consumer: OnceLock::new(),
            events,
            brokers_down,
            revoke_wait,
        }
    }

    /// Tells the context its consumer, once created (before it subscribes).
    pub fn attach(&self, consumer: &Arc<LullConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    fn partitions(&self, tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Waits for the owner's answer to a revocation. The callback runs on the thread polling the
    /// consumer; on a multi-threaded runtime `block_in_place` moves that worker's other tasks
    /// away meanwhile.
    fn await_answer(&self, answer: std::sync::mpsc::Receiver<()>) -> Option<()> {
        let wait = || answer.recv_timeout(self.revoke_wait).ok();
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }
}

impl ClientContext for LullContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka_log().librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // End of partition is lull's "caught up" signal, not a problem.
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown) => {
                self.brokers_down.notify_one();
                kafka_log().unreachable(reason);
            }
            other => kafka_log().client_error("kafka client error", &other, reason),
        }
    }
}

impl ConsumerContext for LullContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Before librdkafka assigns: split each partition's queue off now, so none of its
                // messages ever lands on the main queue.
                let partitions = self.partitions(tpl);
                let Some(stream) = self.consumer.get().and_then(Weak::upgrade) else {
                    error!("partitions assigned before the consumer was attached");
                    return;
                };
                let mut queues = Vec::with_capacity(partitions.len());
                for p in partitions {
                    match stream.split_partition_queue(&self.topic, p) {
                        Some(queue) => queues.push((p, queue)),
                        None => error!(partition = p, "cannot split the partition's queue off"),
                    }
                }
                let _ = self.events.send(Event::Assigned(queues));
            }
            Rebalance::Revoke(tpl) => {
                let partitions = self.partitions(tpl);
                if partitions.is_empty() {
                    return;
                }
                let (done, answer) = sync_channel(1);
                if self
                    .events
                    .send(Event::Revoked {
                        partitions: partitions.clone(),
                        done,
                    })
                    .is_err()
                {
                    // The owner has stopped (shutdown): it committed already.
                    return;
                }
                match self.await_answer(answer) {
                    Some(()) => info!(
                        partitions = ?partitions,
                        "partitions revoked; open windows are left to the next owner"
                    ),
                    None => warn!(
                        partitions = ?partitions,
                        "partitions revoked before their workers settled (drain timeout); the next owner re-reads from the last commit"
                    ),
                }
            }
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = ?self.partitions(tpl), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}
