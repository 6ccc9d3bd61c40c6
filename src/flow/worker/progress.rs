//! The progress of one partition, kept in one place: its commit point (the offset tracker), its
//! contribution to the gauges and to the process-wide memory budget, its lifecycle [`Phase`] and
//! output health, and the value it sends back to the owner of the partition set, which commits
//! and reports (and alone turns the partitions' phases and output health into the run's health).

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::model::offsets::OffsetTracker;
use crate::model::window::WindowEngine;
use crate::ops::budget::{held_by_windows, Budget};
use crate::ops::metrics::metrics;

/// Where a partition's worker is in its life. Each worker moves through these in order (a replay
/// goes back from `Running` to `Claiming`; a fenced worker whose partition stays goes back to
/// `Claiming` with a new producer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Starting: exactly_once starts the partition's transactions (fencing any earlier owner) and
    /// reads its state records; Redis claims the partition.
    #[default]
    Claiming,
    /// Claiming, but the brokers cannot start its transactions or give its state yet: the
    /// process is not ready meanwhile (`transactions_unavailable`).
    Waiting,
    /// Reading input and cutting batches.
    Running,
    /// Stopping (shutdown): reads nothing more, delivers what is due, up to the drain timeout.
    Draining,
    /// Fenced off by a newer owner: writes nothing and waits for the group to take the partition
    /// away; the process is not ready meanwhile (`partition_fenced`).
    Fenced,
    /// Stopped.
    Done,
}

impl Phase {
    /// The phase as `lull_partition_phase` names it; `None` once stopped.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Phase::Claiming => Some("claiming"),
            Phase::Waiting => Some("waiting"),
            Phase::Running => Some("running"),
            Phase::Draining => Some("draining"),
            Phase::Fenced => Some("fenced"),
            Phase::Done => None,
        }
    }
}

/// What a worker reports about its partition, through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The offset that may be committed (the next one to read when nothing is pending); `None`
    /// until something was read.
    pub commit: Option<i64>,
    /// The partition's high watermark as last seen; `None` while unknown.
    pub high: Option<i64>,
    /// First timestamp of the oldest open window.
    pub oldest_open_ts: Option<i64>,
    /// Windows open now.
    pub open_windows: usize,
    /// Whether the worker is reading input (false while the budget or its outbox hold it back).
    pub reading: bool,
    /// Where the worker is in its life.
    pub phase: Phase,
    /// Whether the partition's output works: its latest delivery (at_least_once) or transaction
    /// (exactly_once) went through. True before any.
    pub output_ok: bool,
}

impl Default for PartitionProgress {
    fn default() -> Self {
        Self {
            commit: None,
            high: None,
            oldest_open_ts: None,
            open_windows: 0,
            reading: false,
            phase: Phase::default(),
            output_ok: true,
        }
    }
}

/// A worker's phase and output health, sent to the owner of the partition set, which is woken
/// when either changes (it turns them into the run's readiness at once).
#[derive(Clone)]
pub struct Status {
    tx: watch::Sender<PartitionProgress>,
    changed: Arc<Notify>,
}

impl Status {
    /// Status reported on `tx`, waking the owner through `changed`.
    pub fn new(tx: watch::Sender<PartitionProgress>, changed: Arc<Notify>) -> Self {
        Self { tx, changed }
    }

    /// The worker moved to `phase`.
    pub fn phase(&self, phase: Phase) {
        self.update(|p| std::mem::replace(&mut p.phase, phase) != phase);
    }

    /// The partition's latest delivery or transaction went through (`true`) or failed.
    pub fn output_ok(&self, ok: bool) {
        self.update(|p| std::mem::replace(&mut p.output_ok, ok) != ok);
    }

    /// The channel progress is published on.
    pub fn sender(&self) -> watch::Sender<PartitionProgress> {
        self.tx.clone()
    }

    fn update(&self, change: impl FnOnce(&mut PartitionProgress) -> bool) {
        if self.tx.send_if_modified(change) {
            self.changed.notify_one();
        }
    }
}

/// One partition's commit point and accounting.
pub struct Progress {
    tracker: OffsetTracker,
    /// exactly_once: the offset the last committed transaction committed, which is what the
    /// owner of the partition set sees (it commits nothing itself on a real broker); `None` in
    /// at_least_once, where the owner commits the watermark.
    transactional: Option<Option<i64>>,
    tx: watch::Sender<PartitionProgress>,
    budget: Arc<Budget>,
    reported_windows: i64,
    reported_bytes: i64,
    reported_held: i64,
}

impl Progress {
    /// Progress reporting to `tx`, counting against `budget`.
    pub fn new(tx: watch::Sender<PartitionProgress>, budget: Arc<Budget>) -> Self {
        Self {
            tracker: OffsetTracker::new(),
            transactional: None,
            tx,
            budget,
            reported_windows: 0,
            reported_bytes: 0,
            reported_held: 0,
        }
    }

    /// exactly_once: from now on the published commit point is what transactions committed
    /// ([`Progress::committed`]), starting from `committed` (the group's offset at assignment).
    pub fn transactional(&mut self, committed: Option<i64>) {
        self.transactional = Some(committed);
    }

    /// exactly_once: a transaction committed input offset `offset`.
    pub fn committed(&mut self, offset: i64) {
        if let Some(c) = self.transactional.as_mut() {
            *c = Some(c.map_or(offset, |o| o.max(offset)));
        }
    }

    /// The offset a transaction may commit now: the lowest offset held in an open window or in
    /// a record not yet in the transaction, else the next offset to read.
    pub fn commit_point(&mut self, engine: &WindowEngine) -> Option<i64> {
        self.tracker.watermark(engine.low_watermark())
    }

    /// One past the highest offset read.
    pub fn next_read(&self) -> Option<i64> {
        self.tracker.next()
    }

    /// An input message at `offset` was read (whatever becomes of it).
    pub fn read(&mut self, offset: i64) {
        self.tracker.read(offset);
    }

    /// An output record covering offsets from `first_offset` up was made.
    pub fn hold(&mut self, first_offset: i64) {
        self.tracker.hold(first_offset);
    }

    /// The output record starting at `first_offset` was acknowledged.
    pub fn release(&mut self, first_offset: i64) {
        self.tracker.release(first_offset);
    }

    /// Publishes the commit point and this partition's share of the gauges and the budget: open
    /// windows at the size of the batches they will become ([`held_by_windows`]) plus
    /// `outbox_bytes` not yet acknowledged.
    pub fn publish(
        &mut self,
        engine: &WindowEngine,
        outbox_bytes: usize,
        high: Option<i64>,
        reading: bool,
    ) {
        let watermark = self.tracker.watermark(engine.low_watermark());
        let commit = match self.transactional {
            Some(committed) => committed,
            None => watermark,
        };
        let (open_windows, open_bytes) = (engine.open_windows(), engine.open_bytes());
        let (windows, bytes) = (open_windows as i64, open_bytes as i64);
        let held = held_by_windows(open_bytes, open_windows) as i64 + outbox_bytes as i64;
        let m = metrics();
        m.open_windows.add(windows - self.reported_windows);
        m.open_window_bytes.add(bytes - self.reported_bytes);
        self.budget.add(held - self.reported_held);
        self.reported_windows = windows;
        self.reported_bytes = bytes;
        self.reported_held = held;
        let oldest_open_ts = engine.oldest_open_ts();
        self.tx.send_if_modified(|p| {
            let now = PartitionProgress {
                commit,
                high,
                oldest_open_ts,
                open_windows,
                reading,
                ..*p
            };
            let changed = *p != now;
            *p = now;
            changed
        });
    }

    /// Takes this partition's share back out of the gauges and the budget (the worker stops).
    pub fn finish(&mut self) {
        let m = metrics();
        m.open_windows.sub(self.reported_windows);
        m.open_window_bytes.sub(self.reported_bytes);
        self.budget.add(-self.reported_held);
        self.reported_windows = 0;
        self.reported_bytes = 0;
        self.reported_held = 0;
    }
}
