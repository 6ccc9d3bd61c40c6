//! Tests of `window`.

use super::*;
use crate::model::fragment::{Amend, Change, Fields, SignalKind};

const CFG: WindowConfig = WindowConfig {
    batching: true,
    quiet_ms: 100,
    max_wait_ms: 1_000,
    max_fragments: 5,
    max_batch_bytes: 1_000,
    grace_ms: 20,
    typing_ms: 0,
    followup_ms: 0,
};

fn frag(key: &str, offset: i64, ts: i64) -> Fragment {
    let value = format!("{{\"o\":{offset}}}");
    Fragment::new(key, offset, ts, value.as_bytes(), Fields::default())
}

fn offsets(b: &Batch) -> Vec<i64> {
    b.fragments.iter().map(|f| f.offset).collect()
}

const NOW: i64 = 1_000_000;

#[test]
fn a_burst_is_one_batch_after_quiet_plus_grace() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.push(frag("a", 1, 50), NOW, &mut out);
    e.push(frag("a", 2, 140), NOW, &mut out);
    assert!(out.is_empty());
    assert_eq!(e.next_deadline(), Some(140 + 100 + 20 + 1));
    e.advance(260, &mut out);
    assert!(out.is_empty(), "not yet strictly past close + grace");
    e.advance(261, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(offsets(&out[0]), vec![0, 1, 2]);
    assert_eq!(out[0].reason, FlushReason::Quiet);
    assert_eq!(
        (out[0].first_ts, out[0].last_ts, out[0].close_time),
        (0, 140, 240)
    );
    assert_eq!(e.low_watermark(), None);
}

#[test]
fn a_fragment_past_the_close_time_flushes_first() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.push(frag("a", 1, 101), NOW, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(offsets(&out[0]), vec![0]);
    assert_eq!(e.low_watermark(), Some(1));
}

#[test]
fn max_wait_caps_a_user_who_never_pauses() {
    let mut e = WindowEngine::new(WindowConfig {
        max_fragments: 1000,
        max_batch_bytes: 100_000,
        ..CFG
    });
    let mut out = Vec::new();
    for i in 0..30 {
        e.push(frag("a", i, i * 50), NOW, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::MaxWait);
    assert_eq!(out[0].first_ts, 0);
    assert!(out[0].last_ts <= 1_000);
}

#[test]
fn caps_flush_at_once() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    for i in 0..5 {
        e.push(frag("a", i, i), NOW, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::MaxFragments);

    let mut e = WindowEngine::new(WindowConfig {
        max_batch_bytes: 20,
        ..CFG
    });
    let mut out = Vec::new();
    e.push(frag("b", 10, 0), NOW, &mut out); // 8 bytes
    e.push(frag("b", 11, 1), NOW, &mut out); // 16 bytes
    e.push(frag("b", 12, 2), NOW, &mut out); // would be 24: flush first
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::MaxBytes);
    assert_eq!(offsets(&out[0]), vec![10, 11]);
}

#[test]
fn late_fragments_open_a_new_window_and_are_counted() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.push(frag("b", 1, 500), NOW, &mut out);
    assert_eq!(out.len(), 1, "a's window flushed by b's timestamp");
    e.push(frag("a", 2, 10), NOW, &mut out);
    assert_eq!(e.take_stats().late, 1);
    assert_eq!(
        out.len(),
        2,
        "a late fragment whose window is long due flushes at once"
    );
    assert_eq!(offsets(&out[1]), vec![2]);
}

#[test]
fn future_timestamps_are_clamped() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    e.push(frag("a", 0, NOW + 60_000), NOW, &mut out);
    assert_eq!(e.take_stats().clamped, 1);
    assert_eq!(e.partition_time(), Some(NOW));
}

#[test]
fn passthrough_emits_every_fragment_alone() {
    let mut e = WindowEngine::new(WindowConfig {
        batching: false,
        ..CFG
    });
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.push(frag("a", 1, 1), NOW, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|b| b.reason == FlushReason::Passthrough));
    assert_eq!(e.open_windows(), 0);
}

#[test]
fn out_of_order_straggler_pulls_the_deadline_back() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    e.push(frag("a", 0, 950), NOW, &mut out);
    e.push(frag("a", 1, 960), NOW, &mut out);
    // first_ts moves back to 0: max-wait close becomes 1000 (< 960 + 100).
    e.push(frag("a", 2, 0), NOW, &mut out);
    assert_eq!(e.next_deadline(), Some(1_000 + 20 + 1));
    e.advance(1_021, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::MaxWait);
}

const CHAT: WindowConfig = WindowConfig {
    typing_ms: 300,
    followup_ms: 500,
    ..CFG
};

#[test]
fn typing_holds_a_window_open_but_never_past_max_wait() {
    let mut e = WindowEngine::new(CHAT);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    // Quiet would close at 100; typing at 90 holds it to 390.
    assert_eq!(
        e.signal("a", SignalKind::Typing, 90, NOW, &mut out),
        SignalOutcome::Applied
    );
    assert_eq!(e.next_deadline(), Some(390 + 20 + 1));
    e.push(frag("a", 1, 380), NOW, &mut out);
    assert!(out.is_empty(), "a fragment after a long typing pause joins");
    // Typing forever: the max-wait cap (1000) still closes it.
    for t in (400..2_000).step_by(200) {
        e.signal("a", SignalKind::Typing, t, NOW, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::MaxWait);
    assert_eq!(offsets(&out[0]), vec![0, 1]);
}

#[test]
fn a_fragment_ends_the_hold_of_the_typing_before_it() {
    let mut e = WindowEngine::new(CHAT);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.signal("a", SignalKind::Typing, 10, NOW, &mut out);
    assert_eq!(e.next_deadline(), Some(310 + 20 + 1), "typing holds to 310");
    // The fragment that typing announced: the hold ends, the quiet period counts from it.
    e.push(frag("a", 1, 50), NOW, &mut out);
    assert_eq!(e.next_deadline(), Some(150 + 20 + 1));
    // A typing newer than the last fragment holds the window again...
    e.signal("a", SignalKind::Typing, 120, NOW, &mut out);
    assert_eq!(e.next_deadline(), Some(420 + 20 + 1));
    // ...and an out-of-order fragment older than that typing does not end its hold.
    e.push(frag("a", 2, 100), NOW, &mut out);
    assert_eq!(e.next_deadline(), Some(420 + 20 + 1));
    e.advance(441, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::Quiet);
    assert_eq!(offsets(&out[0]), vec![0, 1, 2]);
}

#[test]
fn stopped_ends_the_hold_and_flush_closes_now() {
    let mut e = WindowEngine::new(CHAT);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.signal("a", SignalKind::Typing, 50, NOW, &mut out);
    e.signal("a", SignalKind::Stopped, 60, NOW, &mut out);
    assert_eq!(
        e.next_deadline(),
        Some(100 + 20 + 1),
        "back to the quiet period"
    );
    e.push(frag("b", 1, 70), NOW, &mut out);
    assert_eq!(
        e.signal("b", SignalKind::Flush, 75, NOW, &mut out),
        SignalOutcome::Applied
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].reason, out[0].key.as_ref()),
        (FlushReason::Signal, "b")
    );
    // No open window: nothing changes. Past the close time: the window goes out first.
    assert_eq!(
        e.signal("c", SignalKind::Typing, 80, NOW, &mut out),
        SignalOutcome::Ignored
    );
    assert_eq!(
        e.signal("a", SignalKind::Typing, 101, NOW, &mut out),
        SignalOutcome::Expired
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].reason, FlushReason::Quiet);
}

#[test]
fn final_flushes_at_once_and_bypass_interrupts_then_goes_alone() {
    let mut e = WindowEngine::new(CHAT);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    let mut last = frag("a", 1, 10);
    last.is_final = true;
    e.push(last, NOW, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].reason, offsets(&out[0])),
        (FlushReason::Final, vec![0, 1])
    );
    e.push(frag("a", 2, 20), NOW, &mut out);
    let mut command = frag("a", 3, 30);
    command.bypass = true;
    e.push(command, NOW, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(
        (out[1].reason, offsets(&out[1])),
        (FlushReason::Interrupted, vec![2])
    );
    assert_eq!(
        (out[2].reason, offsets(&out[2])),
        (FlushReason::Bypass, vec![3])
    );
    assert_eq!(e.open_windows(), 0);
}

#[test]
fn follows_names_the_previous_batch_within_the_follow_up_window() {
    let mut e = WindowEngine::new(CHAT);
    let mut out = Vec::new();
    e.push(frag("a", 0, 0), NOW, &mut out);
    e.advance(200, &mut out);
    assert_eq!(out[0].follows, None);
    // Starts 400 ms after the last one ended (≤ 500): follows it.
    e.push(frag("a", 1, 400), NOW, &mut out);
    e.advance(600, &mut out);
    assert_eq!(out[1].follows, Some(Follows::Offset(0)));
    // Starts 1000 ms later: no.
    e.push(frag("a", 2, 1_400), NOW, &mut out);
    e.advance(1_600, &mut out);
    assert_eq!(out[2].follows, None);
    // Learnt from Redis after a restart: a full id, used when nothing newer is known.
    let mut fresh = WindowEngine::new(CHAT);
    fresh.seed_follows("a", "t/0/2", 1_400);
    fresh.push(frag("a", 3, 1_700), NOW, &mut out);
    fresh.advance(2_000, &mut out);
    assert_eq!(
        out[3].follows,
        Some(Follows::Id(Arc::new("t/0/2".to_string())))
    );
}

#[test]
fn old_previous_batches_are_forgotten() {
    let mut e = WindowEngine::new(CHAT);
    let mut out = Vec::new();
    for u in 0..100 {
        e.push(frag(&format!("u{u}"), u, 0), NOW, &mut out);
    }
    e.advance(200, &mut out);
    assert_eq!(e.previous.len(), 100);
    // The log moves on past follow-up + grace: they are gone.
    e.push(frag("z", 100, 1_000), NOW, &mut out);
    assert_eq!(e.previous.len(), 0);
}

#[test]
fn a_window_keeps_the_settings_of_its_first_fragments_channel() {
    // Channel 1 waits 300 ms of quiet, and caps at 3 fragments; the global settings wait 100
    // and cap at 5.
    let mut e = WindowEngine::new(CFG).with_channels([WindowConfig {
        quiet_ms: 300,
        max_fragments: 3,
        ..CFG
    }]);
    let mut out = Vec::new();
    let mut whatsapp = frag("a", 0, 0);
    whatsapp.channel = 1;
    e.push(whatsapp, NOW, &mut out);
    e.push(frag("b", 1, 0), NOW, &mut out);
    // b goes out after 100 ms of quiet; a's window is still open at 250...
    e.push(frag("a", 2, 250), NOW, &mut out);
    e.advance(250, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(&*out[0].key, "b");
    // ...where global-channel fragments joined it, and its own cap (3) sent it out at once.
    e.push(frag("a", 3, 260), NOW, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (offsets(&out[1]), out[1].reason),
        (vec![0, 2, 3], FlushReason::MaxFragments)
    );
}

/// A fragment of `key` at `offset`/`ts` with event id `e{offset}`.
fn with_id(key: &str, offset: i64, ts: i64) -> Fragment {
    let value = format!("{{\"o\":{offset}}}");
    let id = format!("e{offset}");
    Fragment::new(
        key,
        offset,
        ts,
        value.as_bytes(),
        Fields {
            event_id: Some(&id),
            ..Fields::default()
        },
    )
}

fn amend(key: &str, offset: i64, ts: i64, target: &str, change: Change) -> Amend {
    Amend {
        message: frag(key, offset, ts),
        target: target.into(),
        change,
    }
}

#[test]
fn an_edit_or_delete_of_an_open_fragment_changes_it_in_place() {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    e.push(with_id("a", 0, 0), NOW, &mut out);
    e.push(with_id("a", 1, 10), NOW, &mut out);
    let edit = amend("a", 2, 20, "e0", Change::Edited("fixed".into()));
    assert_eq!(e.amend(edit, NOW, &mut out), SignalOutcome::Applied);
    let delete = amend("a", 3, 30, "e1", Change::Deleted);
    assert_eq!(e.amend(delete, NOW, &mut out), SignalOutcome::Applied);
    e.advance(1_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        offsets(&out[0]),
        vec![0, 1],
        "signals are never part of a batch"
    );
    assert_eq!(
        out[0].changes,
        vec![(0, Change::Edited("fixed".into())), (1, Change::Deleted)]
    );
    assert_eq!(
        out[0].close_time, 110,
        "an edit does not move the window's time"
    );
}

#[test]
fn an_edit_of_a_fragment_no_longer_open_goes_out_alone_naming_the_batch_it_amends() {
    let mut e = WindowEngine::new(WindowConfig {
        followup_ms: 10_000,
        ..CFG
    });
    let mut out = Vec::new();
    e.push(with_id("a", 0, 0), NOW, &mut out);
    e.advance(500, &mut out);
    assert_eq!(out.len(), 1, "the first burst went out");
    // A new burst is open when the edit of the first one comes: it goes out first, interrupted.
    e.push(with_id("a", 1, 600), NOW, &mut out);
    let edit = amend("a", 2, 650, "e0", Change::Edited("fixed".into()));
    assert_eq!(e.amend(edit, NOW, &mut out), SignalOutcome::Alone);
    assert_eq!(out.len(), 3);
    assert_eq!(
        (offsets(&out[1]), out[1].reason),
        (vec![1], FlushReason::Interrupted)
    );
    assert_eq!(
        (offsets(&out[2]), out[2].reason),
        (vec![2], FlushReason::Edit)
    );
    assert_eq!(
        out[2].amends,
        Some(Follows::Offset(0)),
        "the key's last batch before the edit: the one that carried its target"
    );
    // It is not the key's latest batch for `follows`.
    e.push(with_id("a", 3, 700), NOW, &mut out);
    e.advance(2_000, &mut out);
    assert_eq!(out[3].follows, Some(Follows::Offset(1)));
    // Unknown targets alike: nothing is lost.
    let unknown = amend("b", 4, 800, "nope", Change::Deleted);
    assert_eq!(e.amend(unknown, NOW, &mut out), SignalOutcome::Alone);
    assert_eq!(out.last().map(|b| b.reason), Some(FlushReason::Delete));
}
