//! Committing offsets: explicit, synchronous, taken as given.
//!
//! The offset committed for a partition is its commit point — the lowest offset not yet safely
//! delivered, which is already "the next offset to read" — so it goes to `commit` as is (lull
//! never uses `store_offset`, which adds one). Commits are synchronous so their outcome is known:
//! a refusal (the group moved on during a rebalance) is logged and counted, never fatal — the next
//! owner re-reads from the last good commit, and Redis keeps that replay from emitting twice.

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::ops::metrics::metrics;

/// Commits `marks` (partition, offset) of `topic`; returns whether the broker took them. Blocks:
/// call it from a rebalance callback or a blocking thread.
pub fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    marks: &[(i32, i64)],
    why: &str,
) -> bool {
    let mut tpl = TopicPartitionList::new();
    for &(p, offset) in marks {
        if let Err(e) = tpl.add_partition_offset(topic, p, Offset::Offset(offset)) {
            warn!(partition = p, error = %e, "cannot build commit list");
            return false;
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            metrics().commits.inc();
            debug!(why, offsets = ?marks, "committed");
            true
        }
        Err(e) => {
            metrics().commit_failures.inc();
            warn!(why, error = %e, offsets = ?marks, "commit refused; the uncommitted range will be re-read by its next owner");
            false
        }
    }
}
