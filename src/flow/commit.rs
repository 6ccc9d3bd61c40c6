//! The committer: the one owner of every offset commit lull makes outside a transaction — the
//! periodic ones, a revocation's last one, and the one at shutdown — so a commit never races
//! another and a final commit always waits for a periodic one in flight.
//!
//! The offset committed for a partition is its commit point — the lowest offset not yet safely
//! delivered, which is already "the next offset to read" — so it goes to Kafka as is (lull never
//! uses `store_offset`, which adds one). Commits are synchronous, on a blocking thread, so their
//! outcome is known: a refusal (the group moved on during a rebalance) is logged and counted,
//! never fatal — the next owner re-reads from the last good commit. In exactly_once the workers
//! commit their offsets inside their transactions and the committer commits nothing, except on a
//! broker that keeps no transactional offsets (librdkafka's mock cluster), where it commits what
//! the transactions committed, after them.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::ops::metrics::metrics;
use crate::ops::supervisor::Supervisor;

use super::rebalance::LullConsumer;

/// A commit on its blocking thread: the marks it committed once it succeeded (`None` inside: it
/// panicked, which failed the process).
type InFlight = JoinHandle<Option<Option<Vec<(i32, i64)>>>>;

/// Commits the partitions' commit points, one commit at a time.
pub struct Committer {
    consumer: Arc<LullConsumer>,
    topic: Arc<str>,
    supervisor: Supervisor,
    /// Whether this process commits offsets itself (see the module's doc).
    enabled: bool,
    /// The last offset committed per partition.
    committed: HashMap<i32, i64>,
    /// The commit in flight, if any.
    in_flight: Option<InFlight>,
}

impl Committer {
    /// A committer of `topic`'s offsets through `consumer`; `enabled`: whether it commits at all.
    pub fn new(
        consumer: Arc<LullConsumer>,
        topic: Arc<str>,
        supervisor: Supervisor,
        enabled: bool,
    ) -> Self {
        Self {
            consumer,
            topic,
            supervisor,
            enabled,
            committed: HashMap::new(),
            in_flight: None,
        }
    }

    /// The commit points among `points` (partition, commit point) that moved past their last
    /// commit.
    fn moved(&self, points: impl IntoIterator<Item = (i32, Option<i64>)>) -> Vec<(i32, i64)> {
        points
            .into_iter()
            .filter_map(|(p, point)| {
                point
                    .filter(|&mark| mark >= 0 && self.committed.get(&p).is_none_or(|&c| mark > c))
                    .map(|mark| (p, mark))
            })
            .collect()
    }

    /// Every interval: takes in the outcome of the commit in flight, if it ended, and starts a
    /// commit of the points that moved, if none is in flight.
    pub async fn periodic(&mut self, points: impl IntoIterator<Item = (i32, Option<i64>)>) {
        if self.in_flight.as_ref().is_some_and(|t| t.is_finished()) {
            self.settle().await;
        }
        if self.in_flight.is_some() || !self.enabled {
            return;
        }
        let marks = self.moved(points);
        if marks.is_empty() {
            return;
        }
        self.in_flight = Some(self.start(marks, "periodic"));
    }

    /// A revocation's or a shutdown's commit: waits for the commit in flight, then commits the
    /// points that moved and waits for the outcome.
    pub async fn last(&mut self, points: impl IntoIterator<Item = (i32, Option<i64>)>, why: &str) {
        self.settle().await;
        if !self.enabled {
            return;
        }
        let marks = self.moved(points);
        if marks.is_empty() {
            return;
        }
        self.in_flight = Some(self.start(marks, why));
        self.settle().await;
    }

    /// The partition left this process: its next commit here starts afresh.
    pub fn forget(&mut self, partition: i32) {
        self.committed.remove(&partition);
    }

    /// Waits for the commit in flight, if any, and records what it committed.
    async fn settle(&mut self) {
        if let Some(task) = self.in_flight.take() {
            if let Ok(Some(Some(marks))) = task.await {
                for (p, mark) in marks {
                    let c = self.committed.entry(p).or_insert(mark);
                    *c = (*c).max(mark);
                }
            }
        }
    }

    fn start(&self, marks: Vec<(i32, i64)>, why: &str) -> InFlight {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let why = why.to_string();
        self.supervisor.spawn_blocking("offset commit", move || {
            crate::ops::fault::panic_if_armed("commit");
            commit(&*consumer, &topic, &marks, &why).then_some(marks)
        })
    }
}

/// Commits `marks` (partition, offset) of `topic`; returns whether the broker took them. Blocks.
fn commit<C: ConsumerContext>(
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
            for &(p, _) in marks {
                metrics().partitions.committed(p);
            }
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
