//! One task per assigned input partition: it alone owns that partition's windows, its output
//! records until they are delivered, and its commit point. Read top to bottom, a fragment travels:
//!
//! ```text
//! partition queue ─▶ intake ─▶ gate ─▶ window engine ─▶ output ─────────▶ ledger, progress
//!                    parse,     new?     model::window    at_least_once:    Redis writes,
//!                    dead                                 outbox (send,     commit point,
//!                    letters                              ack, retry)       gauges, budget
//!                                                         exactly_once:     ─▶ owner (watch)
//!                                                         transaction (with
//!                                                         offsets, state)
//! ```
//!
//! The task is one `select! { biased; ... }` over, in order: revocation (stop, settle what was
//! sent), shutdown (stop reading, deliver what is due), the output's next event (an
//! acknowledgement, or a transaction's commit), the retry timer, the next window deadline (only
//! while caught up), the next commit (exactly_once), new input (only while there is room), and
//! the Redis write timer. After every turn it publishes its progress.
//!
//! *Caught up* means the last thing read on the partition was its end: only then does partition
//! time follow the wall clock, so catching up after lag never lets the wall clock cut a window
//! that later input in the log would have joined. While the memory budget is used up the worker
//! stops reading (librdkafka then stops fetching once its own small prefetch is full) and closes
//! windows by the wall clock, so memory frees.
//!
//! In exactly_once ([`eos`]) the worker first starts its partition's transactions (fencing any
//! earlier owner) and reads the partition's state records; a transaction that cannot commit is
//! aborted and the worker replays from its last commit; a worker fenced off by a newer owner
//! (Kafka's transactions, or Redis) writes nothing more and waits for the group to take the
//! partition away — or stops the process, never idling while it says it is healthy.

mod emit;
mod eos;
mod feed;
pub mod gate;
pub mod intake;
pub mod ledger;
pub mod outbox;
mod output;
pub mod progress;
mod stop;
pub mod transaction;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::flow::rebalance::{LullConsumer, LullContext};
use crate::io::producer::{Sink, SinkError};
use crate::io::store::Store;
use crate::model::window::{Batch, WindowEngine};
use crate::ops::budget::Budget;
use crate::ops::clock::now_ms;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

use gate::{follow_reach, Fenced, Gate, GateParts};
use intake::Intake;
use ledger::Ledger;
use outbox::Outbox;
use output::{Output, OutputEvent};
use progress::{Phase, Progress, Status};
use transaction::Transaction;

/// How often a worker held back by the memory budget looks whether it may read again.
const BUDGET_RECHECK: Duration = Duration::from_millis(20);

/// How long a worker fenced off by Redis waits for the consumer group to take its partition away
/// before it stops the process (a zombie's group notices within a heartbeat; anything slower
/// means the group does not see what Redis sees, and a restart sorts it out).
const FENCED_PATIENCE: Duration = Duration::from_secs(30);

/// How long a worker whose transactions were fenced waits for the group to take its partition
/// away (a paused process learns it lost it at its first heartbeat: 3 s by default, 5 s with
/// KIP-848) before it concludes that the broker fenced a transaction that outlived its timeout,
/// and starts a new producer.
const TXN_FENCED_PATIENCE: Duration = Duration::from_secs(10);

/// Everything one partition's worker is given.
pub struct Worker {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The partition's own queue, split off the consumer at assignment.
    pub queue: StreamPartitionQueue<LullContext>,
    /// The consumer, for the partition's high watermark as librdkafka last saw it (and, in
    /// exactly_once, the group's metadata for each commit and the seek of a replay).
    pub consumer: Arc<LullConsumer>,
    /// The output producer (at_least_once; exactly_once has one per partition).
    pub sink: Sink,
    /// Shared state in Redis, if configured.
    pub store: Option<Arc<Store>>,
    /// The process-wide memory budget.
    pub budget: Arc<Budget>,
    /// Per-run health (the count of messages read).
    pub health: Arc<Health>,
    /// Where the worker's progress, phase and output health go back to the owner of the
    /// partition set.
    pub status: Status,
    /// Cancelled when the partition is revoked: settle what was sent, stop.
    pub revoked: CancellationToken,
    /// Cancelled when the process stops: drain, then stop.
    pub shutdown: CancellationToken,
    /// The partition's own counters (`lull_partition_*`).
    pub counters: crate::ops::partition_metrics::PartitionCounters,
}

/// The parts of one worker, each owning its state, in travel order.
struct Parts {
    intake: Intake,
    gate: Gate,
    engine: WindowEngine,
    output: Output,
    ledger: Ledger,
    progress: Progress,
    /// Batches the engine emitted this turn, on their way to the output.
    emitted: Vec<Batch>,
    /// The last thing read was the partition's end.
    caught_up: bool,
    /// The partition's high watermark as last seen.
    high: Option<i64>,
    /// exactly_once: what the state topic says of this partition, and the commits.
    eos: Option<eos::EosState>,
}

impl Parts {
    /// An input message at `offset` was read (whatever becomes of it).
    fn read(&mut self, offset: i64) {
        self.progress.read(offset);
        if let Some(state) = self.eos.as_mut() {
            state.read(offset);
        }
    }
}

/// Why a worker stopped early.
enum Stop {
    /// The partition's transactional producer was fenced: by the partition's next owner (this
    /// process was paused past its session), or by the broker when a transaction outlived its
    /// timeout (a long broker outage). Nothing more may be written until it is clear which.
    Fenced(String),
    /// Redis holds a newer owner's claim on the partition, in this consumer group.
    FencedByRedis(String),
    /// The open transaction cannot commit: abort it (exactly_once), then see.
    Abort(crate::io::transactional::TxnError),
    /// A transaction was aborted: replay from the last commit (exactly_once).
    Rewind,
    /// The transactional producer broke (a fatal error that is no fencing): a new one, then a
    /// replay from the last commit (exactly_once).
    Reinit(String),
    /// The producer failed fatally.
    Fatal(SinkError),
}

impl From<Fenced> for Stop {
    fn from(f: Fenced) -> Self {
        Stop::FencedByRedis(f.0)
    }
}

impl From<SinkError> for Stop {
    fn from(e: SinkError) -> Self {
        Stop::Fatal(e)
    }
}

impl Worker {
    /// Runs until the partition is revoked or the process shuts down (`Ok`), or until the
    /// producer fails fatally or a fenced-off partition is not taken away (an error: the process
    /// stops).
    pub async fn run(self) -> Result<(), SinkError> {
        let outcome = self.live().await;
        self.status.phase(Phase::Done);
        outcome
    }

    /// The worker's life, phase by phase: [`Phase::Claiming`] (exactly_once: transactions and
    /// state), then the event loop in [`Phase::Running`] and [`Phase::Draining`], back to
    /// `Claiming` for a replay, or [`Phase::Fenced`] while a newer owner holds the partition.
    async fn live(&self) -> Result<(), SinkError> {
        let assigned = Instant::now();
        let mut first_start = true;
        let producer = if self.config.exactly_once() {
            match self.start_transactions().await {
                Ok(Some(producer)) => Some(producer),
                Ok(None) => return Ok(()),
                Err(stop) => return self.stopped(stop).await,
            }
        } else {
            None
        };
        // Closing a librdkafka client blocks (it flushes, then waits for its threads): when the
        // worker ends, its producer closes on a blocking thread, not on the async workers.
        let mut producer = CloseOffRuntime(producer);
        debug!(partition = self.partition, "partition worker started");
        // A replay is due (after an abort or a new producer): where it starts when nothing was
        // ever committed (the first offset the last run read).
        let mut replay: Option<Option<i64>> = None;
        // The input topic's identity once learned: a replay keeps it (it never changes while
        // the worker runs, and asking again could fail just then).
        let mut identity: Option<String> = None;
        loop {
            let mut p = match self.parts(producer.0.as_ref(), identity.clone()).await {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(stop) => return self.stopped(stop).await,
            };
            identity = p.eos.as_ref().map(|s| s.topic_id.clone());
            if let Some(fallback) = replay.take() {
                // From the offset the group holds now, read after the state: a commit that
                // seemed to fail may have landed (a new producer completes a commit its
                // predecessor had asked for), and replaying below it would emit again what it
                // made visible.
                let from = p.eos.as_ref().and_then(|s| s.committed).or(fallback);
                if let Err(stop) = self.rewind(from).await {
                    return self.stopped(stop).await;
                }
            }
            if first_start {
                first_start = false;
                metrics()
                    .partition_start_seconds
                    .observe(assigned.elapsed().as_secs_f64());
            }
            let outcome = match self.event_loop(&mut p).await {
                Err(Stop::Abort(cause)) => Err(self.abort(&mut p, cause).await),
                other => other,
            };
            self.status.phase(Phase::Claiming);
            p.progress.finish();
            match outcome {
                Ok(()) => {
                    debug!(partition = self.partition, "partition worker stopped");
                    return Ok(());
                }
                Err(Stop::Rewind) => replay = Some(Self::first_read(&p)),
                Err(Stop::Fenced(why)) => {
                    if self.parked(&why, TXN_FENCED_PATIENCE).await {
                        return Ok(());
                    }
                    // The group kept the partition here: the broker fenced a transaction that
                    // outlived its timeout. A new producer, and a replay.
                    warn!(
                        partition = self.partition,
                        reason = %why,
                        "the partition's transactions were fenced but the consumer group kept the \
                         partition here (a transaction outlived its timeout): starting a new \
                         producer, then replaying from the last commit"
                    );
                    replay = Some(Self::first_read(&p));
                    drop(p);
                    if let Err(stop) = self.restart_transactions(&mut producer).await {
                        return self.stopped(stop).await;
                    }
                }
                Err(Stop::Reinit(why)) => {
                    warn!(
                        partition = self.partition,
                        reason = %why,
                        "the partition's transactional producer failed: starting a new one, then \
                         replaying from the last commit"
                    );
                    replay = Some(Self::first_read(&p));
                    drop(p);
                    if let Err(stop) = self.restart_transactions(&mut producer).await {
                        return self.stopped(stop).await;
                    }
                }
                Err(stop) => return self.stopped(stop).await,
            }
        }
    }

    /// The parts for a start, or for a replay (exactly_once: the state records are read
    /// again, knowing the input topic's `identity` if an earlier start learned it); `None` if
    /// the partition was taken away meanwhile.
    async fn parts(
        &self,
        producer: Option<&Arc<crate::io::transactional::TxnProducer>>,
        identity: Option<String>,
    ) -> Result<Option<Parts>, Stop> {
        let mut engine =
            WindowEngine::new(self.config.window()).with_channels(self.config.channel_windows());
        if self.config.events_topic.is_some() {
            engine.track_opened();
        }
        let mut progress = Progress::new(self.status.sender(), self.budget.clone());
        let (output, eos) = match producer {
            None => (
                Output::Acked(Outbox::new(self.sink.clone(), self.partition)),
                None,
            ),
            Some(producer) => {
                let Some(state) = self.restore(producer, identity).await? else {
                    return Ok(None);
                };
                for (key, kept) in state.keys.by_last_ts() {
                    engine.seed_follows(key, &kept.batch_id, kept.last_ts);
                }
                progress.transactional(state.committed);
                (
                    Output::Txn(Transaction::new(producer.clone(), self.config.transaction)),
                    Some(state),
                )
            }
        };
        Ok(Some(Parts {
            intake: Intake::new(
                &self.config,
                self.topic.clone(),
                self.partition,
                self.store.is_some(),
                self.counters.fragments.clone(),
            ),
            gate: Gate::new(GateParts {
                store: self.store.clone(),
                sink: self.sink.clone(),
                topic: self.topic.clone(),
                partition: self.partition,
                records: eos.is_none(),
                reach_ms: follow_reach(engine.config()),
            }),
            engine,
            output,
            ledger: Ledger::new(eos.is_none()),
            progress,
            emitted: Vec::new(),
            caught_up: false,
            high: None,
            eos,
        }))
    }

    /// Replaces a broken or fenced producer with a new one (whose registration fences the old
    /// one, whatever state it is stuck in, and settles the transaction it left). A partition
    /// taken away meanwhile ends the worker: [`Stop::Rewind`] is then returned as a plain end.
    async fn restart_transactions(
        &self,
        producer: &mut CloseOffRuntime<Arc<crate::io::transactional::TxnProducer>>,
    ) -> Result<(), Stop> {
        // The old one closes off the runtime.
        drop(std::mem::replace(producer, CloseOffRuntime(None)));
        match self.start_transactions().await? {
            Some(fresh) => *producer = CloseOffRuntime(Some(fresh)),
            None => return Err(Stop::Rewind),
        }
        Ok(())
    }

    /// The event loop of [`Phase::Running`] and [`Phase::Draining`]: returns when the partition
    /// is revoked (after settling what was sent) or, draining, once everything made is delivered
    /// or the drain timeout passed.
    async fn event_loop(&self, p: &mut Parts) -> Result<(), Stop> {
        let mut stream = self.queue.stream();
        p.gate.claim().await?;
        let mut phase = Lifecycle::Running;
        self.status.phase(Phase::Running);
        loop {
            self.pump(p)?;
            let draining = match phase {
                Lifecycle::Running => None,
                Lifecycle::Draining { until } => {
                    if self.settled(p) {
                        self.sync(p, true).await?;
                        return Ok(());
                    }
                    Some(until)
                }
            };
            let commit_at = self.commit_due(p, draining.is_some());
            if commit_at.is_some_and(|at| at <= Instant::now()) {
                self.start_commit(p)?;
            }
            // Over the memory budget nothing is read; partition time then follows the wall clock
            // so windows still close and free memory, even in catch-up (batch boundaries may then
            // differ from a replay: memory comes first).
            let starved = self.budget.starved();
            let deadline = match phase {
                Lifecycle::Running if p.caught_up || starved => {
                    p.engine.next_deadline().map(wall_to_instant)
                }
                _ => None,
            };
            let commit_at = self.commit_due(p, draining.is_some());
            let reading = matches!(phase, Lifecycle::Running)
                && p.output.has_room()
                && !self.budget.exhausted()
                && !self.commit_waits_for_output(p, commit_at);
            let hold = p.output.hold_until();
            let sync_at = p.ledger.due();

            tokio::select! {
                biased;
                _ = self.revoked.cancelled() => {
                    self.settle_revoked(p).await;
                    return Ok(());
                }
                _ = self.shutdown.cancelled(), if draining.is_none() => {
                    phase = Lifecycle::Draining {
                        until: Instant::now() + self.config.drain_timeout,
                    };
                    self.status.phase(Phase::Draining);
                    if p.caught_up {
                        p.engine.advance(now_ms(), &mut p.emitted);
                    }
                }
                event = p.output.next() => match event? {
                    OutputEvent::Settled(settled) => {
                        self.acknowledged(p, settled);
                        if let Output::Acked(o) = &mut p.output {
                            for acked in o.settled_now()? {
                                self.acknowledged(p, Some(acked));
                            }
                        }
                    }
                    OutputEvent::Committed(result) => self.committed(p, result).await?,
                },
                _ = sleep_until_opt(hold), if hold.is_some() => p.output.release_hold(),
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    p.engine.advance(now_ms(), &mut p.emitted);
                }
                _ = sleep_until_opt(commit_at), if commit_at.is_some() => {}
                first = stream.next(), if reading => {
                    if let Some(first) = first {
                        let chunk = p
                            .intake
                            .chunk(first, &mut stream, self.consumer.client(), p.caught_up)
                            .await;
                        self.take(p, chunk).await?;
                    }
                }
                _ = sleep_until_opt(sync_at), if sync_at.is_some() => self.sync(p, false).await?,
                _ = tokio::time::sleep(BUDGET_RECHECK), if starved => {}
                _ = sleep_until_opt(draining), if draining.is_some() => {
                    warn!(
                        partition = self.partition,
                        unacknowledged = p.output.held(),
                        "drain timeout passed with output not delivered; it will be replayed"
                    );
                    return Ok(());
                }
            }
            self.route(p);
            // Checked here too: under steady input the biased select may not reach its timer.
            if p.ledger.full() || p.ledger.due().is_some_and(|at| at <= Instant::now()) {
                self.sync(p, false).await?;
            }
            p.progress
                .publish(&p.engine, p.output.bytes(), p.high, reading);
        }
    }

    /// Hands what waits to the producer (at_least_once) or into the transaction (exactly_once:
    /// the commit point may pass a record once it is in the transaction).
    fn pump(&self, p: &mut Parts) -> Result<(), Stop> {
        match &mut p.output {
            Output::Acked(o) => o.pump()?,
            Output::Txn(t) => {
                for first_offset in t.pump().map_err(Stop::Abort)? {
                    p.progress.release(first_offset);
                }
            }
        }
        Ok(())
    }

    /// Whether everything made has been delivered (at_least_once) or committed (exactly_once).
    fn settled(&self, p: &mut Parts) -> bool {
        match &p.output {
            Output::Acked(o) => o.is_empty(),
            Output::Txn(t) => t.is_settled() && !self.offsets_moved(p),
        }
    }

    /// Writes what the ledger holds to Redis (a no-op without Redis): what is due, or `all` of
    /// it (the last write); if Redis cannot take it, it waits for the next write.
    async fn sync(&self, p: &mut Parts, all: bool) -> Result<(), Stop> {
        let batch = if all {
            p.ledger.take(&p.engine, p.gate.inherited_below())
        } else {
            p.ledger
                .take_due(&p.engine, p.gate.inherited_below(), Instant::now())
        };
        let high = p.high.unwrap_or(0).max(
            batch
                .batches
                .iter()
                .map(|b| b.last_offset + 1)
                .max()
                .unwrap_or(0),
        );
        if let Some(unwritten) = p.gate.sync(batch, high).await? {
            p.ledger.retry(unwritten);
        }
        Ok(())
    }

    /// After a revocation: nothing new is read. at_least_once sends nothing more but waits (up
    /// to the drain timeout) for deliveries already in flight; exactly_once puts everything made
    /// into the transaction and commits it. Then the final commit point is published and the
    /// delivered batches recorded in Redis. The owner holds the rebalance until this is done, so
    /// the next owner starts from a commit point (and records) that include every batch that
    /// went out.
    async fn settle_revoked(&self, p: &mut Parts) {
        let end = Instant::now() + self.config.drain_timeout;
        if matches!(p.output, Output::Txn(_)) {
            self.commit_revoked(p, end).await;
        } else {
            if let Output::Acked(o) = &mut p.output {
                o.drop_unsent();
            }
            while let Output::Acked(o) = &mut p.output {
                if o.in_flight() == 0 {
                    break;
                }
                match tokio::time::timeout_at(end, o.settled()).await {
                    Ok(Ok(acked)) => self.acknowledged(p, acked),
                    _ => break,
                }
            }
        }
        p.progress
            .publish(&p.engine, p.output.bytes(), p.high, false);
        if let Err(Stop::FencedByRedis(why)) = self.sync(p, true).await {
            debug!(partition = self.partition, reason = %why, "revoked partition already claimed by its next owner");
        }
    }
}

/// The part of a worker's life its event loop runs (the loop matches on it).
#[derive(Debug, Clone, Copy)]
enum Lifecycle {
    /// Reading input, cutting batches.
    Running,
    /// Shutting down: nothing more is read; what is made is delivered until `until`.
    Draining {
        /// The drain timeout.
        until: Instant,
    },
}

/// Drops what it holds on a blocking thread (a Kafka client, whose close blocks).
struct CloseOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Drop for CloseOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(held))),
                Err(_) => drop(held),
            }
        }
    }
}

/// The tokio instant at which the wall clock reads `wall_ms`.
fn wall_to_instant(wall_ms: i64) -> Instant {
    let delta = wall_ms.saturating_sub(now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(delta)
}

/// Sleeps until `at`, or forever when there is no deadline (a disabled `select!` timer).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
