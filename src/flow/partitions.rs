//! The owner of the partition set: the one task that starts and stops partition workers, and
//! commits what they report.
//!
//! * [`Event::Assigned`]: a worker per partition, on the partition's own queue, supervised.
//! * [`Event::Revoked`]: the workers are told to stop; they settle what they had sent (up to the
//!   drain timeout), and their final commit points go back to the rebalance callback, which
//!   commits them before the partitions move.
//! * Every [`COMMIT_INTERVAL`], the commit points that moved are committed (on a blocking thread,
//!   synchronously, so failures are seen), and lag, the oldest open window and readiness are
//!   reported. In exactly_once the workers commit their offsets inside their transactions and
//!   this task commits nothing (except on a broker that keeps no transactional offsets: see
//!   [`Shared::plain_commits`]).
//!
//! Commit points travel here as values: each worker owns a `watch` sender of its
//! [`PartitionProgress`]; this task owns the receivers. Nothing else reads them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::io::producer::Sink;
use crate::io::store::Store;
use crate::model::wire::now_ms;
use crate::ops::budget::Budget;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

use super::commit;
use super::rebalance::{Event, LullConsumer, LullContext};
use super::supervisor::Supervisor;
use super::worker::progress::PartitionProgress;
use super::worker::Worker;

/// How often moved commit points are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// One running worker, as the owner sees it.
struct Handle {
    revoked: CancellationToken,
    task: JoinHandle<()>,
    progress: watch::Receiver<PartitionProgress>,
    /// The last offset committed; -1 if none.
    committed: i64,
}

impl Handle {
    /// The commit point, when it moved past the last commit.
    fn moved(&self) -> Option<i64> {
        self.progress
            .borrow()
            .commit
            .filter(|&mark| mark >= 0 && mark > self.committed)
    }
}

/// What a worker needs from the process, handed to each new one.
pub struct Shared {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Input topic.
    pub topic: Arc<str>,
    /// The consumer (workers read its cached high watermarks; commits go through it).
    pub consumer: Arc<LullConsumer>,
    /// The output producer.
    pub sink: Sink,
    /// Shared state in Redis, if configured.
    pub store: Option<Arc<Store>>,
    /// The memory budget.
    pub budget: Arc<Budget>,
    /// Per-run health.
    pub health: Arc<Health>,
    /// The process's shutdown.
    pub shutdown: CancellationToken,
    /// Cancelled when the data path is dropped without a shutdown (its future aborted): stop
    /// every worker at once, commit nothing, let go of the consumer.
    pub abandoned: CancellationToken,
    /// Where failures go.
    pub supervisor: Supervisor,
    /// Whether this task commits offsets itself: in at_least_once always; in exactly_once only
    /// on a broker that does not keep offsets committed inside transactions (librdkafka's mock
    /// cluster), where it commits the offsets the transactions committed, after them.
    pub plain_commits: bool,
}

/// The partition set and its workers.
pub struct Owner {
    shared: Shared,
    workers: HashMap<i32, Handle>,
    /// The commit in progress, if any (one at a time).
    committing: Option<JoinHandle<Vec<(i32, i64)>>>,
}

impl Owner {
    /// An owner with no partitions yet.
    pub fn new(shared: Shared) -> Self {
        Self {
            shared,
            workers: HashMap::new(),
            committing: None,
        }
    }

    /// Runs until shutdown: then waits for the workers to drain, commits, and returns.
    pub async fn run(mut self, mut events: UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(COMMIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shared.abandoned.cancelled() => {
                    for h in self.workers.values() {
                        h.task.abort();
                    }
                    return;
                }
                _ = self.shared.shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(Event::Assigned(queues)) => self.assigned(queues),
                    Some(Event::Revoked { partitions, done }) => {
                        let marks = self.revoked(&partitions).await;
                        let _ = done.send(marks);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    self.commit_moved().await;
                    self.report();
                }
            }
        }
        self.drain(&mut events).await;
    }

    fn assigned(
        &mut self,
        queues: Vec<(
            i32,
            rdkafka::consumer::stream_consumer::StreamPartitionQueue<LullContext>,
        )>,
    ) {
        let s = &self.shared;
        for (partition, queue) in queues {
            if let Some(old) = self.workers.remove(&partition) {
                old.revoked.cancel();
            }
            let (tx, rx) = watch::channel(PartitionProgress::default());
            let revoked = CancellationToken::new();
            let worker = Worker {
                topic: s.topic.clone(),
                partition,
                config: s.config.clone(),
                queue,
                consumer: s.consumer.clone(),
                sink: s.sink.clone(),
                store: s.store.clone(),
                budget: s.budget.clone(),
                health: s.health.clone(),
                progress: tx,
                revoked: revoked.clone(),
                shutdown: s.shutdown.clone(),
            };
            let task = s
                .supervisor
                .spawn(format!("partition {partition} worker"), worker.run());
            self.workers.insert(
                partition,
                Handle {
                    revoked,
                    task,
                    progress: rx,
                    committed: -1,
                },
            );
        }
        self.counted();
    }

    /// Stops the workers of `partitions`, waits for them to settle (bounded), and returns the
    /// commit points that moved.
    async fn revoked(&mut self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut handles: Vec<(i32, Handle)> = partitions
            .iter()
            .filter_map(|p| self.workers.remove(p).map(|h| (*p, h)))
            .collect();
        for (_, h) in &handles {
            h.revoked.cancel();
        }
        let limit = self.shared.config.drain_timeout + Duration::from_secs(1);
        let settled = tokio::time::timeout(
            limit,
            futures_util::future::join_all(handles.iter_mut().map(|(_, h)| &mut h.task)),
        )
        .await;
        if settled.is_err() {
            warn!("revoked partition workers did not settle within the drain timeout");
        }
        for (p, _) in &handles {
            let _ = metrics()
                .consumer_lag
                .remove_label_values(&[&p.to_string()]);
        }
        self.counted();
        if self.workers.is_empty() {
            self.shared.health.set_in_group(false);
        }
        if !self.shared.plain_commits {
            // exactly_once: the workers committed their offsets in their last transactions.
            return Vec::new();
        }
        handles
            .iter()
            .filter_map(|(p, h)| h.moved().map(|mark| (*p, mark)))
            .collect()
    }

    /// Publishes how many partitions this instance owns.
    fn counted(&self) {
        let n = self.workers.len();
        metrics().assigned_partitions.set(n as i64);
        self.shared.health.set_assigned(n);
    }

    /// Commits every commit point that moved, on a blocking thread (one commit at a time).
    async fn commit_moved(&mut self) {
        if let Some(done) = self.committing.take_if(|t| t.is_finished()) {
            match done.await {
                Ok(marks) => self.committed(&marks),
                Err(e) => self.shared.supervisor.joined("offset commit", e),
            }
        }
        if self.committing.is_some() || !self.shared.plain_commits {
            return;
        }
        let marks: Vec<(i32, i64)> = self
            .workers
            .iter()
            .filter_map(|(p, h)| h.moved().map(|mark| (*p, mark)))
            .collect();
        if marks.is_empty() {
            return;
        }
        let consumer = self.shared.consumer.clone();
        let topic = self.shared.topic.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || {
            if commit::commit(&*consumer, &topic, &marks, "periodic") {
                marks
            } else {
                Vec::new()
            }
        }));
    }

    fn committed(&mut self, marks: &[(i32, i64)]) {
        for &(p, mark) in marks {
            if let Some(h) = self.workers.get_mut(&p) {
                h.committed = h.committed.max(mark);
            }
        }
    }

    /// Lag per partition (from the commit point), the age of the oldest open window, how many
    /// partitions are held back, and readiness.
    fn report(&self) {
        let m = metrics();
        let mut oldest = i64::MAX;
        let mut held_back = 0;
        for (p, h) in &self.workers {
            let progress = *h.progress.borrow();
            if let (Some(commit), Some(high)) = (progress.commit, progress.high) {
                m.consumer_lag
                    .with_label_values(&[&p.to_string()])
                    .set((high - commit).max(0));
            }
            if let Some(ts) = progress.oldest_open_ts {
                oldest = oldest.min(ts);
            }
            if !progress.reading && progress.commit.is_some() {
                held_back += 1;
            }
        }
        let age = if oldest == i64::MAX {
            0.0
        } else {
            (now_ms() - oldest).max(0) as f64 / 1000.0
        };
        m.oldest_open_window_age.set(age);
        m.backpressure_paused.set(held_back);
    }

    /// After shutdown: the workers drain by themselves (they watch the same token); wait for
    /// them (bounded), answer any revocation that comes meanwhile, and commit what they reached.
    async fn drain(mut self, events: &mut UnboundedReceiver<Event>) {
        info!("stopping: draining partition workers");
        let limit = self.shared.config.drain_timeout + Duration::from_secs(1);
        let all = futures_util::future::join_all(self.workers.values_mut().map(|h| &mut h.task));
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("partition workers did not stop within the drain timeout");
        }
        if let Some(t) = self.committing.take() {
            if let Ok(marks) = t.await {
                self.committed(&marks);
            }
        }
        let marks: Vec<(i32, i64)> = self
            .workers
            .iter()
            .filter_map(|(p, h)| h.moved().map(|mark| (*p, mark)))
            .collect();
        if !marks.is_empty() && self.shared.plain_commits {
            let consumer = self.shared.consumer.clone();
            let topic = self.shared.topic.clone();
            let _ = tokio::task::spawn_blocking(move || {
                commit::commit(&*consumer, &topic, &marks, "shutdown")
            })
            .await;
        }
        // Revocations that arrive from now on (the consumer closing) have nothing left to wait
        // for: the channel closes with this task.
        events.close();
        self.workers.clear();
        self.counted();
    }
}
