//! exactly_once for one partition worker: starting the partition's transactions, reading its
//! state records, when to commit and what a commit holds, and the replay after an abort.
//!
//! * **Start.** The partition's transactional producer registers its id: whatever an earlier
//!   owner left open is aborted and that owner fenced. Only then are the group's committed offset
//!   and the state topic read, so both reflect exactly the committed transactions.
//! * **Commit.** At most `LULL_TRANSACTION_MS` after its first record, and at once when the
//!   worker has nothing more to add (it read everything the partition has). A commit holds
//!   every record made so far, the state records of its batches, the tombstones of records that
//!   can never skip anything again, the partition record (how far the input was read), and the
//!   input offset: the lowest offset still in an open window, else the next one to read.
//! * **Replay.** A transaction that cannot commit is aborted (nothing of it is visible); the
//!   worker reads the state topic and the group's offset again and seeks back to that offset. Not
//!   to the offset it last saw commit: a commit that seemed to fail may have landed (a new
//!   producer completes a commit its predecessor had asked for).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::io::backoff::Backoff;
use crate::io::producer::SinkError;
use crate::io::transactional::{TxnError, TxnProducer};
use crate::model::state::{FlushedKeys, FlushedRecord, PartitionRecord};
use crate::model::window::Batch;
use crate::model::wire::{self, Record};
use crate::ops::metrics::metrics;

use super::outbox::Kind;
use super::progress::{Phase, Status};
use super::transaction::Committed;
use super::{Output, Parts, Stop, Worker};

/// How long an offsets-only commit (input read, nothing emitted) waits after the last commit.
const OFFSETS_EVERY: Duration = Duration::from_millis(500);

/// How long starting the transactions may take per attempt.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long reading the state topic may take per attempt.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a metadata or offset request may take while restoring.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a failed start is tried again.
const RETRY: Backoff = Backoff::DEFAULT;

/// What an exactly_once worker knows beyond its windows.
pub(super) struct EosState {
    /// The partition's flushed records (skip rule, `follows`, tombstones).
    pub(super) keys: FlushedKeys,
    /// The input topic's identity, written into every record (empty when the cluster has
    /// none to give).
    pub(super) topic_id: String,
    /// The input offset the last committed transaction committed (at start: the group's).
    pub(super) committed: Option<i64>,
    /// The group's offset when the state was read: everything below it is in committed
    /// transactions. (A consumer whose position was fetched before the previous owner's last
    /// commit landed still delivers some of it.)
    settled_below: Option<i64>,
    /// The first input offset this worker read (where a replay starts when nothing was ever
    /// committed).
    first_read: Option<i64>,
    /// When the last commit ended.
    last_commit: Instant,
    /// When the commit on its way started.
    committing_since: Option<Instant>,
    /// The state partition's end when it was read: this owner's records lie at or above it.
    state_end: i64,
    /// The `restore_from` of the last partition record written.
    restore_from: Option<i64>,
}

impl EosState {
    /// Whether what input offset `offset` made (a dead letter, an `opened` event) is in a
    /// committed transaction already: this is a replay.
    pub(super) fn committed_before(&self, offset: i64) -> bool {
        self.settled(offset) || self.keys.read().is_some_and(|read| offset < read)
    }

    /// Whether input offset `offset` is below the group's offset as read with the state: all
    /// it made (a batch, a dead letter) is in a committed transaction, whatever the state
    /// records still say (a batch's record may be tombstoned already).
    pub(super) fn settled(&self, offset: i64) -> bool {
        self.settled_below.is_some_and(|below| offset < below)
    }

    /// Where this owner's next state records will lie at the earliest: the end of the state
    /// partition as its deliveries (`delivered`) or its restore told.
    fn state_end(&self, delivered: Option<i64>) -> i64 {
        delivered.map_or(self.state_end, |d| d.max(self.state_end))
    }

    /// Notes `batch` (id `id`) emitted and returns its state record; `delivered` is how far
    /// this owner's state records reach (see [`EosState::state_end`]).
    pub(super) fn flushed(
        &mut self,
        batch: &Batch,
        id: Arc<str>,
        delivered: Option<i64>,
    ) -> Record {
        let since = self.state_end(delivered);
        self.keys.flushed(
            batch.key.clone(),
            batch.last_offset(),
            id.clone(),
            batch.last_ts,
            since,
        );
        let record = FlushedRecord {
            topic_id: self.topic_id.clone(),
            partition: self.keys.partition(),
            offset: batch.last_offset(),
            batch_id: id.to_string(),
            last_ts: batch.last_ts,
        };
        wire::encode_state_record(&batch.key, &record, batch.first_offset())
    }

    /// Notes the first input offset this worker read (where a replay starts when nothing was
    /// committed yet).
    pub(super) fn read(&mut self, offset: i64) {
        if self.first_read.is_none() {
            self.first_read = Some(offset);
        }
    }
}

impl Worker {
    /// Whether the commit point moved past what was last committed.
    pub(super) fn offsets_moved(&self, p: &mut Parts) -> bool {
        let Some(state) = p.eos.as_ref() else {
            return false;
        };
        let committed = state.committed;
        p.progress
            .commit_point(&p.engine)
            .is_some_and(|point| committed.is_none_or(|c| point > c))
    }

    /// When the next commit is due (exactly_once): at once when the transaction holds records
    /// and nothing more is waiting to be read (or the worker drains), else at most
    /// `LULL_TRANSACTION_MS` after its first record; an input offset that moved with nothing
    /// emitted commits alone, less often.
    pub(super) fn commit_due(&self, p: &mut Parts, draining: bool) -> Option<Instant> {
        let (committing, due, queued) = match &p.output {
            Output::Txn(t) => (t.is_committing(), t.due(), t.queued()),
            Output::Acked(_) => return None,
        };
        let last_commit = p.eos.as_ref()?.last_commit;
        let offsets_moved = due.is_none() && !committing && self.offsets_moved(p);
        next_commit(&Cadence {
            committing,
            due,
            queued,
            caught_up: p.caught_up,
            draining,
            offsets_moved,
            last_commit,
            now: Instant::now(),
        })
    }

    /// Whether a due commit waits for records still queued (a full producer queue): reading
    /// more input would only delay it.
    pub(super) fn commit_waits_for_output(&self, p: &Parts, commit_at: Option<Instant>) -> bool {
        match &p.output {
            Output::Txn(t) => t.queued() > 0 && commit_at.is_some_and(|at| at <= Instant::now()),
            Output::Acked(_) => false,
        }
    }

    /// Starts a commit: the tombstones of records that can never skip anything again and the
    /// partition record go into the transaction, then (once everything made is in it) the commit
    /// with the commit point. If the producer queue is full, it is tried again next turn.
    pub(super) fn start_commit(&self, p: &mut Parts) -> Result<(), Stop> {
        let (Output::Txn(t), Some(state)) = (&mut p.output, p.eos.as_mut()) else {
            return Ok(());
        };
        if t.is_committing() {
            return Ok(());
        }
        let point = p.progress.commit_point(&p.engine);
        if let Some(point) = point {
            let time = p.engine.replay_time().unwrap_or(i64::MIN);
            for key in state.keys.expired(point, time) {
                t.push(wire::encode_state_tombstone(&key), Kind::State);
            }
        }
        // The partition record: how far the input was read, and where a takeover's read of the
        // state partition may start (below it no record is live any more).
        let end = state.state_end(t.state_end());
        let restore_from = state.keys.restore_from(end);
        if let Some(read) = p.progress.next_read() {
            let moved = state.keys.read().is_none_or(|r| r < read)
                || state.restore_from != Some(restore_from);
            if moved {
                let record = PartitionRecord {
                    topic_id: state.topic_id.clone(),
                    partition: self.partition,
                    read,
                    restore_from: Some(restore_from),
                };
                t.push(wire::encode_partition_record(&record), Kind::State);
                state.keys.set_read(read);
                state.restore_from = Some(restore_from);
            }
        }
        for first_offset in t.pump().map_err(Stop::Abort)? {
            p.progress.release(first_offset);
        }
        if t.queued() > 0 {
            return Ok(());
        }
        let group = self.consumer.group_metadata();
        if point.is_some() && group.is_none() {
            error!(
                partition = self.partition,
                "the consumer has no group metadata: a transaction cannot commit input offsets"
            );
            return Err(Stop::Abort(TxnError::Abortable("no group metadata".into())));
        }
        t.commit(point, group).map_err(Stop::Abort)?;
        state.committing_since = Some(Instant::now());
        Ok(())
    }

    /// A commit ended. Committed: what it held becomes visible (counted, told to the Redis
    /// ledger) and its offset is the new commit point. Failed: the transaction is aborted and
    /// the worker replays ([`Stop::Abort`]).
    pub(super) async fn committed(
        &self,
        p: &mut Parts,
        result: Result<Committed, TxnError>,
    ) -> Result<(), Stop> {
        let since = p.eos.as_mut().and_then(|s| s.committing_since.take());
        let c = result.map_err(Stop::Abort)?;
        let m = metrics();
        m.transactions.with_label_values(&["committed"]).inc();
        self.counters.commits.inc();
        if let Some(since) = since {
            m.transaction_seconds.observe(since.elapsed().as_secs_f64());
        }
        for (kind, first_offset) in &c.contents.records {
            self.delivered(p, kind, *first_offset);
        }
        if let Some(state) = p.eos.as_mut() {
            if let Some(offset) = c.offset {
                p.progress.committed(offset);
                state.committed = Some(state.committed.map_or(offset, |o| o.max(offset)));
            }
            state.last_commit = Instant::now();
        }
        self.status.output_ok(true);
        Ok(())
    }

    /// Aborts the open transaction after `cause`: on to a replay ([`Stop::Rewind`]); if the
    /// producer is fenced, [`Stop::Fenced`]; if it broke otherwise (a fatal error that is no
    /// fencing: a coordinator that lost track of the transaction in a failover), a new producer
    /// and a replay ([`Stop::Reinit`]); if the brokers refuse it, the process stops.
    pub(super) async fn abort(&self, p: &mut Parts, cause: TxnError) -> Stop {
        metrics().transactions.with_label_values(&["aborted"]).inc();
        match cause {
            TxnError::Fenced(why) => return Stop::Fenced(why),
            TxnError::Fatal(why) => return Stop::Reinit(why),
            TxnError::Refused(_) | TxnError::Create(_) => {
                return Stop::Fatal(SinkError::Fatal(cause.to_string()))
            }
            TxnError::Retriable(_) | TxnError::Abortable(_) => {}
        }
        self.status.output_ok(false);
        warn!(
            partition = self.partition,
            error = %cause,
            "transaction aborted: nothing of it becomes visible; replaying from the last commit"
        );
        let Output::Txn(t) = &mut p.output else {
            return Stop::Rewind;
        };
        match t.abort().await {
            Ok(()) | Err(TxnError::Retriable(_) | TxnError::Abortable(_)) => Stop::Rewind,
            Err(TxnError::Fenced(why)) => Stop::Fenced(why),
            Err(TxnError::Fatal(why)) => Stop::Reinit(why),
            Err(e) => Stop::Fatal(SinkError::Fatal(e.to_string())),
        }
    }

    /// Where a replay starts when nothing was ever committed: the first offset this run read.
    /// (Otherwise a replay starts from the offset the group holds, read again with the state.)
    pub(super) fn first_read(p: &Parts) -> Option<i64> {
        p.eos.as_ref()?.first_read
    }

    /// Before a replay: the partition's queue goes back to `offset`.
    pub(super) async fn rewind(&self, offset: Option<i64>) -> Result<(), Stop> {
        let Some(offset) = offset else {
            return Ok(());
        };
        let mut attempt = 0;
        loop {
            let (consumer, topic, partition) = (
                self.consumer.clone(),
                self.topic.to_string(),
                self.partition,
            );
            let sought = tokio::task::spawn_blocking(move || {
                consumer.seek(&topic, partition, Offset::Offset(offset), REQUEST_TIMEOUT)
            })
            .await;
            match sought {
                Ok(Ok(())) => {
                    info!(
                        partition = self.partition,
                        offset, "replaying from the last commit"
                    );
                    return Ok(());
                }
                Ok(Err(e)) if attempt < 5 && !self.revoked.is_cancelled() => {
                    attempt += 1;
                    warn!(partition = self.partition, error = %e, "cannot seek back yet");
                    tokio::time::sleep(RETRY.delay(attempt)).await;
                }
                Ok(Err(e)) if self.revoked.is_cancelled() || self.shutdown.is_cancelled() => {
                    info!(partition = self.partition, error = %e, "partition taken away before its replay");
                    return Ok(());
                }
                Ok(Err(e)) => {
                    // Reading on past an aborted transaction would lose what it held.
                    return Err(Stop::Fatal(SinkError::Fatal(format!(
                        "cannot seek partition {} back to offset {offset} after an aborted \
                         transaction: {e}",
                        self.partition
                    ))));
                }
                Err(join) => return Err(Stop::Fatal(SinkError::Fatal(join.to_string()))),
            }
        }
    }

    /// After a revocation (exactly_once): the commit on its way ends, then everything made goes
    /// into the transaction and commits with the commit point, within `end`. Whatever does not
    /// commit is aborted; the next owner replays it.
    pub(super) async fn commit_revoked(&self, p: &mut Parts, end: Instant) {
        if !self.await_commit(p, end).await {
            return;
        }
        // Everything made into the transaction, waiting out a full producer queue.
        loop {
            if let Err(stop) = self.pump(p) {
                if let Stop::Abort(cause) = stop {
                    let _ = self.abort(p, cause).await;
                }
                return;
            }
            let (queued, hold) = match &p.output {
                Output::Txn(t) => (t.queued(), t.hold_until()),
                Output::Acked(_) => return,
            };
            if queued == 0 {
                break;
            }
            if Instant::now() >= end {
                return;
            }
            if let Some(hold) = hold {
                tokio::time::sleep_until(hold.min(end)).await;
            }
            p.output.release_hold();
        }
        let open = matches!(&p.output, Output::Txn(t) if t.has_open());
        if !open && !self.offsets_moved(p) {
            return;
        }
        if let Err(stop) = self.start_commit(p) {
            if let Stop::Abort(cause) = stop {
                let _ = self.abort(p, cause).await;
            }
            return;
        }
        self.await_commit(p, end).await;
    }

    /// Waits (until `end`) for the commit on its way, if any, and takes its outcome; whether
    /// the transaction is settled (committed, or none was on its way).
    async fn await_commit(&self, p: &mut Parts, end: Instant) -> bool {
        let Output::Txn(t) = &mut p.output else {
            return false;
        };
        if !t.is_committing() {
            return true;
        }
        let Ok(result) = tokio::time::timeout_at(end, t.committed()).await else {
            return false;
        };
        match self.committed(p, result).await {
            Ok(()) => true,
            Err(Stop::Abort(cause)) => {
                let _ = self.abort(p, cause).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// What decides when a partition's next commit is due.
#[derive(Debug, Clone, Copy)]
struct Cadence {
    /// A commit is on its way.
    committing: bool,
    /// The open transaction holds records and must commit by then (its first record plus
    /// `LULL_TRANSACTION_MS`).
    due: Option<Instant>,
    /// Records wait to go into the transaction.
    queued: usize,
    /// The worker read everything the partition has.
    caught_up: bool,
    /// The worker drains (shutdown).
    draining: bool,
    /// The commit point moved past the last commit.
    offsets_moved: bool,
    /// When the last commit ended.
    last_commit: Instant,
    /// Now.
    now: Instant,
}

/// When the next commit is due: never during one; a transaction with records at once when the
/// worker has nothing more to add (it is caught up, or draining) and at most
/// `LULL_TRANSACTION_MS` after its first record otherwise; a commit point that moved with
/// nothing emitted (signals, skipped fragments) alone, [`OFFSETS_EVERY`] after the last commit.
fn next_commit(c: &Cadence) -> Option<Instant> {
    if c.committing {
        return None;
    }
    if let Some(due) = c.due {
        let nothing_more = c.draining || (c.caught_up && c.queued == 0);
        return Some(if nothing_more { c.now } else { due });
    }
    if c.queued > 0 || !c.offsets_moved {
        return None;
    }
    Some(if c.draining {
        c.now
    } else {
        c.last_commit + OFFSETS_EVERY
    })
}

/// The group's committed offset of `topic`/`partition` (read only once transactions that commit
/// offsets for it have ended); `None` when the group has none.
fn committed_offset(
    consumer: &crate::flow::rebalance::LullConsumer,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map_err(|e| format!("cannot read the committed offset: {e}"))?;
    let offset = committed
        .find_partition(topic, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
    drop(committed);
    Ok(offset)
}

mod start;
#[cfg(test)]
mod tests;
