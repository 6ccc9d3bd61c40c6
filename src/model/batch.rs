//! What the window engine gives out: batches and why they flushed, the windows that opened, what
//! a signal did, what an open window looks like from outside, and the engine's counters. Plain
//! values, built by [`crate::model::window`] and encoded by [`crate::model::wire`].

use std::sync::Arc;

use crate::model::fragment::{Change, Fragment};

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
    /// An `edit` whose target was no longer open, alone.
    Edit,
    /// A `delete` whose target was no longer open, alone.
    Delete,
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
            FlushReason::Edit => "edit",
            FlushReason::Delete => "delete",
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
    /// An `edit`/`delete` batch of one: the key's last batch, which carried its target (when
    /// lull still knows it).
    pub amends: Option<Follows>,
    /// Fragments changed in place by `edit`/`delete` signals while the window was open: (index
    /// in `fragments`, the change).
    pub changes: Vec<(usize, Change)>,
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
    /// An `edit`/`delete` whose target was not open: it went out as a batch of one.
    Alone,
}

impl SignalOutcome {
    /// The name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalOutcome::Applied => "applied",
            SignalOutcome::Ignored => "ignored",
            SignalOutcome::Expired => "expired",
            SignalOutcome::Alone => "alone",
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
    /// The key's previous batch, when this window follows it within the follow-up window: the
    /// bot's earliest cue that the user is adding to what it may be answering.
    pub follows: Option<Follows>,
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

/// Counters the engine keeps for the metrics; read and reset with [`crate::model::window::WindowEngine::take_stats`].
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
