//! The stale-record rule, on the Rust side: what a key's `flushed:` record or an `event:` key
//! read back from Redis says of a fragment. `lua/flush.lua` applies the same rule where a write
//! must depend on it atomically (keep the two alike).
//!
//! A key's flushed record (topic id, partition, offset, last_ts) says "input of this key up to
//! offset was emitted". It is used — to skip input — only if it can describe this log: the same
//! partition, the same topic id when both are known, an offset below the high watermark when an
//! identity is unknown (with identities on both sides the high watermark is not trusted: it steps
//! back for a moment when a partition's leader changes), and input no newer than the record's last
//! fragment by more than the tolerance (another log under the same name, e.g. a replaced dev
//! cluster). Anything else is ignored, never trusted, so a recreated topic can never lose
//! fragments.

/// A key's `flushed:` record as read (`HMGET topic_id partition offset last_ts batch_id`); every
/// field absent when there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The input topic's identity it was written under.
    pub topic_id: Option<String>,
    /// The input partition.
    pub partition: Option<i32>,
    /// The last offset of the key emitted.
    pub offset: Option<i64>,
    /// That batch's last fragment timestamp.
    pub last_ts: Option<i64>,
    /// That batch's id.
    pub batch_id: Option<String>,
}

impl Record {
    /// The record from the five fields of its `HMGET`, in order.
    pub fn from_fields(fields: Vec<Option<String>>) -> Self {
        let mut f = fields.into_iter();
        let mut next = || f.next().flatten();
        Record {
            topic_id: next(),
            partition: next().and_then(|p| p.parse().ok()),
            offset: next().and_then(|o| o.parse().ok()),
            last_ts: next().and_then(|t| t.parse().ok()),
            batch_id: next(),
        }
    }
}

/// What a record says of one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Not covered: newer input, or no record of this partition.
    After,
    /// Emitted already.
    Covers,
    /// The record is of another incarnation of the topic.
    OtherTopic,
    /// The record names an offset this log does not have.
    BeyondHigh,
    /// The input is newer than the record's last fragment by more than the tolerance.
    Newer,
}

/// The partition's side of the rule: who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Judge<'a> {
    /// The input partition.
    pub partition: i32,
    /// The live topic's identity ("" when unknown).
    pub topic_id: &'a str,
    /// The partition's high watermark.
    pub high: i64,
    /// How far, in ms, input may lie past a record's last_ts; negative: not compared.
    pub tolerance: i64,
}

impl Judge<'_> {
    /// Whether an identity `tid` names another incarnation of the topic.
    pub fn other_topic(&self, tid: Option<&str>) -> bool {
        tid.is_some_and(|t| !t.is_empty() && !self.topic_id.is_empty() && t != self.topic_id)
    }

    /// Whether the record's or the live topic's identity is unknown.
    fn unknown_identity(&self, tid: Option<&str>) -> bool {
        self.topic_id.is_empty() || tid.is_none_or(str::is_empty)
    }

    /// What `record` says of input at `offset` with timestamp `ts`.
    pub fn judge(&self, record: &Record, offset: i64, ts: i64) -> Judgement {
        let Some(o) = record.offset else {
            return Judgement::After;
        };
        if record.partition != Some(self.partition) {
            return Judgement::After;
        }
        let tid = record.topic_id.as_deref();
        if self.other_topic(tid) {
            return Judgement::OtherTopic;
        }
        if self.unknown_identity(tid) && o >= self.high {
            return Judgement::BeyondHigh;
        }
        if offset > o {
            return Judgement::After;
        }
        if self.tolerance >= 0
            && record
                .last_ts
                .is_some_and(|last| ts > last.saturating_add(self.tolerance))
        {
            return Judgement::Newer;
        }
        Judgement::Covers
    }

    /// The value of an `event:` key for a first sighting at `offset` here.
    pub fn sighting(&self, offset: i64) -> String {
        format!("{}:{}:{offset}", self.topic_id, self.partition)
    }

    /// What an `event:` key's value `seen` (`topic_id:partition:offset`, or `partition:offset`
    /// from before topic ids) says of a fragment at `offset` carrying that event id.
    pub fn sighted(&self, seen: &str, offset: i64) -> Sighted {
        let mut parts = seen.rsplitn(3, ':');
        let (o, p, tid) = (parts.next(), parts.next(), parts.next());
        let o = o.and_then(|o| o.parse::<i64>().ok());
        let p = p.and_then(|p| p.parse::<i32>().ok());
        let stale = self.other_topic(tid)
            || (self.unknown_identity(tid)
                && p == Some(self.partition)
                && o.is_some_and(|o| o >= self.high));
        if stale {
            Sighted::Stale
        } else if p == Some(self.partition) && o == Some(offset) {
            Sighted::Here
        } else {
            Sighted::Elsewhere
        }
    }
}

/// What an `event:` key says of a fragment with its event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighted {
    /// First seen at this very offset: a replay, not a duplicate.
    Here,
    /// First seen at another offset of this log: a producer retry, a duplicate.
    Elsewhere,
    /// Seen in another incarnation of the topic (or at an offset this log does not have): this
    /// fragment is the first sighting here.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    const J: Judge<'static> = Judge {
        partition: 3,
        topic_id: "T",
        high: 100,
        tolerance: 60_000,
    };

    fn record(tid: Option<&str>, p: i32, o: i64, last_ts: i64) -> Record {
        Record {
            topic_id: tid.map(str::to_string),
            partition: Some(p),
            offset: Some(o),
            last_ts: Some(last_ts),
            batch_id: Some("b".into()),
        }
    }

    #[test]
    fn a_record_covers_input_up_to_its_offset_of_its_own_partition_and_topic() {
        let r = record(Some("T"), 3, 50, 1_000);
        assert_eq!(J.judge(&r, 50, 900), Judgement::Covers);
        assert_eq!(J.judge(&r, 51, 900), Judgement::After);
        assert_eq!(
            J.judge(&record(Some("T"), 4, 50, 1_000), 10, 900),
            Judgement::After
        );
        assert_eq!(J.judge(&Record::default(), 10, 900), Judgement::After);
    }

    #[test]
    fn a_record_that_cannot_describe_this_log_is_ignored() {
        assert_eq!(
            J.judge(&record(Some("U"), 3, 50, 1_000), 10, 900),
            Judgement::OtherTopic
        );
        assert_eq!(
            J.judge(&record(None, 3, 100, 1_000), 10, 900),
            Judgement::BeyondHigh
        );
        assert_eq!(
            J.judge(&record(Some("T"), 3, 100, 1_000), 10, 900),
            Judgement::Covers,
            "with identities on both sides the high watermark is not trusted"
        );
        assert_eq!(
            J.judge(&record(Some("T"), 3, 50, 1_000), 10, 61_001),
            Judgement::Newer
        );
    }

    #[test]
    fn fields_parse_as_redis_returns_them() {
        let r = Record::from_fields(vec![
            Some("T".into()),
            Some("3".into()),
            Some("50".into()),
            Some("1000".into()),
            Some("t/3/40".into()),
        ]);
        assert_eq!(r, record(Some("T"), 3, 50, 1_000).with_id("t/3/40"));
        assert_eq!(Record::from_fields(vec![None; 5]), Record::default());
    }

    impl Record {
        fn with_id(mut self, id: &str) -> Self {
            self.batch_id = Some(id.into());
            self
        }
    }

    #[test]
    fn an_event_sighting_is_read_back_whatever_its_format() {
        assert_eq!(J.sighting(7), "T:3:7");
        assert_eq!(J.sighted("T:3:7", 7), Sighted::Here);
        assert_eq!(J.sighted("T:3:5", 7), Sighted::Elsewhere);
        assert_eq!(J.sighted("U:3:5", 7), Sighted::Stale);
        assert_eq!(
            J.sighted("3:5", 7),
            Sighted::Elsewhere,
            "from before topic ids"
        );
        assert_eq!(
            J.sighted("3:150", 7),
            Sighted::Stale,
            "beyond the high watermark"
        );
        let cluster = Judge {
            topic_id: "cluster:abc",
            ..J
        };
        assert_eq!(cluster.sighted("cluster:abc:3:7", 7), Sighted::Here);
        assert_eq!(cluster.sighted("garbage", 7), Sighted::Elsewhere);
    }
}
