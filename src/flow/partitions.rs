//! The owner of the partition set: the one task that starts and stops partition workers, owns
//! the [`Committer`], and turns the workers' reports into the run's health.
//!
//! * [`Event::Assigned`]: a worker per partition, on the partition's own queue, supervised; the
//!   process is in the group from the first assignment (even an empty one).
//! * [`Event::Revoked`]: the workers are told to stop; they settle what they had sent (up to the
//!   drain timeout); the committer commits their final commit points (after any commit in
//!   flight), and only then does the rebalance callback get its answer and let the partitions
//!   move.
//! * Every [`COMMIT_INTERVAL`], the commit points that moved are committed, and lag, the oldest
//!   open window and the back-pressure gauge are reported.
//! * Whenever a worker's phase or output health changes (it wakes this task), the run's health
//!   is recomputed from all of them: partitions claiming, waiting, running, fenced, and whether
//!   every partition's output works. No worker writes the run's health itself.
//!
//! Commit points travel here as values: each worker owns a `watch` sender of its
//! [`PartitionProgress`]; this task owns the receivers. Nothing else reads them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::io::producer::Sink;
use crate::io::store::Store;
use crate::ops::budget::Budget;
use crate::ops::clock::now_ms;
use crate::ops::health::{Health, PartitionCounts};
use crate::ops::metrics::metrics;
use crate::ops::supervisor::Supervisor;

use super::commit::Committer;
use super::rebalance::{Event, LullConsumer, LullContext};
use super::worker::progress::{PartitionProgress, Phase, Status};
use super::worker::Worker;

/// How often moved commit points are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// One running worker, as the owner sees it.
struct Handle {
    revoked: CancellationToken,
    task: JoinHandle<()>,
    progress: watch::Receiver<PartitionProgress>,
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
    /// Whether this process commits offsets itself: in at_least_once always; in exactly_once
    /// only on a broker that does not keep offsets committed inside transactions (librdkafka's
    /// mock cluster), where it commits the offsets the transactions committed, after them.
    pub plain_commits: bool,
}

/// The partition set and its workers.
pub struct Owner {
    shared: Shared,
    workers: HashMap<i32, Handle>,
    committer: Committer,
    /// Woken by a worker whose phase or output health changed.
    changed: Arc<Notify>,
}

impl Owner {
    /// An owner with no partitions yet.
    pub fn new(shared: Shared) -> Self {
        let committer = Committer::new(
            shared.consumer.clone(),
            shared.topic.clone(),
            shared.supervisor.clone(),
            shared.plain_commits,
        );
        Self {
            shared,
            workers: HashMap::new(),
            committer,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Runs until shutdown: then waits for the workers to drain, commits, and returns.
    pub async fn run(
        mut self,
        mut events: UnboundedReceiver<Event>,
    ) -> Result<(), std::convert::Infallible> {
        let mut tick = tokio::time::interval(COMMIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changed = self.changed.clone();
        loop {
            tokio::select! {
                biased;
                _ = self.shared.abandoned.cancelled() => {
                    for h in self.workers.values() {
                        h.task.abort();
                    }
                    return Ok(());
                }
                _ = self.shared.shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(Event::Assigned(queues)) => self.assigned(queues),
                    Some(Event::Revoked { partitions, done }) => {
                        self.revoked(&partitions).await;
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = changed.notified() => self.report_health(),
                _ = tick.tick() => {
                    crate::ops::fault::panic_if_armed("owner");
                    let points = self.points();
                    self.committer.periodic(points).await;
                    self.report();
                }
            }
        }
        self.drain(&mut events).await;
        Ok(())
    }

    /// Every partition's commit point.
    fn points(&self) -> Vec<(i32, Option<i64>)> {
        self.workers
            .iter()
            .map(|(p, h)| (*p, h.progress.borrow().commit))
            .collect()
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
                status: Status::new(tx, self.changed.clone()),
                revoked: revoked.clone(),
                shutdown: s.shutdown.clone(),
                counters: metrics().partitions.counters(partition),
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
                },
            );
        }
        // A member from its first assignment, even an empty one.
        self.shared.health.set_in_group(true);
        self.counted();
    }

    /// Stops the workers of `partitions`, waits for them to settle (bounded), and commits the
    /// commit points they reached.
    async fn revoked(&mut self, partitions: &[i32]) {
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
            metrics().partitions.forget(*p);
        }
        let points: Vec<(i32, Option<i64>)> = handles
            .iter()
            .map(|(p, h)| (*p, h.progress.borrow().commit))
            .collect();
        self.committer.last(points, "revoke").await;
        for (p, _) in &handles {
            self.committer.forget(*p);
        }
        if self.workers.is_empty() {
            self.shared.health.set_in_group(false);
        }
        self.counted();
    }

    /// Publishes how many partitions this instance owns, and their phases.
    fn counted(&self) {
        let n = self.workers.len();
        metrics().assigned_partitions.set(n as i64);
        self.shared.health.set_assigned(n);
        self.report_health();
    }

    /// The run's health from the workers' phases and output health: the one place that writes
    /// them.
    fn report_health(&self) {
        let mut counts = PartitionCounts::default();
        let mut output_ok = true;
        for h in self.workers.values() {
            let progress = *h.progress.borrow();
            output_ok &= progress.output_ok;
            match progress.phase {
                Phase::Waiting => counts.waiting += 1,
                Phase::Running | Phase::Draining => counts.running += 1,
                Phase::Fenced => counts.fenced += 1,
                Phase::Claiming | Phase::Done => {}
            }
        }
        let health = &self.shared.health;
        health.set_partitions(counts);
        health.set_producer_ok(output_ok);
    }

    /// Lag per partition (from the commit point), the age of the oldest open window, how many
    /// partitions are held back.
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
            let age = progress
                .oldest_open_ts
                .map_or(0.0, |ts| (now_ms() - ts).max(0) as f64 / 1000.0);
            m.partitions
                .set(*p, progress.open_windows, age, progress.phase.name());
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
    /// them (bounded), and commit what they reached (after any commit in flight). Revocations
    /// that arrive meanwhile (the consumer closing) have nothing left to wait for: the channel
    /// closes with this task.
    async fn drain(mut self, events: &mut UnboundedReceiver<Event>) {
        info!("stopping: draining partition workers");
        let limit = self.shared.config.drain_timeout + Duration::from_secs(1);
        let all = futures_util::future::join_all(self.workers.values_mut().map(|h| &mut h.task));
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("partition workers did not stop within the drain timeout");
        }
        let points = self.points();
        self.committer.last(points, "shutdown").await;
        events.close();
        self.workers.clear();
        self.counted();
    }
}
