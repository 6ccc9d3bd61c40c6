//! The README's operating procedures, followed as written on the suite's real Kafka node with
//! Kafka's own command-line tools (`scripts/kafka.sh tool`) and a real Redis: resetting a group's
//! offsets replays without duplicates while Redis remembers what was delivered, and emits the
//! batches again, with the same ids, once the flushed records are deleted.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// `kafka-consumer-groups.sh --reset-offsets --to-datetime … --execute`, as in the README.
fn reset_offsets(cluster: &Cluster, group: &str, to: &str) {
    kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &[
            "--bootstrap-server",
            cluster.bootstrap(),
            "--group",
            group,
            "--topic",
            &cluster.input,
            "--reset-offsets",
            "--to-datetime",
            to,
            "--execute",
        ],
    );
}

/// The README's `redis-cli --scan … | xargs … del` for one key pattern.
fn delete_keys(redis: &RedisServer, pattern: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -u '{url}' --scan --pattern '{pattern}' | xargs -r -n 500 redis-cli -u '{url}' del >/dev/null",
            url = redis.url
        ))
        .status()
        .expect("redis-cli runs");
    assert!(status.success());
}

/// The batch ids in `seen`, sorted.
fn ids(seen: &[OutMsg]) -> Vec<String> {
    let mut v: Vec<String> = seen
        .iter()
        .map(|b| b.json()["batch_id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_offsets_replays_without_duplicates_and_re_emits_after_deleting_the_records() {
    let cluster = Cluster::start(2).await;
    let redis = RedisServer::shared();
    let prefix = unique_prefix("reset");
    let mut config = redis.configure(cluster.config("reset"), &prefix);
    // The procedure of Redis records; in exactly_once the state topic skips what it holds too.
    config.delivery = lull::config::Delivery::AtLeastOnce;
    let group = config.group_id.clone();
    // Before the session, in the form the README uses (UTC).
    let before =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(60))
            .to_string();

    let lull = Running::start(config.clone());
    lull.assigned(2).await;
    let producer = cluster.producer();
    send_bursts(
        &producer,
        &cluster.input,
        (0..8).map(|u| format!("o{u}")),
        0..3,
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("8 batches", |s| event_counts(s).len() == 24)
        .await;
    let first = ids(&out.seen);
    lull.stop().await;

    // Reset with Redis keeping its records: the replay skips what was delivered.
    reset_offsets(&cluster, &group, &before);
    let lull = Running::start(config.clone());
    lull.assigned(2).await;
    wait_for("the replay to read the log", || {
        lull.health.messages_read() >= 24
    })
    .await;
    send(
        &producer,
        &cluster.input,
        Some("o0"),
        &fragment("o0", 3),
        None,
        None,
    )
    .await;
    out.until("the one new batch", |s| s.len() == 9).await;
    out.settle(Duration::from_secs(1)).await;
    assert_eq!(
        out.seen.len(),
        9,
        "nothing emitted twice: {:?}",
        ids(&out.seen)
    );
    lull.stop().await;

    // Reset again after deleting the flushed records (and the event-id memory): emitted again,
    // with the same batch ids.
    delete_keys(&redis, &format!("{prefix}:{group}:*:flushed:*"));
    delete_keys(&redis, &format!("{prefix}:{group}:*:event:*"));
    reset_offsets(&cluster, &group, &before);
    let lull = Running::start(config);
    lull.assigned(2).await;
    out.until("every batch again", |s| s.len() == 18).await;
    out.settle(Duration::from_secs(1)).await;
    lull.stop().await;
    let (then, again) = out.seen.split_at(9);
    assert_eq!(ids(then), ids(again), "the same batches, the same ids");
    assert!(first.iter().all(|id| ids(again).contains(id)));
}
