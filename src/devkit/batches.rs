//! Reading lull's output back, for the demo and the benchmark: a reader of the output topic and a
//! [`Tally`] of what it saw — fragments lost, doubled or out of their user's order, batches per
//! reason, flush lateness and end-to-end latency, and the edits and deletes it saw made.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::config::Config;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use serde::Deserialize;

/// A batch as the tools read it (the fields they use).
#[derive(Debug, Clone, Deserialize)]
pub struct BatchView {
    /// Its id (the tools' own test batches may leave it out).
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The batch an `edit`/`delete` batch amends, when lull still knew it.
    #[serde(default)]
    pub amends: Option<String>,
    /// The user.
    pub key: String,
    /// Why it went out.
    pub reason: String,
    /// Earliest fragment time, Unix ms.
    pub first_ts: i64,
    /// Latest fragment time, Unix ms.
    pub last_ts: i64,
    /// When lull encoded it, Unix ms.
    pub flushed_at: i64,
    /// Its fragments.
    pub fragments: Vec<FragmentView>,
    /// The joined text, if every fragment had one.
    pub text: Option<String>,
}

/// A fragment of a batch, as the load generator wrote it (or the signal of an `edit`/`delete`
/// batch).
#[derive(Debug, Clone, Deserialize)]
pub struct FragmentView {
    /// Unique per fragment typed (signals have none).
    #[serde(default)]
    pub event_id: Option<String>,
    /// Place in its user's sequence, when the writer numbered it.
    #[serde(default)]
    pub seq: Option<usize>,
    /// The new text, when an `edit` changed this fragment in place.
    #[serde(default)]
    pub edited: Option<String>,
    /// Whether a `delete` took this fragment back in place.
    #[serde(default)]
    pub deleted: bool,
    /// What an `edit`/`delete` signal changes.
    #[serde(default)]
    pub target: Option<String>,
}

/// An `edit` or `delete` that went out alone (its target's window had gone out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmendSeen {
    /// `edit` or `delete`.
    pub reason: String,
    /// The batch it names in `amends`, if any.
    pub amends: Option<String>,
}

/// A consumer of `topic` from its beginning, in a group of its own, as a downstream consumer
/// sees it ([`crate::io::kafka::reader_config`]).
pub fn reader(config: &Config, topic: &str, group: &str) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = crate::io::kafka::reader_config(config, group).create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Where an event id was seen: how many times, and its first batch (by the order batches were
/// read, and by id when the batch had one).
struct Sighting {
    copies: usize,
    first_batch: usize,
    first_batch_id: Option<std::sync::Arc<str>>,
}

/// Percentiles of a latency, ms: p50, p99, max.
pub type Quantiles = (u64, u64, u64);

/// What the tools tally from the batches they read.
pub struct Tally {
    quiet_ms: i64,
    max_wait_ms: i64,
    grace_ms: i64,
    /// Every event id seen in a batch.
    seen: HashMap<String, Sighting>,
    last_seq: HashMap<String, usize>,
    /// Fragments that came after a later one of the same user.
    pub out_of_order: usize,
    /// Fragments changed in place, by event id: `true` for an edit, `false` for a delete.
    pub changed_in_place: HashMap<String, bool>,
    /// `edit`/`delete` batches, by target event id (more than one: a repeat).
    pub amended_alone: HashMap<String, Vec<AmendSeen>>,
    /// Batches per reason.
    pub reasons: BTreeMap<String, usize>,
    /// Batches read.
    pub batches: usize,
    /// A few batches of three fragments or more, to show.
    pub samples: Vec<BatchView>,
    lateness: Histogram<u64>,
    end_to_end: Histogram<u64>,
    /// Last fragment to batch, of the keys in `held_keys` only: how long typists wait.
    held_end_to_end: Histogram<u64>,
    /// Keys whose windows typing signals may hold open: their close time is not in the batch,
    /// so they are left out of the lateness figure.
    held_keys: std::collections::HashSet<String>,
    /// Keys whose windows keep another channel's settings: left out of the lateness figure too
    /// (it computes close times with the global settings).
    other_channel_keys: std::collections::HashSet<String>,
}

impl Tally {
    /// An empty tally for a run with these window settings.
    pub fn new(quiet: Duration, max_wait: Duration, grace: Duration) -> Self {
        // Three significant digits, auto-resizing: these cannot fail.
        let histogram = || Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!());
        Self {
            quiet_ms: quiet.as_millis() as i64,
            max_wait_ms: max_wait.as_millis() as i64,
            grace_ms: grace.as_millis() as i64,
            seen: HashMap::new(),
            last_seq: HashMap::new(),
            out_of_order: 0,
            changed_in_place: HashMap::new(),
            amended_alone: HashMap::new(),
            reasons: BTreeMap::new(),
            batches: 0,
            samples: Vec::new(),
            lateness: histogram(),
            end_to_end: histogram(),
            held_end_to_end: histogram(),
            held_keys: Default::default(),
            other_channel_keys: Default::default(),
        }
    }

    /// Leaves `keys` out of the lateness figure (their chat clients send typing signals).
    pub fn without_lateness_of(mut self, keys: std::collections::HashSet<String>) -> Self {
        self.held_keys = keys;
        self
    }

    /// Leaves `keys` out of the lateness figure (they write from a channel with settings of its
    /// own).
    pub fn with_other_channel(mut self, keys: std::collections::HashSet<String>) -> Self {
        self.other_channel_keys = keys;
        self
    }

    /// Counts one batch (its raw value; anything else is ignored).
    pub fn add(&mut self, payload: &[u8]) {
        self.add_seen(payload, None);
    }

    /// Counts one batch that a reader received at `seen_at` (Unix ms): lateness and latency then
    /// run to that moment — when the batch became visible downstream (exactly_once: at its
    /// transaction's commit) — instead of to its `flushed_at`.
    pub fn add_seen(&mut self, payload: &[u8], seen_at: Option<i64>) {
        let Ok(b) = serde_json::from_slice::<BatchView>(payload) else {
            return;
        };
        let at = seen_at.unwrap_or(b.flushed_at);
        let amend = b.reason == "edit" || b.reason == "delete";
        let batch_id: Option<std::sync::Arc<str>> = b.batch_id.as_deref().map(Into::into);
        for f in &b.fragments {
            if amend {
                if let Some(target) = &f.target {
                    self.amended_alone
                        .entry(target.clone())
                        .or_default()
                        .push(AmendSeen {
                            reason: b.reason.clone(),
                            amends: b.amends.clone(),
                        });
                }
                continue;
            }
            let Some(event_id) = &f.event_id else {
                continue;
            };
            self.seen
                .entry(event_id.clone())
                .or_insert_with(|| Sighting {
                    copies: 0,
                    first_batch: self.batches,
                    first_batch_id: batch_id.clone(),
                })
                .copies += 1;
            if f.edited.is_some() || f.deleted {
                self.changed_in_place
                    .insert(event_id.clone(), f.edited.is_some());
            }
            let Some(seq) = f.seq else { continue };
            if let Some(prev) = self.last_seq.insert(b.key.clone(), seq) {
                if seq <= prev {
                    self.out_of_order += 1;
                }
            }
        }
        // Lull's own delay: from the moment the window was due (close time + grace) to the
        // flush. Only windows that closed by time have such a moment.
        if (b.reason == "quiet" || b.reason == "max_wait")
            && !self.held_keys.contains(&b.key)
            && !self.other_channel_keys.contains(&b.key)
        {
            let close = (b.last_ts + self.quiet_ms).min(b.first_ts + self.max_wait_ms);
            let late = (at - close - self.grace_ms).max(0);
            let _ = self.lateness.record(late as u64);
        }
        let waited = (at - b.last_ts).max(0) as u64;
        let _ = self.end_to_end.record(waited);
        if self.held_keys.contains(&b.key) {
            let _ = self.held_end_to_end.record(waited);
        }
        *self.reasons.entry(b.reason.clone()).or_default() += 1;
        self.batches += 1;
        if b.fragments.len() >= 3 && self.samples.len() < 16 {
            self.samples.push(b);
        }
    }

    /// Whether two fragments (by event id) came out in the same batch.
    pub fn same_batch(&self, a: &str, b: &str) -> bool {
        matches!((self.seen.get(a), self.seen.get(b)), (Some(x), Some(y)) if x.first_batch == y.first_batch)
    }

    /// Distinct fragments seen in some batch.
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }

    /// Extra copies: fragments seen in more than one batch count once per extra batch, and so
    /// do `edit`/`delete` batches of one target seen more than once.
    pub fn duplicated(&self) -> usize {
        let fragments: usize = self.seen.values().map(|s| s.copies - 1).sum();
        let amends: usize = self
            .amended_alone
            .values()
            .map(|v| v.len().saturating_sub(1))
            .sum();
        fragments + amends
    }

    /// The id of the batch that carried a fragment (by event id), if seen.
    pub fn batch_id_of(&self, event_id: &str) -> Option<&str> {
        self.seen.get(event_id)?.first_batch_id.as_deref()
    }

    /// Flush lateness (flush − close − grace), ms.
    pub fn lateness_ms(&self) -> Quantiles {
        quantiles(&self.lateness)
    }

    /// Last fragment to flush, ms.
    pub fn end_to_end_ms(&self) -> Quantiles {
        quantiles(&self.end_to_end)
    }

    /// Last fragment to batch of the keys left out of the lateness figure (the typists), ms.
    pub fn held_end_to_end_ms(&self) -> Quantiles {
        quantiles(&self.held_end_to_end)
    }
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(key: &str, reason: &str, seqs: &[usize], last_ts: i64, flushed_at: i64) -> Vec<u8> {
        let fragments: Vec<_> = seqs
            .iter()
            .map(|s| serde_json::json!({"event_id": format!("{key}-{s}"), "seq": s}))
            .collect();
        serde_json::json!({
            "key": key, "reason": reason, "first_ts": last_ts - 100, "last_ts": last_ts,
            "flushed_at": flushed_at, "fragments": fragments,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn counts_doubles_disorder_and_lateness() {
        let ms = Duration::from_millis;
        let mut t = Tally::new(ms(500), ms(15_000), ms(200));
        t.add(&batch("a", "quiet", &[0, 1], 1_000, 1_705));
        t.add(&batch("a", "quiet", &[1], 2_000, 2_700));
        t.add(&batch("b", "max_fragments", &[3, 2], 1_000, 1_000));
        t.add(b"not a batch");
        assert_eq!(t.batches, 3);
        assert_eq!(t.distinct(), 4);
        assert_eq!(t.duplicated(), 1);
        assert_eq!(t.out_of_order, 2, "a-1 again after a-1, and b-2 after b-3");
        assert_eq!(t.lateness_ms().2, 5);
        assert_eq!(t.reasons["quiet"], 2);
    }

    #[test]
    fn changes_in_place_and_alone_are_counted_and_a_repeated_one_is_a_duplicate() {
        let ms = Duration::from_millis;
        let mut t = Tally::new(ms(500), ms(15_000), ms(200));
        let window = serde_json::json!({
            "batch_id": "in:0:0", "key": "a", "reason": "quiet", "first_ts": 0, "last_ts": 10,
            "flushed_at": 700, "fragments": [
                {"event_id": "a-0", "seq": 0, "edited": "hello"},
                {"event_id": "a-1", "seq": 1, "deleted": true},
                {"event_id": "a-2", "seq": 2},
            ],
        });
        let alone = serde_json::json!({
            "batch_id": "in:0:5", "key": "a", "reason": "edit", "amends": "in:0:0",
            "first_ts": 900, "last_ts": 900, "flushed_at": 900, "fragments": [
                {"user_id": "a", "signal": "edit", "target": "a-2", "text": "x"},
            ],
        });
        t.add(window.to_string().as_bytes());
        t.add(alone.to_string().as_bytes());
        assert_eq!(t.distinct(), 3, "the signal is not a fragment");
        assert_eq!(t.changed_in_place.get("a-0"), Some(&true));
        assert_eq!(t.changed_in_place.get("a-1"), Some(&false));
        assert_eq!(t.changed_in_place.get("a-2"), None);
        assert_eq!(t.batch_id_of("a-2"), Some("in:0:0"));
        assert_eq!(
            t.amended_alone["a-2"],
            vec![AmendSeen {
                reason: "edit".into(),
                amends: Some("in:0:0".into())
            }]
        );
        assert_eq!(t.duplicated(), 0);
        t.add(alone.to_string().as_bytes());
        assert_eq!(t.duplicated(), 1);
    }
}
