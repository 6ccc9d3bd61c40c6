//! Delivery across groups, on real Apache Kafka (the suite's single node) with a real Redis: two
//! consumer groups reading one input topic with one Redis prefix — a blue/green deploy, or a
//! debugging run beside production — keep apart, in both delivery modes. Before keys were scoped
//! by group, the second group's Redis claims fenced the first off: it stopped batching two of its
//! three partitions while it kept answering ready (the regression this pins).

mod common;

use std::time::Duration;

use common::*;
use lull::config::Delivery;

async fn two_groups(delivery: Delivery) {
    let cluster = Cluster::start(3).await;
    let redis = RedisServer::shared();
    // One prefix for both groups, as with the default `lull` prefix.
    let prefix = unique_prefix("two-groups");
    let mut blue = redis.configure(cluster.config("blue"), &prefix);
    blue.delivery = delivery;
    let mut green = redis.configure(cluster.config("green"), &prefix);
    green.delivery = delivery;
    green.output_topic = cluster.replay.clone();

    let first = Running::start(blue);
    first.assigned(3).await;
    let producer = cluster.producer();
    let users: Vec<String> = (0..12).map(|u| format!("g{u}")).collect();
    send_bursts(&producer, &cluster.input, &users, 0..2).await;
    let second = Running::start(green);
    second.assigned(3).await;
    // Typing goes on while both groups run.
    send_bursts(&producer, &cluster.input, &users, 2..6).await;

    let typed = users.len() * 6;
    for (name, topic) in [("blue", &cluster.output), ("green", &cluster.replay)] {
        let mut out = cluster.collector(topic);
        out.until(&format!("every fragment in {name}'s output"), |s| {
            event_counts(s).len() == typed
        })
        .await;
        out.settle(Duration::from_secs(1)).await;
        let counts = event_counts(&out.seen);
        assert!(
            counts.values().all(|&n| n == 1),
            "{name}: every fragment exactly once: {counts:?}"
        );
    }
    for (name, run) in [("blue", &first), ("green", &second)] {
        let r = lull::ops::http::readiness(&run.health, name);
        assert!(r.ready, "{name} is ready: {r:?}");
        assert_eq!(run.health.fenced_partitions(), 0, "{name}: nothing fenced");
        assert_eq!(
            run.health.assigned_partitions(),
            3,
            "{name} kept its partitions"
        );
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_sharing_one_redis_prefix_each_deliver_every_fragment_exactly_once() {
    two_groups(Delivery::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_sharing_one_redis_prefix_each_deliver_every_fragment_at_least_once() {
    two_groups(Delivery::AtLeastOnce).await;
}

/// Why an at_least_once repeat can differ from the original: a fragment that reached lull, live,
/// later than the grace after its own timestamp becomes a batch of its own (rule 3), while a
/// replay of the same log, cutting by timestamps, joins it to the burst it was late for. The
/// replay's batch has the original's id and one fragment more. A restarted owner replays from its
/// commit point exactly like this fresh group does; exactly_once never replays what a committed
/// transaction holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_fragment_is_why_an_at_least_once_replay_can_cut_differently() {
    let cluster = Cluster::start(1).await;
    let mut live = cluster.config("late-live");
    live.delivery = Delivery::AtLeastOnce;
    let lull = Running::start(live.clone());
    lull.assigned(1).await;
    let producer = cluster.producer();
    let t0 = lull::ops::clock::now_ms();
    send(
        &producer,
        &cluster.input,
        Some("u"),
        &fragment("u", 0),
        None,
        Some(t0),
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("the first burst", |s| s.len() == 1).await;
    // Stamped 100 ms after the first (inside its quiet period), but arriving after its batch.
    send(
        &producer,
        &cluster.input,
        Some("u"),
        &fragment("u", 1),
        None,
        Some(t0 + 100),
    )
    .await;
    out.until("the late fragment", |s| s.len() == 2).await;
    lull.stop().await;
    let live_ids: Vec<Vec<String>> = out.seen.iter().map(OutMsg::event_ids).collect();
    assert_eq!(
        live_ids,
        vec![vec!["u-0"], vec!["u-1"]],
        "live: two batches"
    );

    // The same log replayed (a fresh group: what a restarted owner does from its commit point).
    let mut replay = live;
    replay.group_id = unique("late-replay");
    replay.output_topic = cluster.replay.clone();
    let again = Running::start(replay);
    let mut out2 = cluster.collector(&cluster.replay);
    out2.until("the replay", |s| event_counts(s).len() == 2)
        .await;
    out2.settle(Duration::from_millis(800)).await;
    again.stop().await;
    assert_eq!(out2.seen.len(), 1, "replay: one batch");
    assert_eq!(out2.seen[0].event_ids(), vec!["u-0", "u-1"]);
    assert_eq!(
        out2.seen[0].json()["batch_id"],
        out.seen[0].json()["batch_id"],
        "the same id as the live run's first batch, one fragment more"
    );
}
