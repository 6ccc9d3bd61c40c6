//! A rolling upgrade from the last release without transactions to this one, on the real
//! three-node cluster, with Redis kept, while users type: two instances of the old release
//! (`LULL_TEST_BASELINE`, built by `scripts/test.sh` from git history), replaced one at a time by
//! instances of this one (exactly_once, the default), then one of the new instances `kill -9`-ed
//! and restarted.
//!
//! What the README promises: nothing is lost at any moment; while old and new instances run
//! together a handoff may repeat batches (with the same `batch_id`); once the last old instance
//! has stopped and the new ones have committed, exactly-once holds — the kill repeats nothing.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::procs::{Typing, Worker};
use common::*;

const PARTITIONS: i32 = 6;
const USERS: usize = 24;
const QUIET_MS: u64 = 500;
const GRACE_MS: u64 = 2_000;

/// A `lull run` of `binary` in the test's group.
fn instance(
    binary: &str,
    cluster: &Cluster,
    group: &str,
    redis: &(String, String),
    name: &str,
) -> Worker {
    let mut c = Command::new(binary);
    c.arg("run")
        .env_clear()
        .envs(cluster.process_env(group))
        .env("REDIS_URL", &redis.0)
        .env("LULL_REDIS_PREFIX", &redis.1)
        .env("LULL_INSTANCE_ID", name)
        .env("LULL_QUIET_MS", QUIET_MS.to_string())
        .env("LULL_GRACE_MS", GRACE_MS.to_string())
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("LULL_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env(
            "LULL_KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
            "cooperative-sticky",
        )
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
        .current_dir(std::env::temp_dir());
    Worker::spawn(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_the_release_without_transactions_loses_nothing() {
    let baseline = std::env::var("LULL_TEST_BASELINE").expect(
        "LULL_TEST_BASELINE is not set: scripts/test.sh builds the last release without \
         transactions from git history (a clone without that history cannot run this test)",
    );
    let current = env!("CARGO_BIN_EXE_lull");
    let kafka = KafkaEnv::three();
    let cluster = Cluster::real(kafka, PARTITIONS, 3).await;
    let group = unique("upgrade");
    let redis_server = RedisServer::shared();
    let redis = (redis_server.url.clone(), unique_prefix("upgrade"));
    let mut old = vec![
        instance(&baseline, &cluster, &group, &redis, "old-1"),
        instance(&baseline, &cluster, &group, &redis, "old-2"),
    ];
    wait_for("the old release in the group", || {
        old.iter().all(Worker::assigned)
    })
    .await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    let mut out = cluster.collector(&cluster.output);
    let typing = Typing::start(&producer, &cluster.input, "up", USERS, QUIET_MS);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // One at a time: stop an old instance (gracefully: it commits and leaves), start a new one.
    let mut new = Vec::new();
    for i in 1..=2 {
        let o = old.remove(0);
        o.stop().await;
        let n = instance(current, &cluster, &group, &redis, &format!("new-{i}"));
        wait_for("the new instance in the group", || n.assigned()).await;
        new.push(n);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // Every partition has had time to commit under a new instance: exactly-once from here on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgraded = lull::ops::clock::now_ms();
    // A kill -9 of a new instance repeats nothing.
    new[0].child.kill().expect("kill -9");
    new[0].child.wait().expect("reaped");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    new[0] = instance(current, &cluster, &group, &redis, "new-1");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let typed = typing.finish().await;

    out.until("every typed fragment in a batch", |s| {
        event_counts(s).len() == typed
    })
    .await;
    out.settle(Duration::from_millis(GRACE_MS + 3_000)).await;
    for n in new {
        n.stop().await;
    }

    let mut audit = cluster.config("audit");
    audit.quiet = Duration::from_millis(QUIET_MS);
    audit.grace = Duration::from_millis(GRACE_MS);
    let report = verify_clean_allowing_repeats(&audit).await;
    assert_eq!(report.fragments_in, typed, "{report:#?}");
    assert_eq!(report.lost, 0, "{report:#?}");
    assert_eq!(report.altered, 0, "{report:#?}");

    // Repeats: only while old and new instances ran together, each the same batch again.
    let mut copies: HashMap<String, Vec<(i64, Vec<String>)>> = HashMap::new();
    for b in &out.seen {
        let id = b.json()["batch_id"].as_str().unwrap().to_string();
        let at = b.json()["flushed_at"].as_i64().unwrap();
        copies.entry(id).or_default().push((at, b.event_ids()));
    }
    let repeated: Vec<_> = copies.iter().filter(|(_, c)| c.len() > 1).collect();
    for (id, c) in &repeated {
        assert!(
            c.iter().all(|(at, _)| *at < upgraded),
            "batch {id} repeated after the upgrade was complete: {c:?}"
        );
    }
    let line = format!(
        "upgrade (rolling, old release -> exactly_once, Redis kept): fragments {typed}, batches \
         {}, lost {}, batches repeated while old and new ran together {}, repeated after the \
         upgrade (one kill -9 of a new instance) 0",
        copies.len(),
        report.lost,
        repeated.len()
    );
    report_line(&line);
}

/// `lull verify` of the configured topics (repeats are reported, not refused).
async fn verify_clean_allowing_repeats(
    config: &lull::config::Config,
) -> lull::devkit::audit::VerifyReport {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        lull::devkit::audit::run(&config, &lull::devkit::audit::VerifyOptions::default())
    })
    .await
    .expect("verify task")
    .expect("verify runs")
}
