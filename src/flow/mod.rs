//! The data path, in travel order:
//!
//! ```text
//! source ──(rebalance: split queues, forward events)──▶ partitions (owner) ──spawns──▶ worker per partition
//!   poll main queue, liveness                            commits what workers report      intake ▸ gate ▸ engine
//!                                                        (watch channels)                  ▸ outbox ▸ ledger ▸ progress
//! ```
//!
//! [`source`] owns the consumer and its main queue; [`rebalance`] is its context, which only
//! forwards; [`partitions`] owns the partition set and the commits; [`worker`] is one partition's
//! task; [`commit`] commits; [`supervisor`] takes the process down when a task dies.

pub mod commit;
pub mod partitions;
pub mod rebalance;
pub mod source;
pub mod supervisor;
pub mod worker;

use rdkafka::error::KafkaError;

use crate::io::producer::SinkError;

pub use source::run;

/// Errors that end the data path.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The consumer could not be created or subscribed (bad settings, bad topic).
    #[error("cannot start the Kafka consumer: {0}")]
    Start(#[source] KafkaError),
    /// A partition worker failed in a way that cannot be retried.
    #[error("partition worker failed: {0}")]
    Worker(#[source] SinkError),
    /// A task panicked: a bug. The process stops rather than leave its partitions stalled.
    #[error("{task} panicked: {message}")]
    Panicked {
        /// Which task (e.g. `partition 3 worker`).
        task: String,
        /// The panic's message.
        message: String,
    },
}
