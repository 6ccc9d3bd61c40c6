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
//!   change nothing. A `final` fragment flushes its window right after joining it; a bypass
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
use crate::model::fragment::{Fragment, SignalKind};

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

/// Why a batch was flushed; the `reason` field of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlushReason {
    /// The user was quiet for the quiet period.
    Quiet,
    /// The window reached max wait since its first fragment.
    MaxWait,
    /// The window reached the fragment cap.
    MaxFragments,
    /// The window reached the byte cap.
    MaxBytes,
    /// Batching is off.
    Passthrough,
    /// A `"final": true` fragment closed it.
    Final,
    /// A `flush` signal closed it.
    Signal,
    /// A fragment matching `LULL_BYPASS_PATTERN`, alone.
    Bypass,
    /// Closed early because a bypass fragment of its key came.
    Interrupted,
    /// Flushed early because the process was stopping (reserved; lull leaves open windows to the
    /// next owner instead).
    Shutdown,
}

impl FlushReason {
    /// The name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Quiet => "quiet",
            FlushReason::MaxWait => "max_wait",
            FlushReason::MaxFragments => "max_fragments",
            FlushReason::MaxBytes => "max_bytes",
            FlushReason::Passthrough => "passthrough",
            FlushReason::Final => "final",
            FlushReason::Signal => "signal",
            FlushReason::Bypass => "bypass",
            FlushReason::Interrupted => "interrupted",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

/// A flushed window: the fragments of one key, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The grouping key.
    pub key: Arc<str>,
    /// Why it was flushed.
    pub reason: FlushReason,
    /// Earliest fragment timestamp.
    pub first_ts: i64,
    /// Latest fragment timestamp.
    pub last_ts: i64,
    /// The window's close time (for lateness figures; the fragment's own time in pass-through).
    pub close_time: i64,
    /// The fragments, in offset order; never empty.
    pub fragments: Vec<Fragment>,
    /// The key's previous batch, when this one started within the follow-up window after it.
    pub follows: Option<Follows>,
}

/// The batch a batch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follows {
    /// A batch of this partition, by its first offset (its id is `{topic}/{partition}/{offset}`).
    Offset(i64),
    /// A batch known by its full id (learnt from Redis after a restart or handoff). Behind one
    /// thin pointer, so every open window's `follows` takes 16 bytes, not 24.
    Id(Arc<String>),
}

/// What a signal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    /// It re-timed or flushed its key's open window.
    Applied,
    /// Its key had no open window (or batching is off): nothing changed.
    Ignored,
    /// It came after its key's window had closed: that window went out, nothing else changed.
    Expired,
}

impl SignalOutcome {
    /// The name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalOutcome::Applied => "applied",
            SignalOutcome::Ignored => "ignored",
            SignalOutcome::Expired => "expired",
        }
    }
}

/// A window that just opened (reported when asked, for lifecycle events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Grouping key.
    pub key: Arc<str>,
    /// Its first offset (its future batch id's).
    pub first_offset: i64,
    /// When it is expected to go out, as things stand: close time + grace.
    pub flush_at: i64,
}

impl Batch {
    /// Offset of the first fragment: with the topic and partition it forms the `batch_id`.
    pub fn first_offset(&self) -> i64 {
        self.fragments.first().map_or(-1, |f| f.offset)
    }

    /// Offset of the last fragment.
    pub fn last_offset(&self) -> i64 {
        self.fragments.last().map_or(-1, |f| f.offset)
    }

    /// Sum of the fragments' value sizes.
    pub fn bytes(&self) -> usize {
        self.fragments.iter().map(Fragment::size).sum()
    }
}

/// Counters the engine keeps for the metrics; read and reset with [`WindowEngine::take_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Fragments that opened a window after partition time had passed `ts + grace`.
    pub late: u64,
    /// Fragments whose timestamp was clamped to the wall clock.
    pub clamped: u64,
}

/// What an open window looks like from outside (published as `pending:{key}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSummary {
    /// Earliest fragment timestamp.
    pub first_ts: i64,
    /// Latest fragment timestamp.
    pub last_ts: i64,
    /// Fragments held.
    pub count: usize,
    /// Offset of the first fragment.
    pub first_offset: i64,
    /// When the window is due: partition time past `close + grace`.
    pub flush_at: i64,
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
}

/// Close time of a window: the earlier of the quiet and the max-wait bound, and which it was.
fn close_of(cfg: &WindowConfig, w: &OpenWindow) -> (i64, FlushReason) {
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
            windows: WindowMap::default(),
            deadlines: Deadlines::default(),
            open_order: VecDeque::new(),
            previous: HashMap::default(),
            previous_order: VecDeque::new(),
            log_time: i64::MIN,
            opened: None,
            partition_time: i64::MIN,
            open_bytes: 0,
            stats: EngineStats::default(),
        }
    }

    /// The settings this engine runs with.
    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }

    fn due_of(&self, w: &OpenWindow) -> i64 {
        close_of(&self.cfg, w).0.saturating_add(self.cfg.grace_ms)
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
                    let (close, reason) = close_of(&self.cfg, &w);
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
                let (close, reason) = close_of(&cfg, w);
                if ts > close {
                    Some(reason)
                } else if w.bytes + size > cfg.max_batch_bytes {
                    Some(FlushReason::MaxBytes)
                } else {
                    w.first_ts = w.first_ts.min(ts);
                    w.last_ts = w.last_ts.max(ts);
                    w.bytes += size;
                    self.open_bytes += size;
                    // Grown one fragment at a time: a burst is a few fragments, and Vec's own
                    // growth (1 → 4 → 8) would hold a 2-fragment window at twice its size.
                    w.fragments.reserve_exact(1);
                    w.fragments.push(f);
                    let due = close_of(&cfg, w).0.saturating_add(cfg.grace_ms);
                    // A later due time is picked up lazily; an earlier one (an out-of-order
                    // straggler moved first_ts back) is rescheduled now, never flushed late.
                    let earlier = (due < w.scheduled).then(|| {
                        w.scheduled = due;
                        w.first_offset()
                    });
                    let full = if w.fragments.len() >= cfg.max_fragments {
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
        self.open(key.clone(), f);
        // Caps: a window that is full with its first fragment flushes at once.
        if cfg.max_fragments <= 1 || size >= cfg.max_batch_bytes {
            let reason = if cfg.max_fragments <= 1 {
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
        let (close, _) = close_of(&self.cfg, &w);
        self.emit(
            Batch {
                key,
                reason,
                first_ts: w.first_ts,
                last_ts: w.last_ts,
                close_time: close,
                fragments: w.fragments,
                follows: w.follows,
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

    /// The key's previous batch, if a batch starting at `first_ts` follows it.
    fn follows_for(&self, key: &str, first_ts: i64) -> Option<Follows> {
        let (follows, last_ts) = self.previous.get(key)?;
        (first_ts.saturating_sub(*last_ts) <= self.cfg.followup_ms).then(|| follows.clone())
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

    /// Tells the engine a key's previous batch learnt elsewhere (Redis, after a restart or a
    /// handoff), unless it knows a later one itself.
    pub fn seed_follows(&mut self, key: &str, batch_id: &str, last_ts: i64) {
        let horizon = self.cfg.followup_ms.saturating_add(self.cfg.grace_ms);
        if self.cfg.followup_ms <= 0
            || self.previous.contains_key(key)
            || last_ts.saturating_add(horizon) < self.log_time
        {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        self.previous.insert(
            key.clone(),
            (Follows::Id(Arc::new(batch_id.to_string())), last_ts),
        );
        self.previous_order.push_back((last_ts, key));
    }

    /// Applies a chat signal of `key` at `ts`; batches it closes go to `out`.
    pub fn signal(
        &mut self,
        key: &str,
        kind: SignalKind,
        ts: i64,
        now_ms: i64,
        out: &mut Vec<Batch>,
    ) -> SignalOutcome {
        let ts = if ts > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            self.stats.clamped += 1;
            now_ms
        } else {
            ts
        };
        self.saw(ts);
        if !self.cfg.batching {
            return SignalOutcome::Ignored;
        }
        let cfg = self.cfg;
        let outcome = match self.windows.get_mut(key) {
            None => SignalOutcome::Ignored,
            Some(w) => {
                let (close, reason) = close_of(&cfg, w);
                if ts > close {
                    self.flush_key(key, reason, out);
                    SignalOutcome::Expired
                } else {
                    match kind {
                        SignalKind::Typing => {
                            w.typing_until = w.typing_until.max(ts.saturating_add(cfg.typing_ms));
                        }
                        SignalKind::Stopped => w.typing_until = ts,
                        SignalKind::Flush => {}
                    }
                    let due = close_of(&cfg, w).0.saturating_add(cfg.grace_ms);
                    // Later: picked up lazily; earlier (`stopped`): rescheduled now.
                    let earlier = (due < w.scheduled).then(|| {
                        w.scheduled = due;
                        w.first_offset()
                    });
                    if kind == SignalKind::Flush {
                        self.flush_key(key, FlushReason::Signal, out);
                    } else if let Some(first) = earlier {
                        if let Some((stored, _)) = self.windows.get_key_value(key) {
                            self.deadlines.push((due, first, stored.clone()));
                        }
                    }
                    SignalOutcome::Applied
                }
            }
        };
        self.advance(ts, out);
        outcome
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
            let (_, reason) = close_of(&self.cfg, w);
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
            let cfg = self.cfg;
            let current = match self.windows.get_mut(key.as_ref()) {
                // The entry of a flushed window, or one superseded by an earlier reschedule.
                Some(w) if w.first_offset() == first && w.scheduled == scheduled => {
                    let due = close_of(&cfg, w).0.saturating_add(grace);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fragment::Fields;

    const CFG: WindowConfig = WindowConfig {
        batching: true,
        quiet_ms: 100,
        max_wait_ms: 1_000,
        max_fragments: 5,
        max_batch_bytes: 1_000,
        grace_ms: 20,
        typing_ms: 0,
        followup_ms: 0,
    };

    fn frag(key: &str, offset: i64, ts: i64) -> Fragment {
        let value = format!("{{\"o\":{offset}}}");
        Fragment::new(key, offset, ts, value.as_bytes(), Fields::default())
    }

    fn offsets(b: &Batch) -> Vec<i64> {
        b.fragments.iter().map(|f| f.offset).collect()
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn a_burst_is_one_batch_after_quiet_plus_grace() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        e.push(frag("a", 1, 50), NOW, &mut out);
        e.push(frag("a", 2, 140), NOW, &mut out);
        assert!(out.is_empty());
        assert_eq!(e.next_deadline(), Some(140 + 100 + 20 + 1));
        e.advance(260, &mut out);
        assert!(out.is_empty(), "not yet strictly past close + grace");
        e.advance(261, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(offsets(&out[0]), vec![0, 1, 2]);
        assert_eq!(out[0].reason, FlushReason::Quiet);
        assert_eq!(
            (out[0].first_ts, out[0].last_ts, out[0].close_time),
            (0, 140, 240)
        );
        assert_eq!(e.low_watermark(), None);
    }

    #[test]
    fn a_fragment_past_the_close_time_flushes_first() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        e.push(frag("a", 1, 101), NOW, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(offsets(&out[0]), vec![0]);
        assert_eq!(e.low_watermark(), Some(1));
    }

    #[test]
    fn max_wait_caps_a_user_who_never_pauses() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        let cfg = WindowConfig {
            max_fragments: 1000,
            max_batch_bytes: 100_000,
            ..CFG
        };
        e.cfg = cfg;
        for i in 0..30 {
            e.push(frag("a", i, i * 50), NOW, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, FlushReason::MaxWait);
        assert_eq!(out[0].first_ts, 0);
        assert!(out[0].last_ts <= 1_000);
    }

    #[test]
    fn caps_flush_at_once() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        for i in 0..5 {
            e.push(frag("a", i, i), NOW, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, FlushReason::MaxFragments);

        let mut e = WindowEngine::new(WindowConfig {
            max_batch_bytes: 20,
            ..CFG
        });
        let mut out = Vec::new();
        e.push(frag("b", 10, 0), NOW, &mut out); // 8 bytes
        e.push(frag("b", 11, 1), NOW, &mut out); // 16 bytes
        e.push(frag("b", 12, 2), NOW, &mut out); // would be 24: flush first
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, FlushReason::MaxBytes);
        assert_eq!(offsets(&out[0]), vec![10, 11]);
    }

    #[test]
    fn late_fragments_open_a_new_window_and_are_counted() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        e.push(frag("b", 1, 500), NOW, &mut out);
        assert_eq!(out.len(), 1, "a's window flushed by b's timestamp");
        e.push(frag("a", 2, 10), NOW, &mut out);
        assert_eq!(e.take_stats().late, 1);
        assert_eq!(
            out.len(),
            2,
            "a late fragment whose window is long due flushes at once"
        );
        assert_eq!(offsets(&out[1]), vec![2]);
    }

    #[test]
    fn future_timestamps_are_clamped() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        e.push(frag("a", 0, NOW + 60_000), NOW, &mut out);
        assert_eq!(e.take_stats().clamped, 1);
        assert_eq!(e.partition_time(), Some(NOW));
    }

    #[test]
    fn passthrough_emits_every_fragment_alone() {
        let mut e = WindowEngine::new(WindowConfig {
            batching: false,
            ..CFG
        });
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        e.push(frag("a", 1, 1), NOW, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|b| b.reason == FlushReason::Passthrough));
        assert_eq!(e.open_windows(), 0);
    }

    #[test]
    fn out_of_order_straggler_pulls_the_deadline_back() {
        let mut e = WindowEngine::new(CFG);
        let mut out = Vec::new();
        e.push(frag("a", 0, 950), NOW, &mut out);
        e.push(frag("a", 1, 960), NOW, &mut out);
        // first_ts moves back to 0: max-wait close becomes 1000 (< 960 + 100).
        e.push(frag("a", 2, 0), NOW, &mut out);
        assert_eq!(e.next_deadline(), Some(1_000 + 20 + 1));
        e.advance(1_021, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, FlushReason::MaxWait);
    }

    const CHAT: WindowConfig = WindowConfig {
        typing_ms: 300,
        followup_ms: 500,
        ..CFG
    };

    #[test]
    fn typing_holds_a_window_open_but_never_past_max_wait() {
        let mut e = WindowEngine::new(CHAT);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        // Quiet would close at 100; typing at 90 holds it to 390.
        assert_eq!(
            e.signal("a", SignalKind::Typing, 90, NOW, &mut out),
            SignalOutcome::Applied
        );
        assert_eq!(e.next_deadline(), Some(390 + 20 + 1));
        e.push(frag("a", 1, 380), NOW, &mut out);
        assert!(out.is_empty(), "a fragment after a long typing pause joins");
        // Typing forever: the max-wait cap (1000) still closes it.
        for t in (400..2_000).step_by(200) {
            e.signal("a", SignalKind::Typing, t, NOW, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, FlushReason::MaxWait);
        assert_eq!(offsets(&out[0]), vec![0, 1]);
    }

    #[test]
    fn stopped_ends_the_hold_and_flush_closes_now() {
        let mut e = WindowEngine::new(CHAT);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        e.signal("a", SignalKind::Typing, 50, NOW, &mut out);
        e.signal("a", SignalKind::Stopped, 60, NOW, &mut out);
        assert_eq!(
            e.next_deadline(),
            Some(100 + 20 + 1),
            "back to the quiet period"
        );
        e.push(frag("b", 1, 70), NOW, &mut out);
        assert_eq!(
            e.signal("b", SignalKind::Flush, 75, NOW, &mut out),
            SignalOutcome::Applied
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].reason, out[0].key.as_ref()),
            (FlushReason::Signal, "b")
        );
        // No open window: nothing changes. Past the close time: the window goes out first.
        assert_eq!(
            e.signal("c", SignalKind::Typing, 80, NOW, &mut out),
            SignalOutcome::Ignored
        );
        assert_eq!(
            e.signal("a", SignalKind::Typing, 101, NOW, &mut out),
            SignalOutcome::Expired
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].reason, FlushReason::Quiet);
    }

    #[test]
    fn final_flushes_at_once_and_bypass_interrupts_then_goes_alone() {
        let mut e = WindowEngine::new(CHAT);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        let mut last = frag("a", 1, 10);
        last.is_final = true;
        e.push(last, NOW, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].reason, offsets(&out[0])),
            (FlushReason::Final, vec![0, 1])
        );
        e.push(frag("a", 2, 20), NOW, &mut out);
        let mut command = frag("a", 3, 30);
        command.bypass = true;
        e.push(command, NOW, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[1].reason, offsets(&out[1])),
            (FlushReason::Interrupted, vec![2])
        );
        assert_eq!(
            (out[2].reason, offsets(&out[2])),
            (FlushReason::Bypass, vec![3])
        );
        assert_eq!(e.open_windows(), 0);
    }

    #[test]
    fn follows_names_the_previous_batch_within_the_follow_up_window() {
        let mut e = WindowEngine::new(CHAT);
        let mut out = Vec::new();
        e.push(frag("a", 0, 0), NOW, &mut out);
        e.advance(200, &mut out);
        assert_eq!(out[0].follows, None);
        // Starts 400 ms after the last one ended (≤ 500): follows it.
        e.push(frag("a", 1, 400), NOW, &mut out);
        e.advance(600, &mut out);
        assert_eq!(out[1].follows, Some(Follows::Offset(0)));
        // Starts 1000 ms later: no.
        e.push(frag("a", 2, 1_400), NOW, &mut out);
        e.advance(1_600, &mut out);
        assert_eq!(out[2].follows, None);
        // Learnt from Redis after a restart: a full id, used when nothing newer is known.
        let mut fresh = WindowEngine::new(CHAT);
        fresh.seed_follows("a", "t/0/2", 1_400);
        fresh.push(frag("a", 3, 1_700), NOW, &mut out);
        fresh.advance(2_000, &mut out);
        assert_eq!(
            out[3].follows,
            Some(Follows::Id(Arc::new("t/0/2".to_string())))
        );
    }

    #[test]
    fn old_previous_batches_are_forgotten() {
        let mut e = WindowEngine::new(CHAT);
        let mut out = Vec::new();
        for u in 0..100 {
            e.push(frag(&format!("u{u}"), u, 0), NOW, &mut out);
        }
        e.advance(200, &mut out);
        assert_eq!(e.previous.len(), 100);
        // The log moves on past follow-up + grace: they are gone.
        e.push(frag("z", 100, 1_000), NOW, &mut out);
        assert_eq!(e.previous.len(), 0);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::model::fragment::Fields;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A generated log: `(key index, gap since previous fragment, value size)`.
    fn log_strategy() -> impl Strategy<Value = Vec<(u8, i64, usize)>> {
        prop::collection::vec((0u8..6, 0i64..400, 1usize..60), 1..200)
    }

    fn cfg_strategy() -> impl Strategy<Value = WindowConfig> {
        (1i64..300, 0i64..2_000, 1usize..8, 60usize..400, 0i64..100).prop_map(
            |(quiet, extra_wait, max_fragments, max_batch_bytes, grace)| WindowConfig {
                batching: true,
                quiet_ms: quiet,
                max_wait_ms: quiet + extra_wait,
                max_fragments,
                max_batch_bytes,
                grace_ms: grace,
                typing_ms: 500,
                followup_ms: 600,
            },
        )
    }

    fn build(log: &[(u8, i64, usize)]) -> Vec<Fragment> {
        let mut ts = 1_000;
        log.iter()
            .enumerate()
            .map(|(i, &(k, gap, size))| {
                ts += gap;
                Fragment::new(
                    format!("k{k}"),
                    100 + i as i64,
                    ts,
                    &vec![b' '; size],
                    Fields::default(),
                )
            })
            .collect()
    }

    const FAR: i64 = i64::MAX / 4;

    /// Feeds the log reading everything after the fact (catch-up), then drains.
    fn catch_up(cfg: WindowConfig, frags: &[Fragment]) -> Vec<Batch> {
        let mut e = WindowEngine::new(cfg);
        let mut out = Vec::new();
        for f in frags {
            e.push(f.clone(), FAR, &mut out);
        }
        e.advance(FAR, &mut out);
        out
    }

    /// Feeds the log live: between fragments the wall clock advances to some point before the
    /// next fragment's timestamp (`fractions` pick where), as if the partition were caught up.
    fn live(cfg: WindowConfig, frags: &[Fragment], fractions: &[u8]) -> Vec<Batch> {
        let mut e = WindowEngine::new(cfg);
        let mut out = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            e.push(f.clone(), FAR, &mut out);
            if let Some(next) = frags.get(i + 1) {
                let span = next.ts - f.ts;
                if span > 0 {
                    let frac = i64::from(fractions[i % fractions.len()]);
                    let wall = f.ts + (span - 1) * frac / 255;
                    e.advance(wall, &mut out);
                }
            }
        }
        e.advance(FAR, &mut out);
        out
    }

    fn by_id(batches: &[Batch]) -> BTreeMap<i64, (Arc<str>, FlushReason, Vec<i64>)> {
        batches
            .iter()
            .map(|b| {
                (
                    b.first_offset(),
                    (
                        b.key.clone(),
                        b.reason,
                        b.fragments.iter().map(|f| f.offset).collect(),
                    ),
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_fragment_in_exactly_one_batch_in_order(
            cfg in cfg_strategy(), log in log_strategy()
        ) {
            let frags = build(&log);
            let batches = catch_up(cfg, &frags);
            let key_of: BTreeMap<i64, &str> = frags.iter().map(|f| (f.offset, &*f.key)).collect();
            let mut seen: Vec<i64> = Vec::new();
            for b in &batches {
                prop_assert!(!b.fragments.is_empty());
                let offs: Vec<i64> = b.fragments.iter().map(|f| f.offset).collect();
                prop_assert!(offs.windows(2).all(|w| w[0] < w[1]), "offset order in batch");
                prop_assert!(offs.iter().all(|o| key_of[o] == &*b.key), "one key per batch, its own");
                seen.extend(offs);
            }
            seen.sort_unstable();
            let expected: Vec<i64> = frags.iter().map(|f| f.offset).collect();
            prop_assert_eq!(seen, expected);
        }

        #[test]
        fn boundaries_follow_the_semantics(cfg in cfg_strategy(), log in log_strategy()) {
            let frags = build(&log);
            let batches = catch_up(cfg, &frags);
            for b in &batches {
                let ts: Vec<i64> = b.fragments.iter().map(|f| f.ts).collect();
                prop_assert!(ts.windows(2).all(|w| w[1] - w[0] <= cfg.quiet_ms),
                    "no gap inside a batch exceeds quiet");
                prop_assert!(b.last_ts - b.first_ts <= cfg.max_wait_ms, "max wait respected");
                prop_assert!(b.fragments.len() <= cfg.max_fragments, "fragment cap");
                prop_assert!(b.bytes() <= cfg.max_batch_bytes, "byte cap");
            }
            // Per key, consecutive batches are split for a reason the semantics allow.
            let mut per_key: BTreeMap<Arc<str>, Vec<&Batch>> = BTreeMap::new();
            for b in &batches {
                per_key.entry(b.key.clone()).or_default().push(b);
            }
            for list in per_key.values() {
                for pair in list.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    prop_assert!(a.last_offset() < b.first_offset(), "batches of a key in order");
                    let next = &b.fragments[0];
                    let fits_time = next.ts <= a.close_time;
                    let fits_caps = a.fragments.len() < cfg.max_fragments
                        && a.bytes() + next.size() <= cfg.max_batch_bytes;
                    prop_assert!(!(fits_time && fits_caps),
                        "a batch was cut although the next fragment fitted: {:?}", a.reason);
                }
            }
        }

        #[test]
        fn any_chunking_and_read_speed_give_the_same_batches(
            cfg in cfg_strategy(),
            log in log_strategy(),
            fractions in prop::collection::vec(any::<u8>(), 1..20),
        ) {
            let frags = build(&log);
            let a = by_id(&catch_up(cfg, &frags));
            let b = by_id(&live(cfg, &frags, &fractions));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn low_watermark_never_passes_an_open_fragment(
            cfg in cfg_strategy(), log in log_strategy(),
            fractions in prop::collection::vec(any::<u8>(), 1..20),
        ) {
            let frags = build(&log);
            let mut e = WindowEngine::new(cfg);
            let mut out = Vec::new();
            let mut emitted: BTreeSet<i64> = BTreeSet::new();
            for (i, f) in frags.iter().enumerate() {
                e.push(f.clone(), FAR, &mut out);
                if i % 3 == 0 {
                    let wall = f.ts + i64::from(fractions[i % fractions.len()]);
                    e.advance(wall, &mut out);
                }
                for b in out.drain(..) {
                    emitted.extend(b.fragments.iter().map(|f| f.offset));
                }
                let open: Vec<i64> = frags[..=i]
                    .iter()
                    .map(|f| f.offset)
                    .filter(|o| !emitted.contains(o))
                    .collect();
                prop_assert_eq!(e.low_watermark(), open.iter().min().copied());
                let held: usize = frags[..=i]
                    .iter()
                    .filter(|f| !emitted.contains(&f.offset))
                    .map(Fragment::size)
                    .sum();
                prop_assert_eq!(e.open_bytes(), held);
            }
        }
    }

    /// A generated chat log: `(key index, gap since previous event, what)`, where `what` is
    /// 0..=3 a plain fragment, 4 a final one, 5 a bypass one, 6 typing, 7 stopped, 8 flush.
    fn chat_strategy() -> impl Strategy<Value = Vec<(u8, i64, u8)>> {
        prop::collection::vec((0u8..4, 0i64..400, 0u8..9), 1..200)
    }

    /// One chat event.
    #[derive(Clone)]
    enum Event {
        Fragment(Fragment),
        Signal(String, SignalKind, i64),
    }

    impl Event {
        fn ts(&self) -> i64 {
            match self {
                Event::Fragment(f) => f.ts,
                Event::Signal(_, _, ts) => *ts,
            }
        }
    }

    fn build_chat(log: &[(u8, i64, u8)]) -> Vec<Event> {
        let mut ts = 1_000;
        log.iter()
            .enumerate()
            .map(|(i, &(k, gap, what))| {
                ts += gap;
                let key = format!("k{k}");
                let kind = match what {
                    6 => Some(SignalKind::Typing),
                    7 => Some(SignalKind::Stopped),
                    8 => Some(SignalKind::Flush),
                    _ => None,
                };
                match kind {
                    Some(kind) => Event::Signal(key, kind, ts),
                    None => {
                        let mut f =
                            Fragment::new(key, 100 + i as i64, ts, &[b' '; 10], Fields::default());
                        f.is_final = what == 4;
                        f.bypass = what == 5;
                        Event::Fragment(f)
                    }
                }
            })
            .collect()
    }

    fn feed(e: &mut WindowEngine, ev: &Event, out: &mut Vec<Batch>) {
        match ev {
            Event::Fragment(f) => e.push(f.clone(), FAR, out),
            Event::Signal(key, kind, ts) => {
                e.signal(key, *kind, *ts, FAR, out);
            }
        }
    }

    /// The chat log read after the fact, or live (the wall clock advancing between events).
    fn run_chat(cfg: WindowConfig, events: &[Event], fractions: Option<&[u8]>) -> Vec<Batch> {
        let mut e = WindowEngine::new(cfg);
        let mut out = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            feed(&mut e, ev, &mut out);
            if let (Some(fractions), Some(next)) = (fractions, events.get(i + 1)) {
                let span = next.ts() - ev.ts();
                if span > 0 {
                    let frac = i64::from(fractions[i % fractions.len()]);
                    e.advance(ev.ts() + (span - 1) * frac / 255, &mut out);
                }
            }
        }
        e.advance(FAR, &mut out);
        out
    }

    type Shape = (Arc<str>, FlushReason, Vec<i64>, Option<Follows>);

    fn shapes(batches: &[Batch]) -> BTreeMap<i64, Shape> {
        batches
            .iter()
            .map(|b| {
                (
                    b.first_offset(),
                    (
                        b.key.clone(),
                        b.reason,
                        b.fragments.iter().map(|f| f.offset).collect(),
                        b.follows.clone(),
                    ),
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn chat_signals_keep_batches_a_function_of_the_log(
            cfg in cfg_strategy(),
            log in chat_strategy(),
            fractions in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let events = build_chat(&log);
            let after = run_chat(cfg, &events, None);
            let live = run_chat(cfg, &events, Some(&fractions));
            // Any read speed: the same batches, reasons and follows.
            prop_assert_eq!(shapes(&after), shapes(&live));

            // Nothing lost, signals never in a batch, every fragment exactly once.
            let mut seen: Vec<i64> = after.iter().flat_map(|b| b.fragments.iter().map(|f| f.offset)).collect();
            seen.sort_unstable();
            let fragments: Vec<i64> = events.iter().filter_map(|e| match e {
                Event::Fragment(f) => Some(f.offset),
                Event::Signal(..) => None,
            }).collect();
            prop_assert_eq!(seen, fragments);

            for b in &after {
                // Typing never holds a window past the max-wait cap.
                prop_assert!(b.last_ts - b.first_ts <= cfg.max_wait_ms);
                prop_assert!(b.close_time <= b.first_ts + cfg.max_wait_ms);
                // Bypass fragments go alone; a final fragment ends its batch.
                if b.reason == FlushReason::Bypass {
                    prop_assert_eq!(b.fragments.len(), 1);
                    prop_assert!(b.fragments[0].bypass);
                }
                if b.reason == FlushReason::Final {
                    prop_assert!(b.fragments.last().is_some_and(|f| f.is_final));
                }
                // follows names an earlier batch of the same key, ended within the window.
                if let Some(Follows::Offset(prev)) = &b.follows {
                    let p = after.iter().find(|x| x.first_offset() == *prev);
                    prop_assert!(p.is_some_and(|p| p.key == b.key
                        && p.first_offset() < b.first_offset()
                        && b.first_ts - p.last_ts <= cfg.followup_ms));
                }
            }
        }
    }
}
