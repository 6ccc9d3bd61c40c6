//! Tests of `eos`.

use super::*;

fn cadence(now: Instant) -> Cadence {
    Cadence {
        committing: false,
        due: None,
        queued: 0,
        caught_up: false,
        draining: false,
        offsets_moved: false,
        last_commit: now,
        now,
    }
}

#[test]
fn a_transaction_commits_at_the_limit_while_input_waits_and_at_once_when_caught_up() {
    let now = Instant::now();
    let due = now + Duration::from_millis(100);
    let reading = Cadence {
        due: Some(due),
        ..cadence(now)
    };
    assert_eq!(
        next_commit(&reading),
        Some(due),
        "a catch-up fills the transaction"
    );
    let caught_up = Cadence {
        caught_up: true,
        ..reading
    };
    assert_eq!(next_commit(&caught_up), Some(now), "nothing more to add");
    let draining = Cadence {
        draining: true,
        ..reading
    };
    assert_eq!(next_commit(&draining), Some(now));
    // Records still waiting (a full producer queue): the limit, not at once.
    let waiting = Cadence {
        queued: 3,
        ..caught_up
    };
    assert_eq!(next_commit(&waiting), Some(due));
    let committing = Cadence {
        committing: true,
        ..caught_up
    };
    assert_eq!(next_commit(&committing), None, "one commit at a time");
}

#[test]
fn offsets_alone_commit_less_often_and_only_when_they_moved() {
    let now = Instant::now();
    assert_eq!(next_commit(&cadence(now)), None, "nothing to commit");
    let moved = Cadence {
        offsets_moved: true,
        ..cadence(now)
    };
    assert_eq!(next_commit(&moved), Some(now + OFFSETS_EVERY));
    let draining = Cadence {
        draining: true,
        ..moved
    };
    assert_eq!(next_commit(&draining), Some(now));
    let queued = Cadence { queued: 1, ..moved };
    assert_eq!(
        next_commit(&queued),
        None,
        "records open a transaction first"
    );
}
