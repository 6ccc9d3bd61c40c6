//! One task per assigned input partition: it alone owns that partition's windows, its output
//! records in flight and its commit point.
//!
//! The task is one `select! { biased; ... }` over, in order: revocation (stop at once), shutdown
//! (stop reading, deliver what is due, wait for acknowledgements), delivery acknowledgements, the
//! retry timer, the next window deadline (only while caught up), and new input (only while there
//! is room). After every step it publishes the partition's low watermark for the consumer loop to
//! commit.
//!
//! *Caught up* means the last thing read on the partition was an end-of-partition event: only
//! then does partition time follow the wall clock, so catching up after lag never lets the wall
//! clock cut a window that later input in the log would have joined.
//!
//! Delivery order: records are sent in the order the engine emitted them. When a delivery fails,
//! nothing new is sent until every record in flight has settled; the failed ones are then re-sent
//! in their original order after an exponential backoff with jitter. A record is never dropped,
//! and the commit point never passes one that is not acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, TimestampSource};
use crate::fragment::{self, RawMessage};
use crate::metrics::metrics;
use crate::offsets::OffsetTracker;
use crate::output::{self, now_ms, Record, Rejected};
use crate::sink::{Backoff, Sink, SinkError};
use crate::window::{Batch, FlushReason, WindowEngine};

/// Output records (batches and dead letters) held per partition, queued or in flight, before the
/// worker stops reading input: the bound that turns a slow output topic into backpressure.
const MAX_PENDING_RECORDS: usize = 10_000;

/// Records handed to the producer and not yet acknowledged, per partition.
const MAX_IN_FLIGHT: usize = 5_000;

/// Messages taken from the inbox in one step, so acknowledgements and timers are not starved.
const READ_CHUNK: usize = 512;

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
}

impl Default for PartitionShared {
    fn default() -> Self {
        Self {
            watermark: AtomicI64::new(-1),
            committed: AtomicI64::new(-1),
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
    /// Shared with the consumer loop.
    pub shared: Arc<PartitionShared>,
    /// Messages from the consumer loop.
    pub inbox: mpsc::Receiver<Inbound>,
    /// Cancelled when the partition is revoked: stop at once, produce nothing more.
    pub revoked: CancellationToken,
    /// Cancelled when the process stops: drain, then stop.
    pub shutdown: CancellationToken,
}

/// Metrics-only facts about a record, kept until it is acknowledged.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Batch {
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
    /// Gauge values this worker has added, so it can take them back.
    reported_windows: i64,
    reported_bytes: i64,
}

impl Worker {
    /// Runs until the partition is revoked, the process shuts down, or the producer fails fatally.
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
            reported_windows: 0,
            reported_bytes: 0,
        };
        let backoff = Backoff::default();
        let mut drain_deadline: Option<Instant> = None;
        debug!(partition = self.partition, "partition worker started");

        let result = loop {
            if let Err(e) = self.pump(&mut st) {
                break Err(e);
            }
            if drain_deadline.is_some()
                && st.outbox.is_empty()
                && st.in_flight.is_empty()
                && st.failed.is_empty()
            {
                break Ok(());
            }
            let deadline = if st.caught_up && drain_deadline.is_none() {
                st.engine.next_deadline().map(wall_to_instant)
            } else {
                None
            };
            let room = st.outbox.len() + st.in_flight.len() + st.failed.len() < MAX_PENDING_RECORDS;
            let can_read = room && drain_deadline.is_none();

            tokio::select! {
                biased;
                _ = self.revoked.cancelled() => break Ok(()),
                _ = self.shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                    if st.caught_up {
                        st.engine.advance(now_ms(), &mut st.batches);
                    }
                }
                Some((seq, result)) = st.deliveries.next(), if !st.deliveries.is_empty() => {
                    if let Err(e) = self.settle(&mut st, seq, result, &backoff) {
                        break Err(e);
                    }
                }
                _ = sleep_until_opt(st.hold_until), if st.hold_until.is_some() => {
                    st.hold_until = None;
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    st.engine.advance(now_ms(), &mut st.batches);
                }
                inbound = self.inbox.recv(), if can_read => {
                    match inbound {
                        Some(first) => {
                            self.take(&mut st, first);
                            for _ in 1..READ_CHUNK {
                                match self.inbox.try_recv() {
                                    Ok(next) => self.take(&mut st, next),
                                    Err(_) => break,
                                }
                            }
                        }
                        // The consumer loop dropped this partition: same as a revocation.
                        None => break Ok(()),
                    }
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                    warn!(
                        partition = self.partition,
                        unacknowledged = st.in_flight.len() + st.failed.len() + st.outbox.len(),
                        "drain timeout passed with records unacknowledged; they will be replayed"
                    );
                    break Ok(());
                }
            }
            self.route_batches(&mut st);
            self.publish(&mut st);
        };
        metrics().open_windows.sub(st.reported_windows);
        metrics().open_window_bytes.sub(st.reported_bytes);
        debug!(partition = self.partition, "partition worker stopped");
        result
    }

    /// Handles one inbound item: a message becomes a fragment (or a dead letter), an EOF marks
    /// the partition caught up.
    fn take(&self, st: &mut State, inbound: Inbound) {
        let m = match inbound {
            Inbound::Eof => {
                st.caught_up = true;
                st.engine.advance(now_ms(), &mut st.batches);
                return;
            }
            Inbound::Message(m) => m,
        };
        st.caught_up = false;
        metrics().fragments_received.inc();
        let offset = m.offset();
        st.tracker.read(offset);
        let now = now_ms();
        let ts = match self.config.timestamp {
            TimestampSource::Kafka => m.timestamp().to_millis().unwrap_or(now),
            TimestampSource::Arrival => now,
        };
        let event_id_header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "event_id").and_then(|h| h.value));
        let raw = RawMessage {
            key: m.key(),
            value: m.payload(),
            event_id_header,
            offset,
            ts,
        };
        match fragment::parse(raw, self.config.max_fragment_bytes) {
            Ok(f) => {
                st.engine.push(f, now, &mut st.batches);
                let stats = st.engine.take_stats();
                metrics().fragments_late.inc_by(stats.late);
                metrics().fragments_clamped.inc_by(stats.clamped);
            }
            Err(invalid) => {
                metrics()
                    .fragments_invalid
                    .with_label_values(&[invalid.label()])
                    .inc();
                let headers: Vec<(String, Vec<u8>)> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let error = invalid.to_string();
                warn!(
                    partition = self.partition,
                    offset,
                    reason = invalid.label(),
                    "invalid input sent to the dead-letter topic"
                );
                let record = output::encode_dead_letter(Rejected {
                    key: m.key(),
                    value: m.payload(),
                    headers: &headers,
                    topic: &self.topic,
                    partition: self.partition,
                    offset,
                    error: &error,
                    failed_at: SystemTime::now(),
                });
                st.tracker.hold(offset);
                st.outbox.push_back(Pending {
                    record,
                    kind: Kind::DeadLetter,
                });
            }
        }
    }

    /// Turns batches the engine emitted into output records, in emission order.
    fn route_batches(&self, st: &mut State) {
        if st.batches.is_empty() {
            return;
        }
        let now = now_ms();
        let grace = self.config.grace.as_millis() as i64;
        for batch in st.batches.drain(..) {
            let m = metrics();
            if batch.reason != FlushReason::Passthrough {
                m.flush_lateness
                    .observe((now - batch.close_time - grace).max(0) as f64 / 1000.0);
            }
            m.end_to_end
                .observe((now - batch.last_ts).max(0) as f64 / 1000.0);
            let record = output::encode_batch(&batch, &self.topic, self.partition, now);
            debug!(
                batch_id = %output::batch_id(&self.topic, self.partition, batch.first_offset()),
                count = batch.fragments.len(),
                reason = batch.reason.as_str(),
                correlation_id = batch.fragments[0].correlation_id.as_deref().unwrap_or(""),
                "batch flushed"
            );
            st.tracker.hold(record.first_offset);
            st.outbox.push_back(Pending {
                kind: Kind::Batch {
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
    fn pump(&self, st: &mut State) -> Result<(), SinkError> {
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
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    st.attempt += 1;
                    metrics().produce_retries.inc();
                    let delay = Backoff::default().delay(st.attempt);
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
        backoff: &Backoff,
    ) -> Result<(), SinkError> {
        let Some(pending) = st.in_flight.remove(&seq) else {
            return Ok(());
        };
        match result {
            Some(Ok(_)) => {
                st.attempt = 0;
                st.tracker.release(pending.record.first_offset);
                let m = metrics();
                match pending.kind {
                    Kind::Batch {
                        reason,
                        fragments,
                        bytes,
                    } => {
                        m.batches_flushed
                            .with_label_values(&[reason.as_str()])
                            .inc();
                        m.batch_fragments.observe(fragments as f64);
                        m.batch_bytes.observe(bytes as f64);
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
                    return Err(error);
                }
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
            let delay = backoff.delay(st.attempt);
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

    /// Publishes the commit point and this partition's share of the gauges.
    fn publish(&self, st: &mut State) {
        if let Some(mark) = st.tracker.watermark(st.engine.low_watermark()) {
            self.shared.watermark.store(mark, Ordering::Release);
        }
        let windows = st.engine.open_windows() as i64;
        let bytes = st.engine.open_bytes() as i64;
        let m = metrics();
        m.open_windows.add(windows - st.reported_windows);
        m.open_window_bytes.add(bytes - st.reported_bytes);
        st.reported_windows = windows;
        st.reported_bytes = bytes;
    }
}

/// The tokio instant at which the wall clock reads `wall_ms`.
fn wall_to_instant(wall_ms: i64) -> Instant {
    let delta = wall_ms.saturating_sub(now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(delta)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
