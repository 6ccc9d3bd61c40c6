//! The window engine: pure, synchronous, deterministic, no I/O.
//!
//! One [`WindowEngine`] per input partition holds every open window of that partition and decides
//! when each closes, exactly as the README's "How batching works" says (ARCHITECTURE.md has why):
//!
//! * A window's close time is `min(max(last_ts + quiet, typing_until), first_ts + max_wait)`: a
//!   `typing` signal holds a window open, never past the max-wait cap. A fragment (or signal)
//!   whose timestamp is past its key's close time flushes that window first.
//! * Chat signals ([`WindowEngine::signal`]): `typing` sets `typing_until = ts + typing`,
//!   `stopped` sets it to `ts`, `flush` flushes now (reason `signal`); with no open window they
//!   change nothing. A fragment that joins a window ends the hold of the typing signals before it:
//!   only a `typing` newer than the window's last fragment holds it open. A `final` fragment flushes its window right after joining it; a bypass
//!   fragment flushes its key's window (`interrupted`) and then goes out alone (`bypass`).
//! * `follows`: a batch names the key's previous batch when its first fragment is at most
//!   `followup` after that batch's last one. Resolved when the window opens, from a bounded map
//!   that forgets batches older than the follow-up window (by log time, so replays agree).
//! * *Partition time* is the highest timestamp pushed, or the wall clock handed to
//!   [`WindowEngine::advance`] while the partition is caught up. A window is flushed once partition
//!   time passes `close time + grace`, so during catch-up batch boundaries depend only on the log.
//! * Full windows (count or byte cap) flush at once.
//! * A fragment that opens a window although partition time is already past `ts + grace` may have
//!   missed its window: it is counted late, never dropped.
//! * A timestamp more than [`FUTURE_TOLERANCE_MS`] ahead of the wall clock is clamped to it.
//!
//! All deadlines live in one min-queue of `(due, first_offset, key)` ([`Deadlines`]: a sorted queue
//! for entries that arrive in order, a binary heap for the rest); a window's first offset is
//! unique in its partition, so it doubles as the window's id. Deadlines are moved lazily: a window
//! whose close time grew keeps its old (earlier) entry until that entry comes up, and entries of
//! flushed windows are dropped when they reach the top — so a join is one hash lookup, and
//! opening or flushing a window touches no ordered tree. The open windows' first offsets are kept
//! in the order they opened (a queue, cleaned from the front as windows flush): its front is the
//! low watermark.
//!
//! Invariants (checked by the property tests at the bottom of this file):
//! * every fragment pushed leaves in exactly one batch, in offset order within its batch;
//! * every open window has exactly one deadline entry, never later than its real due time;
//! * [`WindowEngine::low_watermark`] is the lowest offset still held in an open window.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::model::deadlines::Deadlines;
use crate::model::fragment::{Change, Fragment};

pub use crate::model::batch::{
    Batch, EngineStats, FlushReason, Follows, Opened, SignalOutcome, WindowSummary,
};

/// Timestamps further ahead of the wall clock than this are clamped to it.
pub const FUTURE_TOLERANCE_MS: i64 = 5_000;

/// The engine's settings, in milliseconds and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// `false` = pass-through: every fragment is a batch of one.
    pub batching: bool,
    /// Quiet period.
    pub quiet_ms: i64,
    /// Cap from the first fragment.
    pub max_wait_ms: i64,
    /// Fragments per batch at most.
    pub max_fragments: usize,
    /// Fragment bytes per batch at most.
    pub max_batch_bytes: usize,
    /// Wait for stragglers past the close time.
    pub grace_ms: i64,
    /// How long one `typing` signal holds a window open.
    pub typing_ms: i64,
    /// `follows` window after a key's previous batch; 0 = off.
    pub followup_ms: i64,
}

/// One key's open window.
#[derive(Debug)]
struct OpenWindow {
    fragments: Vec<Fragment>,
    first_ts: i64,
    last_ts: i64,
    bytes: usize,
    /// The due time currently in the deadline set (≤ the real due time).
    scheduled: i64,
    /// A `typing` signal holds the window open until then; `i64::MIN` when none.
    typing_until: i64,
    /// The key's previous batch, if this one follows it.
    follows: Option<Follows>,
}

impl OpenWindow {
    fn first_offset(&self) -> i64 {
        self.fragments[0].offset
    }

    /// The channel of its first fragment, whose settings it keeps.
    fn channel(&self) -> u8 {
        self.fragments[0].channel
    }
}

/// The settings of `channel` (0: the global ones, always there).
fn settings(channels: &[WindowConfig], channel: u8) -> WindowConfig {
    match channels.get(usize::from(channel)).or(channels.first()) {
        Some(cfg) => *cfg,
        None => unreachable!("an engine always has its global settings"),
    }
}

/// Close time of a window: the earlier of the quiet and the max-wait bound of its channel, and
/// which it was.
fn close_of(channels: &[WindowConfig], w: &OpenWindow) -> (i64, FlushReason) {
    let cfg = settings(channels, w.channel());
    let quiet = w.last_ts.saturating_add(cfg.quiet_ms).max(w.typing_until);
    let cap = w.first_ts.saturating_add(cfg.max_wait_ms);
    if cap < quiet {
        (cap, FlushReason::MaxWait)
    } else {
        (quiet, FlushReason::Quiet)
    }
}

/// The map of open windows: a fast hash with a random per-process seed, so user-chosen keys
/// cannot be crafted into collisions.
type WindowMap = HashMap<Arc<str>, OpenWindow, foldhash::fast::RandomState>;

/// Every open window of one partition and the partition's clock.
#[derive(Debug)]
pub struct WindowEngine {
    cfg: WindowConfig,
    /// The settings per channel: the global ones first, then each channel with overrides (a
    /// fragment's `channel` indexes it). A window keeps its first fragment's.
    channels: Vec<WindowConfig>,
    windows: WindowMap,
    /// `(due, first_offset, key)` of every open window (and stale entries, dropped when they come
    /// up): the one timer structure of the partition.
    deadlines: Deadlines<(i64, i64, Arc<str>)>,
    /// `(first_offset, key)` of open windows in the order they opened; the front is always open
    /// (entries of flushed windows behind it are dropped when they reach the front).
    open_order: VecDeque<(i64, Arc<str>)>,
    /// Each key's latest batch (what a new one may follow) and its `last_ts`.
    previous: HashMap<Arc<str>, (Follows, i64), foldhash::fast::RandomState>,
    /// `(last_ts, key)` of `previous` entries in the order they were made, to forget old ones.
    previous_order: VecDeque<(i64, Arc<str>)>,
    /// The highest timestamp read (fragments and signals): the log's own clock, which forgets
    /// previous batches the same way in every replay.
    log_time: i64,
    /// Changes made in place by `edit`/`delete` signals, by the changed fragment's offset, until
    /// its window goes out (empty, and never looked into, when nobody edits).
    amended: HashMap<i64, Change, foldhash::fast::RandomState>,
    /// Windows opened since the last [`WindowEngine::take_opened`], when tracked.
    opened: Option<Vec<Opened>>,
    partition_time: i64,
    open_bytes: usize,
    stats: EngineStats,
}

impl WindowEngine {
    /// An engine with no open windows and partition time at the epoch.
    pub fn new(cfg: WindowConfig) -> Self {
        Self {
            cfg,
            channels: vec![cfg],
            windows: WindowMap::default(),
            deadlines: Deadlines::default(),
            open_order: VecDeque::new(),
            previous: HashMap::default(),
            previous_order: VecDeque::new(),
            log_time: i64::MIN,
            amended: HashMap::default(),
            opened: None,
            partition_time: i64::MIN,
            open_bytes: 0,
            stats: EngineStats::default(),
        }
    }

    /// Adds the settings of the channels with overrides, in the order fragments number them
    /// (from 1). Only the timing and count settings may differ per channel: batching, the byte
    /// caps, the grace and the follow-up window are the global ones.
    pub fn with_channels(mut self, channels: impl IntoIterator<Item = WindowConfig>) -> Self {
        let global = self.cfg;
        self.channels
            .extend(channels.into_iter().map(|c| WindowConfig {
                batching: global.batching,
                max_batch_bytes: global.max_batch_bytes,
                grace_ms: global.grace_ms,
                followup_ms: global.followup_ms,
                ..c
            }));
        self
    }

    /// The settings this engine runs with.
    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }

    fn due_of(&self, w: &OpenWindow) -> i64 {
        close_of(&self.channels, w)
            .0
            .saturating_add(self.cfg.grace_ms)
    }

    /// Adds one fragment (fragments of a partition must come in offset order); batches that
    /// close because of it are appended to `out`. `now_ms` is the wall clock, used only to clamp
    /// timestamps from the future. The fragment's `key` moves into the window's map entry (the
    /// stored fragment keeps an empty key: the batch carries it once).
    pub fn push(&mut self, mut f: Fragment, now_ms: i64, out: &mut Vec<Batch>) {
        if f.ts > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            f.ts = now_ms;
            self.stats.clamped += 1;
        }
        let key = std::mem::take(&mut f.key);
        let ts = f.ts;
        self.saw(ts);
        if !self.cfg.batching {
            self.alone(Arc::from(key), f, FlushReason::Passthrough, out);
            self.partition_time = self.partition_time.max(ts);
            return;
        }
        if f.bypass {
            // In order: the key's open window, then the bypass fragment alone.
            let key = match self.windows.remove_entry(&*key) {
                Some((stored, w)) => {
                    // A window whose close time passed went out for its own reason already, as
                    // far as the log is concerned; only a still-open one is interrupted.
                    let (close, reason) = close_of(&self.channels, &w);
                    let reason = if ts > close {
                        reason
                    } else {
                        FlushReason::Interrupted
                    };
                    self.flush_window(stored.clone(), w, reason, out);
                    stored
                }
                None => Arc::from(key),
            };
            self.alone(key, f, FlushReason::Bypass, out);
            self.advance(ts, out);
            return;
        }
        let is_final = f.is_final;
        let size = f.size();
        let cfg = self.cfg;

        // One lookup: join the key's open window in place, unless rule 1 or the byte cap says
        // the window must go out first.
        let cut = match self.windows.get_mut(&*key) {
            Some(w) => {
                let (close, reason) = close_of(&self.channels, w);
                let wcfg = settings(&self.channels, w.channel());
                if ts > close {
                    Some(reason)
                } else if w.bytes + size > cfg.max_batch_bytes {
                    Some(FlushReason::MaxBytes)
                } else {
                    w.first_ts = w.first_ts.min(ts);
                    w.last_ts = w.last_ts.max(ts);
                    // A fragment ends the hold of the typing signals before it: only a `typing`
                    // newer than this fragment (typing_until > ts + typing) still holds the window.
                    if w.typing_until <= ts.saturating_add(wcfg.typing_ms) {
                        w.typing_until = i64::MIN;
                    }
                    w.bytes += size;
                    self.open_bytes += size;
                    // Grown one fragment at a time: a burst is a few fragments, and Vec's own
                    // growth (1 → 4 → 8) would hold a 2-fragment window at twice its size.
                    w.fragments.reserve_exact(1);
                    w.fragments.push(f);
                    let due = close_of(&self.channels, w).0.saturating_add(cfg.grace_ms);
                    // A later due time is picked up lazily; an earlier one (an out-of-order
                    // straggler moved first_ts back) is rescheduled now, never flushed late.
                    let earlier = (due < w.scheduled).then(|| {
                        w.scheduled = due;
                        w.first_offset()
                    });
                    let full = if w.fragments.len() >= wcfg.max_fragments {
                        Some(FlushReason::MaxFragments)
                    } else if w.bytes >= cfg.max_batch_bytes {
                        Some(FlushReason::MaxBytes)
                    } else {
                        None
                    };
                    if let Some(first) = earlier {
                        // The old entry is now stale: it no longer matches `scheduled`.
                        if let Some((stored, _)) = self.windows.get_key_value(&*key) {
                            self.deadlines.push((due, first, stored.clone()));
                        }
                    }
                    if let Some(reason) = full {
                        self.flush_key(&key, reason, out);
                    } else if is_final {
                        self.flush_key(&key, FlushReason::Final, out);
                    }
                    self.advance(ts, out);
                    return;
                }
            }
            None => None,
        };
        let key: Arc<str> = match cut {
            Some(reason) => match self.windows.remove_entry(&*key) {
                Some((stored, w)) => {
                    self.flush_window(stored.clone(), w, reason, out);
                    stored
                }
                None => Arc::from(key),
            },
            None => {
                if self.partition_time != i64::MIN
                    && self.partition_time > ts.saturating_add(cfg.grace_ms)
                {
                    self.stats.late += 1;
                }
                Arc::from(key)
            }
        };
        let max_fragments = settings(&self.channels, f.channel).max_fragments;
        self.open(key.clone(), f);
        // Caps: a window that is full with its first fragment flushes at once.
        if max_fragments <= 1 || size >= cfg.max_batch_bytes {
            let reason = if max_fragments <= 1 {
                FlushReason::MaxFragments
            } else {
                FlushReason::MaxBytes
            };
            self.flush_key(&key, reason, out);
        } else if is_final {
            self.flush_key(&key, FlushReason::Final, out);
        }
        self.advance(ts, out);
    }

    fn open(&mut self, key: Arc<str>, f: Fragment) {
        let offset = f.offset;
        let follows = self.follows_for(&key, f.ts);
        let mut w = OpenWindow {
            first_ts: f.ts,
            last_ts: f.ts,
            bytes: f.size(),
            fragments: vec![f],
            scheduled: 0,
            typing_until: i64::MIN,
            follows,
        };
        let due = self.due_of(&w);
        w.scheduled = due;
        if let Some(opened) = &mut self.opened {
            opened.push(Opened {
                key: key.clone(),
                first_offset: offset,
                flush_at: due,
                follows: w.follows.clone(),
            });
        }
        self.open_bytes += w.bytes;
        self.deadlines.push((due, offset, key.clone()));
        self.open_order.push_back((offset, key.clone()));
        self.windows.insert(key, w);
    }

    fn flush_key(&mut self, key: &str, reason: FlushReason, out: &mut Vec<Batch>) {
        if let Some((stored, w)) = self.windows.remove_entry(key) {
            self.flush_window(stored, w, reason, out);
        }
    }

    /// Emits a window already removed from the map, and forgets its deadline and offset.
    fn flush_window(
        &mut self,
        key: Arc<str>,
        w: OpenWindow,
        reason: FlushReason,
        out: &mut Vec<Batch>,
    ) {
        self.open_bytes -= w.bytes;
        self.drop_closed_front();
        let (close, _) = close_of(&self.channels, &w);
        let changes = self.changes_of(&w.fragments);
        self.emit(
            Batch {
                key,
                reason,
                first_ts: w.first_ts,
                last_ts: w.last_ts,
                close_time: close,
                changes,
                fragments: w.fragments,
                follows: w.follows,
                amends: None,
            },
            out,
        );
    }

    /// A fragment that goes out alone (pass-through, bypass).
    fn alone(&mut self, key: Arc<str>, f: Fragment, reason: FlushReason, out: &mut Vec<Batch>) {
        let ts = f.ts;
        let follows = self.follows_for(&key, ts);
        self.emit(
            Batch {
                key,
                reason,
                first_ts: ts,
                last_ts: ts,
                close_time: ts,
                fragments: vec![f],
                follows,
                amends: None,
                changes: Vec::new(),
            },
            out,
        );
    }

    /// Hands a batch out, and remembers it as its key's latest (what the next may follow).
    fn emit(&mut self, batch: Batch, out: &mut Vec<Batch>) {
        if self.cfg.followup_ms > 0 {
            self.previous.insert(
                batch.key.clone(),
                (Follows::Offset(batch.first_offset()), batch.last_ts),
            );
            self.previous_order
                .push_back((batch.last_ts, batch.key.clone()));
        }
        out.push(batch);
    }

    /// Moves the log's clock, and forgets previous batches no later batch can follow (older than
    /// the follow-up window and the grace: only a late fragment could still have).
    fn saw(&mut self, ts: i64) {
        self.log_time = self.log_time.max(ts);
        let horizon = self.cfg.followup_ms.saturating_add(self.cfg.grace_ms);
        while let Some((last_ts, _)) = self.previous_order.front() {
            if last_ts.saturating_add(horizon) >= self.log_time {
                break;
            }
            let Some((last_ts, key)) = self.previous_order.pop_front() else {
                break;
            };
            // One probe: forget the key's entry only if it is this one (not a later batch's).
            if let Entry::Occupied(e) = self.previous.entry(key) {
                if e.get().1 == last_ts {
                    e.remove();
                }
            }
        }
    }

    /// Starts reporting the windows that open ([`WindowEngine::take_opened`]).
    pub fn track_opened(&mut self) {
        self.opened.get_or_insert_with(Vec::new);
    }

    /// The windows opened since the last call (empty unless tracked).
    pub fn take_opened(&mut self) -> Vec<Opened> {
        self.opened.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Whether `(first_offset, key)` names a window that is still open.
    fn is_open(&self, first_offset: i64, key: &str) -> bool {
        self.windows
            .get(key)
            .is_some_and(|w| w.first_offset() == first_offset)
    }

    /// Drops entries of flushed windows from the front of the open order, so its front is the
    /// oldest open window.
    fn drop_closed_front(&mut self) {
        while let Some((first, key)) = self.open_order.front() {
            if self.is_open(*first, key) {
                break;
            }
            self.open_order.pop_front();
        }
    }

    /// Accounts for a fragment that is in the log but not batched (already delivered before a
    /// crash, or a duplicate): partition time still moves, exactly as when it was first read, so
    /// a replay cuts windows where the original run did.
    pub fn skip(&mut self, ts: i64, now_ms: i64, out: &mut Vec<Batch>) {
        let ts = if ts > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            now_ms
        } else {
            ts
        };
        self.saw(ts);
        self.advance(ts, out);
    }

    /// Moves partition time forward to `time_ms` (never back) and flushes every window whose
    /// `close time + grace` it has passed. Call it with the wall clock only while the partition
    /// is caught up.
    pub fn advance(&mut self, time_ms: i64, out: &mut Vec<Batch>) {
        self.partition_time = self.partition_time.max(time_ms);
        while let Some((due, key)) = self.settle_first() {
            if due >= self.partition_time {
                break;
            }
            let Some(w) = self.windows.get(&key) else {
                break;
            };
            let (_, reason) = close_of(&self.channels, w);
            self.flush_key(&key, reason, out);
        }
    }

    /// The partition time at which the next window becomes due, if any window is open: the
    /// wall-clock deadline to wake up at while caught up. Flushing happens once partition time is
    /// strictly past a window's `close + grace`, hence the `+ 1`.
    pub fn next_deadline(&mut self) -> Option<i64> {
        self.settle_first().map(|(due, _)| due.saturating_add(1))
    }

    /// Makes the earliest deadline entry a true one — dropping entries of flushed windows, and
    /// moving entries whose window grew since (deadlines are moved lazily) — and returns it with
    /// its window's key.
    fn settle_first(&mut self) -> Option<(i64, Arc<str>)> {
        loop {
            let (scheduled, first, key) = self.deadlines.peek()?;
            let (scheduled, first) = (*scheduled, *first);
            let grace = self.cfg.grace_ms;
            let channels = &self.channels;
            let current = match self.windows.get_mut(key.as_ref()) {
                // The entry of a flushed window, or one superseded by an earlier reschedule.
                Some(w) if w.first_offset() == first && w.scheduled == scheduled => {
                    let due = close_of(channels, w).0.saturating_add(grace);
                    w.scheduled = due;
                    Some(due)
                }
                _ => None,
            };
            match current {
                Some(due) if due == scheduled => return Some((due, key.clone())),
                Some(due) => {
                    // The window grew since: its entry moves to its real due time.
                    if let Some((_, first, key)) = self.deadlines.pop() {
                        self.deadlines.push((due, first, key));
                    }
                }
                None => {
                    self.deadlines.pop();
                }
            }
        }
    }
}

mod chat;
mod reports;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
