//! What one running lull knows about its own state, for tests, readiness and the demo.
//!
//! The metrics registry is process-wide; this is per run, so several workers in one process (as
//! in the integration tests) can each be asked "do you own partitions yet?".
//!
//! Every fact has one writer (ARCHITECTURE.md, "Who writes which fact"): the poll loop (liveness,
//! Kafka reachability, shutting down), the owner of the partition set (assignment, group
//! membership, the partitions' phases, output health), the redis connection task (Redis), the
//! supervisor (failed), and the start-up (the HTTP address). The one count — messages read — is
//! added to by each partition worker; adding cannot undo another's write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::ops::clock::now_ms;

/// How many of this run's partitions are in each phase that readiness or the tools care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionCounts {
    /// Reading input (running or draining).
    pub running: usize,
    /// Fenced off, waiting for the group to take the partition away.
    pub fenced: usize,
    /// Waiting for their transactions to start or their state to be readable.
    pub waiting: usize,
}

/// Live facts about one run of the worker.
#[derive(Debug, Default)]
pub struct Health {
    assigned: AtomicUsize,
    last_poll_ms: AtomicI64,
    messages: AtomicU64,
    /// 0 = no Redis configured, 1 = connected, 2 = degraded.
    redis: AtomicU8,
    in_group: AtomicBool,
    kafka_reachable: AtomicBool,
    producer_failing: AtomicBool,
    shutting_down: AtomicBool,
    failed: AtomicBool,
    /// Partition workers fenced off and waiting for the group to take their partition away.
    fenced: AtomicUsize,
    /// Partition workers whose transactions could not start, or state be read, yet.
    waiting: AtomicUsize,
    /// Partition workers running: started (exactly_once: transactions started, state read) and
    /// not yet stopped.
    running: AtomicUsize,
    http_addr: Mutex<Option<SocketAddr>>,
}

impl Health {
    /// A fresh handle: nothing assigned, never polled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Input partitions this run owns now.
    pub fn assigned_partitions(&self) -> usize {
        self.assigned.load(Ordering::Acquire)
    }

    /// Records the number of owned partitions after a rebalance.
    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n, Ordering::Release);
    }

    /// Records that the poll loop went round (liveness).
    pub fn polled(&self) {
        self.last_poll_ms.store(now_ms(), Ordering::Release);
    }

    /// Records that `n` input messages were read by a partition worker.
    pub fn messages_read_by(&self, n: u64) {
        self.messages.fetch_add(n, Ordering::AcqRel);
    }

    /// Input messages read by this run.
    pub fn messages_read(&self) -> u64 {
        self.messages.load(Ordering::Acquire)
    }

    /// Records Redis reachability: `None` = not configured, `Some(true)` = connected.
    pub fn set_redis(&self, reachable: Option<bool>) {
        let v = match reachable {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.redis.store(v, Ordering::Release);
    }

    /// Redis reachability: `None` = not configured, `Some(false)` = degraded.
    pub fn redis(&self) -> Option<bool> {
        match self.redis.load(Ordering::Acquire) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// Records group membership: set by every assignment (even an empty one), cleared when the
    /// last partition is revoked.
    pub fn set_in_group(&self, v: bool) {
        self.in_group.store(v, Ordering::Release);
    }

    /// Whether this instance is a member of the consumer group.
    pub fn in_group(&self) -> bool {
        self.in_group.load(Ordering::Acquire)
    }

    /// Records the outcome of the last broker reachability check.
    pub fn set_kafka_reachable(&self, v: bool) {
        self.kafka_reachable.store(v, Ordering::Release);
    }

    /// Whether the brokers answered the last check.
    pub fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Acquire)
    }

    /// Records whether every partition's output works (its latest delivery or transaction went
    /// through).
    pub fn set_producer_ok(&self, ok: bool) {
        self.producer_failing.store(!ok, Ordering::Release);
    }

    /// Whether every partition's latest delivery or transaction went through (true before any).
    pub fn producer_ok(&self) -> bool {
        !self.producer_failing.load(Ordering::Acquire)
    }

    /// Records that a graceful shutdown began.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether a graceful shutdown is under way.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Records that a supervised task failed: the process is going down with an error.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Whether a supervised task failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Records the partitions' phases (the owner of the partition set, whenever one changes).
    pub fn set_partitions(&self, counts: PartitionCounts) {
        self.fenced.store(counts.fenced, Ordering::Release);
        self.waiting.store(counts.waiting, Ordering::Release);
        self.running.store(counts.running, Ordering::Release);
    }

    /// Partition workers fenced off now: while any is, the process is not ready.
    pub fn fenced_partitions(&self) -> usize {
        self.fenced.load(Ordering::Acquire)
    }

    /// Partition workers whose transactions cannot start, or state be read, yet: while any is,
    /// the process is not ready.
    pub fn partitions_starting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Partition workers reading their input now (an assigned partition's worker first starts
    /// its transactions and reads its state: [`Health::assigned_partitions`] counts it at once).
    pub fn running_partitions(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Records where the HTTP endpoints listen.
    pub fn set_http_addr(&self, addr: SocketAddr) {
        *self
            .http_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
    }

    /// Where the HTTP endpoints listen, once bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        *self
            .http_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Unix milliseconds of the last poll loop turn; 0 if never.
    pub fn last_poll_ms(&self) -> i64 {
        self.last_poll_ms.load(Ordering::Acquire)
    }
}
