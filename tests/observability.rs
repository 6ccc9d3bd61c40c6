//! What an on-call engineer sees: health over HTTP, every metric moving, JSON logs with instance
//! and pid. (Memory under a flood is `budget.rs`.)

mod common;

use std::time::Duration;

use common::*;
use lull::config::Config;

async fn page(lull: &Running) -> String {
    let addr = lull.health.http_addr().expect("http bound");
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_every_metric_over_http() {
    let cluster = Cluster::start(2).await;
    let redis = RedisServer::shared();
    let mut cfg: Config = redis.configure(cluster.config("obs"), &unique_prefix("obs"));
    cfg.max_fragment_bytes = 300;
    cfg.quiet = Duration::from_millis(600);
    let lull = Running::start(cfg);
    lull.assigned(2).await;
    let addr = lull.health.http_addr().expect("http bound");

    let (code, body) = http_get(addr, "/health/live").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["live"],
        true
    );
    wait_for("kafka reachability probe", || lull.health.kafka_reachable()).await;
    let (code, body) = http_get(addr, "/health/ready").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(v["ready"], true);
    assert_eq!(v["assigned_partitions"], 2);
    assert_eq!(v["redis"], "connected");

    let producer = cluster.producer();
    for seq in 0..3 {
        send(
            &producer,
            &cluster.input,
            Some("m"),
            &fragment("m", seq),
            None,
            None,
        )
        .await;
    }
    send(
        &producer,
        &cluster.input,
        Some("m"),
        &fragment("m", 2),
        None,
        None,
    )
    .await; // duplicate event id
    send(
        &producer,
        &cluster.input,
        Some("m"),
        b"not json",
        None,
        None,
    )
    .await;
    // While the window is open, the gauges show it.
    let mut saw_open = false;
    for _ in 0..50 {
        let p = page(&lull).await;
        if metric(&p, "lull_open_windows").unwrap_or(0.0) > 0.0
            && metric(&p, "lull_open_window_bytes").unwrap_or(0.0) > 0.0
            && metric(&p, "lull_oldest_open_window_age_seconds").unwrap_or(0.0) > 0.0
        {
            saw_open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_open, "open-window gauges moved during the burst");
    // A fragment far behind partition time is late.
    let old = lull::ops::clock::now_ms() - 60_000;
    send(
        &producer,
        &cluster.input,
        Some("late"),
        &fragment("late", 0),
        None,
        Some(old),
    )
    .await;

    let mut out = cluster.collector(&cluster.output);
    out.until("both batches", |s| event_counts(s).len() == 4)
        .await;
    // exactly_once (the default): offsets commit inside transactions.
    let committed = "lull_transactions_total{outcome=\"committed\"}";
    let end = tokio::time::Instant::now() + DEADLINE;
    let p = loop {
        let p = page(&lull).await;
        if metric(&p, committed).unwrap_or(0.0) > 0.0
            && metric(&p, "lull_dlq_messages_total").unwrap_or(0.0) > 0.0
        {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no committed transaction and dead letter:\n{p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved = |series: &str| {
        let v = metric(&p, series).unwrap_or_else(|| panic!("{series} missing:\n{p}"));
        assert!(v > 0.0, "{series} did not move");
    };
    moved("lull_fragments_received_total");
    moved("lull_fragments_invalid_total{reason=\"not_json\"}");
    moved("lull_fragments_duplicate_total");
    moved("lull_fragments_late_total");
    moved("lull_batches_flushed_total{reason=\"quiet\"}");
    moved("lull_batch_fragments_count");
    moved("lull_batch_bytes_sum");
    moved("lull_flush_lateness_seconds_count");
    moved("lull_end_to_end_seconds_count");
    moved("lull_dlq_messages_total");
    moved(committed);
    moved("lull_transaction_commit_seconds_count");
    moved("lull_state_restore_seconds_count");
    moved("lull_assigned_partitions");
    moved("lull_redis_call_seconds_count{script=\"admit\"}");
    moved("lull_memory_budget_bytes");
    moved("lull_build_info{version=\"0.1.0\"}");
    // Whole seconds (the prometheus crate's collector): present, possibly still 0.
    assert!(metric(&p, "process_cpu_seconds_total").is_some(), "{p}");
    moved("process_resident_memory_bytes");
    moved("process_open_fds");
    assert!(
        metric(&p, "lull_consumer_lag{partition=\"0\"}").is_some()
            || metric(&p, "lull_consumer_lag{partition=\"1\"}").is_some(),
        "lag per partition:\n{p}"
    );
    for series in [
        "lull_commits_total",
        "lull_produce_retries_total",
        "lull_redis_errors_total",
        "lull_backpressure_paused",
        "lull_held_bytes",
    ] {
        assert!(metric(&p, series).is_some(), "{series} exported");
    }
    // No series is labelled by user: no label names a user, and no label value is one of the
    // test's user keys (the process collector's help text may say "user CPU time").
    for line in p.lines().filter(|l| !l.starts_with('#')) {
        let labels = line.split_once('{').map_or("", |(_, rest)| rest);
        assert!(
            !["user", "key=", "user_id"]
                .iter()
                .any(|w| labels.contains(w)),
            "a series labelled by user: {line}"
        );
    }
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_why_when_kafka_is_down_and_recovers() {
    // The mock: its broker goes down on command (the suite's real broker is shared).
    let cluster = Cluster::mock(1);
    let lull = Running::start(cluster.config("ready"));
    lull.assigned(1).await;
    let addr = lull.health.http_addr().unwrap();
    wait_for("ready", || lull.health.kafka_reachable()).await;
    assert_eq!(http_get(addr, "/health/ready").await.0, 200);
    cluster
        .mock_broker()
        .with(|c| c.broker_down(1))
        .unwrap()
        .unwrap();
    let end = tokio::time::Instant::now() + DEADLINE;
    let body = loop {
        let (code, body) = http_get(addr, "/health/ready").await;
        if code == 503 {
            break body;
        }
        assert!(tokio::time::Instant::now() < end, "never unready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "kafka_unreachable"),
        "{body}"
    );
    assert_eq!(v["redis"], "disabled");
    assert_eq!(
        http_get(addr, "/health/live").await.0,
        200,
        "still live: the loop turns"
    );
    cluster
        .mock_broker()
        .with(|c| c.broker_up(1))
        .unwrap()
        .unwrap();
    wait_for("ready again", || lull.health.kafka_reachable()).await;
    assert_eq!(http_get(addr, "/health/ready").await.0, 200);
    lull.stop().await;
}
