//! `lull verify`: a delivery audit of the input, output and dead-letter topics.
//!
//! It reads the three topics up to their current ends and checks, fragment by fragment, what the
//! design promises: every valid input fragment is in exactly one batch, byte-for-byte unchanged,
//! in order; every invalid one is in the dead-letter topic; every batch keeps the configured
//! boundaries. It is the honest version of "hash it in Redis and count": Kafka is the log of
//! record on both sides, so nothing needs to be written on the way.
//!
//! Matching: a batch names its input partition, offset range and key; its fragments must be a
//! subsequence, in order and with identical bytes, of that key's valid input messages in that
//! range. A batch fragment that matches nothing is *altered*; an input fragment matched by no batch
//! is *lost* (or *still open*, if it is younger than max wait + grace, or *dropped duplicate*, if
//! its event id was seen earlier); matched by more than one batch, *duplicated*.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Config, TimestampSource};
use crate::model::fragment::{self, RawMessage};
use crate::ops::clock::now_ms;

mod read;

pub use read::ReadProgress;
use read::{read_all, Span};

/// What to audit.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only input fragments with a timestamp at or after this (Unix ms).
    pub from_ms: Option<i64>,
    /// Only input fragments with a timestamp before this (Unix ms).
    pub to_ms: Option<i64>,
    /// Give up when a topic makes no progress for this long (default 60 s): a stall, not a cap on
    /// the whole read, so production-sized topics are read to the end.
    pub read_timeout: Option<Duration>,
    /// Where to report how far each topic was read (a progress bar), if anywhere.
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<ReadProgress>>,
}

/// The audit's findings.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct VerifyReport {
    /// Valid input fragments in range.
    pub fragments_in: usize,
    /// Of those, found in exactly one batch (a fragment in two or more is `duplicated`, not here:
    /// `in_batches + lost + duplicated + still_open + dropped_duplicates == fragments_in`).
    pub in_batches: usize,
    /// Valid fragments in no batch (and not still open, not dropped duplicates).
    pub lost: usize,
    /// Fragments found in more than one batch.
    pub duplicated: usize,
    /// Batch fragments whose bytes match no input fragment.
    pub altered: usize,
    /// Batch ids that appear more than once.
    pub repeated_batch_ids: usize,
    /// Fragments younger than max wait + grace, in no batch yet.
    pub still_open: usize,
    /// Fragments whose event id was seen earlier, in no batch (dropped as duplicates).
    pub dropped_duplicates: usize,
    /// Invalid input messages in range.
    pub invalid_in: usize,
    /// Chat signals in range (valid input that is never part of a batch).
    pub signals_in: usize,
    /// Of those, found in the dead-letter topic.
    pub dead_lettered: usize,
    /// Batches read.
    pub batches: usize,
    /// Batches breaking the configured boundaries (gap > quiet, span > max wait, caps).
    pub boundary_violations: usize,
    /// Flush time minus last fragment time, percentiles in ms: p50, p99, max.
    pub latency_ms: (i64, i64, i64),
    /// A few examples of each problem, for the operator.
    pub examples: Vec<String>,
}

impl VerifyReport {
    /// No loss, no duplicate, no alteration, and every invalid message dead-lettered.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.altered == 0
            && self.repeated_batch_ids == 0
            && self.dead_lettered == self.invalid_in
    }
}

/// Why the audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Kafka could not be read.
    #[error("cannot read Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic did not reach its end in time.
    #[error("timed out reading {0}")]
    Timeout(String),
}

struct Input {
    offset: i64,
    key: Option<String>,
    value: Vec<u8>,
    ts: i64,
    event_id: Option<String>,
    valid: bool,
    /// A chat signal: valid input, never in a batch.
    signal: bool,
    /// A `typing` signal.
    typing: bool,
    /// An `edit`/`delete` signal: in no batch when its target was open, else a batch of one.
    amend: bool,
}

/// A fragment's `channel`, if it has one.
#[derive(Deserialize)]
struct ChannelView {
    channel: Option<String>,
}

#[derive(Deserialize)]
struct BatchView<'a> {
    batch_id: String,
    key: String,
    reason: String,
    flushed_at: i64,
    source: SourceView,
    #[serde(borrow)]
    fragments: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct SourceView {
    partition: i32,
    first_offset: i64,
    last_offset: i64,
}

/// The `p`-th percentile (nearest rank) of an ascending slice; 0 when empty.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Audits the configured topics.
pub fn run(config: &Config, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let timeout = opts.read_timeout.unwrap_or(Duration::from_secs(60));
    // Input: the window asked for. Output and DLQ are stamped at flush time, never before their
    // fragments: from the window's start to their end (a backlog may flush a window's batches
    // long after it).
    let input = Span {
        from_ms: opts.from_ms,
        to_ms: opts.to_ms,
    };
    let output = Span {
        from_ms: opts.from_ms,
        to_ms: None,
    };
    let progress = opts.progress.as_ref();
    let inputs_raw = read_all(config, &config.input_topic, input, timeout, progress)?;
    let outputs = read_all(config, &config.output_topic, output, timeout, progress)?;
    let dead = read_all(config, &config.dlq_topic, output, timeout, progress)?;

    // Input, per partition, in offset order.
    let mut inputs: BTreeMap<i32, Vec<Input>> = BTreeMap::new();
    for m in &inputs_raw {
        let ts = m.timestamp().to_millis().unwrap_or(0);
        let event_header = m
            .headers()
            .and_then(|h| crate::io::headers::last_value(h.as_borrowed(), b"event_id"));
        let parsed = fragment::parse(
            RawMessage {
                key: m.key(),
                value: m.payload(),
                event_id_header: event_header,
                offset: m.offset(),
                ts,
            },
            &config.rules(),
        );
        let typing = matches!(
            &parsed,
            Ok(fragment::Parsed::Signal(s)) if s.kind == fragment::SignalKind::Typing
        );
        let (key, event_id, valid, signal) = match &parsed {
            Ok(fragment::Parsed::Fragment(f)) => (
                Some(f.key.to_string()),
                f.event_id().map(str::to_string),
                true,
                false,
            ),
            Ok(fragment::Parsed::Signal(s)) => (Some(s.key.clone()), None, false, true),
            Ok(fragment::Parsed::Amend(a)) => (Some(a.message.key.to_string()), None, false, true),
            Err(_) => (None, None, false, false),
        };
        let amend = matches!(&parsed, Ok(fragment::Parsed::Amend(_)));
        inputs.entry(m.partition()).or_default().push(Input {
            offset: m.offset(),
            key,
            value: m.payload().unwrap_or_default().to_vec(),
            ts,
            event_id,
            valid,
            signal,
            typing,
            amend,
        });
    }
    for list in inputs.values_mut() {
        list.sort_by_key(|i| i.offset);
    }
    let in_range =
        |ts: i64| opts.from_ms.is_none_or(|f| ts >= f) && opts.to_ms.is_none_or(|t| ts < t);
    // With a time window only part of the input was read: the offsets read, per partition. A batch
    // reaching outside them straddles the window's edge and can only be checked in part.
    let windowed = opts.from_ms.is_some() || opts.to_ms.is_some();
    let read: HashMap<i32, (i64, i64)> = inputs
        .iter()
        .filter_map(|(&p, list)| Some((p, (list.first()?.offset, list.last()?.offset))))
        .collect();
    let straddles = |p: i32, first: i64, last: i64| {
        windowed && read.get(&p).is_none_or(|&(lo, hi)| first < lo || last > hi)
    };

    // Typing signals per (partition, key): they may hold a window open past the quiet period.
    let typing_ms = config.typing.as_millis() as i64;
    let mut typing: HashMap<(i32, &str), Vec<i64>> = HashMap::new();
    for (&p, list) in &inputs {
        for i in list.iter().filter(|i| i.signal && i.typing) {
            if let Some(k) = i.key.as_deref() {
                typing.entry((p, k)).or_default().push(i.ts);
            }
        }
    }

    // Valid input of each (partition, key), in offset order: a batch's candidates are a range.
    let mut by_key: HashMap<(i32, &str), Vec<&Input>> = HashMap::new();
    for (&p, list) in &inputs {
        for i in list.iter().filter(|i| i.valid || i.amend) {
            if let Some(k) = i.key.as_deref() {
                by_key.entry((p, k)).or_default().push(i);
            }
        }
    }
    let mut report = VerifyReport::default();
    let mut matched: HashMap<(i32, i64), usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut latency = Vec::new();
    let quiet = config.quiet.as_millis() as i64;
    let max_wait = config.max_wait.as_millis() as i64;
    for m in &outputs {
        let Some(payload) = m.payload() else {
            continue;
        };
        let Ok(b) = serde_json::from_slice::<BatchView<'_>>(payload) else {
            report.altered += 1;
            report.examples.push(format!(
                "output {}/{}: not a batch",
                m.partition(),
                m.offset()
            ));
            continue;
        };
        report.batches += 1;
        *ids.entry(b.batch_id.clone()).or_default() += 1;
        let candidates: &[&Input] = by_key
            .get(&(b.source.partition, b.key.as_str()))
            .map(|list| {
                let lo = list.partition_point(|i| i.offset < b.source.first_offset);
                let hi = list.partition_point(|i| i.offset <= b.source.last_offset);
                &list[lo..hi]
            })
            .unwrap_or(&[]);
        let partial = straddles(
            b.source.partition,
            b.source.first_offset,
            b.source.last_offset,
        );
        let mut next = 0;
        let mut times = Vec::new();
        let mut bytes = 0;
        for frag in &b.fragments {
            let original = unchanged(frag.get());
            let want = original.as_bytes();
            bytes += want.len();
            let found = candidates[next.min(candidates.len())..]
                .iter()
                .position(|c| c.value.trim_ascii() == want);
            match found {
                Some(k) => {
                    let c = candidates[next + k];
                    next += k + 1;
                    times.push(c.ts);
                    *matched.entry((b.source.partition, c.offset)).or_default() += 1;
                }
                // Its input lies outside the window read.
                None if partial => {}
                None => {
                    report.altered += 1;
                    if report.examples.len() < 20 {
                        report
                            .examples
                            .push(format!("{}: a fragment matches no input", b.batch_id));
                    }
                }
            }
        }
        if partial {
            continue;
        }
        if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
            latency.push(b.flushed_at - last);
            // A gap longer than the quiet period is right where a typing signal held the window.
            let typing_of = typing.get(&(b.source.partition, b.key.as_str()));
            // A window keeps its first fragment's channel settings.
            let channel = b
                .fragments
                .first()
                .and_then(|f| serde_json::from_str::<ChannelView>(f.get()).ok())
                .and_then(|v| v.channel)
                .map(|c| crate::model::fragment::channel_name(&c))
                .and_then(|name| config.channels.iter().find(|c| c.name == name));
            let quiet = channel
                .and_then(|c| c.quiet)
                .map_or(quiet, |d| d.as_millis() as i64);
            let max_wait = channel
                .and_then(|c| c.max_wait)
                .map_or(max_wait, |d| d.as_millis() as i64);
            let max_fragments = channel
                .and_then(|c| c.max_fragments)
                .unwrap_or(config.max_fragments);
            let typing_ms = channel
                .and_then(|c| c.typing)
                .map_or(typing_ms, |d| d.as_millis() as i64);
            let held_until = |from: i64, to: i64| {
                typing_of
                    .into_iter()
                    .flatten()
                    .filter(|s| **s >= from && **s <= to)
                    .map(|s| s + typing_ms)
                    .max()
                    .unwrap_or(i64::MIN)
            };
            let gap_ok = config.timestamp == TimestampSource::Arrival
                || times
                    .windows(2)
                    .all(|w| w[1] - w[0] <= quiet || w[1] <= held_until(w[0], w[1]));
            let span_ok = last - first <= max_wait;
            let caps_ok = b.fragments.len() <= max_fragments
                && (bytes <= config.max_batch_bytes || b.fragments.len() == 1);
            let passthrough_ok = b.reason != "passthrough" || b.fragments.len() == 1;
            if !(gap_ok && span_ok && caps_ok && passthrough_ok) {
                report.boundary_violations += 1;
                if report.examples.len() < 20 {
                    report
                        .examples
                        .push(format!("{}: breaks the configured boundaries", b.batch_id));
                }
            }
        }
    }
    report.repeated_batch_ids = ids.values().filter(|&&n| n > 1).count();

    let dead_letters: HashSet<(i32, i64)> = dead
        .iter()
        .filter_map(|m| {
            let h = m.headers()?.as_borrowed();
            let get = |name: &str| {
                crate::io::headers::last_value(h, name.as_bytes())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            Some((
                get("x-original-partition")? as i32,
                get("x-original-offset")?,
            ))
        })
        .collect();

    let open_after = now_ms() - max_wait - config.grace.as_millis() as i64 - 5_000;
    for (&p, list) in &inputs {
        let mut seen_events: HashSet<&str> = HashSet::new();
        for i in list {
            let first_sighting = i.event_id.as_deref().is_none_or(|e| seen_events.insert(e));
            if !in_range(i.ts) {
                continue;
            }
            if i.signal {
                report.signals_in += 1;
                continue;
            }
            if !i.valid {
                report.invalid_in += 1;
                if dead_letters.contains(&(p, i.offset)) {
                    report.dead_lettered += 1;
                } else if report.examples.len() < 20 {
                    report
                        .examples
                        .push(format!("{p}/{}: invalid but not in the DLQ", i.offset));
                }
                continue;
            }
            report.fragments_in += 1;
            match matched.get(&(p, i.offset)).copied().unwrap_or(0) {
                0 if !first_sighting => report.dropped_duplicates += 1,
                0 if i.ts > open_after => report.still_open += 1,
                0 => {
                    report.lost += 1;
                    if report.examples.len() < 20 {
                        report
                            .examples
                            .push(format!("{p}/{}: in no batch", i.offset));
                    }
                }
                1 => report.in_batches += 1,
                _ => {
                    report.duplicated += 1;
                    if report.examples.len() < 20 {
                        report
                            .examples
                            .push(format!("{p}/{}: in more than one batch", i.offset));
                    }
                }
            }
        }
    }
    latency.sort_unstable();
    report.latency_ms = (
        percentile(&latency, 50.0),
        percentile(&latency, 99.0),
        latency.last().copied().unwrap_or(0),
    );
    Ok(report)
}

/// A batch's fragment entry as it was typed: without the `"edited"` or `"deleted"` member lull
/// adds to a fragment an `edit`/`delete` changed in place (the entry's last member).
fn unchanged(entry: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = entry.trim_end();
    if let Some(body) = trimmed.strip_suffix(",\"deleted\":true}") {
        return format!("{body}}}").into();
    }
    if let Some(body) = trimmed.strip_suffix("{\"deleted\":true}") {
        return format!("{body}{{}}").into();
    }
    if let Some(at) = trimmed.rfind("\"edited\":") {
        let rest = &trimmed[at + "\"edited\":".len()..];
        if let Some(text) = rest.strip_suffix('}') {
            if serde_json::from_str::<String>(text).is_ok() {
                let before = &trimmed[..at];
                let body = before.strip_suffix(',').unwrap_or(before);
                return format!("{body}}}").into();
            }
        }
    }
    entry.into()
}

/// Parses `--from`/`--to`: Unix milliseconds or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map(crate::model::wire::unix_ms)
        .map_err(|e| format!("{s}: expected Unix milliseconds or an RFC 3339 time ({e})"))
}
