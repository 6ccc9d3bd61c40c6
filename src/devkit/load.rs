//! The one load generator of the demo, the benchmark and `lull simulate`: simulated users typing
//! bursts (a [`Plan`]), and a [`Writer`] that produces them with bounded memory.
//!
//! A burst is a few fragments with short gaps (under 2/5 of the quiet period), then a pause of two
//! to four quiet periods: with a quiet period of `quiet_ms`, every planned burst is exactly one
//! batch. Some users (`typing_share`) type slowly — gaps of 1.2 to 2 quiet periods inside a burst —
//! and their chat client says so with a `typing` signal after each fragment: those bursts stay
//! whole only thanks to the signals. Some bursts end with a `"final": true` fragment
//! (`final_share`), some fragments are bot commands (`/status`, `command_share`). Some users
//! (`channel_share`) write from the [`PLAN_CHANNEL`] channel, whose quiet period is twice the
//! global one ([`channel_quiet_ms`]): their gaps (1.2 to 1.8 global quiet periods) stay whole only
//! with that channel's settings. Some fragments are corrected after they are sent: an `edit`
//! (`edit_share`) or a `delete` (`delete_share`) signal, half of them soon after the fragment (its
//! window is still open: the change is made in place) and half after its batch went out (the
//! change goes out alone, naming the batch in `amends`). Plans are seeded, so a run can be
//! repeated.

use crate::config::Config;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// What to plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanArgs {
    /// Simulated users.
    pub users: usize,
    /// Fragments in total, spread evenly over the users.
    pub fragments: usize,
    /// The quiet period the typing is planned around, ms.
    pub quiet_ms: u64,
    /// Largest burst (bursts are 1..=this fragments).
    pub max_burst: usize,
    /// Bytes of `text` per fragment; `None` picks short chat phrases.
    pub text_bytes: Option<usize>,
    /// Share of users who type slowly and send `typing` signals (0 to 1).
    pub typing_share: f64,
    /// Share of bursts that end with a `"final": true` fragment.
    pub final_share: f64,
    /// Share of fragments that are bot commands (`/status`).
    pub command_share: f64,
    /// Share of users who write from [`PLAN_CHANNEL`] (0 to 1).
    pub channel_share: f64,
    /// Share of fragments the user corrects with an `edit` signal (0 to 1).
    pub edit_share: f64,
    /// Share of fragments the user takes back with a `delete` signal (0 to 1).
    pub delete_share: f64,
    /// Random seed.
    pub seed: u64,
}

/// The channel a plan's channel users write from (`"channel": "whatsapp"`).
pub const PLAN_CHANNEL: &str = "whatsapp";

/// The quiet period the [`PLAN_CHANNEL`] users' typing is planned around, for a global quiet
/// period of `quiet_ms`: twice it. lull must run with `LULL_CHANNEL_WHATSAPP_QUIET_MS` at this (and
/// a max wait that lets a burst of five fit: [`channel_max_wait_ms`]).
pub fn channel_quiet_ms(quiet_ms: u64) -> u64 {
    quiet_ms.max(1) * 2
}

/// The max wait the [`PLAN_CHANNEL`] users' bursts fit in: five fragments 1.8 quiet periods
/// apart, with room to spare.
pub fn channel_max_wait_ms(quiet_ms: u64) -> u64 {
    quiet_ms.max(1) * 10
}

impl PlanArgs {
    /// Plain typing: no signals, no final fragments, no commands.
    pub fn plain(users: usize, fragments: usize, quiet_ms: u64, seed: u64) -> Self {
        Self {
            users,
            fragments,
            quiet_ms,
            max_burst: 5,
            text_bytes: None,
            typing_share: 0.0,
            final_share: 0.0,
            command_share: 0.0,
            channel_share: 0.0,
            edit_share: 0.0,
            delete_share: 0.0,
            seed,
        }
    }
}

/// What a planned message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A fragment.
    Fragment,
    /// A fragment with `"final": true`.
    Final,
    /// A bot command (`/status`).
    Command,
    /// A `typing` signal (not a fragment).
    Typing,
    /// An `edit` signal of the fragment with the same user and `seq` (not a fragment).
    Edit,
    /// A `delete` signal of the fragment with the same user and `seq` (not a fragment).
    Delete,
}

impl What {
    /// Whether this is a signal rather than a fragment.
    pub fn is_signal(self) -> bool {
        matches!(self, What::Typing | What::Edit | What::Delete)
    }
}

/// A planned edit or delete: the event id of its target (without the run prefix), and whether
/// it is an edit (else a delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    /// The target's event id, without the run prefix.
    pub target: String,
    /// `true` for an edit, `false` for a delete.
    pub edit: bool,
}

/// One planned fragment: when it is typed (ms from the start), by whom, its place in that user's
/// sequence, and which phrase it says.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// Milliseconds after the start of the session.
    pub at_ms: u64,
    /// The user (an index; see [`user_name`]).
    pub user: usize,
    /// Place in the user's sequence, from 0 (signals share the number of the fragment before
    /// them).
    pub seq: usize,
    /// Fragment, final fragment, command, or signal.
    pub what: What,
    phrase: u8,
}

/// A typing session.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every fragment, in typing order.
    pub events: Vec<Planned>,
    /// How many bursts the users type (each should become one batch).
    pub bursts: usize,
    /// Bursts a plain quiet period would split (a gap over it) but typing signals hold: their
    /// first and last fragments' event ids (without the run prefix).
    pub held: Vec<(String, String)>,
    /// How many more batches those bursts would make without the signals (each gap over the
    /// quiet period would cut one).
    pub held_splits: usize,
    /// Users who type slowly and send `typing` signals.
    pub slow_users: std::collections::HashSet<String>,
    /// Bursts of [`PLAN_CHANNEL`] users that the global quiet period would split but their
    /// channel's holds: their first and last fragments' event ids (without the run prefix).
    pub channel_held: Vec<(String, String)>,
    /// Users who write from [`PLAN_CHANNEL`].
    pub channel_users: std::collections::HashSet<usize>,
    /// Edits and deletes sent while their target's window is still open: lull changes the
    /// target in place.
    pub changes_in_window: Vec<PlannedChange>,
    /// Edits and deletes sent after their target's batch went out: each goes out alone.
    pub changes_after: Vec<PlannedChange>,
    text_bytes: Option<usize>,
}

const PHRASES: &[&str] = &[
    "hi",
    "I need help",
    "with my order #123",
    "it hasn't arrived yet",
    "can you check?",
    "also",
    "the tracking page is blank",
    "my email changed",
    "one more thing",
    "thanks!",
    "hello?",
    "is anyone there",
];

/// The key of user number `user`.
pub fn user_name(user: usize) -> String {
    format!("user-{user:04}")
}

impl Plan {
    /// Plans the session.
    pub fn new(args: PlanArgs) -> Self {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let users = args.users.max(1);
        let quiet = args.quiet_ms.max(1);
        let mut events = Vec::with_capacity(args.fragments);
        let mut bursts = 0;
        let mut held = Vec::new();
        let mut held_splits = 0;
        let mut slow_users = std::collections::HashSet::new();
        let mut channel_held = Vec::new();
        let mut channel_users = std::collections::HashSet::new();
        let mut changes_in_window = Vec::new();
        let mut changes_after = Vec::new();
        let change_share = (args.edit_share + args.delete_share).clamp(0.0, 1.0);
        for user in 0..users {
            let share = args.fragments / users + usize::from(user < args.fragments % users);
            let slow = rng.gen_bool(args.typing_share.clamp(0.0, 1.0));
            if slow {
                slow_users.insert(user_name(user));
            }
            // Drawn only when asked for, so plans without channels stay as they were.
            let channel = !slow
                && args.channel_share > 0.0
                && rng.gen_bool(args.channel_share.clamp(0.0, 1.0));
            if channel {
                channel_users.insert(user);
            }
            let mut t = rng.gen_range(0..2_000u64);
            let mut seq = 0;
            while seq < share {
                let size = rng.gen_range(1..=args.max_burst.max(1)).min(share - seq);
                let ends_final = rng.gen_bool(args.final_share.clamp(0.0, 1.0));
                bursts += 1;
                let first = seq;
                let mut long_gap = false;
                // Changes sent after the burst's batch went out: (target seq, edit?).
                let mut late = Vec::new();
                for i in 0..size {
                    if i > 0 {
                        if slow {
                            // The client says "typing" soon after each fragment.
                            events.push(Planned {
                                at_ms: t + 50,
                                user,
                                seq: seq - 1,
                                what: What::Typing,
                                phrase: 0,
                            });
                            t += rng.gen_range(quiet * 6 / 5..=quiet * 2);
                            long_gap = true;
                        } else if channel {
                            // Over the global quiet period, under the channel's.
                            t += rng.gen_range(quiet * 6 / 5..=quiet * 9 / 5);
                            long_gap = true;
                        } else {
                            t += rng.gen_range(20..=(quiet * 2 / 5).max(21));
                        }
                    }
                    let what = if rng.gen_bool(args.command_share.clamp(0.0, 1.0)) {
                        What::Command
                    } else if ends_final && i + 1 == size {
                        What::Final
                    } else {
                        What::Fragment
                    };
                    events.push(Planned {
                        at_ms: t,
                        user,
                        seq,
                        what,
                        phrase: rng.gen_range(0..PHRASES.len() as u8),
                    });
                    // Drawn only when asked for, so plans without changes stay as they were.
                    // A final fragment or a command has no open window to change.
                    if change_share > 0.0 && what == What::Fragment && rng.gen_bool(change_share) {
                        let edit = rng.gen_bool(args.edit_share / change_share);
                        let change = PlannedChange {
                            target: format!("{}-{seq}", user_name(user)),
                            edit,
                        };
                        let what = if edit { What::Edit } else { What::Delete };
                        if rng.gen_bool(0.5) {
                            // Before the burst's next fragment (20 ms or more later) and
                            // well inside the quiet period: the window is still open, and no
                            // command or final fragment has sent it out yet.
                            events.push(Planned {
                                at_ms: t + rng.gen_range(1..=(quiet / 5).clamp(1, 19)),
                                user,
                                seq,
                                what,
                                phrase: rng.gen_range(0..PHRASES.len() as u8),
                            });
                            changes_in_window.push(change);
                        } else {
                            late.push((seq, what));
                            changes_after.push(change);
                        }
                    }
                    seq += 1;
                }
                if long_gap {
                    let name = user_name(user);
                    let ids = (format!("{name}-{first}"), format!("{name}-{}", seq - 1));
                    if channel {
                        channel_held.push(ids);
                    } else {
                        held_splits += size - 1;
                        held.push(ids);
                    }
                }
                let pause = if channel {
                    channel_quiet_ms(quiet)
                } else {
                    quiet
                };
                // Past the burst's close time, well before the next burst.
                for (i, (target, what)) in late.into_iter().enumerate() {
                    events.push(Planned {
                        at_ms: t + pause * 3 / 2 + i as u64,
                        user,
                        seq: target,
                        what,
                        phrase: rng.gen_range(0..PHRASES.len() as u8),
                    });
                }
                t += rng.gen_range(pause * 2..=pause * 4);
            }
        }
        events.sort_by_key(|e| (e.at_ms, e.user, e.seq, e.what.is_signal()));
        Self {
            events,
            bursts,
            held,
            held_splits,
            slow_users,
            channel_held,
            channel_users,
            changes_in_window,
            changes_after,
            text_bytes: args.text_bytes,
        }
    }

    /// Planned fragments (signals are not).
    pub fn fragments(&self) -> usize {
        self.events.iter().filter(|e| !e.what.is_signal()).count()
    }

    /// How long typing the whole session takes, ms.
    pub fn span_ms(&self) -> u64 {
        self.events.last().map_or(0, |e| e.at_ms)
    }

    /// The key and JSON value of a planned fragment. `run` prefixes its event id, so sessions
    /// typed into the same topic twice do not share event ids.
    pub fn message(&self, e: &Planned, run: &str) -> (String, String) {
        let user = user_name(e.user);
        let phrase = PHRASES[usize::from(e.phrase) % PHRASES.len()];
        let target = || format!("{run}{user}-{}", e.seq);
        let signal = match e.what {
            What::Typing => Some(serde_json::json!({"user_id": user, "signal": "typing"})),
            What::Edit => Some(serde_json::json!({
                "user_id": user, "signal": "edit", "target": target(), "text": phrase,
            })),
            What::Delete => Some(serde_json::json!({
                "user_id": user, "signal": "delete", "target": target(),
            })),
            What::Fragment | What::Final | What::Command => None,
        };
        if let Some(value) = signal {
            return (user, value.to_string());
        }
        let text = match (e.what, self.text_bytes) {
            (What::Command, _) => "/status".to_string(),
            (_, Some(n)) => "x".repeat(n),
            (_, None) => phrase.to_string(),
        };
        let mut value = serde_json::json!({
            "user_id": user,
            "event_id": format!("{run}{user}-{}", e.seq),
            "seq": e.seq,
            "text": text,
        });
        if e.what == What::Final {
            value["final"] = serde_json::Value::Bool(true);
        }
        if self.channel_users.contains(&e.user) {
            value["channel"] = serde_json::Value::String(PLAN_CHANNEL.to_string());
        }
        (user, value.to_string())
    }
}

/// Whether `brokers` answer a metadata request for `topic` within `timeout` (blocking): the
/// tools check before they start typing, so an unreachable broker is an error, not a hang.
pub fn reachable(
    config: &Config,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<(), KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = crate::io::kafka::probe_config(config).create()?;
    probe.fetch_metadata(Some(topic), timeout).map(|_| ())
}

/// Produces load: an lz4, lingering producer and its deliveries, awaited as they complete.
pub struct Writer {
    producer: FutureProducer,
    topic: String,
    pending: FuturesUnordered<DeliveryFuture>,
    acked: usize,
}

impl Writer {
    /// A writer of `topic` on `config`'s brokers, with its connection and security settings
    /// ([`crate::io::kafka::writer_config`]).
    pub fn new(config: &Config, topic: &str) -> Result<Self, KafkaError> {
        let producer = crate::io::kafka::writer_config(config).create()?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            pending: FuturesUnordered::new(),
            acked: 0,
        })
    }

    /// Hands one message to the producer (timestamp `ts`, else now). When librdkafka's queue is
    /// full it waits for a delivery and tries again; any other error is returned, never retried
    /// in a loop.
    pub async fn send(
        &mut self,
        key: &str,
        value: &str,
        ts: Option<i64>,
    ) -> Result<(), KafkaError> {
        let topic = self.topic.clone();
        let mut record = FutureRecord::to(&topic).key(key).payload(value);
        if let Some(ts) = ts {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(d) => {
                    self.pending.push(d);
                    return self.poll_acks();
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match self.pending.next().await {
                        Some(d) => self.settled(d)?,
                        // Nothing of ours in flight: the queue is full of someone else's
                        // messages; give it a moment.
                        None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Takes the deliveries that completed, without waiting.
    pub fn poll_acks(&mut self) -> Result<(), KafkaError> {
        while let Some(Some(d)) = futures_util::FutureExt::now_or_never(self.pending.next()) {
            self.settled(d)?;
        }
        Ok(())
    }

    fn settled<E>(
        &mut self,
        d: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
    ) -> Result<(), KafkaError> {
        match d {
            Ok(Ok(_)) => {
                self.acked += 1;
                Ok(())
            }
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::Canceled),
        }
    }

    /// Waits for every delivery; returns how many messages were acknowledged in all.
    pub async fn finish(&mut self) -> Result<usize, KafkaError> {
        while let Some(d) = self.pending.next().await {
            self.settled(d)?;
        }
        Ok(self.acked)
    }

    /// Messages acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_burst_fits_the_quiet_period_and_the_session_is_repeatable() {
        let args = PlanArgs::plain(20, 500, 500, 3);
        let plan = Plan::new(args);
        assert_eq!(plan.events.len(), 500);
        let mut by_user: std::collections::HashMap<usize, Vec<u64>> = Default::default();
        for e in &plan.events {
            by_user.entry(e.user).or_default().push(e.at_ms);
        }
        let mut bursts = 0;
        for times in by_user.values() {
            bursts += 1;
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                assert!(gap <= 200 || gap >= 1_000, "a gap of {gap} ms is ambiguous");
                if gap >= 1_000 {
                    bursts += 1;
                }
            }
        }
        assert_eq!(bursts, plan.bursts);
        let again = Plan::new(args);
        assert_eq!(
            plan.message(&plan.events[7], "r-"),
            again.message(&again.events[7], "r-")
        );
    }

    #[test]
    fn changes_follow_their_target_inside_its_window_or_after_its_close() {
        let quiet = 500;
        let plan = Plan::new(PlanArgs {
            edit_share: 0.1,
            delete_share: 0.05,
            channel_share: 0.2,
            ..PlanArgs::plain(30, 1_500, quiet, 9)
        });
        assert_eq!(plan.fragments(), 1_500, "signals are not fragments");
        let planned = plan.changes_in_window.len() + plan.changes_after.len();
        assert!(planned > 100, "{planned} changes planned");
        let mut sent_at = std::collections::HashMap::new();
        for e in &plan.events {
            let (_, value) = plan.message(e, "");
            let v: serde_json::Value = serde_json::from_str(&value).expect("json");
            match e.what {
                What::Edit | What::Delete => {
                    let target = v["target"].as_str().expect("target");
                    let at: u64 = sent_at[target];
                    let soon = plan.changes_in_window.iter().any(|c| c.target == target);
                    let gap = e.at_ms - at;
                    if soon {
                        assert!(
                            gap <= quiet / 5,
                            "{target}: an in-window change {gap} ms later"
                        );
                    } else {
                        assert!(gap > quiet, "{target}: a late change only {gap} ms later");
                    }
                    assert_eq!(v["signal"] == "edit", e.what == What::Edit);
                    assert_eq!(e.what == What::Edit, v.get("text").is_some());
                }
                What::Typing => {}
                _ => {
                    let id = v["event_id"].as_str().expect("event id").to_string();
                    sent_at.insert(id, e.at_ms);
                }
            }
        }
    }
}
