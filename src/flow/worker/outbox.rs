//! The outbox of one partition: output records (batches and dead letters) from the moment they
//! are made until the output topic acknowledged them, in the order they were made.
//!
//! Records are sent in order, at most [`MAX_IN_FLIGHT`] at a time. When a delivery fails, nothing
//! new is sent until every record in flight has settled; the failed ones are then sent again in
//! their original order, after an exponential backoff with jitter. A record is never dropped; its
//! acknowledgement comes back as an [`Acked`] value for the ledger and the progress of the
//! partition. The transport is a trait, so these rules are unit-tested without Kafka.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::io::backoff::Backoff;
use crate::io::producer::SinkError;
use crate::model::wire::Record;
use crate::ops::metrics::metrics;

/// Records handed to the producer and not yet acknowledged, per partition.
pub const MAX_IN_FLIGHT: usize = 5_000;

/// Records held per partition (queued, in flight or waiting for a retry) before the worker stops
/// reading input: the bound that turns a slow output topic into backpressure.
pub const MAX_HELD: usize = 10_000;

/// How failed sends and deliveries are retried.
const RETRY: Backoff = Backoff::DEFAULT;

/// How long to wait when the producer's own queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// A delivery in progress: resolves to the outcome the producer reported.
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// Where records go. [`crate::io::producer::Sink`] is the real one.
pub trait Transport {
    /// Hands a record over; the returned future resolves when the output topic acknowledged it
    /// (or the delivery failed).
    fn send(&self, record: &Record) -> Result<Delivery, SinkError>;
}

/// What a record stands for, kept until it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A batch of `fragments` fragments (`bytes` of them) of `key`, flushed for `reason`.
    Batch {
        /// Grouping key.
        key: std::sync::Arc<str>,
        /// `reason` on the wire.
        reason: &'static str,
        /// Fragments in it.
        fragments: usize,
        /// Their bytes.
        bytes: usize,
        /// The channel whose settings it kept (0: the global ones).
        channel: u8,
    },
    /// A dead letter.
    DeadLetter,
    /// A lifecycle event.
    Event,
    /// A state topic record (exactly_once).
    State,
}

/// A record the output topic acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// What it was.
    pub kind: Kind,
    /// The lowest input offset it covered.
    pub first_offset: i64,
    /// Bytes it held while unacknowledged.
    pub bytes: usize,
}

impl Transport for crate::io::producer::Sink {
    fn send(&self, record: &Record) -> Result<Delivery, SinkError> {
        let delivery = crate::io::producer::Sink::send(self, record)?;
        let sink = self.clone();
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(sink.classify(e)),
                Err(_) => Err(SinkError::Fatal("the producer was dropped".to_string())),
            }
        }))
    }
}

struct Held {
    record: Record,
    kind: Kind,
}

type Settling = Pin<Box<dyn Future<Output = (u64, Result<(), SinkError>)> + Send>>;

/// The records of one partition between being made and being acknowledged.
pub struct Outbox<T: Transport> {
    transport: T,
    partition: i32,
    /// Waiting to be sent, in order.
    queued: VecDeque<Held>,
    /// Sent and not settled, by send sequence.
    in_flight: BTreeMap<u64, Held>,
    /// Failed, by send sequence, waiting for the rest of the round to settle.
    failed: BTreeMap<u64, Held>,
    deliveries: FuturesUnordered<Settling>,
    next_seq: u64,
    /// Consecutive failed rounds, for the backoff.
    attempt: u32,
    /// No sends before this instant (backoff, or a full producer queue).
    hold_until: Option<Instant>,
    /// Payload bytes held, for the memory budget.
    bytes: usize,
}

/// Bytes a record holds until it is acknowledged.
pub fn record_bytes(r: &Record) -> usize {
    r.key.as_ref().map_or(0, Vec::len) + r.payload.as_ref().map_or(0, Vec::len)
}

impl<T: Transport> Outbox<T> {
    /// An empty outbox sending through `transport`.
    pub fn new(transport: T, partition: i32) -> Self {
        Self {
            transport,
            partition,
            queued: VecDeque::new(),
            in_flight: BTreeMap::new(),
            failed: BTreeMap::new(),
            deliveries: FuturesUnordered::new(),
            next_seq: 0,
            attempt: 0,
            hold_until: None,
            bytes: 0,
        }
    }

    /// Queues a record behind every earlier one.
    pub fn push(&mut self, record: Record, kind: Kind) {
        self.bytes += record_bytes(&record);
        self.queued.push_back(Held { record, kind });
    }

    /// Records held, in any state.
    pub fn held(&self) -> usize {
        self.queued.len() + self.in_flight.len() + self.failed.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held() == 0
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records sent and not settled.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When sending may resume, while held back (backoff, full producer queue).
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    /// Ends a hold whose time has come.
    pub fn release_hold(&mut self) {
        self.hold_until = None;
    }

    /// Sends queued records while allowed: not during a hold, not while a failed round is
    /// settling, not past [`MAX_IN_FLIGHT`]. A fatal producer error is returned.
    pub fn pump(&mut self) -> Result<(), SinkError> {
        if self.hold_until.is_some() || !self.failed.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(front) = self.queued.front() else {
                break;
            };
            match self.transport.send(&front.record) {
                Ok(delivery) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    if let Some(held) = self.queued.pop_front() {
                        self.in_flight.insert(seq, held);
                    }
                    self.deliveries
                        .push(Box::pin(delivery.map(move |result| (seq, result))));
                }
                Err(SinkError::QueueFull) => {
                    self.hold_until = Some(Instant::now() + QUEUE_FULL_PAUSE);
                    break;
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    self.attempt += 1;
                    metrics().produce_retries.inc();
                    let delay = RETRY.delay(self.attempt);
                    warn!(partition = self.partition, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot send; retrying");
                    self.hold_until = Some(Instant::now() + delay);
                    break;
                }
            }
        }
        Ok(())
    }

    /// The next settled delivery, once there is one: an acknowledgement (`Ok(Some)`), a failure
    /// taken care of (`Ok(None)`: it will be sent again), or a fatal producer error. Pending
    /// forever while nothing is in flight (for a `select!`).
    pub async fn settled(&mut self) -> Result<Option<Acked>, SinkError> {
        match self.deliveries.next().await {
            Some((seq, result)) => self.settle(seq, result),
            None => std::future::pending().await,
        }
    }

    /// [`Outbox::settled`] for every delivery that has settled already, without waiting.
    pub fn settled_now(&mut self) -> Result<Vec<Acked>, SinkError> {
        let mut acked = Vec::new();
        while let Some(Some((seq, result))) = self.deliveries.next().now_or_never() {
            acked.extend(self.settle(seq, result)?);
        }
        Ok(acked)
    }

    fn settle(
        &mut self,
        seq: u64,
        result: Result<(), SinkError>,
    ) -> Result<Option<Acked>, SinkError> {
        let Some(held) = self.in_flight.remove(&seq) else {
            return Ok(None);
        };
        let outcome = match result {
            Ok(()) => {
                self.attempt = 0;
                let bytes = record_bytes(&held.record);
                self.bytes -= bytes;
                Some(Acked {
                    first_offset: held.record.first_offset,
                    kind: held.kind,
                    bytes,
                })
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                if self.failed.is_empty() {
                    warn!(partition = self.partition, error = %e, "delivery failed; holding new output until in-flight records settle");
                }
                self.failed.insert(seq, held);
                None
            }
        };
        if !self.failed.is_empty() && self.in_flight.is_empty() {
            // The whole round has settled: the failed records go first again, in order.
            self.attempt += 1;
            let failed = std::mem::take(&mut self.failed);
            metrics().produce_retries.inc_by(failed.len() as u64);
            for (_, held) in failed.into_iter().rev() {
                self.queued.push_front(held);
            }
            let delay = RETRY.delay(self.attempt);
            info!(
                partition = self.partition,
                records = self.queued.len(),
                attempt = self.attempt,
                retry_in_ms = delay.as_millis() as u64,
                "re-sending failed records"
            );
            self.hold_until = Some(Instant::now() + delay);
        }
        Ok(outcome)
    }

    /// Forgets every record not yet sent (a revoked partition: its next owner makes them again).
    pub fn drop_unsent(&mut self) {
        for held in self
            .queued
            .drain(..)
            .chain(std::mem::take(&mut self.failed).into_values())
        {
            self.bytes -= record_bytes(&held.record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wire::Destination;
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;

    /// A send: the record's first offset, and how the test settles its delivery.
    type Sent = (i64, oneshot::Sender<Result<(), SinkError>>);

    /// A transport whose deliveries the test settles by hand, in any order.
    #[derive(Clone, Default)]
    struct Manual {
        sent: Arc<Mutex<Vec<Sent>>>,
    }

    impl Transport for Manual {
        fn send(&self, record: &Record) -> Result<Delivery, SinkError> {
            let (tx, rx) = oneshot::channel();
            self.sent.lock().unwrap().push((record.first_offset, tx));
            Ok(Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(SinkError::Fatal("dropped".into())))
            }))
        }
    }

    impl Manual {
        /// Offsets sent so far, in order.
        fn sent_offsets(&self) -> Vec<i64> {
            self.sent.lock().unwrap().iter().map(|(o, _)| *o).collect()
        }

        /// Settles the `i`-th send.
        fn settle(&self, i: usize, ok: bool) {
            let (_, tx) = {
                let mut sent = self.sent.lock().unwrap();
                let (o, _) = sent[i];
                let (dummy, _) = oneshot::channel();
                (o, std::mem::replace(&mut sent[i].1, dummy))
            };
            let result = if ok {
                Ok(())
            } else {
                Err(SinkError::Delivery(rdkafka::error::KafkaError::Canceled))
            };
            let _ = tx.send(result);
        }
    }

    fn record(first_offset: i64) -> Record {
        Record {
            destination: Destination::Output,
            key: Some(b"k".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: Vec::new(),
            first_offset,
            fragments: 1,
        }
    }

    async fn next_ack(o: &mut Outbox<Manual>) -> Option<Acked> {
        tokio::time::timeout(Duration::from_secs(5), o.settled())
            .await
            .expect("a delivery settles")
            .expect("not fatal")
    }

    #[tokio::test(start_paused = true)]
    async fn records_go_in_order_and_acks_come_back_as_values() {
        let t = Manual::default();
        let mut o = Outbox::new(t.clone(), 0);
        for off in [10, 20, 30] {
            o.push(record(off), Kind::DeadLetter);
        }
        o.pump().unwrap();
        assert_eq!(t.sent_offsets(), vec![10, 20, 30]);
        assert_eq!(o.bytes(), 9);
        t.settle(1, true);
        let acked = next_ack(&mut o).await.unwrap();
        assert_eq!(acked.first_offset, 20);
        assert_eq!(o.held(), 2);
        assert_eq!(o.bytes(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_round_is_resent_first_in_order_after_everything_settled() {
        let t = Manual::default();
        let mut o = Outbox::new(t.clone(), 0);
        for off in [1, 2, 3] {
            o.push(record(off), Kind::DeadLetter);
        }
        o.pump().unwrap();
        t.settle(0, false);
        assert_eq!(next_ack(&mut o).await, None);
        // A newer record is not sent while the round with the failure is still settling.
        o.push(record(4), Kind::DeadLetter);
        o.pump().unwrap();
        assert_eq!(t.sent_offsets(), vec![1, 2, 3]);
        t.settle(2, false);
        assert_eq!(next_ack(&mut o).await, None);
        t.settle(1, true);
        assert_eq!(next_ack(&mut o).await.unwrap().first_offset, 2);
        // Round settled: the failures go again first, in their order, after the backoff.
        let until = o.hold_until().expect("a backoff");
        o.pump().unwrap();
        assert_eq!(t.sent_offsets().len(), 3, "nothing before the backoff ends");
        tokio::time::sleep_until(until).await;
        o.release_hold();
        o.pump().unwrap();
        assert_eq!(t.sent_offsets(), vec![1, 2, 3, 1, 3, 4]);
        for i in 3..6 {
            t.settle(i, true);
        }
        let mut acked: Vec<i64> = Vec::new();
        for _ in 0..3 {
            acked.push(next_ack(&mut o).await.unwrap().first_offset);
        }
        acked.sort_unstable();
        assert_eq!(acked, vec![1, 3, 4]);
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unsent_records_are_dropped_on_revocation_and_their_bytes_given_back() {
        let t = Manual::default();
        let mut o = Outbox::new(t.clone(), 0);
        o.push(record(1), Kind::DeadLetter);
        o.pump().unwrap();
        o.push(record(2), Kind::DeadLetter);
        o.drop_unsent();
        assert_eq!(o.held(), 1, "the one in flight stays until it settles");
        assert_eq!(o.bytes(), 3);
    }
}
