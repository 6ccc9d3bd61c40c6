//! Property tests of `window`.

use super::*;
use crate::model::fragment::{Amend, Change, Fields, SignalKind};
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

/// `cfg` and two channels with overrides: a slower one (twice the quiet period and max wait, one
/// more fragment, no typing hold) and a quicker one (half the quiet period).
fn channels(cfg: WindowConfig) -> [WindowConfig; 3] {
    [
        cfg,
        WindowConfig {
            quiet_ms: cfg.quiet_ms * 2,
            max_wait_ms: cfg.max_wait_ms * 2,
            max_fragments: cfg.max_fragments + 1,
            typing_ms: 0,
            ..cfg
        },
        WindowConfig {
            quiet_ms: (cfg.quiet_ms / 2).max(1),
            ..cfg
        },
    ]
}

/// An engine with `cfg` and the two channels of [`channels`].
fn engine(cfg: WindowConfig) -> WindowEngine {
    let [_, slow, quick] = channels(cfg);
    WindowEngine::new(cfg).with_channels([slow, quick])
}

/// The log as fragments; each in one of three channels (0: the global settings), so a key's
/// fragments change channel now and then and a window must keep its first fragment's settings.
fn build(log: &[(u8, i64, usize)]) -> Vec<Fragment> {
    let mut ts = 1_000;
    log.iter()
        .enumerate()
        .map(|(i, &(k, gap, size))| {
            ts += gap;
            let mut f = Fragment::new(
                format!("k{k}"),
                100 + i as i64,
                ts,
                &vec![b' '; size],
                Fields::default(),
            );
            f.channel = ((usize::from(k) + i / 7) % 3) as u8;
            f
        })
        .collect()
}

const FAR: i64 = i64::MAX / 4;

/// Feeds the log reading everything after the fact (catch-up), then drains.
fn catch_up(cfg: WindowConfig, frags: &[Fragment]) -> Vec<Batch> {
    let mut e = engine(cfg);
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
    let mut e = engine(cfg);
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
        // Each batch within the settings of its first fragment's channel.
        let of = |b: &Batch| channels(cfg)[usize::from(b.fragments[0].channel)];
        for b in &batches {
            let cfg = of(b);
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
                let cfg = of(a);
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
        let a = shapes(&catch_up(cfg, &frags));
        let b = shapes(&live(cfg, &frags, &fractions));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn low_watermark_never_passes_an_open_fragment(
        cfg in cfg_strategy(), log in log_strategy(),
        fractions in prop::collection::vec(any::<u8>(), 1..20),
    ) {
        let frags = build(&log);
        let mut e = engine(cfg);
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
    let mut e = engine(cfg);
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

/// One message of a generated chat log with edits and deletes.
#[derive(Debug, Clone)]
enum Msg {
    Frag(Fragment),
    Amend(Amend),
}

/// A log where about one message in five edits or deletes an earlier fragment of any key (open
/// or long gone).
fn chat_log(log: &[(u8, i64, usize)], picks: &[u8]) -> Vec<Msg> {
    let mut ts = 1_000;
    let mut ids: Vec<(String, String)> = Vec::new();
    log.iter()
        .enumerate()
        .map(|(i, &(k, gap, size))| {
            ts += gap;
            let key = format!("k{k}");
            let pick = picks[i % picks.len()];
            let offset = 100 + i as i64;
            let value = vec![b' '; size];
            if pick < 50 && !ids.is_empty() {
                let (target_key, target) = ids[usize::from(pick) % ids.len()].clone();
                let change = if pick % 2 == 0 {
                    Change::Edited(format!("edit {i}").into())
                } else {
                    Change::Deleted
                };
                return Msg::Amend(Amend {
                    message: Fragment::new(target_key, offset, ts, &value, Fields::default()),
                    target: target.into(),
                    change,
                });
            }
            let id = format!("e{offset}");
            ids.push((key.clone(), id.clone()));
            Msg::Frag(Fragment::new(
                key,
                offset,
                ts,
                &value,
                Fields {
                    event_id: Some(&id),
                    ..Fields::default()
                },
            ))
        })
        .collect()
}

/// Feeds `msgs`, advancing the wall clock between them as `fractions` say (none: catch-up).
fn feed_chat(cfg: WindowConfig, msgs: &[Msg], fractions: &[u8]) -> Vec<Batch> {
    let mut e = engine(cfg);
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let ts = match m {
            Msg::Frag(f) => {
                e.push(f.clone(), FAR, &mut out);
                f.ts
            }
            Msg::Amend(a) => {
                e.amend(a.clone(), FAR, &mut out);
                a.message.ts
            }
        };
        let next = msgs.get(i + 1).map(|m| match m {
            Msg::Frag(f) => f.ts,
            Msg::Amend(a) => a.message.ts,
        });
        if let (Some(next), false) = (next, fractions.is_empty()) {
            if next > ts {
                let frac = i64::from(fractions[i % fractions.len()]);
                e.advance(ts + (next - ts - 1) * frac / 255, &mut out);
            }
        }
    }
    e.advance(FAR, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Edits and deletes stay functions of the log: read live at any speed or after the fact,
    /// the same batches, with the same changes and the same `amends`; every fragment in exactly
    /// one batch.
    #[test]
    fn edits_and_deletes_give_the_same_batches_however_the_log_is_read(
        cfg in cfg_strategy(),
        log in log_strategy(),
        picks in prop::collection::vec(any::<u8>(), 1..40),
        fractions in prop::collection::vec(any::<u8>(), 1..20),
    ) {
        let msgs = chat_log(&log, &picks);
        let shape = |batches: &[Batch]| {
            let mut v: Vec<_> = batches
                .iter()
                .map(|b| {
                    let offs: Vec<i64> = b.fragments.iter().map(|f| f.offset).collect();
                    (offs, b.key.clone(), b.reason, b.changes.clone(), b.amends.clone())
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let lagged = feed_chat(cfg, &msgs, &[]);
        let live = feed_chat(cfg, &msgs, &fractions);
        prop_assert_eq!(shape(&lagged), shape(&live));
        let mut seen: Vec<i64> = lagged
            .iter()
            .filter(|b| !matches!(b.reason, FlushReason::Edit | FlushReason::Delete))
            .flat_map(|b| b.fragments.iter().map(|f| f.offset))
            .collect();
        seen.sort_unstable();
        let expected: Vec<i64> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Frag(f) => Some(f.offset),
                Msg::Amend(_) => None,
            })
            .collect();
        prop_assert_eq!(seen, expected);
    }
}
