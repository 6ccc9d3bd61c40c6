//! The output of one partition in exactly_once: records go, in the order they were made, into the
//! partition's open Kafka transaction, which commits together with the input offset it covers.
//!
//! * A record is handed to the producer as soon as the transaction may take it; until then it
//!   waits here, in order (a full producer queue, a commit in flight).
//! * A commit starts only when nothing waits here: every record made so far is in the
//!   transaction, so a batch and its state record are never split across two transactions.
//! * Nothing is visible before the commit; what a commit makes visible comes back as
//!   [`Committed`], for the metrics and the Redis ledger. A failed commit is aborted: nothing of it
//!   is ever visible, and the worker replays from its last commit.
//!
//! The producer's calls block, so a commit or an abort runs on a blocking thread while the worker
//! goes on reading input (its records wait here meanwhile).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::io::transactional::{SendError, TxnError, TxnProducer};
use crate::model::wire::Record;

use super::outbox::{record_bytes, Kind};

/// Beyond the producer's own patience, how long a commit or an abort may take.
const WATCHDOG_MARGIN: Duration = Duration::from_secs(5);

/// How long to wait when the producer's own queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// What a transaction holds.
#[derive(Debug, Default)]
pub struct Contents {
    /// What each record stands for (batches, dead letters, events, state records), in order,
    /// with the lowest input offset it covers.
    pub records: Vec<(Kind, i64)>,
    /// Payload bytes.
    pub bytes: usize,
}

/// A commit that succeeded: what became visible, and the input offset committed with it.
#[derive(Debug)]
pub struct Committed {
    /// What the transaction held.
    pub contents: Contents,
    /// The input offset committed (the next one to read), if any.
    pub offset: Option<i64>,
}

/// The open transaction.
struct Open {
    since: Instant,
    contents: Contents,
}

/// A commit on its way.
struct Committing {
    task: JoinHandle<Result<(), TxnError>>,
    since: Instant,
    contents: Contents,
    offset: Option<i64>,
}

/// One partition's transactional output.
pub struct Transaction {
    producer: Arc<TxnProducer>,
    /// Made, and not yet in the transaction, in order.
    queued: VecDeque<(Record, Kind)>,
    /// Payload bytes waiting here or in a transaction not yet committed (the memory budget).
    bytes: usize,
    open: Option<Open>,
    committing: Option<Committing>,
    /// No sends before this instant (a full producer queue).
    hold_until: Option<Instant>,
    /// Longest a transaction stays open (`LULL_TRANSACTION_MS`).
    max_open: Duration,
}

impl Transaction {
    /// Output through `producer` (initialised), committing at most `max_open` after the first
    /// record.
    pub fn new(producer: Arc<TxnProducer>, max_open: Duration) -> Self {
        Self {
            producer,
            queued: VecDeque::new(),
            bytes: 0,
            open: None,
            committing: None,
            hold_until: None,
            max_open,
        }
    }

    /// Queues a record behind every earlier one.
    pub fn push(&mut self, record: Record, kind: Kind) {
        self.bytes += record_bytes(&record);
        self.queued.push_back((record, kind));
    }

    /// Where this partition's state records reach, as far as deliveries told (see
    /// [`TxnProducer::state_end`]).
    pub fn state_end(&self) -> Option<i64> {
        self.producer.state_end()
    }

    /// Records waiting to go into a transaction.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Records waiting, or in a transaction not yet committed.
    pub fn held(&self) -> usize {
        self.queued.len()
            + self.open.as_ref().map_or(0, |o| o.contents.records.len())
            + self
                .committing
                .as_ref()
                .map_or(0, |c| c.contents.records.len())
    }

    /// Payload bytes held (waiting or uncommitted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a commit is on its way.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Whether records went into the open transaction.
    pub fn has_open(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| !o.contents.records.is_empty())
    }

    /// Whether nothing waits, nothing is in an open transaction and no commit is on its way.
    pub fn is_settled(&self) -> bool {
        self.queued.is_empty() && !self.has_open() && self.committing.is_none()
    }

    /// When the open transaction must commit at the latest.
    pub fn due(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .filter(|o| !o.contents.records.is_empty())
            .map(|o| o.since + self.max_open)
    }

    /// When sending may resume after a full producer queue.
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    /// Ends a hold whose time has come.
    pub fn release_hold(&mut self) {
        self.hold_until = None;
    }

    /// Hands waiting records to the open transaction (opening one when needed), in order, unless
    /// a commit is on its way or the producer queue is full. Returns the lowest input offset of
    /// each record handed over (the worker's commit point may pass them now: they commit, or
    /// abort, with the offsets).
    pub fn pump(&mut self) -> Result<Vec<i64>, TxnError> {
        let mut sent = Vec::new();
        if self.committing.is_some() || self.hold_until.is_some() {
            return Ok(sent);
        }
        while let Some((record, _)) = self.queued.front() {
            if self.open.is_none() {
                self.producer.begin()?;
                self.open = Some(Open {
                    since: Instant::now(),
                    contents: Contents::default(),
                });
            }
            match self.producer.send(record) {
                Ok(()) => {
                    let Some((record, kind)) = self.queued.pop_front() else {
                        break;
                    };
                    if let Some(open) = self.open.as_mut() {
                        if open.contents.records.is_empty() {
                            open.since = Instant::now();
                        }
                        open.contents.bytes += record_bytes(&record);
                        open.contents.records.push((kind, record.first_offset));
                    }
                    if record.first_offset != i64::MAX {
                        sent.push(record.first_offset);
                    }
                }
                Err(SendError::QueueFull) => {
                    self.hold_until = Some(Instant::now() + QUEUE_FULL_PAUSE);
                    break;
                }
                Err(SendError::Txn(e)) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Starts committing the open transaction with input offset `offset` for the consumer group
    /// described by `group` (re-read for every commit: it changes with every rebalance). Only
    /// when nothing waits here (see the module notes); a transaction with no records commits the
    /// offset alone.
    pub fn commit(
        &mut self,
        offset: Option<i64>,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        debug_assert!(self.queued.is_empty() && self.committing.is_none());
        if self.open.is_none() {
            self.producer.begin()?;
        }
        let contents = self.open.take().map(|o| o.contents).unwrap_or_default();
        let producer = self.producer.clone();
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let outcome = producer.commit(offset, group.as_ref());
            tracing::debug!(
                transactional_id = producer.id(),
                offset = offset.unwrap_or(-1),
                took_ms = started.elapsed().as_millis() as u64,
                ok = outcome.is_ok(),
                "commit"
            );
            outcome
        });
        self.committing = Some(Committing {
            task,
            since: Instant::now(),
            contents,
            offset,
        });
        Ok(())
    }

    /// How long a commit or an abort may take before the producer is given up: librdkafka retries
    /// inside its calls, and one has been seen never to return after a coordinator restarted.
    fn watchdog(&self) -> Duration {
        self.producer.patience() + WATCHDOG_MARGIN
    }

    /// The outcome of the commit on its way, once it is known; pending forever while none is (for
    /// a `select!`). A commit that does not return within [`Transaction::watchdog`] counts as a
    /// broken producer (its blocking call is left to end on its own).
    pub async fn committed(&mut self) -> Result<Committed, TxnError> {
        let watchdog = self.watchdog();
        let Some(c) = self.committing.as_mut() else {
            return std::future::pending().await;
        };
        let since = c.since;
        let result = match tokio::time::timeout_at(since + watchdog, &mut c.task).await {
            Ok(result) => result,
            Err(_) => {
                self.committing = None;
                return Err(TxnError::Fatal(format!(
                    "a commit did not return within {} s",
                    watchdog.as_secs()
                )));
            }
        };
        let Some(c) = self.committing.take() else {
            return std::future::pending().await;
        };
        match result {
            Ok(Ok(())) => {
                self.bytes = self.bytes.saturating_sub(c.contents.bytes);
                Ok(Committed {
                    contents: c.contents,
                    offset: c.offset,
                })
            }
            Ok(Err(e)) => Err(e),
            Err(join) => Err(TxnError::Fatal(format!("the commit task failed: {join}"))),
        }
    }

    /// Aborts the open transaction (nothing of it becomes visible) and forgets everything waiting
    /// here: the worker replays from its last commit, which makes them again.
    pub async fn abort(&mut self) -> Result<(), TxnError> {
        let watchdog = self.watchdog();
        if let Some(c) = self.committing.take() {
            if tokio::time::timeout(watchdog, c.task).await.is_err() {
                return Err(TxnError::Fatal("a commit did not return".into()));
            }
        }
        self.queued.clear();
        self.open = None;
        self.bytes = 0;
        self.hold_until = None;
        let producer = self.producer.clone();
        let abort = tokio::task::spawn_blocking(move || producer.abort());
        match tokio::time::timeout(watchdog, abort).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(TxnError::Fatal(format!("the abort task failed: {join}"))),
            Err(_) => Err(TxnError::Fatal(format!(
                "an abort did not return within {} s",
                watchdog.as_secs()
            ))),
        }
    }
}
