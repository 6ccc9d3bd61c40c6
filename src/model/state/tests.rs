//! Tests of `state`.

use super::*;
use proptest::prelude::*;

fn record(offset: i64, last_ts: i64) -> FlushedRecord {
    FlushedRecord {
        topic_id: "T".into(),
        partition: 0,
        offset,
        batch_id: format!("in/0/{offset}"),
        last_ts,
    }
}

#[test]
fn records_round_trip_and_the_partition_key_is_no_fragment_key() {
    let r = record(7, 100);
    assert_eq!(
        decode(Some(b"u"), Some(&encode(&r))),
        StateEntry::Flushed("u".into(), r)
    );
    assert_eq!(decode(Some(b"u"), None), StateEntry::Deleted("u".into()));
    let p = PartitionRecord {
        topic_id: "T".into(),
        partition: 0,
        read: 9,
        restore_from: Some(4),
    };
    assert_eq!(
        decode(Some(PARTITION_KEY), Some(&encode(&p))),
        StateEntry::Partition(p)
    );
    assert!(std::str::from_utf8(std::hint::black_box(PARTITION_KEY)).is_err());
    assert_eq!(decode(Some(b"u"), Some(b"nonsense")), StateEntry::Foreign);
    assert_eq!(decode(None, Some(b"{}")), StateEntry::Foreign);
}

#[test]
fn a_record_skips_its_keys_fragments_up_to_its_offset() {
    let mut k = FlushedKeys::new(0, 1_000);
    k.restore(
        StateEntry::Flushed("u".into(), record(7, 100)),
        0,
        Some("T"),
        Some(50),
    )
    .unwrap();
    assert!(k.skips("u", 5));
    assert!(k.skips("u", 7));
    assert!(!k.skips("u", 8));
    assert!(!k.skips("v", 1));
    k.restore(StateEntry::Deleted("u".into()), 1, Some("T"), Some(50))
        .unwrap();
    assert!(!k.skips("u", 5));
}

#[test]
fn records_of_another_log_are_never_used() {
    let mut k = FlushedKeys::new(0, 1_000);
    let other = FlushedRecord {
        topic_id: "OLD".into(),
        ..record(7, 100)
    };
    assert_eq!(
        k.restore(
            StateEntry::Flushed("u".into(), other),
            0,
            Some("T"),
            Some(50)
        ),
        Err(Ignored::OtherTopic)
    );
    assert_eq!(
        k.restore(
            StateEntry::Flushed("v".into(), record(60, 1)),
            0,
            Some("T"),
            Some(50)
        ),
        Err(Ignored::PastTheEnd)
    );
    let elsewhere = FlushedRecord {
        partition: 3,
        ..record(7, 100)
    };
    assert_eq!(
        k.restore(
            StateEntry::Flushed("w".into(), elsewhere),
            0,
            Some("T"),
            Some(50)
        ),
        Err(Ignored::OtherPartition)
    );
    assert!(k.is_empty());
}

#[test]
fn a_record_expires_below_the_commit_and_past_the_horizon_only() {
    let mut k = FlushedKeys::new(0, 1_000);
    k.flushed("a".into(), 10, "in/0/8".into(), 5_000, 0);
    k.flushed("b".into(), 20, "in/0/15".into(), 5_000, 1);
    assert!(k.expired(15, 10_000).iter().map(|s| &**s).eq(["a"]));
    assert!(k.expired(15, 10_000).is_empty(), "b is above the commit");
    // Above the commit now, but its batch is recent: kept for follows.
    assert!(k.expired(30, 5_500).is_empty());
    assert!(k.expired(30, 6_001).iter().map(|s| &**s).eq(["b"]));
    assert!(k.is_empty());
}

#[test]
fn a_newer_record_of_the_same_key_is_never_deleted_for_the_old_one() {
    let mut k = FlushedKeys::new(0, 0);
    k.flushed("a".into(), 10, "in/0/8".into(), 1, 0);
    k.flushed("a".into(), 40, "in/0/30".into(), 2, 1);
    assert!(k.expired(20, 100).is_empty());
    assert!(k.skips("a", 40));
    assert!(k.expired(41, 100).iter().map(|s| &**s).eq(["a"]));
}

mod crash {
    //! The skip rule against the model: a worker that commits at arbitrary points and
    //! crashes at an arbitrary point (everything not committed is lost), then restarts from
    //! its committed offset and state records, makes exactly the batches — ids, contents,
    //! reasons, `follows` — of a run that never crashed.

    use super::*;
    use crate::model::fragment::{Fields, Fragment};
    use crate::model::window::{Batch, Follows, WindowConfig, WindowEngine};

    const FAR: i64 = i64::MAX / 4;

    fn cfg() -> WindowConfig {
        WindowConfig {
            batching: true,
            quiet_ms: 100,
            max_wait_ms: 700,
            max_fragments: 4,
            max_batch_bytes: 10_000,
            grace_ms: 20,
            typing_ms: 0,
            followup_ms: 300,
        }
    }

    fn build(log: &[(u8, i64)]) -> Vec<Fragment> {
        let mut ts = 1_000;
        log.iter()
            .enumerate()
            .map(|(i, &(k, gap))| {
                ts += gap;
                Fragment::new(format!("k{k}"), i as i64, ts, b"{}", Fields::default())
            })
            .collect()
    }

    fn id(offset: i64) -> String {
        format!("t/0/{offset}")
    }

    /// What a downstream reader sees of a batch.
    fn seen(b: &Batch) -> (String, Vec<i64>, &'static str, Option<String>) {
        let follows = b.follows.as_ref().map(|f| match f {
            Follows::Offset(o) => id(*o),
            Follows::Id(s) => s.to_string(),
        });
        (
            id(b.first_offset()),
            b.fragments.iter().map(|f| f.offset).collect(),
            b.reason.as_str(),
            follows,
        )
    }

    /// The committed state: visible batches, the state partition (a log of entries, as
    /// the topic holds them: records, tombstones, partition records), the input offset.
    #[derive(Default, Clone)]
    struct Committed {
        visible: Vec<(String, Vec<i64>, &'static str, Option<String>)>,
        topic: Vec<StateEntry>,
        offset: i64,
    }

    fn record(b: &Batch) -> FlushedRecord {
        FlushedRecord {
            topic_id: "T".into(),
            partition: 0,
            offset: b.last_offset(),
            batch_id: id(b.first_offset()),
            last_ts: b.last_ts,
        }
    }

    /// What a takeover reads: from the last partition record's `restore_from` (the whole log
    /// when there is none) to the end.
    fn takeover(topic: &[StateEntry], keys: &mut FlushedKeys) {
        let from = topic
            .iter()
            .rev()
            .find_map(|e| match e {
                StateEntry::Partition(p) => p.restore_from,
                _ => None,
            })
            .unwrap_or(0);
        for (at, e) in topic.iter().enumerate().skip(from as usize) {
            keys.restore(e.clone(), at as i64, Some("T"), None)
                .expect("own records");
        }
    }

    /// Runs `frags` from `c`'s committed offset with its records, committing where
    /// `commits` says, until `crash` (an index into `frags`) or the end; returns what is
    /// committed then.
    fn run(frags: &[Fragment], mut c: Committed, commits: &[bool], crash: usize) -> Committed {
        let horizon = cfg().followup_ms + cfg().grace_ms;
        let mut engine = WindowEngine::new(cfg());
        let mut keys = FlushedKeys::new(0, horizon);
        takeover(&c.topic, &mut keys);
        for (k, kept) in keys.by_last_ts() {
            engine.seed_follows(k, &kept.batch_id, kept.last_ts);
        }
        let mut out = Vec::new();
        let mut pending: Vec<Batch> = Vec::new();
        let mut next = c.offset;
        let start = usize::try_from(c.offset).expect("offset");
        // A transaction appends its batches' records, the tombstones, then the partition
        // record, and commits with the input offset.
        let commit = |engine: &mut WindowEngine,
                      keys: &mut FlushedKeys,
                      pending: &mut Vec<Batch>,
                      c: &mut Committed,
                      next: i64| {
            let point = engine.low_watermark().map_or(next, |low| low.min(next));
            for b in pending.drain(..) {
                c.topic
                    .push(StateEntry::Flushed(b.key.to_string(), record(&b)));
                c.visible.push(seen(&b));
            }
            for key in keys.expired(point, engine.replay_time().unwrap_or(i64::MIN)) {
                c.topic.push(StateEntry::Deleted(key.to_string()));
            }
            let end = c.topic.len() as i64;
            c.topic.push(StateEntry::Partition(PartitionRecord {
                topic_id: "T".into(),
                partition: 0,
                read: next,
                restore_from: Some(keys.restore_from(end)),
            }));
            c.offset = c.offset.max(point);
        };
        // Where this transaction's records will lie at the earliest: the partition's end now.
        let flushed = |keys: &mut FlushedKeys, c: &Committed, b: &Batch| {
            keys.flushed(
                b.key.clone(),
                b.last_offset(),
                Arc::from(id(b.first_offset())),
                b.last_ts,
                c.topic.len() as i64,
            );
        };
        for (i, f) in frags.iter().enumerate().skip(start) {
            if i >= crash {
                return c;
            }
            if keys.skips(&f.key, f.offset) {
                engine.skip(f.ts, FAR, &mut out);
            } else {
                engine.push(f.clone(), FAR, &mut out);
            }
            next = f.offset + 1;
            for b in out.drain(..) {
                flushed(&mut keys, &c, &b);
                pending.push(b);
            }
            if commits.get(i).copied().unwrap_or(false) {
                commit(&mut engine, &mut keys, &mut pending, &mut c, next);
            }
        }
        engine.advance(FAR, &mut out);
        for b in out.drain(..) {
            flushed(&mut keys, &c, &b);
            pending.push(b);
        }
        commit(&mut engine, &mut keys, &mut pending, &mut c, next);
        c
    }

    proptest! {
        #[test]
        fn a_crash_anywhere_gives_the_same_visible_output(
            log in proptest::collection::vec((0u8..5, 0i64..250), 1..120),
            commits in proptest::collection::vec(any::<bool>(), 120),
            crashes in proptest::collection::vec(0usize..120, 0..4),
        ) {
            let frags = build(&log);
            let never = run(&frags, Committed::default(), &commits, usize::MAX);
            let mut c = Committed::default();
            for crash in crashes {
                c = run(&frags, c, &commits, crash);
            }
            let c = run(&frags, c, &commits, usize::MAX);
            prop_assert_eq!(c.visible, never.visible);
        }
    }
}

proptest! {
    /// Whatever is flushed and whenever the commit moves, a key's record is deleted only once
    /// its offset is below the committed offset and its batch is past the horizon, and a
    /// record that still skips something is never deleted.
    #[test]
    fn expiry_never_deletes_a_record_that_can_still_skip(
        steps in proptest::collection::vec((0u8..4, 0i64..50, 0i64..20), 1..200)
    ) {
        let horizon = 5;
        let mut k = FlushedKeys::new(0, horizon);
        let mut offset = 0i64;
        let mut committed = 0i64;
        let mut time = 0i64;
        let mut model: HashMap<String, (i64, i64)> = HashMap::new();
        for (kind, a, b) in steps {
            match kind {
                0 | 1 => {
                    offset += 1 + a % 3;
                    time += b % 4;
                    let key = format!("k{}", a % 6);
                    k.flushed(Arc::from(key.as_str()), offset, "x".into(), time, offset);
                    model.insert(key, (offset, time));
                }
                _ => {
                    committed = committed.max((offset - a % 5).max(0));
                    time += b;
                    for key in k.expired(committed, time) {
                        let (o, ts) = model.remove(&*key).expect("a kept record");
                        prop_assert!(o < committed);
                        prop_assert!(ts + horizon < time);
                    }
                }
            }
            for (key, (o, _)) in &model {
                prop_assert!(k.skips(key, *o));
            }
            prop_assert_eq!(k.len(), model.len());
        }
    }
}
