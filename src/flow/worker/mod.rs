//! One task per assigned input partition: it alone owns that partition's windows, its output
//! records in flight and its commit point. Read top to bottom, a fragment travels:
//!
//! ```text
//! partition queue ─▶ intake ─▶ gate ─▶ window engine ─▶ outbox ─▶ (acknowledged) ─▶ ledger, progress
//!                    parse,     new?     model::window    send,       Redis writes    commit point,
//!                    dead                                 retry       (flushed marks,  gauges, budget
//!                    letters                              in order     summaries)      ─▶ owner (watch)
//! ```
//!
//! The task is one `select! { biased; ... }` over, in order: revocation (stop, settle what was
//! sent), shutdown (stop reading, deliver what is due, wait for acknowledgements),
//! acknowledgements, the retry timer, the next window deadline (only while caught up), new input
//! (only while there is room), and the Redis write timer. After every turn it publishes its
//! progress.
//!
//! *Caught up* means the last thing read on the partition was its end: only then does partition
//! time follow the wall clock, so catching up after lag never lets the wall clock cut a window
//! that later input in the log would have joined. While the memory budget is used up the worker
//! stops reading (librdkafka then stops fetching once its own small prefetch is full) and closes
//! windows by the wall clock, so memory frees.

pub mod gate;
pub mod intake;
pub mod ledger;
pub mod outbox;
pub mod progress;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::config::Config;
use crate::flow::rebalance::{LullConsumer, LullContext};
use crate::io::producer::{Sink, SinkError};
use crate::io::store::{Candidate, Store, Verdict};
use crate::model::window::{Batch, FlushReason, SignalOutcome, WindowEngine};
use crate::model::wire::{self, now_ms};
use crate::ops::budget::Budget;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

use gate::{Fenced, Gate};
use intake::{Chunk, Intake, Item};
use ledger::Ledger;
use outbox::{Acked, Kind, Outbox};
use progress::{PartitionProgress, Progress};

/// How often a worker held back by the memory budget looks whether it may read again.
const BUDGET_RECHECK: Duration = Duration::from_millis(20);

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
    /// The consumer, for the partition's high watermark as librdkafka last saw it.
    pub consumer: Arc<LullConsumer>,
    /// The output producer.
    pub sink: Sink,
    /// Shared state in Redis, if configured.
    pub store: Option<Arc<Store>>,
    /// The process-wide memory budget.
    pub budget: Arc<Budget>,
    /// Per-run health (producer state).
    pub health: Arc<Health>,
    /// Where the worker's progress goes back to the owner of the partition set.
    pub progress: watch::Sender<PartitionProgress>,
    /// Cancelled when the partition is revoked: settle what was sent, stop.
    pub revoked: CancellationToken,
    /// Cancelled when the process stops: drain, then stop.
    pub shutdown: CancellationToken,
}

/// The parts of one worker, each owning its state, in travel order.
struct Parts {
    intake: Intake,
    gate: Gate,
    engine: WindowEngine,
    outbox: Outbox<Sink>,
    ledger: Ledger,
    progress: Progress,
    /// Batches the engine emitted this turn, on their way to the outbox.
    emitted: Vec<Batch>,
    /// The last thing read was the partition's end.
    caught_up: bool,
    /// The partition's high watermark as last seen.
    high: Option<i64>,
}

/// Why a worker stopped early.
enum Stop {
    /// Another instance owns the partition (Redis fencing).
    Fenced(Fenced),
    /// The producer failed fatally.
    Fatal(SinkError),
}

impl From<Fenced> for Stop {
    fn from(f: Fenced) -> Self {
        Stop::Fenced(f)
    }
}

impl From<SinkError> for Stop {
    fn from(e: SinkError) -> Self {
        Stop::Fatal(e)
    }
}

impl Worker {
    /// Runs until the partition is revoked, the process shuts down, another instance takes the
    /// partition over (Redis fencing), or the producer fails fatally (an error: the process
    /// stops).
    pub async fn run(self) -> Result<(), SinkError> {
        let mut p = Parts {
            intake: Intake::new(
                &self.config,
                self.topic.clone(),
                self.partition,
                self.store.is_some(),
            ),
            gate: Gate::new(
                self.store.clone(),
                self.sink.clone(),
                self.topic.clone(),
                self.partition,
            ),
            engine: WindowEngine::new(self.config.window()),
            outbox: Outbox::new(self.sink.clone(), self.partition),
            ledger: Ledger::default(),
            progress: Progress::new(self.progress.clone(), self.budget.clone()),
            emitted: Vec::new(),
            caught_up: false,
            high: None,
        };
        if self.config.events_topic.is_some() {
            p.engine.track_opened();
        }
        debug!(partition = self.partition, "partition worker started");
        let result = match self.event_loop(&mut p).await {
            Ok(()) => Ok(()),
            Err(Stop::Fenced(Fenced(why))) => {
                metrics().fenced_off.inc();
                error!(
                    partition = self.partition,
                    reason = %why,
                    "another instance owns this partition now: this worker stops touching it"
                );
                Ok(())
            }
            Err(Stop::Fatal(e)) => Err(e),
        };
        p.progress.finish();
        debug!(partition = self.partition, "partition worker stopped");
        result
    }

    async fn event_loop(&self, p: &mut Parts) -> Result<(), Stop> {
        let mut stream = self.queue.stream();
        let mut drain_deadline: Option<Instant> = None;
        p.gate.claim().await?;
        loop {
            p.outbox.pump()?;
            if drain_deadline.is_some() && p.outbox.is_empty() {
                self.sync(p).await?;
                return Ok(());
            }
            // Over the memory budget nothing is read; partition time then follows the wall clock
            // so windows still close and free memory, even in catch-up (batch boundaries may then
            // differ from a replay: memory comes first).
            let starved = self.budget.starved();
            let deadline = if (p.caught_up || starved) && drain_deadline.is_none() {
                p.engine.next_deadline().map(wall_to_instant)
            } else {
                None
            };
            let reading =
                p.outbox.has_room() && drain_deadline.is_none() && !self.budget.exhausted();
            let hold = p.outbox.hold_until();
            let sync_at = p.ledger.due();

            tokio::select! {
                biased;
                _ = self.revoked.cancelled() => {
                    self.settle_revoked(p).await;
                    return Ok(());
                }
                _ = self.shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                    if p.caught_up {
                        p.engine.advance(now_ms(), &mut p.emitted);
                    }
                }
                settled = p.outbox.settled() => {
                    self.acknowledged(p, settled?);
                    for acked in p.outbox.settled_now()? {
                        self.acknowledged(p, Some(acked));
                    }
                }
                _ = sleep_until_opt(hold), if hold.is_some() => p.outbox.release_hold(),
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    p.engine.advance(now_ms(), &mut p.emitted);
                }
                first = stream.next(), if reading => {
                    if let Some(first) = first {
                        let chunk = p
                            .intake
                            .chunk(first, &mut stream, self.consumer.client(), p.caught_up)
                            .await;
                        self.take(p, chunk).await?;
                    }
                }
                _ = sleep_until_opt(sync_at), if sync_at.is_some() => self.sync(p).await?,
                _ = tokio::time::sleep(BUDGET_RECHECK), if starved => {}
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                    warn!(
                        partition = self.partition,
                        unacknowledged = p.outbox.held(),
                        "drain timeout passed with records unacknowledged; they will be replayed"
                    );
                    return Ok(());
                }
            }
            self.route(p);
            if p.ledger.full() {
                self.sync(p).await?;
            }
            p.progress
                .publish(&p.engine, p.outbox.bytes(), p.high, reading);
        }
    }

    /// A chunk of input: admitted in one gate call, then fed to the engine in order.
    async fn take(&self, p: &mut Parts, chunk: Chunk) -> Result<(), Stop> {
        let now = now_ms();
        p.high = chunk.high.or(p.high);
        let messages = chunk
            .items
            .iter()
            .filter(|i| !matches!(i, Item::End))
            .count();
        self.health.messages_read_by(messages as u64);
        let candidates: Vec<Candidate<'_>> = chunk
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Fragment(f) => Some(Candidate {
                    key: &f.key,
                    offset: f.offset,
                    event_id: f.event_id(),
                    ts: f.ts,
                }),
                _ => None,
            })
            .collect();
        let floor = candidates.iter().map(|c| c.offset + 1).max().unwrap_or(0);
        let high = p.high.unwrap_or(0).max(floor);
        let admission = p.gate.admit(&candidates, high).await?.unwrap_or_default();
        // Keys' last batches as Redis remembers them (after a restart or a handoff), so `follows`
        // survives: seeded before the fragments go in.
        for seed in &admission.seeds {
            if let Some(c) = candidates.get(seed.index) {
                p.engine.seed_follows(c.key, &seed.batch_id, seed.last_ts);
            }
        }
        drop(candidates);
        let mut verdicts = admission.verdicts.into_iter();
        for item in chunk.items {
            match item {
                Item::End => {
                    p.caught_up = true;
                    p.engine.advance(now_ms(), &mut p.emitted);
                }
                Item::Signal(signal) => {
                    p.caught_up = false;
                    p.progress.read(signal.offset);
                    let outcome =
                        p.engine
                            .signal(&signal.key, signal.kind, signal.ts, now, &mut p.emitted);
                    metrics()
                        .signals
                        .with_label_values(&[signal.kind.as_str(), outcome.as_str()])
                        .inc();
                    if outcome == SignalOutcome::Applied && p.gate.is_redis() {
                        p.ledger.touched(&signal.key);
                    }
                }
                Item::DeadLetter(record) => {
                    p.caught_up = false;
                    p.progress.read(record.first_offset);
                    p.progress.hold(record.first_offset);
                    p.outbox.push(record, Kind::DeadLetter);
                }
                Item::Fragment(f) => {
                    p.caught_up = false;
                    p.progress.read(f.offset);
                    match verdicts.next().unwrap_or(Verdict::New) {
                        verdict @ (Verdict::New | Verdict::NewPastStale(_)) => {
                            if let Verdict::NewPastStale(why) = verdict {
                                p.gate.stale(why, f.offset);
                            }
                            if p.gate.is_redis() {
                                p.ledger.touched(&f.key);
                            }
                            p.engine.push(f, now, &mut p.emitted);
                        }
                        Verdict::Emitted => {
                            metrics().fragments_skipped.inc();
                            debug!(
                                partition = self.partition,
                                offset = f.offset,
                                reason = "already_delivered",
                                "fragment skipped: an acknowledged batch already holds it"
                            );
                            p.engine.skip(f.ts, now, &mut p.emitted);
                        }
                        Verdict::Duplicate => {
                            metrics().fragments_duplicate.inc();
                            debug!(
                                partition = self.partition,
                                offset = f.offset,
                                reason = "duplicate_event_id",
                                "fragment skipped: its event id was first seen at another offset"
                            );
                            p.engine.skip(f.ts, now, &mut p.emitted);
                        }
                    }
                }
            }
        }
        let stats = p.engine.take_stats();
        metrics().fragments_late.inc_by(stats.late);
        metrics().fragments_clamped.inc_by(stats.clamped);
        Ok(())
    }

    /// Turns the windows that opened into `opened` events, and the batches the engine emitted
    /// into output records, in emission order.
    fn route(&self, p: &mut Parts) {
        for opened in p.engine.take_opened() {
            let record = wire::encode_opened(
                &opened.key,
                &self.topic,
                self.partition,
                opened.first_offset,
                now_ms(),
                opened.flush_at,
            );
            // Held until acknowledged, like the window's batch: events are at-least-once.
            p.progress.hold(record.first_offset);
            p.outbox.push(record, Kind::Event);
        }
        if p.emitted.is_empty() {
            return;
        }
        let now = now_ms();
        let grace = self.config.grace.as_millis() as i64;
        // Drained, not taken: the vector keeps its capacity for the next turn.
        for batch in p.emitted.drain(..) {
            let m = metrics();
            if batch.reason != FlushReason::Passthrough {
                m.flush_lateness
                    .observe((now - batch.close_time - grace).max(0) as f64 / 1000.0);
            }
            m.end_to_end
                .observe((now - batch.last_ts).max(0) as f64 / 1000.0);
            let record = wire::encode_batch(&batch, &self.topic, self.partition, now);
            debug!(
                batch_id = %wire::batch_id(&self.topic, self.partition, batch.first_offset()),
                count = batch.fragments.len(),
                reason = batch.reason.as_str(),
                correlation_id = batch.fragments[0].correlation_id().unwrap_or(""),
                "batch flushed"
            );
            p.progress.hold(record.first_offset);
            if p.gate.is_redis() {
                let id = wire::batch_id(&self.topic, self.partition, batch.first_offset());
                p.ledger.emitted(
                    &batch.key,
                    Arc::from(id),
                    batch.first_offset(),
                    batch.last_offset(),
                    batch.last_ts,
                );
            }
            p.outbox.push(
                record,
                Kind::Batch {
                    key: batch.key.clone(),
                    reason: batch.reason.as_str(),
                    fragments: batch.fragments.len(),
                    bytes: batch.bytes(),
                },
            );
        }
    }

    /// A settled delivery: an acknowledgement moves the commit point and the ledger; a failure
    /// (already queued again by the outbox) marks the producer unhealthy.
    fn acknowledged(&self, p: &mut Parts, settled: Option<Acked>) {
        let Some(acked) = settled else {
            self.health.set_producer_ok(false);
            return;
        };
        self.health.set_producer_ok(true);
        p.progress.release(acked.first_offset);
        let m = metrics();
        match acked.kind {
            Kind::Batch {
                key,
                reason,
                fragments,
                bytes,
            } => {
                m.batches_flushed.with_label_values(&[reason]).inc();
                m.batch_fragments.observe(fragments as f64);
                m.batch_bytes.observe(bytes as f64);
                if p.gate.is_redis() {
                    p.ledger.acknowledged(&key, acked.first_offset);
                }
                if self.config.events_topic.is_some() {
                    let id = wire::batch_id(&self.topic, self.partition, acked.first_offset);
                    let record = wire::encode_flushed(
                        &key,
                        &id,
                        acked.first_offset,
                        now_ms(),
                        reason,
                        fragments,
                    );
                    // The batch's offsets stay held until its event is acknowledged too.
                    p.progress.hold(record.first_offset);
                    p.outbox.push(record, Kind::Event);
                }
            }
            Kind::DeadLetter => m.dlq_messages.inc(),
            Kind::Event => m.events.inc(),
        }
    }

    /// Writes what the ledger holds to Redis (a no-op without Redis); if Redis cannot take it,
    /// it waits for the next write.
    async fn sync(&self, p: &mut Parts) -> Result<(), Stop> {
        let batch = p.ledger.take(&p.engine);
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

    /// After a revocation: sends nothing more, but waits (up to the drain timeout) for deliveries
    /// already in flight, publishes the final commit point and records the acknowledged batches
    /// in Redis. The owner holds the rebalance until this is done, so the next owner starts from
    /// a commit point and flushed records that include every batch that went out: it never emits
    /// one again (a batch still unacknowledged after the drain timeout may be).
    async fn settle_revoked(&self, p: &mut Parts) {
        p.outbox.drop_unsent();
        let end = Instant::now() + self.config.drain_timeout;
        while p.outbox.in_flight() > 0 {
            match tokio::time::timeout_at(end, p.outbox.settled()).await {
                Ok(Ok(acked)) => self.acknowledged(p, acked),
                _ => break,
            }
        }
        p.progress
            .publish(&p.engine, p.outbox.bytes(), p.high, false);
        if let Err(Stop::Fenced(Fenced(why))) = self.sync(p).await {
            debug!(partition = self.partition, reason = %why, "revoked partition already claimed by its next owner");
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
