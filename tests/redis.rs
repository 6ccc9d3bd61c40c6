//! lull with Redis shared state, end to end: no duplicate batches on replay, duplicate events
//! dropped, pending-window visibility with a TTL that outlives the burst (each on a single Redis
//! and on a Redis Cluster), and degraded mode when Redis goes away mid-run.

mod common;

use std::time::Duration;

use common::*;
use lull::config::Config;
use redis::AsyncCommands;

/// Types one session: `n` fragments spread over 12 users, with the same event ids every time.
async fn type_session(producer: &rdkafka::producer::FutureProducer, topic: &str, n: usize) {
    for i in 0..n {
        let user = format!("s{}", i % 12);
        send(
            producer,
            topic,
            Some(&user),
            &fragment(&user, i / 12),
            None,
            None,
        )
        .await;
    }
}

/// Fragments whose flushed record in Redis was ignored as stale, by reason, in this process.
fn stale(reason: &str) -> u64 {
    lull::ops::metrics::metrics()
        .redis_stale_records
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_input_topic_loses_nothing_to_the_old_topics_records() {
    let cluster = Cluster::start(1).await;
    let redis = RedisServer::shared();
    let prefix = unique_prefix("recreate");
    let mut cfg = redis.configure(cluster.config("recreate"), &prefix);
    // Redis keeps flushed records in at_least_once (exactly_once: the state topic does).
    cfg.delivery = lull::config::Delivery::AtLeastOnce;
    let producer = cluster.producer();
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    type_session(&producer, &cluster.input, 109).await;
    let mut out = cluster.collector(&cluster.output);
    out.until("the first session", |s| event_counts(s).len() == 109)
        .await;
    lull.stop().await;

    // Delete and create the input topic again, keeping Redis: offsets start at 0 once more.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .create()
            .unwrap();
    let opts = rdkafka::admin::AdminOptions::new();
    admin.delete_topics(&[&cluster.input], &opts).await.unwrap();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let new = rdkafka::admin::NewTopic::new(
            &cluster.input,
            1,
            rdkafka::admin::TopicReplication::Fixed(1),
        );
        match admin.create_topics(&[new], &opts).await.unwrap().remove(0) {
            Ok(_) => break,
            Err((_, e)) => {
                assert!(
                    tokio::time::Instant::now() < end,
                    "topic not recreated: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let before = stale("topic_id");
    type_session(&producer, &cluster.input, 109).await;
    let lull = Running::start(cfg.clone());
    out.until("the second session, every fragment again", |s| {
        let counts = event_counts(s);
        counts.len() == 109 && counts.values().all(|&n| n == 2)
    })
    .await;
    out.settle(Duration::from_millis(500)).await;
    assert!(event_counts(&out.seen).values().all(|&n| n == 2));
    assert!(
        stale("topic_id") > before,
        "the old topic's records were recognised, counted and ignored"
    );
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_dev_cluster_loses_nothing_to_the_old_clusters_records() {
    let redis = RedisServer::shared();
    let prefix = unique_prefix("replaced");
    for round in 0..2 {
        // A fresh `lull dev-broker` each round: the mock gives no topic ids, but another cluster id.
        let group = unique("replaced");
        let broker = DevBroker::start_for(1, &group);
        let d = Config::defaults();
        let mut cfg = redis.configure(d.clone(), &prefix);
        cfg.brokers = broker.bootstrap.clone();
        cfg.group_id = group;
        cfg.quiet = Duration::from_millis(300);
        cfg.http_addr = "127.0.0.1:0".parse().unwrap();
        // Redis keeps flushed records in at_least_once (exactly_once: the state topic does).
        cfg.delivery = lull::config::Delivery::AtLeastOnce;
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .unwrap();
        // The whole session is in the log before lull starts (its high watermark covers the old
        // records' offsets, and the timestamps are seconds apart: only the identity can tell).
        type_session(&producer, &d.input_topic, 109).await;
        let lull = Running::start(cfg);
        let mut out = Collector::on(&broker.bootstrap, &d.output_topic, 1);
        out.until(&format!("every fragment of round {round}"), |s| {
            event_counts(s).len() == 109
        })
        .await;
        lull.stop().await;
        assert!(round == 0 || stale("topic_id") > 0);
    }
}

async fn a_new_owner_replaying_the_log_skips_what_was_already_emitted(redis: &RedisServer) {
    let cluster = Cluster::start(2).await;
    let prefix = unique_prefix("replay");
    let mut cfg = redis.configure(cluster.config("first"), &prefix);
    // The skip records of Redis (in exactly_once the state topic skips these too).
    cfg.delivery = lull::config::Delivery::AtLeastOnce;
    let first = Running::start(cfg.clone());
    first.assigned(2).await;
    let producer = cluster.producer();
    send_bursts(
        &producer,
        &cluster.input,
        (0..8).map(|u| format!("r{u}")),
        0..3,
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("8 batches", |s| event_counts(s).len() == 24)
        .await;
    first.stop().await;

    // The group's commits are lost (reset to the start): its next owner reads the whole log
    // again, but everything was emitted already, so nothing comes out twice.
    kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &[
            "--bootstrap-server",
            cluster.bootstrap(),
            "--group",
            &cfg.group_id,
            "--topic",
            &cluster.input,
            "--reset-offsets",
            "--to-earliest",
            "--execute",
        ],
    );
    cfg.output_topic = cluster.replay.clone();
    let second = Running::start(cfg);
    second.assigned(2).await;
    wait_for("the replay to read the log", || {
        second.health.messages_read() >= 24
    })
    .await;
    send(
        &producer,
        &cluster.input,
        Some("r0"),
        &fragment("r0", 3),
        None,
        None,
    )
    .await;
    let mut replay = cluster.collector(&cluster.replay);
    replay.until("the one new batch", |s| !s.is_empty()).await;
    replay.settle(Duration::from_secs(1)).await;
    assert_eq!(replay.seen.len(), 1, "only the new fragment is emitted");
    assert_eq!(replay.seen[0].event_ids(), vec!["r0-3"]);
    second.stop().await;
}

async fn a_producer_retry_with_the_same_event_id_is_dropped(redis: &RedisServer) {
    let cluster = Cluster::start(1).await;
    let prefix = unique_prefix("dupe");
    let lull = Running::start(redis.configure(cluster.config("dupe"), &prefix));
    lull.assigned(1).await;
    let producer = cluster.producer();
    let before = lull::ops::metrics::metrics().fragments_duplicate.get();
    send(
        &producer,
        &cluster.input,
        Some("d"),
        &fragment("d", 0),
        None,
        None,
    )
    .await;
    send(
        &producer,
        &cluster.input,
        Some("d"),
        &fragment("d", 1),
        None,
        None,
    )
    .await;
    send(
        &producer,
        &cluster.input,
        Some("d"),
        &fragment("d", 1),
        None,
        None,
    )
    .await; // the retry
    send(
        &producer,
        &cluster.input,
        Some("d"),
        &fragment("d", 2),
        None,
        None,
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("the batch", |s| !s.is_empty()).await;
    out.settle(Duration::from_millis(800)).await;
    assert_eq!(out.seen.len(), 1);
    assert_eq!(out.seen[0].event_ids(), vec!["d-0", "d-1", "d-2"]);
    assert!(lull::ops::metrics::metrics().fragments_duplicate.get() > before);
    lull.stop().await;
}

async fn the_pending_key_outlives_a_long_burst_and_goes_with_the_flush(redis: &RedisServer) {
    // The predecessor's bug: the TTL was set from the first message and never refreshed, so the
    // key of a user who kept typing vanished mid-burst.
    let cluster = Cluster::start(1).await;
    let prefix = unique_prefix("pendingttl");
    let mut cfg = redis.configure(cluster.config("pending"), &prefix);
    cfg.quiet = Duration::from_millis(500);
    cfg.max_wait = Duration::from_secs(8);
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    let producer = cluster.producer();
    let mut c = redis.conn().await;
    let key = lull::io::store::Keys::new(&prefix, &cfg.group_id)
        .partition(&cfg.input_topic, 0)
        .pending("typist");
    // 20 fragments 200 ms apart: 4 s of typing, eight times the quiet period, one burst.
    for seq in 0..20 {
        send(
            &producer,
            &cluster.input,
            Some("typist"),
            &fragment("typist", seq),
            None,
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if seq == 0 {
            wait_for("the pending key", || key_exists(redis, &key)).await;
        }
        let (flush_at, ttl): (Option<i64>, i64) = redis::pipe()
            .hget(&key, "flush_at")
            .pttl(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        let flush_at = flush_at.expect("the pending key never disappears mid-burst");
        let left = flush_at - lull::ops::clock::now_ms();
        assert!(
            ttl >= left,
            "TTL {ttl} ms is shorter than the {left} ms left to the flush"
        );
    }
    let mut out = cluster.collector(&cluster.output);
    let b = out.until("the long batch", |s| !s.is_empty()).await[0].clone();
    assert_eq!(b.json()["count"], 20);
    wait_for("the flush to delete the pending key", || {
        !key_exists(redis, &key)
    })
    .await;
    lull.stop().await;
}

/// Whether `key` exists (a blocking check usable inside `wait_for`).
fn key_exists(redis: &RedisServer, key: &str) -> bool {
    if redis.is_cluster() {
        let seeds = lull::io::store::client::seed_urls(&redis.url);
        let client = redis::cluster::ClusterClient::new(seeds).expect("cluster client");
        let mut conn = client.get_connection().expect("cluster connection");
        return redis::Commands::exists(&mut conn, key).expect("EXISTS");
    }
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client.get_connection().expect("connection");
    redis::Commands::exists(&mut conn, key).expect("EXISTS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_run_loses_nothing() {
    let cluster = Cluster::start(1).await;
    let mut redis = RedisServer::private();
    let prefix = unique_prefix("outage");
    let cfg = redis.configure(cluster.config("outage"), &prefix);
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    assert_eq!(lull.health.redis(), Some(true));
    let producer = cluster.producer();
    let burst = |round: usize| {
        let producer = producer.clone();
        let input = cluster.input.clone();
        async move {
            for u in 0..5 {
                let user = format!("x{u}");
                for i in 0..2 {
                    send(
                        &producer,
                        &input,
                        Some(&user),
                        &fragment(&user, round * 2 + i),
                        None,
                        None,
                    )
                    .await;
                }
            }
        }
    };
    let mut out = cluster.collector(&cluster.output);
    burst(0).await;
    out.until("round 0", |s| event_counts(s).len() == 10).await;

    redis.stop();
    burst(1).await;
    out.until("round 1 without redis", |s| event_counts(s).len() == 20)
        .await;
    wait_for("readiness to report redis degraded", || {
        lull.health.redis() == Some(false)
    })
    .await;
    assert!(!lull.handle.is_finished(), "the worker never exits");

    redis.start();
    wait_for("redis to be back", || lull.health.redis() == Some(true)).await;
    burst(2).await;
    out.until("round 2 after recovery", |s| event_counts(s).len() == 30)
        .await;
    out.settle(Duration::from_millis(800)).await;
    let counts = event_counts(&out.seen);
    assert!(
        counts.values().all(|&n| n == 1),
        "nothing lost or doubled: {counts:?}"
    );
    // Shared state works again: the recovered worker re-claimed its partition and noted the
    // first sightings of round 2's event ids (exactly_once keeps no flushed records in Redis).
    let mut c = redis.conn().await;
    let sighting: Option<String> = c
        .get(
            lull::io::store::Keys::new(&prefix, &cfg.group_id)
                .partition(&cfg.input_topic, 0)
                .event("x0-4"),
        )
        .await
        .unwrap();
    assert!(
        sighting.is_some_and(|s| s.ends_with(":0:20")),
        "event sighting written after recovery (round 2's first fragment is offset 20)"
    );
    lull.stop().await;
    let r = verify_clean(&cfg).await;
    assert_eq!(r.in_batches, 30);
}

/// These hold on a single Redis and on a Redis Cluster alike.
macro_rules! on_single_and_cluster {
    ($($body:ident),* $(,)?) => {
        mod single {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                super::$body(&RedisServer::shared()).await
            })*
        }
        mod cluster {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                super::$body(&RedisServer::cluster()).await
            })*
        }
    };
}

on_single_and_cluster!(
    a_new_owner_replaying_the_log_skips_what_was_already_emitted,
    a_producer_retry_with_the_same_event_id_is_dropped,
    the_pending_key_outlives_a_long_burst_and_goes_with_the_flush,
);
