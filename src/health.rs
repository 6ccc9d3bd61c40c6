//! What one running lull knows about its own state, for tests, readiness and the demo.
//!
//! The metrics registry is process-wide; this is per run, so several workers in one process (as
//! in the integration tests) can each be asked "do you own partitions yet?".

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::output::now_ms;

/// Live facts about one run of the worker.
#[derive(Debug, Default)]
pub struct Health {
    assigned: AtomicUsize,
    last_poll_ms: AtomicI64,
    messages: AtomicU64,
    /// 0 = no Redis configured, 1 = connected, 2 = degraded.
    redis: AtomicU8,
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

    /// Records that an input message was read and handed to its partition worker.
    pub fn message_read(&self) {
        self.messages.fetch_add(1, Ordering::AcqRel);
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

    /// Unix milliseconds of the last poll loop turn; 0 if never.
    pub fn last_poll_ms(&self) -> i64 {
        self.last_poll_ms.load(Ordering::Acquire)
    }
}
