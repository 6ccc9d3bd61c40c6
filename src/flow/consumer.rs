//! The Kafka consumer loop: group membership, rebalances, dispatch to partition workers, and
//! offset commits.
//!
//! * On assignment a [`Worker`] task is started per partition, fed over a bounded channel. When a
//!   channel is full the partition is paused (the loop keeps polling, so group membership holds)
//!   and the messages already fetched wait in a per-partition backlog, in order, until there is
//!   room; then the partition is resumed.
//! * On revocation the worker is stopped at once and the partition's watermark is committed
//!   synchronously. Its open windows are simply dropped: their offsets were never committed, so
//!   the next owner reads them again. A commit refused because a rebalance is under way is
//!   expected, logged and survived.
//! * Every [`COMMIT_INTERVAL`] the watermarks that moved are committed (synchronously, on a
//!   blocking thread, so failures are seen). Commits use `commit` with explicit offsets, taken as
//!   given: the watermark is already "the next offset to read".
//! * At shutdown the loop stops reading, waits for the workers to drain, commits, and closes.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::Config;
use crate::flow::partition::{inbound_size, Inbound, PartitionShared, Worker};
use crate::io::producer::{Sink, SinkError};
use crate::io::store::Store;
use crate::ops::budget::Budget;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

/// How often moved watermarks are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Capacity of each partition worker's inbox.
const INBOX_CAPACITY: usize = 4_096;

/// How often backlogs of paused partitions are retried.
const BACKLOG_RETRY: Duration = Duration::from_millis(10);

/// Errors that end the consumer loop.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
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

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Where a supervised task that fails reports it: the first failure is kept (and returned by
/// [`run`], so the process exits non-zero), readiness turns false at once, and the whole
/// process shuts down. No task may die and leave a partition stalled in silence.
#[derive(Clone)]
struct Supervisor {
    failure: Arc<Mutex<Option<ConsumeError>>>,
    health: Arc<Health>,
    shutdown: CancellationToken,
}

impl Supervisor {
    fn fail(&self, error: ConsumeError) {
        error!(error = %error, "a supervised task failed; stopping the process");
        self.health.set_failed();
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(error);
        self.shutdown.cancel();
    }

    /// Checks a finished blocking task (commit, probe) for a panic.
    fn check(&self, task: &str, handle: Option<JoinHandle<()>>) {
        if let Some(Some(Err(e))) = handle.map(FutureExt::now_or_never) {
            if e.is_panic() {
                self.fail(ConsumeError::Panicked {
                    task: task.to_string(),
                    message: panic_message(&*e.into_panic()),
                });
            }
        }
    }

    fn take(&self) -> Option<ConsumeError> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// One assigned partition, as the loop sees it.
struct PartitionHandle {
    partition: i32,
    tx: mpsc::Sender<Inbound>,
    /// Messages fetched while the inbox was full, in order.
    backlog: VecDeque<Inbound>,
    paused: bool,
    shared: Arc<PartitionShared>,
    revoked: CancellationToken,
    task: JoinHandle<()>,
}

/// What the rebalance callbacks need to start and stop workers.
struct Spawner {
    runtime: Handle,
    config: Arc<Config>,
    topic: Arc<str>,
    sink: Sink,
    store: Option<Arc<Store>>,
    budget: Arc<Budget>,
    shutdown: CancellationToken,
    /// Told when a worker fails or panics; the process then stops.
    supervisor: Supervisor,
}

/// The consumer context: owns the partition registry, shared by the callbacks and the loop.
pub struct LullContext {
    partitions: Mutex<HashMap<i32, PartitionHandle>>,

    spawner: Spawner,
    health: Arc<Health>,
}

impl LullContext {
    fn registry(&self) -> MutexGuard<'_, HashMap<i32, PartitionHandle>> {
        // A poisoned lock means a panic elsewhere already stopped the process's work; the map
        // itself is still consistent (every mutation is a single insert/remove).
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_worker(&self, partition: i32) -> PartitionHandle {
        let s = &self.spawner;
        let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let shared = Arc::new(PartitionShared::default());
        let revoked = CancellationToken::new();
        let worker = Worker {
            topic: s.topic.clone(),
            partition,
            config: s.config.clone(),
            sink: s.sink.clone(),
            store: s.store.clone(),
            shared: shared.clone(),
            health: self.health.clone(),
            budget: s.budget.clone(),
            inbox,
            revoked: revoked.clone(),
            shutdown: s.shutdown.clone(),
        };
        let supervisor = s.supervisor.clone();
        let task = s.runtime.spawn(
            async move {
                match AssertUnwindSafe(worker.run()).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => supervisor.fail(ConsumeError::Worker(e)),
                    Err(panic) => supervisor.fail(ConsumeError::Panicked {
                        task: format!("partition {partition} worker"),
                        message: panic_message(&*panic),
                    }),
                }
            }
            .in_current_span(),
        );
        PartitionHandle {
            partition,
            tx,
            backlog: VecDeque::new(),
            paused: false,
            shared,
            revoked,
            task,
        }
    }

    /// Waits, from inside a rebalance callback, until the tasks of `handles` finished (at most
    /// the drain timeout and a second). The callback runs on the thread polling the consumer;
    /// `block_in_place` lets the runtime move its other work away meanwhile. On a single-threaded
    /// runtime (some tests) it cannot block and does not wait.
    fn await_workers(&self, handles: &mut [PartitionHandle]) {
        let runtime = &self.spawner.runtime;
        if handles.is_empty()
            || runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread
        {
            return;
        }
        let tasks: Vec<&mut JoinHandle<()>> = handles.iter_mut().map(|h| &mut h.task).collect();
        let limit = self.spawner.config.drain_timeout + Duration::from_secs(1);
        let waited = tokio::task::block_in_place(|| {
            runtime.block_on(tokio::time::timeout(
                limit,
                futures_util::future::join_all(tasks),
            ))
        });
        if waited.is_err() {
            warn!("revoked partition workers did not settle within the drain timeout");
        }
    }

    /// Offsets to commit for `partitions` whose watermark moved past the last commit.
    fn pending_commits(&self, only: Option<&[i32]>) -> Vec<(i32, i64)> {
        let reg = self.registry();
        reg.iter()
            .filter(|(p, _)| only.is_none_or(|o| o.contains(p)))
            .filter_map(|(p, h)| {
                let mark = h.shared.watermark.load(Ordering::Acquire);
                let done = h.shared.committed.load(Ordering::Acquire);
                (mark >= 0 && mark > done).then_some((*p, mark))
            })
            .collect()
    }
}

impl ClientContext for LullContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // End of partition is lull's "caught up" signal, not a problem.
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown) => {
                self.health.set_kafka_reachable(false);
                warn!(error = %error, reason, "kafka unreachable");
            }
            other => warn!(error = %other, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for LullContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let topic = &*self.spawner.topic;
        let mut handles = Vec::new();
        {
            let mut reg = self.registry();
            for elem in tpl.elements_for_topic(topic) {
                if let Some(h) = reg.remove(&elem.partition()) {
                    debug_assert_eq!(h.partition, elem.partition());
                    h.revoked.cancel();
                    for item in &h.backlog {
                        if let Inbound::Message(m) = item {
                            self.spawner.budget.add(-inbound_size(m));
                        }
                    }
                    handles.push(h);
                }
            }
            metrics().assigned_partitions.set(reg.len() as i64);
            self.health.set_assigned(reg.len());
            if reg.is_empty() {
                self.health.set_in_group(false);
            }
            for h in &handles {
                let _ = metrics()
                    .consumer_lag
                    .remove_label_values(&[&h.partition.to_string()]);
            }
            metrics()
                .backpressure_paused
                .set(reg.values().filter(|h| h.paused).count() as i64);
        }
        // Hold the rebalance until the revoked workers settled what they had sent (bounded by
        // the drain timeout, below the session timeout): the next owner must start from a commit
        // point and Redis records that include every batch already out, or it emits them again.
        self.await_workers(&mut handles);
        let marks: Vec<(i32, i64)> = handles
            .iter()
            .filter_map(|h| {
                let mark = h.shared.watermark.load(Ordering::Acquire);
                (mark >= 0 && mark > h.shared.committed.load(Ordering::Acquire))
                    .then_some((h.partition, mark))
            })
            .collect();
        info!(
            partitions = ?handles.len(),
            "partitions revoked; open windows are left to the next owner"
        );
        if !marks.is_empty() {
            commit_now(consumer, topic, &marks, "revoke");
        }
        drop(handles);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let topic = &*self.spawner.topic;
                let partitions: Vec<i32> = tpl
                    .elements_for_topic(topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                let mut reg = self.registry();
                for &p in &partitions {
                    if let Some(old) = reg.remove(&p) {
                        old.revoked.cancel();
                    }
                    let handle = self.start_worker(p);
                    reg.insert(p, handle);
                }
                metrics().assigned_partitions.set(reg.len() as i64);
                self.health.set_assigned(reg.len());
                self.health.set_in_group(true);
                info!(partitions = ?partitions, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// Commits explicit offsets synchronously; a refusal is logged and counted, never fatal.
fn commit_now<C: ConsumerContext>(
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
            // IllegalGeneration, RebalanceInProgress, UnknownMemberId: the group moved on; the
            // next owner re-reads from the last good commit, so nothing is lost.
            warn!(why, error = %e, offsets = ?marks, "commit refused; the uncommitted range will be re-read by its next owner");
            false
        }
    }
}

type LullConsumer = StreamConsumer<LullContext>;

/// Records a successful commit on the partitions' shared state.
fn mark_committed(ctx: &LullContext, marks: &[(i32, i64)]) {
    let reg = ctx.registry();
    for &(p, offset) in marks {
        if let Some(h) = reg.get(&p) {
            h.shared.committed.fetch_max(offset, Ordering::AcqRel);
        }
    }
}

/// Runs the consumer until `shutdown` is cancelled or a worker fails fatally.
pub async fn run(
    config: Arc<Config>,
    sink: Sink,
    store: Option<Arc<Store>>,
    budget: Arc<Budget>,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> Result<(), ConsumeError> {
    let supervisor = Supervisor {
        failure: Arc::new(Mutex::new(None)),
        health: health.clone(),
        shutdown: shutdown.clone(),
    };
    let budget_for_loop = budget.clone();
    let context = LullContext {
        partitions: Mutex::new(HashMap::new()),

        spawner: Spawner {
            runtime: Handle::current(),
            config: config.clone(),
            topic: Arc::from(config.input_topic.as_str()),
            sink: sink.clone(),
            store,
            budget,
            shutdown: shutdown.clone(),
            supervisor: supervisor.clone(),
        },
        health: health.clone(),
    };
    let consumer: LullConsumer = crate::io::kafka::consumer_config(&config)
        .create_with_context(context)
        .map_err(ConsumeError::Start)?;
    consumer
        .subscribe(&[config.input_topic.as_str()])
        .map_err(ConsumeError::Start)?;
    let consumer = Arc::new(consumer);
    info!(topic = %config.input_topic, group = %config.group_id, "consuming");

    let topic_c = CString::new(config.input_topic.as_str()).map_err(|_| {
        ConsumeError::Start(KafkaError::ClientCreation("topic name contains NUL".into()))
    })?;
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backlog_tick = tokio::time::interval(BACKLOG_RETRY);
    backlog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commit_task: Option<JoinHandle<()>> = None;
    let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_task: Option<JoinHandle<()>> = None;
    let mut any_backlog = false;
    let mut budget_paused = false;

    health.polled();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = commit_tick.tick() => {
                if commit_task.as_ref().is_none_or(|t| t.is_finished()) {
                    supervisor.check("offset commit", commit_task.take());
                    commit_task = spawn_commit(&consumer, &config.input_topic);
                }
                // The tick is a branch of this very loop: it proves the loop turns (liveness).
                health.polled();
                report_progress(consumer.context());
                let ready = crate::ops::http::readiness(&health, &config.instance_id).ready;
                metrics().ready.set(i64::from(ready));
            }
            _ = probe_tick.tick() => {
                if probe_task.as_ref().is_none_or(|t| t.is_finished()) {
                    supervisor.check("kafka probe", probe_task.take());
                    probe_task = Some(spawn_probe(&consumer, &config.input_topic, &health));
                }
            }
            _ = backlog_tick.tick(), if any_backlog || budget_paused => {
                if budget_paused && budget_for_loop.used() < budget_for_loop.limit() / 10 * 9 {
                    budget_paused = false;
                    budget_for_loop.set_paused(false);
                    pause_all(&consumer, false);
                    info!(used = budget_for_loop.used(), "below the memory budget again: fetching resumed");
                }
                any_backlog = drain_backlogs(&consumer, budget_paused);
            }
            received = consumer.recv() => {
                let (partition, inbound) = match received {
                    Ok(m) => {
                        health.message_read();
                        (m.partition(), Inbound::Message(m.detach()))
                    }
                    Err(KafkaError::PartitionEOF(p)) => (p, Inbound::Eof),
                    Err(e) => {
                        warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                if dispatch(&consumer, &topic_c, partition, inbound) {
                    any_backlog = true;
                }
                if !budget_paused && budget_for_loop.exhausted() {
                    budget_paused = true;
                    budget_for_loop.set_paused(true);
                    pause_all(&consumer, true);
                    warn!(used = budget_for_loop.used(), limit = budget_for_loop.limit(), "memory budget reached (LULL_MAX_OPEN_BYTES): fetching paused");
                }

            }
        }
    }

    health.set_shutting_down();
    if let Some(t) = probe_task.take() {
        t.abort();
    }
    info!("stopping: draining partition workers");
    let handles: Vec<JoinHandle<()>> = {
        let mut reg = consumer.context().registry();
        reg.values_mut()
            .map(|h| std::mem::replace(&mut h.task, tokio::spawn(async {})))
            .collect()
    };
    let drain = config.drain_timeout + Duration::from_secs(1);
    if tokio::time::timeout(drain, futures_util::future::join_all(handles))
        .await
        .is_err()
    {
        warn!("partition workers did not stop within the drain timeout");
    }
    if let Some(t) = commit_task.take() {
        let _ = t.await;
    }
    let final_commit = {
        let consumer = consumer.clone();
        let topic = config.input_topic.clone();
        tokio::task::spawn_blocking(move || {
            let marks = consumer.context().pending_commits(None);
            if !marks.is_empty() && commit_now(&*consumer, &topic, &marks, "shutdown") {
                mark_committed(consumer.context(), &marks);
            }
            for h in consumer.context().registry().values() {
                h.revoked.cancel();
            }
        })
    };
    let _ = final_commit.await;
    // Closing the consumer leaves the group (its partitions move at once) and may block briefly.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    match supervisor.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Commits every moved watermark on a blocking thread, so its result is known.
fn spawn_commit(consumer: &Arc<LullConsumer>, topic: &str) -> Option<JoinHandle<()>> {
    let marks = consumer.context().pending_commits(None);
    if marks.is_empty() {
        return None;
    }
    let consumer = consumer.clone();
    let topic = topic.to_string();
    Some(tokio::task::spawn_blocking(move || {
        if commit_now(&*consumer, &topic, &marks, "periodic") {
            mark_committed(consumer.context(), &marks);
        }
    }))
}

/// Hands one item to its partition's worker (a message counts against the memory budget from
/// here until the worker takes it); returns whether a backlog now exists.
///
/// librdkafka reports end-of-partition only with the next, empty, fetch (up to
/// `fetch.wait.max.ms` later); when a message reaches the partition's high watermark, an
/// [`Inbound::Eof`] follows it at once. The watermark last seen is kept in the partition's shared
/// state: far below it (catch-up) librdkafka is not asked at all, except every 1024 offsets to
/// keep the lag figure fresh.
fn dispatch(consumer: &LullConsumer, topic: &CString, partition: i32, inbound: Inbound) -> bool {
    let mut reg = consumer.context().registry();
    // Not (or no longer) ours: the owner reads it from the committed offset.
    let Some(h) = reg.get_mut(&partition) else {
        return false;
    };
    let mut at_end = false;
    if let Inbound::Message(m) = &inbound {
        consumer.context().spawner.budget.add(inbound_size(m));
        let offset = m.offset();
        h.shared.read_next.store(offset + 1, Ordering::Release);
        let seen = h.shared.high.load(Ordering::Acquire);
        // With Redis the worker checks stale records against the high watermark, which must
        // then be current for every message; without, it is only needed near the end.
        let store = consumer.context().spawner.store.is_some();
        if store || seen < 0 || offset + 1 >= seen || (seen - offset) % 1024 == 0 {
            if let Some(high) = high_watermark(consumer, topic, partition) {
                h.shared.high.store(high, Ordering::Release);
                at_end = offset + 1 >= high;
            }
        }
    }
    let mut backlog = enqueue(consumer, partition, h, inbound);
    if at_end {
        backlog |= enqueue(consumer, partition, h, Inbound::Eof);
    }
    backlog
}

/// Puts one item in a partition's inbox, or behind its backlog (pausing the partition when the
/// inbox is full); returns whether a backlog now exists.
fn enqueue(
    consumer: &LullConsumer,
    partition: i32,
    h: &mut PartitionHandle,
    inbound: Inbound,
) -> bool {
    if !h.backlog.is_empty() {
        h.backlog.push_back(inbound);
        return true;
    }
    match h.tx.try_send(inbound) {
        Ok(()) => false,
        Err(mpsc::error::TrySendError::Full(item)) => {
            h.backlog.push_back(item);
            if !h.paused {
                set_paused(consumer, partition, true);
                h.paused = true;
                metrics().backpressure_paused.inc();
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(item)) => {
            release(consumer, &item);
            false
        }
    }
}

/// Gives back the budget an item took at dispatch, when it will never reach a worker.
fn release(consumer: &LullConsumer, item: &Inbound) {
    if let Inbound::Message(m) = item {
        consumer.context().spawner.budget.add(-inbound_size(m));
    }
}

/// Moves backlogged items into inboxes that have room, resuming partitions whose backlog is
/// empty; returns whether any backlog remains.
fn drain_backlogs(consumer: &LullConsumer, budget_paused: bool) -> bool {
    let mut reg = consumer.context().registry();
    let mut remaining = false;
    for (&partition, h) in reg.iter_mut() {
        while let Some(item) = h.backlog.pop_front() {
            match h.tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    h.backlog.push_front(item);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    for item in h.backlog.drain(..) {
                        release(consumer, &item);
                    }
                    break;
                }
            }
        }
        if h.backlog.is_empty() {
            if h.paused && !budget_paused {
                set_paused(consumer, partition, false);
                h.paused = false;
                metrics().backpressure_paused.dec();
            }
        } else {
            remaining = true;
        }
    }
    remaining
}

fn set_paused(consumer: &LullConsumer, partition: i32, pause: bool) {
    let topic = &*consumer.context().spawner.topic;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => debug!(partition, pause, "backpressure"),
        Err(e) => warn!(partition, pause, error = %e, "cannot pause/resume partition"),
    }
}

/// The partition's high watermark as librdkafka last saw it in a fetch response (a local
/// lookup, no request); `None` while unknown.
fn high_watermark(consumer: &LullConsumer, topic: &CString, partition: i32) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` is borrowed, `topic` is a valid
    // NUL-terminated string, and the out-pointers point at live locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// How often the brokers' reachability is checked (for readiness).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Checks on a blocking thread that the brokers answer a metadata request.
fn spawn_probe(consumer: &Arc<LullConsumer>, topic: &str, health: &Arc<Health>) -> JoinHandle<()> {
    let consumer = consumer.clone();
    let topic = topic.to_string();
    let health = health.clone();
    tokio::task::spawn_blocking(move || {
        let ok = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(3))
            .is_ok();
        if ok != health.kafka_reachable() {
            if ok {
                info!("kafka reachable");
            } else {
                warn!("kafka unreachable: metadata request failed");
            }
        }
        health.set_kafka_reachable(ok);
    })
}

/// Publishes consumer lag per partition and the age of the oldest open window.
fn report_progress(ctx: &LullContext) {
    let now = crate::model::wire::now_ms();
    let reg = ctx.registry();
    let mut oldest = i64::MAX;
    for (p, h) in reg.iter() {
        // Lag is measured from the commit point, not from what was read: a partition whose
        // worker stopped moving shows a growing lag, never a reassuring zero.
        let (mark, next, high) = (
            h.shared.watermark.load(Ordering::Acquire),
            h.shared.read_next.load(Ordering::Acquire),
            h.shared.high.load(Ordering::Acquire),
        );
        let position = if mark >= 0 { mark } else { next };
        if position >= 0 && high >= 0 {
            metrics()
                .consumer_lag
                .with_label_values(&[&p.to_string()])
                .set((high - position).max(0));
        }
        let ts = h.shared.oldest_open_ts.load(Ordering::Acquire);
        if ts != i64::MIN {
            oldest = oldest.min(ts);
        }
    }
    let age = if oldest == i64::MAX {
        0.0
    } else {
        (now - oldest).max(0) as f64 / 1000.0
    };
    metrics().oldest_open_window_age.set(age);
}

/// Pauses (or resumes) fetching on every assigned partition, for the memory budget. Resuming
/// leaves partitions whose own backlog is not drained yet paused.
fn pause_all(consumer: &LullConsumer, pause: bool) {
    let mut reg = consumer.context().registry();
    for (&partition, h) in reg.iter_mut() {
        if pause && !h.paused {
            set_paused(consumer, partition, true);
            h.paused = true;
            metrics().backpressure_paused.inc();
        } else if !pause && h.paused && h.backlog.is_empty() {
            set_paused(consumer, partition, false);
            h.paused = false;
            metrics().backpressure_paused.dec();
        }
    }
}
