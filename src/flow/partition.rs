//! One task per assigned input partition: it alone owns that partition's windows, its output
//! records in flight and its commit point.
//!
//! The task is one `select! { biased; ... }` over, in order: revocation (stop at once), shutdown
//! (stop reading, deliver what is due, wait for acknowledgements), delivery acknowledgements, the
//! retry timer, the next window deadline (only while caught up), new input (only while there is
//! room), and the timer that writes acknowledged batches to Redis. After every step it publishes
//! the partition's low watermark for the consumer loop to commit.
//!
//! *Caught up* means the last thing read on the partition was its end: only then does partition
//! time follow the wall clock, so catching up after lag never lets the wall clock cut a window
//! that later input in the log would have joined.
//!
//! Delivery order: records are sent in the order the engine emitted them. When a delivery fails,
//! nothing new is sent until every record in flight has settled; the failed ones are then re-sent
//! in their original order after an exponential backoff with jitter. A record is never dropped,
//! and the commit point never passes one that is not acknowledged.
//!
//! With Redis (see [`crate::io::store`]): the worker claims the partition first; each chunk of input
//! is admitted in one script call (fragments already delivered before a crash are skipped,
//! duplicate event ids dropped — both still move partition time, so replays cut the same
//! windows); open windows are published as `pending:{key}`; acknowledged batches move the key's
//! flushed watermark — but only once every earlier batch of that key is acknowledged too, so a
//! replay can never skip an undelivered batch. If Redis refuses the worker's generation, another
//! instance owns the partition: the worker stops at once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, TimestampSource};
use crate::io::backoff::Backoff;
use crate::io::producer::{Sink, SinkError};
use crate::io::store::{
    Candidate, Fence, Flushed, PendingSummary, Stale, Store, StoreError, Verdict,
};
use crate::model::fragment::{self, Fragment, Invalid, RawMessage};
use crate::model::offsets::OffsetTracker;
use crate::model::window::{Batch, FlushReason, WindowEngine};
use crate::model::wire::{self, now_ms, Record, Rejected};
use crate::ops::budget::Budget;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

/// Output records (batches and dead letters) held per partition, queued or in flight, before the
/// worker stops reading input: the bound that turns a slow output topic into backpressure.
const MAX_PENDING_RECORDS: usize = 10_000;

/// Records handed to the producer and not yet acknowledged, per partition.
const MAX_IN_FLIGHT: usize = 5_000;

/// Messages taken from the inbox in one step, so acknowledgements and timers are not starved.
const READ_CHUNK: usize = 512;

/// Open-window summaries and acknowledged batches are written to Redis together, in one round
/// trip, at least this often (and at once past [`SYNC_BATCH`] keys).
const SYNC_EVERY: Duration = Duration::from_millis(50);

/// See [`SYNC_EVERY`].
const SYNC_BATCH: usize = 256;

/// With Redis, how long a chunk may wait for more input before it is admitted in one call: a
/// quarter of the grace period at most, so no fragment can turn late while it waits.
const ADMIT_LINGER: Duration = Duration::from_millis(10);

/// How failed sends and deliveries are retried: exponential backoff with jitter.
const RETRY: Backoff = Backoff::DEFAULT;

/// How often a worker held back by the memory budget looks whether it may read again.
const BUDGET_RECHECK: Duration = Duration::from_millis(20);

/// At most one WARN per partition this often about ignored (stale) records in Redis.
const STALE_WARN_EVERY: Duration = Duration::from_secs(30);

/// How long the input topic's id may take to learn at claim time.
const TOPIC_ID_TIMEOUT: Duration = Duration::from_secs(5);

/// What the consumer loop hands a partition worker, in partition order.
#[derive(Debug)]
pub enum Inbound {
    /// An input message.
    Message(OwnedMessage),
    /// The consumer reached the end of the partition.
    Eof,
}

/// What the consumer loop and a worker share about one partition.
#[derive(Debug)]
pub struct PartitionShared {
    /// The offset that may be committed now; `-1` until something was read.
    pub watermark: AtomicI64,
    /// The last offset committed successfully; `-1` if none.
    pub committed: AtomicI64,
    /// One past the last offset the consumer loop handed over; `-1` if none.
    pub read_next: AtomicI64,
    /// The partition's high watermark as last seen by the client; `-1` if unknown.
    pub high: AtomicI64,
    /// First timestamp of the oldest open window; `i64::MIN` if none is open.
    pub oldest_open_ts: AtomicI64,
}

impl Default for PartitionShared {
    fn default() -> Self {
        Self {
            watermark: AtomicI64::new(-1),
            committed: AtomicI64::new(-1),
            read_next: AtomicI64::new(-1),
            high: AtomicI64::new(-1),
            oldest_open_ts: AtomicI64::new(i64::MIN),
        }
    }
}

/// Everything a partition worker needs.
pub struct Worker {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The producer.
    pub sink: Sink,
    /// Shared state in Redis, if configured.
    pub store: Option<Arc<Store>>,
    /// Shared with the consumer loop.
    pub shared: Arc<PartitionShared>,
    /// Per-run health (producer state).
    pub health: Arc<Health>,
    /// The process-wide memory budget.
    pub budget: Arc<Budget>,
    /// Messages from the consumer loop.
    pub inbox: mpsc::Receiver<Inbound>,
    /// Cancelled when the partition is revoked: stop at once, produce nothing more.
    pub revoked: CancellationToken,
    /// Cancelled when the process stops: drain, then stop.
    pub shutdown: CancellationToken,
}

/// Facts about a record, kept until it is acknowledged.
#[derive(Debug, Clone)]
enum Kind {
    Batch {
        key: Arc<str>,
        reason: FlushReason,
        fragments: usize,
        bytes: usize,
    },
    DeadLetter,
}

#[derive(Debug)]
struct Pending {
    record: Record,
    kind: Kind,
}

type Delivery = Pin<Box<dyn Future<Output = (u64, Option<OwnedDeliveryResult>)> + Send>>;

/// Why the worker stops early.
enum Stop {
    /// Another instance owns the partition (Redis fencing).
    Fenced(String),
    /// The producer failed fatally.
    Fatal(SinkError),
}

/// A batch emitted and not yet recorded in Redis.
#[derive(Debug, Clone, Copy)]
struct Unrecorded {
    last_offset: i64,
    last_ts: i64,
    acknowledged: bool,
}

/// One parsed inbound item of a chunk.
enum Item {
    Fragment(Fragment),
    Invalid(OwnedMessage, Invalid),
    Eof,
}

/// The worker's mutable state, owned by its task.
struct State {
    engine: WindowEngine,
    tracker: OffsetTracker,
    /// Records waiting to be sent, in emission order.
    outbox: VecDeque<Pending>,
    /// Records sent and not yet settled, by send sequence.
    in_flight: BTreeMap<u64, Pending>,
    /// Records whose delivery failed, by send sequence, waiting for the rest to settle.
    failed: BTreeMap<u64, Pending>,
    deliveries: FuturesUnordered<Delivery>,
    next_seq: u64,
    /// Consecutive failed rounds, for the backoff.
    attempt: u32,
    /// No sends before this instant (backoff, or a full producer queue).
    hold_until: Option<Instant>,
    caught_up: bool,
    batches: Vec<Batch>,
    /// Redis ownership, once claimed, and the store epoch it was claimed in.
    fence: Option<(Fence, u64)>,
    /// The input topic's identity (Kafka topic id, else `cluster:<id>`), once learnt (`None`
    /// until then, or while the cluster does not say); written with every record so records of an
    /// older incarnation are recognised.
    topic_id: Option<String>,
    /// When stale records were last reported at WARN, and how many since.
    stale_warned_at: Option<Instant>,
    stale_unreported: u64,
    /// Per key, batches emitted and not yet recorded in Redis: first offset → (last offset,
    /// acknowledged). Only a prefix of acknowledged batches may move the flushed watermark.
    unrecorded: HashMap<Arc<str>, BTreeMap<i64, Unrecorded>>,
    /// Acknowledged batches ready to be written to Redis, one per key (the latest).
    to_record: HashMap<Arc<str>, Flushed>,
    /// Keys whose open window changed since its summary was last published.
    dirty: HashSet<Arc<str>>,
    /// When the next Redis sync (summaries and acknowledged batches) is due.
    sync_at: Option<Instant>,
    /// Payload bytes of output records not yet acknowledged.
    record_bytes: i64,
    /// Gauge and budget values this worker has added, so it can take them back.
    reported_windows: i64,
    reported_bytes: i64,
    reported_held: i64,
}

impl Worker {
    /// Runs until the partition is revoked, the process shuts down, another instance takes the
    /// partition over (Redis fencing), or the producer fails fatally.
    pub async fn run(mut self) -> Result<(), SinkError> {
        let mut st = State {
            engine: WindowEngine::new(self.config.window()),
            tracker: OffsetTracker::new(),
            outbox: VecDeque::new(),
            in_flight: BTreeMap::new(),
            failed: BTreeMap::new(),
            deliveries: FuturesUnordered::new(),
            next_seq: 0,
            attempt: 0,
            hold_until: None,
            caught_up: false,
            batches: Vec::new(),
            fence: None,
            topic_id: None,
            stale_warned_at: None,
            stale_unreported: 0,
            unrecorded: HashMap::new(),
            to_record: HashMap::new(),
            dirty: HashSet::new(),
            sync_at: None,
            record_bytes: 0,
            reported_windows: 0,
            reported_bytes: 0,
            reported_held: 0,
        };
        debug!(partition = self.partition, "partition worker started");
        let result = match self.event_loop(&mut st).await {
            Ok(()) => Ok(()),
            Err(Stop::Fenced(why)) => {
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
        metrics().open_windows.sub(st.reported_windows);
        metrics().open_window_bytes.sub(st.reported_bytes);
        self.budget.add(-st.reported_held);
        // Whatever is left in the inbox was counted against the budget by the consumer loop.
        self.inbox.close();
        while let Ok(item) = self.inbox.try_recv() {
            if let Inbound::Message(m) = item {
                self.budget.add(-inbound_size(&m));
            }
        }
        debug!(partition = self.partition, "partition worker stopped");
        result
    }

    async fn event_loop(&mut self, st: &mut State) -> Result<(), Stop> {
        let mut drain_deadline: Option<Instant> = None;
        self.ensure_fence(st).await?;
        loop {
            self.pump(st)?;
            if drain_deadline.is_some()
                && st.outbox.is_empty()
                && st.in_flight.is_empty()
                && st.failed.is_empty()
            {
                self.sync(st, true).await?;
                return Ok(());
            }
            // Over the memory budget the consumer has paused fetching; partition time then
            // follows the wall clock so windows still close and free memory, even in catch-up
            // (batch boundaries may then differ from a replay: memory comes first).
            let starved = self.budget.starved();
            let deadline = if (st.caught_up || starved) && drain_deadline.is_none() {
                st.engine.next_deadline().map(wall_to_instant)
            } else {
                None
            };
            let room = st.outbox.len() + st.in_flight.len() + st.failed.len() < MAX_PENDING_RECORDS;
            let can_read = room && drain_deadline.is_none();

            tokio::select! {
                biased;
                _ = self.revoked.cancelled() => {
                    self.settle_revoked(st).await;
                    return Ok(());
                }
                _ = self.shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                    if st.caught_up {
                        st.engine.advance(now_ms(), &mut st.batches);
                    }
                }
                Some((seq, result)) = st.deliveries.next(), if !st.deliveries.is_empty() => {
                    self.settle(st, seq, result)?;
                    // Drain every report that is ready, so one turn covers many.
                    while let Some(Some((seq, result))) = st.deliveries.next().now_or_never() {
                        self.settle(st, seq, result)?;
                    }
                }
                _ = sleep_until_opt(st.hold_until), if st.hold_until.is_some() => {
                    st.hold_until = None;
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    st.engine.advance(now_ms(), &mut st.batches);
                }
                inbound = self.inbox.recv(), if can_read => {
                    let Some(first) = inbound else {
                        // The consumer loop dropped this partition: same as a revocation.
                        return Ok(());
                    };
                    let mut chunk = vec![first];
                    while chunk.len() < READ_CHUNK {
                        match self.inbox.try_recv() {
                            Ok(next) => chunk.push(next),
                            Err(_) => break,
                        }
                    }
                    if self.store.is_some() && chunk.len() < READ_CHUNK {
                        // One admit call per chunk: let a thin stream gather a little first.
                        let linger = ADMIT_LINGER.min(self.config.grace / 4);
                        let until = Instant::now() + linger;
                        while chunk.len() < READ_CHUNK {
                            match tokio::time::timeout_at(until, self.inbox.recv()).await {
                                Ok(Some(next)) => chunk.push(next),
                                _ => break,
                            }
                        }
                    }
                    self.take_chunk(st, chunk).await?;
                }
                _ = sleep_until_opt(st.sync_at), if st.sync_at.is_some() => {
                    self.sync(st, true).await?;
                }
                _ = tokio::time::sleep(BUDGET_RECHECK), if starved => {}
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                    warn!(
                        partition = self.partition,
                        unacknowledged = st.in_flight.len() + st.failed.len() + st.outbox.len(),
                        "drain timeout passed with records unacknowledged; they will be replayed"
                    );
                    return Ok(());
                }
            }
            self.route_batches(st);
            self.sync(st, false).await?;
            self.publish(st);
        }
    }

    /// After a revocation: sends nothing more, but waits (up to the drain timeout) for deliveries
    /// already in flight, publishes the final commit point and records the acknowledged batches
    /// in Redis. The consumer holds the rebalance until this is done, so the next owner starts
    /// from a commit point and flushed records that include every batch that went out: it never
    /// emits one again (a batch still unacknowledged after the drain timeout may be).
    async fn settle_revoked(&self, st: &mut State) {
        let end = Instant::now() + self.config.drain_timeout;
        while !st.deliveries.is_empty() {
            match tokio::time::timeout_at(end, st.deliveries.next()).await {
                Ok(Some((seq, result))) => {
                    if self.settle(st, seq, result).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.publish(st);
        if self.store.is_none() {
            return;
        }
        if let Err(Stop::Fenced(why)) = self.sync(st, true).await {
            debug!(partition = self.partition, reason = %why, "revoked partition already claimed by its next owner");
        }
    }

    /// Claims the partition in Redis when there is no valid claim: at start, and again after
    /// Redis recovered from an outage (then only if nobody else took it meanwhile).
    async fn ensure_fence(&self, st: &mut State) -> Result<(), Stop> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let epoch = store.epoch();
        if store.is_degraded() || st.fence.as_ref().is_some_and(|(_, e)| *e == epoch) {
            return Ok(());
        }
        let resume = st.fence.is_some();
        if st.topic_id.is_none() {
            st.topic_id = self.learn_topic_id().await;
        }
        let topic_id = st.topic_id.as_deref().unwrap_or("");
        match store
            .claim(&self.topic, self.partition, topic_id, resume)
            .await
        {
            Ok(fence) => {
                info!(
                    partition = self.partition,
                    generation = fence.generation,
                    resume,
                    "partition claimed in redis"
                );
                st.fence = Some((fence, epoch));
                Ok(())
            }
            Err(StoreError::Stale(why)) => Err(Stop::Fenced(why)),
            Err(StoreError::Unavailable(_)) => Ok(()),
        }
    }

    /// Asks the cluster for the input topic's identity (its topic id, else the cluster's id).
    /// Without one only the high-watermark and timestamp checks guard against stale records.
    async fn learn_topic_id(&self) -> Option<String> {
        let sink = self.sink.clone();
        let topic = self.topic.to_string();
        let asked =
            tokio::task::spawn_blocking(move || sink.topic_identity(&topic, TOPIC_ID_TIMEOUT))
                .await;
        match asked {
            Ok(Ok(Some(id))) => {
                debug!(partition = self.partition, topic_id = %id, "input topic id");
                Some(id)
            }
            Ok(Ok(None)) => {
                info!(partition = self.partition, "the cluster gives neither a topic id nor a cluster id: stale redis records are recognised by the high watermark and timestamps only");
                None
            }
            Ok(Err(e)) => {
                warn!(partition = self.partition, error = %e, "cannot learn the input topic id: stale redis records are recognised by the high watermark and timestamps only");
                None
            }
            Err(e) => {
                warn!(partition = self.partition, error = %e, "topic id lookup failed");
                None
            }
        }
    }

    /// The partition's high watermark as the consumer last saw it, never below `floor`.
    fn high_watermark(&self, floor: i64) -> i64 {
        self.shared.high.load(Ordering::Acquire).max(floor)
    }

    /// The fence to write with, when Redis is usable right now.
    fn usable_fence<'a>(&'a self, st: &'a State) -> Option<(&'a Arc<Store>, &'a Fence)> {
        let store = self.store.as_ref()?;
        let (fence, epoch) = st.fence.as_ref()?;
        (!store.is_degraded() && *epoch == store.epoch()).then_some((store, fence))
    }

    /// Handles a chunk of inbound items: parse, admit (one Redis call), then feed the engine in
    /// order, and publish the open windows the chunk touched.
    async fn take_chunk(&self, st: &mut State, chunk: Vec<Inbound>) -> Result<(), Stop> {
        let now = now_ms();
        let mut items = Vec::with_capacity(chunk.len());
        for inbound in chunk {
            match inbound {
                Inbound::Eof => items.push(Item::Eof),
                Inbound::Message(m) => {
                    self.budget.add(-inbound_size(&m));
                    metrics().fragments_received.inc();
                    st.tracker.read(m.offset());
                    items.push(self.parse(m, now));
                }
            }
        }

        self.ensure_fence(st).await?;
        let verdicts = match self.usable_fence(st) {
            Some((store, fence)) => {
                let candidates: Vec<Candidate<'_>> = items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Fragment(f) => Some(Candidate {
                            key: &f.key,
                            offset: f.offset,
                            event_id: f.event_id.as_deref(),
                            ts: f.ts,
                        }),
                        _ => None,
                    })
                    .collect();
                let floor = candidates.iter().map(|c| c.offset + 1).max().unwrap_or(0);
                match store
                    .admit(fence, self.high_watermark(floor), &candidates)
                    .await
                {
                    Ok(v) => Some(v),
                    Err(StoreError::Stale(why)) => return Err(Stop::Fenced(why)),
                    Err(StoreError::Unavailable(_)) => None,
                }
            }
            None => None,
        };

        let mut verdicts = verdicts.into_iter().flatten();
        let mut touched = false;
        for item in items {
            match item {
                Item::Eof => {
                    st.caught_up = true;
                    st.engine.advance(now_ms(), &mut st.batches);
                }
                Item::Invalid(m, invalid) => {
                    st.caught_up = false;
                    self.dead_letter(st, &m, &invalid);
                }
                Item::Fragment(f) => {
                    st.caught_up = false;
                    let verdict = verdicts.next().unwrap_or(Verdict::New);
                    if let Verdict::NewPastStale(why) = verdict {
                        self.stale_record(st, why, &f);
                    }
                    match verdict {
                        Verdict::New | Verdict::NewPastStale(_) => {
                            if self.store.is_some() {
                                st.dirty.insert(Arc::from(f.key.as_str()));
                                touched = true;
                            }
                            st.engine.push(f, now, &mut st.batches);
                        }
                        Verdict::Emitted => {
                            metrics().fragments_skipped.inc();
                            debug!(
                                partition = self.partition,
                                offset = f.offset,
                                reason = "already_delivered",
                                "fragment skipped: an acknowledged batch already holds it"
                            );
                            st.engine.skip(f.ts, now, &mut st.batches);
                        }
                        Verdict::Duplicate => {
                            metrics().fragments_duplicate.inc();
                            debug!(
                                partition = self.partition,
                                offset = f.offset,
                                reason = "duplicate_event_id",
                                "fragment skipped: its event id was first seen at another offset"
                            );
                            st.engine.skip(f.ts, now, &mut st.batches);
                        }
                    }
                }
            }
        }
        let stats = st.engine.take_stats();
        metrics().fragments_late.inc_by(stats.late);
        metrics().fragments_clamped.inc_by(stats.clamped);

        if touched && st.sync_at.is_none() {
            st.sync_at = Some(Instant::now() + SYNC_EVERY);
        }
        Ok(())
    }

    /// Counts a flushed record in Redis that was ignored because it cannot describe this log,
    /// and says so at WARN at most every [`STALE_WARN_EVERY`] per partition.
    fn stale_record(&self, st: &mut State, why: Stale, f: &Fragment) {
        metrics()
            .redis_stale_records
            .with_label_values(&[why.label()])
            .inc();
        st.stale_unreported += 1;
        debug!(
            partition = self.partition,
            offset = f.offset,
            reason = why.label(),
            "flushed record in redis ignored"
        );
        if st
            .stale_warned_at
            .is_none_or(|at| at.elapsed() >= STALE_WARN_EVERY)
        {
            warn!(
                partition = self.partition,
                reason = why.label(),
                records = st.stale_unreported,
                topic_id = st.topic_id.as_deref().unwrap_or(""),
                "flushed records in redis do not describe this topic (recreated topic, replaced \
                 cluster, or a reset of offsets past them): ignored, the fragments are batched"
            );
            st.stale_warned_at = Some(Instant::now());
            st.stale_unreported = 0;
        }
    }

    /// Turns a message into a fragment, or the reason it goes to the dead-letter topic.
    fn parse(&self, m: OwnedMessage, now: i64) -> Item {
        let ts = match self.config.timestamp {
            TimestampSource::Kafka => m.timestamp().to_millis().unwrap_or(now),
            TimestampSource::Arrival => now,
        };
        let event_id_header = m
            .headers()
            .and_then(|h| crate::io::headers::last_value(h.as_borrowed(), b"event_id"));
        let raw = RawMessage {
            key: m.key(),
            value: m.payload(),
            event_id_header,
            offset: m.offset(),
            ts,
        };
        match fragment::parse(raw, self.config.max_fragment_bytes) {
            Ok(f) => {
                #[cfg(feature = "fault-injection")]
                fault_injection::panic_on(&f.key);
                Item::Fragment(f)
            }
            Err(invalid) => Item::Invalid(m, invalid),
        }
    }

    /// Queues a refused message for the dead-letter topic.
    fn dead_letter(&self, st: &mut State, m: &OwnedMessage, invalid: &Invalid) {
        metrics()
            .fragments_invalid
            .with_label_values(&[invalid.label()])
            .inc();
        let headers = m
            .headers()
            .map(|h| crate::io::headers::read(h.as_borrowed()))
            .unwrap_or_default();
        let error = invalid.to_string();
        warn!(
            partition = self.partition,
            offset = m.offset(),
            reason = invalid.label(),
            "invalid input sent to the dead-letter topic"
        );
        let record = wire::encode_dead_letter(Rejected {
            key: m.key(),
            value: m.payload(),
            headers: &headers,
            topic: &self.topic,
            partition: self.partition,
            offset: m.offset(),
            error: &error,
            failed_at: SystemTime::now(),
        });
        st.tracker.hold(m.offset());
        st.record_bytes += record_size(&record);
        st.outbox.push_back(Pending {
            record,
            kind: Kind::DeadLetter,
        });
    }

    /// Turns batches the engine emitted into output records, in emission order.
    fn route_batches(&self, st: &mut State) {
        if st.batches.is_empty() {
            return;
        }
        let now = now_ms();
        let grace = self.config.grace.as_millis() as i64;
        for batch in std::mem::take(&mut st.batches) {
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
                correlation_id = batch.fragments[0].correlation_id.as_deref().unwrap_or(""),
                "batch flushed"
            );
            st.tracker.hold(record.first_offset);
            st.record_bytes += record_size(&record);
            if self.store.is_some() {
                st.unrecorded.entry(batch.key.clone()).or_default().insert(
                    batch.first_offset(),
                    Unrecorded {
                        last_offset: batch.last_offset(),
                        last_ts: batch.last_ts,
                        acknowledged: false,
                    },
                );
            }
            st.outbox.push_back(Pending {
                kind: Kind::Batch {
                    key: batch.key.clone(),
                    reason: batch.reason,
                    fragments: batch.fragments.len(),
                    bytes: batch.bytes(),
                },
                record,
            });
        }
    }

    /// Sends queued records while allowed: not during backoff, not while a failed round is
    /// settling, not past the in-flight bound, never after revocation.
    fn pump(&self, st: &mut State) -> Result<(), Stop> {
        if self.revoked.is_cancelled() || st.hold_until.is_some() || !st.failed.is_empty() {
            return Ok(());
        }
        while st.in_flight.len() < MAX_IN_FLIGHT {
            let Some(front) = st.outbox.front() else {
                break;
            };
            match self.sink.send(&front.record) {
                Ok(future) => {
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    if let Some(p) = st.outbox.pop_front() {
                        st.in_flight.insert(seq, p);
                    }
                    st.deliveries
                        .push(Box::pin(async move { (seq, future.await.ok()) }));
                }
                Err(SinkError::QueueFull) => {
                    st.hold_until = Some(Instant::now() + Duration::from_millis(5));
                    break;
                }
                Err(e) if e.is_fatal() => return Err(Stop::Fatal(e)),
                Err(e) => {
                    st.attempt += 1;
                    metrics().produce_retries.inc();
                    let delay = RETRY.delay(st.attempt);
                    warn!(partition = self.partition, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot send; retrying");
                    st.hold_until = Some(Instant::now() + delay);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Handles one delivery report.
    fn settle(
        &self,
        st: &mut State,
        seq: u64,
        result: Option<OwnedDeliveryResult>,
    ) -> Result<(), Stop> {
        let Some(pending) = st.in_flight.remove(&seq) else {
            return Ok(());
        };
        match result {
            Some(Ok(_)) => {
                st.attempt = 0;
                self.health.set_producer_ok(true);
                st.record_bytes -= record_size(&pending.record);
                let first = pending.record.first_offset;
                st.tracker.release(first);
                let m = metrics();
                match pending.kind {
                    Kind::Batch {
                        key,
                        reason,
                        fragments,
                        bytes,
                    } => {
                        m.batches_flushed
                            .with_label_values(&[reason.as_str()])
                            .inc();
                        m.batch_fragments.observe(fragments as f64);
                        m.batch_bytes.observe(bytes as f64);
                        self.acknowledged(st, key, first);
                    }
                    Kind::DeadLetter => m.dlq_messages.inc(),
                }
            }
            failure => {
                let error = match failure {
                    Some(Err((e, _))) => self.sink.classify(e),
                    _ => SinkError::Fatal("the producer was dropped".to_string()),
                };
                if error.is_fatal() {
                    return Err(Stop::Fatal(error));
                }
                self.health.set_producer_ok(false);
                if st.failed.is_empty() {
                    warn!(partition = self.partition, error = %error, "delivery failed; holding new output until in-flight records settle");
                }
                st.failed.insert(seq, pending);
            }
        }
        if !st.failed.is_empty() && st.in_flight.is_empty() {
            // Every record in flight has settled: re-send the failed ones first, in order.
            st.attempt += 1;
            let failed = std::mem::take(&mut st.failed);
            metrics().produce_retries.inc_by(failed.len() as u64);
            for (_, p) in failed.into_iter().rev() {
                st.outbox.push_front(p);
            }
            let delay = RETRY.delay(st.attempt);
            info!(
                partition = self.partition,
                records = st.outbox.len(),
                attempt = st.attempt,
                retry_in_ms = delay.as_millis() as u64,
                "re-sending failed records"
            );
            st.hold_until = Some(Instant::now() + delay);
        }
        Ok(())
    }

    /// Marks a batch acknowledged; once it and every earlier batch of its key are, the key's
    /// flushed watermark may move to it.
    fn acknowledged(&self, st: &mut State, key: Arc<str>, first: i64) {
        let Some(batches) = st.unrecorded.get_mut(&key) else {
            return;
        };
        if let Some(entry) = batches.get_mut(&first) {
            entry.acknowledged = true;
        }
        let mut latest = None;
        while let Some(entry) = batches.first_entry() {
            if !entry.get().acknowledged {
                break;
            }
            latest = Some(entry.remove_entry());
        }
        if batches.is_empty() {
            st.unrecorded.remove(&key);
        }
        if let Some((first_offset, batch)) = latest {
            st.to_record.insert(
                key.clone(),
                Flushed {
                    key: key.to_string(),
                    first_offset,
                    last_offset: batch.last_offset,
                    last_ts: batch.last_ts,
                },
            );
            if st.sync_at.is_none() {
                st.sync_at = Some(Instant::now() + SYNC_EVERY);
            }
        }
    }

    /// Writes to Redis, in one round trip, the summaries of windows that changed and the
    /// acknowledged batches: when due (or `now`). If Redis is down they wait, and are written
    /// after it recovers.
    async fn sync(&self, st: &mut State, now: bool) -> Result<(), Stop> {
        if st.to_record.is_empty() && st.dirty.is_empty() {
            st.sync_at = None;
            return Ok(());
        }
        if !now && st.to_record.len() + st.dirty.len() < SYNC_BATCH {
            return Ok(());
        }
        st.sync_at = Some(Instant::now() + SYNC_EVERY);
        self.ensure_fence(st).await?;
        let Some((store, fence)) = self.usable_fence(st) else {
            return Ok(());
        };
        let windows: Vec<PendingSummary> = st
            .dirty
            .iter()
            .filter_map(|key| {
                st.engine.summary(key).map(|w| PendingSummary {
                    key: key.to_string(),
                    first_ts: w.first_ts,
                    last_ts: w.last_ts,
                    count: w.count,
                    flush_at: w.flush_at,
                    first_offset: w.first_offset,
                })
            })
            .collect();
        let batches: Vec<Flushed> = st.to_record.values().cloned().collect();
        let floor = batches.iter().map(|b| b.last_offset + 1).max().unwrap_or(0);
        match store
            .sync(fence, self.high_watermark(floor), &windows, &batches)
            .await
        {
            Ok(()) => {
                st.to_record.clear();
                st.dirty.clear();
                st.sync_at = None;
                Ok(())
            }
            Err(StoreError::Stale(why)) => Err(Stop::Fenced(why)),
            Err(StoreError::Unavailable(_)) => Ok(()),
        }
    }

    /// Publishes the commit point and this partition's share of the gauges.
    fn publish(&self, st: &mut State) {
        if let Some(mark) = st.tracker.watermark(st.engine.low_watermark()) {
            self.shared.watermark.store(mark, Ordering::Release);
        }
        let windows = st.engine.open_windows() as i64;
        let bytes = st.engine.open_bytes() as i64;
        let held = bytes + st.record_bytes;
        let m = metrics();
        m.open_windows.add(windows - st.reported_windows);
        m.open_window_bytes.add(bytes - st.reported_bytes);
        self.budget.add(held - st.reported_held);
        st.reported_windows = windows;
        st.reported_bytes = bytes;
        st.reported_held = held;
        self.shared.oldest_open_ts.store(
            st.engine.oldest_open_ts().unwrap_or(i64::MIN),
            Ordering::Release,
        );
    }
}

/// Bytes an input message holds while it waits for its worker (counted against the budget
/// from dispatch until the worker takes it).
pub fn inbound_size(m: &OwnedMessage) -> i64 {
    (m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)) as i64
}

/// Bytes a record holds until it is acknowledged.
fn record_size(r: &Record) -> i64 {
    let key = r.key.as_ref().map_or(0, Vec::len);
    let payload = r.payload.as_ref().map_or(0, Vec::len);
    (key + payload) as i64
}

/// The tokio instant at which the wall clock reads `wall_ms`.
fn wall_to_instant(wall_ms: i64) -> Instant {
    let delta = wall_ms.saturating_sub(now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(delta)
}

/// Sleeps until `at`, or forever when there is no deadline (a disabled `select!` timer).
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Test-only faults (the `fault-injection` feature, never in a release build).
#[cfg(feature = "fault-injection")]
mod fault_injection {
    use std::sync::OnceLock;

    /// Panics the worker when it reads a fragment of the key in `LULL_FAULT_PANIC_KEY`: the way
    /// the tests prove that a worker that dies takes the process down loudly.
    pub fn panic_on(key: &str) {
        static KEY: OnceLock<Option<String>> = OnceLock::new();
        let armed = KEY.get_or_init(|| std::env::var("LULL_FAULT_PANIC_KEY").ok());
        if armed.as_deref() == Some(key) {
            panic!("fault injection: a fragment of key {key} (LULL_FAULT_PANIC_KEY)");
        }
    }
}
