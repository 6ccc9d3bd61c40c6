//! Bytes in -> a [`Fragment`], a chat [`Signal`], or the reason it belongs in the dead-letter
//! topic.
//!
//! A fragment's value is kept byte-for-byte (it is copied into the batch unchanged); the JSON is
//! parsed once here only to check it is an object and to pick out the few fields lull reads:
//! `user_id` (the key when the message has none), `event_id`, `text`, `correlation_id`, `final`
//! (`true`: the client says the thought is complete), `channel` (which per-channel settings its
//! window uses) and `signal` (a string: the message is a chat signal — `typing`, `stopped` or
//! `flush` — never part of a batch).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One valid input message, as the window engine and the sink need it.
///
/// Packed for the thousands an engine holds at once: one heap block holds the value and, after
/// it, any field that had to be unescaped; the fields point into that block (a plain JSON string
/// is read in place inside the value, so most fragments copy nothing but the value).
#[derive(Clone)]
pub struct Fragment {
    /// The grouping key: the Kafka key, else the value's `user_id`. (The engine moves it out
    /// when it stores the fragment: its window holds it once.)
    pub key: Box<str>,
    /// Offset in the input partition.
    pub offset: i64,
    /// Timestamp in Unix milliseconds (Kafka's, or arrival time; possibly clamped by the engine).
    pub ts: i64,
    /// The value, then any unescaped field.
    data: Box<[u8]>,
    /// Where the value ends in `data`.
    value_len: u32,
    text: Span,
    correlation_id: Span,
    event_id: Span,
    /// `"final": true`: its window goes out right after it.
    pub is_final: bool,
    /// Its `text` matches `LULL_BYPASS_PATTERN` (or its channel's): it goes out alone, after its
    /// key's open window.
    pub bypass: bool,
    /// Its `channel` among the configured ones ([`Rules::channels`], counted from 1); 0 = none,
    /// or one without overrides: the global settings.
    pub channel: u8,
}

/// A string field's place in a fragment's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };
}

/// The string fields lull reads from a fragment, as [`Fragment::new`] takes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    /// The `text` field, when it is a string.
    pub text: Option<&'a str>,
    /// The `correlation_id` field, when it is a string.
    pub correlation_id: Option<&'a str>,
    /// The `event_id` header or field, for duplicate detection.
    pub event_id: Option<&'a str>,
}

impl Fragment {
    /// Packs a fragment: the value is copied once; a field that lies inside `value` (borrowed
    /// from it) is pointed at, any other is copied after the value.
    pub fn new(
        key: impl Into<Box<str>>,
        offset: i64,
        ts: i64,
        value: &[u8],
        fields: Fields<'_>,
    ) -> Self {
        let inside = |s: &str| {
            let (start, base) = (s.as_ptr() as usize, value.as_ptr() as usize);
            (start >= base && start + s.len() <= base + value.len()).then(|| start - base)
        };
        let wanted = [fields.text, fields.correlation_id, fields.event_id];
        let extra: usize = wanted
            .iter()
            .flatten()
            .filter(|s| inside(s).is_none())
            .map(|s| s.len())
            .sum();
        let mut data = Vec::with_capacity(value.len() + extra);
        data.extend_from_slice(value);
        let mut spans = [Span::NONE; 3];
        for (span, field) in spans.iter_mut().zip(wanted) {
            let Some(s) = field else { continue };
            let start = match inside(s) {
                Some(at) => at,
                None => {
                    data.extend_from_slice(s.as_bytes());
                    data.len() - s.len()
                }
            };
            // Kafka caps a message far below 4 GiB; a field beyond that is simply not kept.
            if let (Ok(start), Ok(len)) = (u32::try_from(start), u32::try_from(s.len())) {
                if start != u32::MAX {
                    *span = Span { start, len };
                }
            }
        }
        let [text, correlation_id, event_id] = spans;
        Fragment {
            key: key.into(),
            offset,
            ts,
            value_len: u32::try_from(value.len()).unwrap_or(u32::MAX),
            data: data.into_boxed_slice(),
            text,
            correlation_id,
            event_id,
            is_final: false,
            bypass: false,
            channel: 0,
        }
    }

    /// The original JSON value, unchanged.
    pub fn value(&self) -> &[u8] {
        &self.data[..self.value_len as usize]
    }

    /// The `text` field, when it is a string.
    pub fn text(&self) -> Option<&str> {
        self.field(self.text)
    }

    /// The `correlation_id` field, when it is a string.
    pub fn correlation_id(&self) -> Option<&str> {
        self.field(self.correlation_id)
    }

    /// The `event_id` header or field, for duplicate detection.
    pub fn event_id(&self) -> Option<&str> {
        self.field(self.event_id)
    }

    fn field(&self, span: Span) -> Option<&str> {
        if span == Span::NONE {
            return None;
        }
        let start = span.start as usize;
        let bytes = self.data.get(start..start + span.len as usize)?;
        // Always UTF-8: every span was made from a `&str`.
        std::str::from_utf8(bytes).ok()
    }

    /// Bytes this fragment counts against the batch byte cap.
    pub fn size(&self) -> usize {
        self.value_len as usize
    }
}

impl PartialEq for Fragment {
    /// Equal when they read the same, however their fields are packed.
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.offset == other.offset
            && self.ts == other.ts
            && self.value() == other.value()
            && self.text() == other.text()
            && self.correlation_id() == other.correlation_id()
            && self.event_id() == other.event_id()
            && self.is_final == other.is_final
            && self.bypass == other.bypass
            && self.channel == other.channel
    }
}

impl Eq for Fragment {}

impl std::fmt::Debug for Fragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fragment")
            .field("key", &self.key)
            .field("offset", &self.offset)
            .field("ts", &self.ts)
            .field("value", &String::from_utf8_lossy(self.value()))
            .field("text", &self.text())
            .field("correlation_id", &self.correlation_id())
            .field("event_id", &self.event_id())
            .field("is_final", &self.is_final)
            .field("bypass", &self.bypass)
            .field("channel", &self.channel)
            .finish()
    }
}

/// What a chat platform says about a user, on the input topic among the fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignalKind {
    /// The user is composing: the open window is held for `LULL_TYPING_MS`.
    Typing,
    /// The user stopped composing without sending.
    Stopped,
    /// Flush the open window now.
    Flush,
}

impl SignalKind {
    /// The name on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Typing => "typing",
            SignalKind::Stopped => "stopped",
            SignalKind::Flush => "flush",
        }
    }
}

/// A chat signal: never part of a batch, but it moves partition time and can re-time or flush
/// its key's open window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The grouping key.
    pub key: String,
    /// Which signal.
    pub kind: SignalKind,
    /// Offset in the input partition.
    pub offset: i64,
    /// Timestamp in Unix milliseconds.
    pub ts: i64,
}

/// What an `edit` or `delete` signal does to its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The target's text becomes this.
    Edited(Box<str>),
    /// The target is left out of the batch's text.
    Deleted,
}

impl Change {
    /// The signal's name, which is also the reason of a batch of one made of it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Change::Edited(_) => "edit",
            Change::Deleted => "delete",
        }
    }
}

/// An `edit` or `delete` signal: a change to the fragment whose `event_id` is `target`. The
/// message itself is kept as a fragment (its own key, offset, time and bytes): when the target
/// is no longer in an open window, it goes out as a batch of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amend {
    /// The signal message, as a fragment.
    pub message: Fragment,
    /// The `event_id` of the fragment it changes.
    pub target: Box<str>,
    /// What it changes.
    pub change: Change,
}

/// A valid input message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A fragment of a user's burst.
    Fragment(Fragment),
    /// A chat signal.
    Signal(Signal),
    /// An `edit` or `delete` of an earlier fragment.
    Amend(Amend),
}

/// What parsing needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Larger values go to the dead-letter topic.
    pub max_fragment_bytes: usize,
    /// `LULL_BYPASS_PATTERN`: fragments whose `text` matches go out alone.
    pub bypass: Option<regex::Regex>,
    /// The channels with overrides, in order (a fragment's [`Fragment::channel`] is its place
    /// here plus one): each `<NAME>` as the variables spell it, and its own bypass pattern.
    pub channels: Vec<ChannelRule>,
}

/// One channel with overrides, as parsing needs it.
#[derive(Debug, Clone)]
pub struct ChannelRule {
    /// `<NAME>` of `LULL_CHANNEL_<NAME>_*`: the channel upper-cased, `-` as `_`.
    pub name: String,
    /// `LULL_CHANNEL_<NAME>_BYPASS_PATTERN`, when set: it replaces the global pattern.
    pub bypass: Option<regex::Regex>,
}

/// The `<NAME>` a fragment's `channel` value selects: upper-cased, `-` as `_`.
pub fn channel_name(channel: &str) -> String {
    channel.to_ascii_uppercase().replace('-', "_")
}

/// Why a message cannot be a fragment; every variant sends it to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The value is missing or is not JSON at all.
    #[error("value is not valid JSON: {0}")]
    NotJson(String),
    /// The value is JSON but not an object.
    #[error("value is JSON but not an object")]
    NotObject,
    /// Neither a message key nor a string `user_id` field names the user.
    #[error("no key: the message has no key and the value has no string user_id")]
    NoKey,
    /// The message key is not UTF-8.
    #[error("message key is not valid UTF-8")]
    KeyNotUtf8,
    /// A `signal` field names no signal lull knows.
    #[error("unknown signal {0:?} (expected typing, stopped, flush, edit or delete)")]
    UnknownSignal(String),
    /// An `edit` without a string `target` and `text`, or a `delete` without a string `target`.
    #[error("{0} signal without {1}")]
    BadAmend(&'static str, &'static str),
    /// The value is larger than `LULL_MAX_FRAGMENT_BYTES`.
    #[error("value is {size} bytes, over LULL_MAX_FRAGMENT_BYTES ({limit})")]
    TooLarge {
        /// The value's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl Invalid {
    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Invalid::NotJson(_) => "not_json",
            Invalid::NotObject => "not_object",
            Invalid::NoKey => "no_key",
            Invalid::KeyNotUtf8 => "key_not_utf8",
            Invalid::TooLarge { .. } => "too_large",
            Invalid::UnknownSignal(_) => "unknown_signal",
            Invalid::BadAmend(..) => "bad_amend",
        }
    }
}

/// The fields lull reads; anything else in the object is ignored (and kept in the raw bytes).
///
/// A field may appear more than once (JSON allows it; RFC 8259 leaves the meaning open): the
/// last one wins, as in JavaScript's `JSON.parse`, so such a value is a fragment, not a dead
/// letter.
#[derive(Default)]
struct Probe<'a> {
    user_id: Option<&'a RawValue>,
    event_id: Option<&'a RawValue>,
    text: Option<&'a RawValue>,
    correlation_id: Option<&'a RawValue>,
    is_final: Option<&'a RawValue>,
    signal: Option<&'a RawValue>,
    channel: Option<&'a RawValue>,
    target: Option<&'a RawValue>,
}

/// The name of an object member, sorted into the few lull reads (borrowed or escaped alike).
enum Field {
    UserId,
    EventId,
    Text,
    CorrelationId,
    Final,
    Signal,
    Channel,
    Target,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Field, E> {
                Ok(match name {
                    "user_id" => Field::UserId,
                    "event_id" => Field::EventId,
                    "text" => Field::Text,
                    "correlation_id" => Field::CorrelationId,
                    "final" => Field::Final,
                    "signal" => Field::Signal,
                    "channel" => Field::Channel,
                    "target" => Field::Target,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(Names)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Probe<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Members<'a> {
            type Value = Probe<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Probe<'a>, M::Error> {
                let mut probe = Probe::default();
                while let Some(field) = map.next_key::<Field>()? {
                    let slot = match field {
                        Field::UserId => &mut probe.user_id,
                        Field::EventId => &mut probe.event_id,
                        Field::Text => &mut probe.text,
                        Field::CorrelationId => &mut probe.correlation_id,
                        Field::Final => &mut probe.is_final,
                        Field::Signal => &mut probe.signal,
                        Field::Channel => &mut probe.channel,
                        Field::Target => &mut probe.target,
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                Ok(probe)
            }
        }
        d.deserialize_map(Members(std::marker::PhantomData))
    }
}

/// The string inside a raw JSON value, if it is a string: borrowed from the value when it has no
/// escapes (then its bytes are the string's), unescaped into a new one when it has.
fn as_str(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = raw?.get();
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The string inside a raw JSON value, if it is a string, as an owned one.
fn as_string(raw: Option<&RawValue>) -> Option<String> {
    as_str(raw).map(Cow::into_owned)
}

/// What a Kafka message brings that a fragment is made of.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    /// The message key, if any.
    pub key: Option<&'a [u8]>,
    /// The message value, if any.
    pub value: Option<&'a [u8]>,
    /// The `event_id` header, if any.
    pub event_id_header: Option<&'a [u8]>,
    /// Offset in the input partition.
    pub offset: i64,
    /// Timestamp in Unix milliseconds.
    pub ts: i64,
}

/// Validates a message and builds its fragment or signal.
pub fn parse(msg: RawMessage<'_>, rules: &Rules) -> Result<Parsed, Invalid> {
    let value = msg.value.unwrap_or_default();
    if value.len() > rules.max_fragment_bytes {
        return Err(Invalid::TooLarge {
            size: value.len(),
            limit: rules.max_fragment_bytes,
        });
    }
    let first = value.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none() {
        return Err(Invalid::NotJson("empty value".to_string()));
    }
    // Validate the whole document first, so that "not JSON" and "not an object" are told apart.
    let whole: &RawValue =
        serde_json::from_slice(value).map_err(|e| Invalid::NotJson(e.to_string()))?;
    if first != Some(&b'{') {
        return Err(Invalid::NotObject);
    }
    let probe: Probe<'_> =
        serde_json::from_str(whole.get()).map_err(|e| Invalid::NotJson(e.to_string()))?;

    let key = match msg.key.filter(|k| !k.is_empty()) {
        Some(k) => std::str::from_utf8(k)
            .map_err(|_| Invalid::KeyNotUtf8)?
            .to_string(),
        None => as_string(probe.user_id)
            .filter(|k| !k.is_empty())
            .ok_or(Invalid::NoKey)?,
    };
    let mut amend: Option<(Box<str>, Change)> = None;
    if let Some(signal) = as_string(probe.signal) {
        let kind = match signal.as_str() {
            "typing" => SignalKind::Typing,
            "stopped" => SignalKind::Stopped,
            "flush" => SignalKind::Flush,
            "edit" | "delete" => {
                let target = as_string(probe.target).filter(|t| !t.is_empty());
                let name = if signal == "edit" { "edit" } else { "delete" };
                let Some(target) = target else {
                    return Err(Invalid::BadAmend(name, "a string target (an event_id)"));
                };
                let change = if name == "edit" {
                    match as_string(probe.text) {
                        Some(text) => Change::Edited(text.into()),
                        None => return Err(Invalid::BadAmend(name, "a string text")),
                    }
                } else {
                    Change::Deleted
                };
                amend = Some((target.into(), change));
                SignalKind::Flush
            }
            _ => return Err(Invalid::UnknownSignal(signal)),
        };
        if amend.is_none() {
            return Ok(Parsed::Signal(Signal {
                key,
                kind,
                offset: msg.offset,
                ts: msg.ts,
            }));
        }
    }
    let event_id = msg
        .event_id_header
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(Cow::Borrowed)
        .or_else(|| as_str(probe.event_id))
        .filter(|e| !e.is_empty());
    let text = as_str(probe.text);
    let correlation_id = as_str(probe.correlation_id);
    let mut fragment = Fragment::new(
        key,
        msg.offset,
        msg.ts,
        value,
        Fields {
            text: text.as_deref(),
            correlation_id: correlation_id.as_deref(),
            event_id: event_id.as_deref(),
        },
    );
    fragment.is_final = probe.is_final.is_some_and(|v| v.get() == "true");
    let channel = as_str(probe.channel).and_then(|c| {
        let name = channel_name(&c);
        rules.channels.iter().position(|r| r.name == name)
    });
    let bypass = match channel {
        Some(i) => rules.channels[i].bypass.as_ref().or(rules.bypass.as_ref()),
        None => rules.bypass.as_ref(),
    };
    fragment.channel = channel.map_or(0, |i| u8::try_from(i + 1).unwrap_or(0));
    if let Some((target, change)) = amend {
        return Ok(Parsed::Amend(Amend {
            message: fragment,
            target,
            change,
        }));
    }
    fragment.bypass = match (bypass, &text) {
        (Some(pattern), Some(text)) => pattern.is_match(text),
        _ => false,
    };
    Ok(Parsed::Fragment(fragment))
}

#[cfg(test)]
mod tests;
