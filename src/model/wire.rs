//! The wire formats lull writes: the batch message and the dead-letter message.
//!
//! Both are pure functions from what lull holds to a [`Record`] ready for the producer, so the
//! contract (README "Output", "Input"; ARCHITECTURE.md) is pinned down by unit tests here.
//! Fragment values are copied into the batch byte-for-byte, never re-serialised.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::fragment::{Change, Fragment};
use crate::model::state::{self, FlushedRecord, PartitionRecord};
use crate::model::window::{Batch, Follows, Opened};

/// One header as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// The name, as bytes.
    pub name: Vec<u8>,
    /// The value; `None` for a null header (not the same as an empty one).
    pub value: Option<Vec<u8>>,
}

impl RawHeader {
    /// A header with a UTF-8 name and a value (lull's own headers).
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            value: Some(value.into()),
        }
    }
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The output topic (a batch).
    Output,
    /// The dead-letter topic (invalid input).
    DeadLetter,
    /// The lifecycle events topic (`LULL_EVENTS_TOPIC`).
    Events,
    /// The state topic (`LULL_STATE_TOPIC`, exactly_once), at the input partition's number.
    State,
}

/// One message to produce, with the lowest input offset it covers (for the commit point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Which topic it goes to.
    pub destination: Destination,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub payload: Option<Vec<u8>>,
    /// Message headers, in order.
    pub headers: Vec<RawHeader>,
    /// Lowest input offset this record covers: the commit point cannot pass it until acked.
    pub first_offset: i64,
    /// Number of input fragments this record covers.
    pub fragments: usize,
}

/// Unix milliseconds of a system time (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `{topic}/{partition}/{first_offset}`: the deterministic id of a batch.
pub fn batch_id(topic: &str, partition: i32, first_offset: i64) -> String {
    format!("{topic}/{partition}/{first_offset}")
}

fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn push_num(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(n.to_string().as_bytes());
}

/// A fragment's original JSON object with the change's member added: `"edited":"<new text>"` or
/// `"deleted":true` (every original member kept as it was).
fn push_changed(buf: &mut Vec<u8>, value: &[u8], change: &Change) {
    let trimmed = value.trim_ascii_end();
    let Some(body) = trimmed.strip_suffix(b"}") else {
        // Every fragment is a JSON object; this is never reached.
        buf.extend_from_slice(value);
        return;
    };
    buf.extend_from_slice(body);
    if body.trim_ascii_end() != b"{" {
        buf.push(b',');
    }
    match change {
        Change::Edited(text) => {
            buf.extend_from_slice(b"\"edited\":");
            push_json_str(buf, text);
        }
        Change::Deleted => buf.extend_from_slice(b"\"deleted\":true"),
    }
    buf.push(b'}');
}

/// Encodes a batch as the output message (README, "Output").
pub fn encode_batch(batch: &Batch, topic: &str, partition: i32, flushed_at: i64) -> Record {
    let id = batch_id(topic, partition, batch.first_offset());
    let count = batch.fragments.len();
    let mut buf = Vec::with_capacity(256 + batch.bytes() * 2);
    buf.extend_from_slice(b"{\"batch_id\":");
    push_json_str(&mut buf, &id);
    buf.extend_from_slice(b",\"key\":");
    push_json_str(&mut buf, &batch.key);
    buf.extend_from_slice(b",\"count\":");
    push_num(&mut buf, count as i64);
    buf.extend_from_slice(b",\"reason\":\"");
    buf.extend_from_slice(batch.reason.as_str().as_bytes());
    buf.push(b'"');
    for (name, link) in [("follows", &batch.follows), ("amends", &batch.amends)] {
        if let Some(link) = link {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\":");
            match link {
                Follows::Offset(o) => push_json_str(&mut buf, &batch_id(topic, partition, *o)),
                Follows::Id(id) => push_json_str(&mut buf, id),
            }
        }
    }
    buf.extend_from_slice(b",\"first_ts\":");
    push_num(&mut buf, batch.first_ts);
    buf.extend_from_slice(b",\"last_ts\":");
    push_num(&mut buf, batch.last_ts);
    buf.extend_from_slice(b",\"flushed_at\":");
    push_num(&mut buf, flushed_at);
    buf.extend_from_slice(b",\"source\":{\"topic\":");
    push_json_str(&mut buf, topic);
    buf.extend_from_slice(b",\"partition\":");
    push_num(&mut buf, i64::from(partition));
    buf.extend_from_slice(b",\"first_offset\":");
    push_num(&mut buf, batch.first_offset());
    buf.extend_from_slice(b",\"last_offset\":");
    push_num(&mut buf, batch.last_offset());
    buf.extend_from_slice(b"},\"fragments\":[");
    let change_of = |i: usize| {
        batch
            .changes
            .iter()
            .find(|(at, _)| *at == i)
            .map(|(_, c)| c)
    };
    for (i, f) in batch.fragments.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        match change_of(i) {
            None => buf.extend_from_slice(f.value()),
            Some(change) => push_changed(&mut buf, f.value(), change),
        }
    }
    buf.push(b']');
    // Only when every fragment left has one (each read once: a field is checked as UTF-8 when
    // read): an edited fragment's text is its edit, a deleted one is left out.
    let texts = batch
        .fragments
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match change_of(i) {
            Some(Change::Deleted) => None,
            Some(Change::Edited(text)) => Some(Some(&**text)),
            None => Some(f.text()),
        })
        .collect::<Option<Vec<&str>>>();
    if let Some(text) = texts.filter(|t| !t.is_empty() || batch.changes.is_empty()) {
        buf.extend_from_slice(b",\"text\":");
        push_json_str(&mut buf, &text.join("\n"));
    }
    buf.push(b'}');

    let mut headers = vec![
        RawHeader::new("lull-batch-id", id),
        RawHeader::new("lull-count", count.to_string()),
    ];
    if let Some(cid) = batch.fragments.first().and_then(Fragment::correlation_id) {
        headers.push(RawHeader::new("correlation_id", cid));
    }
    Record {
        destination: Destination::Output,
        key: Some(batch.key.as_bytes().to_vec()),
        payload: Some(buf),
        headers,
        first_offset: batch.first_offset(),
        fragments: count,
    }
}

/// A window opened: `{"event":"opened","key","batch_id","at","close_at"}`, plus `"follows"` (the
/// key's previous batch id) when the window follows it within the follow-up window; keyed by the
/// user, covering the window's first offset until acknowledged.
pub fn encode_opened(opened: &Opened, topic: &str, partition: i32, at: i64) -> Record {
    let mut value = serde_json::json!({
        "event": "opened",
        "key": &*opened.key,
        "batch_id": batch_id(topic, partition, opened.first_offset),
        "at": at,
        "close_at": opened.flush_at,
    });
    if let Some(follows) = &opened.follows {
        value["follows"] = serde_json::Value::String(match follows {
            Follows::Offset(o) => batch_id(topic, partition, *o),
            Follows::Id(id) => id.to_string(),
        });
    }
    event_record(&opened.key, value, opened.first_offset)
}

/// A batch acknowledged: `{"event":"flushed","key","batch_id","at","reason","count"}`.
pub fn encode_flushed(
    key: &str,
    batch_id: &str,
    first_offset: i64,
    at: i64,
    reason: &str,
    count: usize,
) -> Record {
    let value = serde_json::json!({
        "event": "flushed",
        "key": key,
        "batch_id": batch_id,
        "at": at,
        "reason": reason,
        "count": count,
    });
    event_record(key, value, first_offset)
}

fn event_record(key: &str, value: serde_json::Value, first_offset: i64) -> Record {
    Record {
        destination: Destination::Events,
        key: Some(key.as_bytes().to_vec()),
        payload: Some(value.to_string().into_bytes()),
        headers: Vec::new(),
        first_offset,
        fragments: 0,
    }
}

/// A key's flushed record for the state topic (exactly_once), written with its batch; it holds
/// the batch's `first_offset` like the batch does.
pub fn encode_state_record(key: &str, record: &FlushedRecord, first_offset: i64) -> Record {
    state_record(key.as_bytes(), Some(state::encode(record)), first_offset)
}

/// Deletes a key's record from the state topic (a tombstone: a key and no value).
pub fn encode_state_tombstone(key: &str) -> Record {
    state_record(key.as_bytes(), None, i64::MAX)
}

/// The partition record of the state topic.
pub fn encode_partition_record(record: &PartitionRecord) -> Record {
    state_record(state::PARTITION_KEY, Some(state::encode(record)), i64::MAX)
}

fn state_record(key: &[u8], payload: Option<Vec<u8>>, first_offset: i64) -> Record {
    Record {
        destination: Destination::State,
        key: Some(key.to_vec()),
        payload,
        headers: Vec::new(),
        first_offset,
        fragments: 0,
    }
}

/// What the dead-letter message is made of: the original message and why it was refused.
#[derive(Debug, Clone, Copy)]
pub struct Rejected<'a> {
    /// Original key, unchanged.
    pub key: Option<&'a [u8]>,
    /// Original value, unchanged.
    pub value: Option<&'a [u8]>,
    /// Original headers, carried over before lull's own.
    pub headers: &'a [RawHeader],
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Why it was refused.
    pub error: &'a str,
    /// When it was refused.
    pub failed_at: SystemTime,
}

/// The headers lull adds to a dead letter; an incoming header of the same name is replaced (see
/// [`encode_dead_letter`]).
pub const DEAD_LETTER_HEADERS: [&str; 5] = [
    "x-error-message",
    "x-original-topic",
    "x-original-partition",
    "x-original-offset",
    "x-failed-at",
];

/// Encodes a refused message for the dead-letter topic with its headers (README, "Input").
///
/// Every original header is kept as it came, in order (name bytes, value or null), except one
/// that carries the very name of a header lull adds: a message dead-lettered twice (read back
/// from a DLQ and fed in again) would otherwise carry two `x-original-offset`s, and a consumer
/// reading "the" header (the last, in Kafka's convention) could not tell which is current. lull's
/// own five headers come last.
pub fn encode_dead_letter(r: Rejected<'_>) -> Record {
    let mut headers: Vec<RawHeader> = r
        .headers
        .iter()
        .filter(|h| !DEAD_LETTER_HEADERS.iter().any(|n| h.name == n.as_bytes()))
        .cloned()
        .collect();
    let failed_at = humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(unix_ms(r.failed_at).max(0) as u64),
    )
    .to_string();
    let [error, topic, partition, offset, at] = DEAD_LETTER_HEADERS;
    headers.push(RawHeader::new(error, r.error));
    headers.push(RawHeader::new(topic, r.topic));
    headers.push(RawHeader::new(partition, r.partition.to_string()));
    headers.push(RawHeader::new(offset, r.offset.to_string()));
    headers.push(RawHeader::new(at, failed_at));
    Record {
        destination: Destination::DeadLetter,
        key: r.key.map(<[u8]>::to_vec),
        payload: r.value.map(<[u8]>::to_vec),
        headers,
        first_offset: r.offset,
        fragments: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fragment::Fields;
    use crate::model::window::FlushReason;
    use std::sync::Arc;

    fn frag(offset: i64, ts: i64, value: &str, text: Option<&str>) -> Fragment {
        let fields = Fields {
            text,
            correlation_id: (offset == 1042).then_some("corr-1"),
            event_id: None,
        };
        Fragment::new("user-42", offset, ts, value.as_bytes(), fields)
    }

    #[test]
    fn batch_matches_the_design_example() {
        let batch = Batch {
            key: Arc::from("user-42"),
            reason: FlushReason::Quiet,
            first_ts: 1764000000000,
            last_ts: 1764000001800,
            close_time: 1764000003800,
            follows: None,
            amends: None,
            changes: Vec::new(),
            fragments: vec![
                frag(1042, 1764000000000, r#"{"text":"hi", "n":1}"#, Some("hi")),
                frag(
                    1045,
                    1764000000900,
                    r#"{"text":"I need help"}"#,
                    Some("I need help"),
                ),
                frag(
                    1049,
                    1764000001800,
                    r#"{"text":"with my order #123"}"#,
                    Some("with my order #123"),
                ),
            ],
        };
        let rec = encode_batch(&batch, "chat.fragments", 3, 1764000003810);
        let v: serde_json::Value = serde_json::from_slice(rec.payload.as_ref().unwrap()).unwrap();
        assert_eq!(v["batch_id"], "chat.fragments/3/1042");
        assert_eq!(v["key"], "user-42");
        assert_eq!(v["count"], 3);
        assert_eq!(v["reason"], "quiet");
        assert_eq!(v["first_ts"], 1764000000000i64);
        assert_eq!(v["last_ts"], 1764000001800i64);
        assert_eq!(v["flushed_at"], 1764000003810i64);
        assert_eq!(v["source"]["topic"], "chat.fragments");
        assert_eq!(v["source"]["partition"], 3);
        assert_eq!(v["source"]["first_offset"], 1042);
        assert_eq!(v["source"]["last_offset"], 1049);
        assert_eq!(v["text"], "hi\nI need help\nwith my order #123");
        assert_eq!(v["fragments"][0]["n"], 1);
        let raw = String::from_utf8(rec.payload.unwrap()).unwrap();
        assert!(
            raw.contains(r#"[{"text":"hi", "n":1},"#),
            "bytes kept unchanged: {raw}"
        );
        assert_eq!(rec.key.as_deref(), Some(&b"user-42"[..]));
        assert_eq!(
            rec.headers[0],
            RawHeader::new("lull-batch-id", "chat.fragments/3/1042")
        );
        assert_eq!(rec.headers[1], RawHeader::new("lull-count", "3"));
        assert_eq!(rec.headers[2], RawHeader::new("correlation_id", "corr-1"));
        assert_eq!(rec.first_offset, 1042);
    }

    #[test]
    fn text_is_absent_unless_every_fragment_has_one() {
        let batch = Batch {
            key: Arc::from("u\"1"),
            reason: FlushReason::Passthrough,
            first_ts: 1,
            last_ts: 1,
            close_time: 1,
            follows: Some(crate::model::window::Follows::Offset(0)),
            amends: None,
            changes: Vec::new(),
            fragments: vec![
                frag(1, 1, r#"{"text":"a"}"#, Some("a")),
                frag(2, 1, "{}", None),
            ],
        };
        let rec = encode_batch(&batch, "t", 0, 5);
        let v: serde_json::Value = serde_json::from_slice(rec.payload.as_ref().unwrap()).unwrap();
        assert!(v.get("text").is_none());
        assert_eq!(v["key"], "u\"1");
        assert_eq!(
            rec.headers.len(),
            2,
            "no correlation_id on the first fragment"
        );
    }

    #[test]
    fn dead_letter_keeps_the_original_and_adds_the_headers() {
        let original = vec![
            RawHeader::new("trace", "t-1"),
            RawHeader::new("x-tenant", "acme"),
            RawHeader {
                name: vec![0xff, 0xfe, b'j', b'u', b'n', b'k'],
                value: None,
            },
            RawHeader::new("x-original-offset", "3"),
        ];
        let rec = encode_dead_letter(Rejected {
            key: Some(b"k"),
            value: Some(b"not json"),
            headers: &original,
            topic: "chat.fragments",
            partition: 2,
            offset: 77,
            error: "value is not valid JSON",
            failed_at: UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
        });
        assert_eq!(rec.destination, Destination::DeadLetter);
        assert_eq!(rec.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(rec.payload.as_deref(), Some(&b"not json"[..]));
        assert_eq!(
            &rec.headers[..3],
            &original[..3],
            "original headers first, as they came: x- names, odd bytes and null values too"
        );
        assert_eq!(
            rec.headers.len(),
            3 + 5,
            "the incoming x-original-offset is replaced"
        );
        let h: std::collections::HashMap<_, _> = rec
            .headers
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(&h.name).into_owned(),
                    String::from_utf8(h.value.clone().unwrap_or_default()).unwrap(),
                )
            })
            .collect();
        assert_eq!(h["x-error-message"], "value is not valid JSON");
        assert_eq!(h["x-original-topic"], "chat.fragments");
        assert_eq!(h["x-original-partition"], "2");
        assert_eq!(h["x-original-offset"], "77");
        assert_eq!(h["x-failed-at"], "2025-11-24T16:00:00.123Z");
        assert_eq!(rec.first_offset, 77);
    }

    #[test]
    fn changed_fragments_keep_their_value_and_gain_edited_or_deleted() {
        let batch = Batch {
            key: Arc::from("u1"),
            reason: FlushReason::Quiet,
            first_ts: 1,
            last_ts: 3,
            close_time: 3,
            follows: None,
            amends: None,
            changes: vec![(0, Change::Edited("hello".into())), (1, Change::Deleted)],
            fragments: vec![
                frag(1, 1, r#"{"text":"helo","event_id":"e1"} "#, Some("helo")),
                frag(2, 2, r#"{"text":"oops"}"#, Some("oops")),
                frag(3, 3, r#"{"text":"there"}"#, Some("there")),
            ],
        };
        let rec = encode_batch(&batch, "t", 0, 9);
        let v: serde_json::Value = serde_json::from_slice(rec.payload.as_ref().unwrap()).unwrap();
        assert_eq!(
            v["fragments"],
            serde_json::json!([
                {"text":"helo","event_id":"e1","edited":"hello"},
                {"text":"oops","deleted":true},
                {"text":"there"}
            ])
        );
        assert_eq!(v["text"], "hello\nthere");

        let alone = Batch {
            reason: FlushReason::Edit,
            amends: Some(crate::model::window::Follows::Offset(0)),
            changes: Vec::new(),
            fragments: vec![frag(
                5,
                5,
                r#"{"signal":"edit","target":"e1","text":"hi"}"#,
                Some("hi"),
            )],
            ..batch
        };
        let rec = encode_batch(&alone, "t", 0, 9);
        let v: serde_json::Value = serde_json::from_slice(rec.payload.as_ref().unwrap()).unwrap();
        assert_eq!(
            (v["reason"].as_str(), v["amends"].as_str()),
            (Some("edit"), Some("t/0/0"))
        );
    }
}
