//! Memory stays bounded by `LULL_MAX_OPEN_BYTES` under a flood, with nothing lost: against real
//! Apache Kafka (the suite's single node).
//!
//! A test binary of its own: it reads process-wide gauges (`lull_held_bytes`,
//! `lull_backpressure_paused`), which another lull run in the same process would also move.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_stays_within_the_memory_budget_and_loses_nothing() {
    // Eight partitions, so the budget is shared by many workers.
    let cluster = Cluster::start(8).await;
    let mut cfg = cluster.config("flood");
    let budget: usize = 1 << 20;
    cfg.max_open_bytes = budget;
    cfg.max_batch_bytes = 64 << 10;
    cfg.max_fragment_bytes = 4 << 10;
    cfg.max_fragments = 50;
    cfg.quiet = Duration::from_millis(1_500);
    // A backlog bigger than the budget: one user flooding, many users typing, ~4 MiB in all.
    let producer = cluster.producer();
    let pad = "x".repeat(400);
    let value = |user: &str, seq: usize| {
        serde_json::json!({"user_id": user, "event_id": format!("{user}-{seq}"), "seq": seq, "text": pad})
            .to_string()
            .into_bytes()
    };
    let mut sent = 0;
    for seq in 0..2_000 {
        send(
            &producer,
            &cluster.input,
            Some("flooder"),
            &value("flooder", seq),
            None,
            None,
        )
        .await;
        sent += 1;
    }
    for u in 0..2_000 {
        let user = format!("f{u}");
        for seq in 0..4 {
            send(
                &producer,
                &cluster.input,
                Some(&user),
                &value(&user, seq),
                None,
                None,
            )
            .await;
            sent += 1;
        }
    }
    let lull = Running::start(cfg.clone());
    let sampler = {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut max_held, mut paused) = (0i64, 0i64);
            while !s.is_cancelled() {
                let m = lull::ops::metrics::metrics();
                max_held = max_held.max(m.held_bytes.get());
                paused = paused.max(m.backpressure_paused.get());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (max_held, paused)
        });
        (stop, task)
    };
    // Meanwhile a normal user's burst still gets through.
    lull.assigned(8).await;
    send(
        &producer,
        &cluster.input,
        Some("normal"),
        &value("normal", 0),
        None,
        None,
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("the normal user's batch", |s| {
        event_counts(s).contains_key("normal-0")
    })
    .await;
    out.until("every flooded fragment", |s| {
        event_counts(s).len() == sent + 1
    })
    .await;
    out.settle(Duration::from_millis(500)).await;
    sampler.0.cancel();
    let (max_held, paused) = sampler.1.await.unwrap();
    let counts = event_counts(&out.seen);
    assert!(counts.values().all(|&n| n == 1), "nothing lost or doubled");
    // The budget is checked between chunks of input, each at most 64 KiB per partition: allow one
    // chunk's worth per partition, counted as the budget counts open windows (at the size of the
    // batches they become: one window per fragment at worst); without the budget this backlog
    // would hold ~4 MiB. Flushes, which turn windows into output records, must not add to it.
    let chunk = 64 * 1024;
    let fragment_len = value("f0", 0).len();
    let slack = 8 * lull::ops::budget::held_by_windows(chunk, chunk / fragment_len + 1);
    eprintln!("held at most {max_held} bytes: budget {budget} + slack {slack}");
    assert!(
        max_held <= (budget + slack) as i64,
        "held {max_held} bytes, budget {budget}"
    );
    assert!(max_held > 0);
    assert!(paused > 0, "fetching was paused at the budget");
    lull.stop().await;
    let r = verify_clean(&cfg).await;
    assert_eq!(r.in_batches, sent + 1);
    assert_eq!(r.boundary_violations, 0);
}
