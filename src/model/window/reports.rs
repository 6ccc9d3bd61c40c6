//! What the engine tells its worker: an open window's summary, the low watermark, the counts
//! and bytes held, the clocks, and its counters.

use super::{EngineStats, WindowEngine, WindowSummary};

impl WindowEngine {
    /// The open window of `key`, if there is one.
    pub fn summary(&self, key: &str) -> Option<WindowSummary> {
        let w = self.windows.get(key)?;
        Some(WindowSummary {
            first_ts: w.first_ts,
            last_ts: w.last_ts,
            count: w.fragments.len(),
            first_offset: w.first_offset(),
            flush_at: self.due_of(w),
        })
    }

    /// Whether the engine knows something of `key` a record kept elsewhere (Redis) could only
    /// repeat or predate: an open window, or a previous batch a new one may follow.
    pub fn remembers(&self, key: &str) -> bool {
        self.windows.contains_key(key) || self.previous.contains_key(key)
    }

    /// Lowest offset held in an open window: nothing at or above it may be committed.
    pub fn low_watermark(&self) -> Option<i64> {
        self.open_order.front().map(|(offset, _)| *offset)
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Fragment bytes held in open windows.
    pub fn open_bytes(&self) -> usize {
        self.open_bytes
    }

    /// First timestamp of the window holding the lowest offset — the oldest open window, for the
    /// age metric (one lookup, not a scan).
    pub fn oldest_open_ts(&self) -> Option<i64> {
        let (_, key) = self.open_order.front()?;
        self.windows.get(key).map(|w| w.first_ts)
    }

    /// The log's own clock: the highest timestamp read (fragments and signals), by which
    /// previous batches are forgotten; `None` before anything was read.
    pub fn log_time(&self) -> Option<i64> {
        (self.log_time != i64::MIN).then_some(self.log_time)
    }

    /// How far back a replay from the commit point can need a key's previous batch: the log's
    /// clock, or the first timestamp of the oldest open window when that is earlier (a replay
    /// starts at the lowest open window and reaches the log time only as it reads on). A flushed
    /// record whose batch is older than this by more than the `follows` horizon can go.
    pub fn replay_time(&self) -> Option<i64> {
        match (self.log_time(), self.oldest_open_ts()) {
            (Some(log), Some(open)) => Some(log.min(open)),
            (log, open) => log.or(open),
        }
    }

    /// The highest timestamp seen, or wall-clock time handed to `advance`.
    pub fn partition_time(&self) -> Option<i64> {
        (self.partition_time != i64::MIN).then_some(self.partition_time)
    }

    /// Counters since the last call; resets them.
    pub fn take_stats(&mut self) -> EngineStats {
        std::mem::take(&mut self.stats)
    }
}
