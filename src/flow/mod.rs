//! The data path, in travel order:
//!
//! ```text
//! source ──(rebalance: split queues, forward events)──▶ partitions (owner) ──spawns──▶ worker per partition
//!   poll main queue, liveness                            commits what workers report      intake ▸ gate ▸ engine
//!                                                        (watch channels)                  ▸ outbox ▸ ledger ▸ progress
//! ```
//!
//! [`source`] owns the consumer and its main queue; [`rebalance`] is its context, which only
//! forwards; [`partitions`] owns the partition set, the [`commit::Committer`] and the run's
//! partition health; [`worker`] is one partition's task. Every task runs under
//! [`crate::ops::supervisor`], which takes the process down when one dies.

pub mod commit;
pub mod partitions;
pub mod rebalance;
pub mod source;
pub mod worker;

use rdkafka::error::KafkaError;

pub use source::run;

/// Errors that end the data path.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The consumer could not be created or subscribed (bad settings, bad topic).
    #[error("cannot start the Kafka consumer: {0}")]
    Start(#[source] KafkaError),
}
