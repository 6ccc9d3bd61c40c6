//! The chat side of the engine: signals that hold a window open or flush it, and `follows`, the
//! link from a batch to its key's previous batch (ARCHITECTURE.md, "Chat signals").

use std::sync::Arc;

use crate::model::fragment::{Amend, Change, Fragment, SignalKind};

use super::{
    close_of, settings, Batch, FlushReason, Follows, SignalOutcome, WindowEngine,
    FUTURE_TOLERANCE_MS,
};

impl WindowEngine {
    /// The key's previous batch, if a batch starting at `first_ts` follows it.
    pub(super) fn follows_for(&self, key: &str, first_ts: i64) -> Option<Follows> {
        let (follows, last_ts) = self.previous.get(key)?;
        (first_ts.saturating_sub(*last_ts) <= self.cfg.followup_ms).then(|| follows.clone())
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
                let (close, reason) = close_of(&self.channels, w);
                let typing_ms = settings(&self.channels, w.channel()).typing_ms;
                if ts > close {
                    self.flush_key(key, reason, out);
                    SignalOutcome::Expired
                } else {
                    match kind {
                        SignalKind::Typing => {
                            w.typing_until = w.typing_until.max(ts.saturating_add(typing_ms));
                        }
                        SignalKind::Stopped => w.typing_until = ts,
                        SignalKind::Flush => {}
                    }
                    let due = close_of(&self.channels, w).0.saturating_add(cfg.grace_ms);
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

    /// Applies an `edit` or `delete` of `key`: a target in the key's open window is changed in
    /// place (its batch shows the change); otherwise the key's open window goes out first (reason
    /// `interrupted`, in order, as before a bypass fragment: the skip records of a replay then stay
    /// exact) and the signal goes out as a batch of one (reason `edit`/`delete`) naming in
    /// `amends` the key's last batch, which carried the target when lull still knows it.
    pub fn amend(&mut self, a: Amend, now_ms: i64, out: &mut Vec<Batch>) -> SignalOutcome {
        let Amend {
            mut message,
            target,
            change,
        } = a;
        if message.ts > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            self.stats.clamped += 1;
            message.ts = now_ms;
        }
        let ts = message.ts;
        self.saw(ts);
        let key = std::mem::take(&mut message.key);
        // A window whose close time passed goes out first, for its own reason, as any message
        // would make it (read live, it went out by the clock already).
        if let Some(w) = self.windows.get(&*key) {
            let (close, reason) = close_of(&self.channels, w);
            if ts > close {
                self.flush_key(&key, reason, out);
            }
        }
        let open_target = self
            .windows
            .get(&*key)
            .filter(|_| self.cfg.batching)
            .and_then(|w| w.fragments.iter().find(|f| f.event_id() == Some(&*target)))
            .map(|f| f.offset);
        if let Some(offset) = open_target {
            self.amended.insert(offset, change);
            self.advance(ts, out);
            return SignalOutcome::Applied;
        }
        // The key's last batch, as long as the engine keeps it (the follow-up window and the
        // grace, by log time: the same whether the log is read live or after the fact).
        let horizon = self.cfg.followup_ms.saturating_add(self.cfg.grace_ms);
        let amends = self
            .previous
            .get(&*key)
            .filter(|(_, last_ts)| last_ts.saturating_add(horizon) >= self.log_time)
            .map(|(follows, _)| follows.clone());
        let key: Arc<str> = match self.windows.remove_entry(&*key) {
            Some((stored, w)) => {
                self.flush_window(stored.clone(), w, FlushReason::Interrupted, out);
                stored
            }
            None => Arc::from(key),
        };
        let reason = match change {
            Change::Edited(_) => FlushReason::Edit,
            Change::Deleted => FlushReason::Delete,
        };
        // Not the key's latest batch for `follows`: it adds nothing to a burst.
        out.push(Batch {
            key,
            reason,
            first_ts: ts,
            last_ts: ts,
            close_time: ts,
            fragments: vec![message],
            follows: None,
            amends,
            changes: Vec::new(),
        });
        self.advance(ts, out);
        SignalOutcome::Alone
    }

    /// The in-place changes of a window's `fragments`, taken out of the engine as it goes out.
    pub(super) fn changes_of(&mut self, fragments: &[Fragment]) -> Vec<(usize, Change)> {
        if self.amended.is_empty() {
            return Vec::new();
        }
        fragments
            .iter()
            .enumerate()
            .filter_map(|(i, f)| self.amended.remove(&f.offset).map(|c| (i, c)))
            .collect()
    }
}
