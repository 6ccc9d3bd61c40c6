//! Every byte a producer can send becomes a fragment, a signal or a dead letter, and nothing a
//! producer sends can stall a partition: against real Apache Kafka (the suite's single node).
//!
//! Regressions: a header *name* that is not UTF-8 panicked the partition worker (rdkafka's
//! `Header.key` unwraps UTF-8) and the partition stalled while readiness stayed green; the DLQ
//! dropped `x-` headers and turned null values into empty ones; a repeated JSON member went to the
//! DLQ as "not valid JSON"; a worker that died left the process ready and exiting 0 (now: any
//! supervised task that dies — owner, worker, commit, probe, redis connection, MONITOR trace).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lull::io::headers;
use lull::model::wire::RawHeader;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The header name from the report: bytes no high-level client can send.
const JUNK: [u8; 6] = [0xff, 0xfe, b'j', b'u', b'n', b'k'];

/// Produces `value` under `key` with exactly `hdrs` (names as bytes, values or null).
async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    hdrs: &[RawHeader],
) {
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers::build(hdrs));
    producer
        .send(record, Duration::from_secs(30))
        .await
        .expect("produce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_headers_and_repeated_members_are_batched_or_dead_lettered_never_a_stall() {
    let cluster = Cluster::start(1).await;
    let cfg = cluster.config("odd-headers");
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    let producer = cluster.producer();
    let odd = vec![
        RawHeader {
            name: JUNK.to_vec(),
            value: Some(b"v".to_vec()),
        },
        RawHeader {
            name: b"x-tenant".to_vec(),
            value: Some(b"acme".to_vec()),
        },
        RawHeader {
            name: b"x-null".to_vec(),
            value: None,
        },
        // An event id that is not UTF-8 is simply absent (the value's own event_id counts).
        RawHeader {
            name: b"event_id".to_vec(),
            value: Some(vec![0xc3, 0x28]),
        },
    ];
    send_raw(&producer, &cluster.input, "odd", &fragment("odd", 0), &odd).await;
    // A repeated member is valid JSON: the last one wins, as in JSON.parse.
    send_raw(
        &producer,
        &cluster.input,
        "odd",
        br#"{"text":"draft","event_id":"odd-1","text":"final words"}"#,
        &odd,
    )
    .await;
    send_raw(&producer, &cluster.input, "odd", b"not json", &odd).await;

    let mut out = cluster.collector(&cluster.output);
    let batch = out.until("the batch", |s| !s.is_empty()).await[0].clone();
    assert_eq!(batch.event_ids(), vec!["odd-0", "odd-1"]);
    assert_eq!(batch.json()["fragments"][1]["text"], "final words");
    assert_eq!(batch.json()["text"], "odd says 0\nfinal words");

    let mut dlq = cluster.collector(&cluster.dlq);
    let dead = dlq.until("the dead letter", |s| !s.is_empty()).await[0].clone();
    assert_eq!(
        &dead.raw_headers[..odd.len()],
        &odd[..],
        "the DLQ keeps every original header as it came: name bytes, x- names, null values"
    );
    let ours: Vec<&[u8]> = dead.raw_headers[odd.len()..]
        .iter()
        .map(|h| h.name.as_slice())
        .collect();
    assert_eq!(
        ours,
        lull::model::wire::DEAD_LETTER_HEADERS
            .map(str::as_bytes)
            .to_vec()
    );
    assert_eq!(dead.value.as_deref(), Some(&b"not json"[..]));

    // The partition keeps moving after the odd message: more input is batched and committed.
    send(
        &producer,
        &cluster.input,
        Some("after"),
        &fragment("after", 0),
        None,
        None,
    )
    .await;
    out.until("the next batch", |s| {
        event_counts(s).contains_key("after-0")
    })
    .await;
    let addr = lull.health.http_addr().expect("http");
    wait_for("lag back to zero", || {
        let page = http_get_blocking(addr, "/metrics");
        metric(&page, "lull_consumer_lag{partition=\"0\"}") == Some(0.0)
    })
    .await;
    assert_eq!(http_get(addr, "/health/ready").await.0, 200);
    lull.stop().await;

    // verify reads any bytes too (it used to panic on the same topic).
    let r = verify_clean(&cfg).await;
    assert_eq!((r.in_batches, r.dead_lettered), (3, 1));
}

/// Starts `lull run` (the test build, with the `fault-injection` feature) armed to panic the task
/// `task` once a fragment of key `boom` is read, waits until it is ready, types that fragment,
/// and checks that the task's death makes the process unready at once (`worker_failed`) and exit
/// 1 with the task named in its log (`named`).
async fn a_task_that_dies_takes_the_process_down(task: &str, named: &str, env: &[(&str, String)]) {
    let cluster = Cluster::start(2).await;
    let group = unique(&format!("dies-{task}"));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("run")
        .env_clear()
        .envs(cluster.process_env(&group))
        .env("LULL_QUIET_MS", "300")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LULL_LOG_FORMAT", "json")
        // Test-only (the fault-injection feature): reading a fragment of this key arms the fault,
        // the task of this kind panics at its next turn, and a failed run keeps its endpoints up
        // for 3 s before it exits (long enough to read its readiness).
        .env("LULL_FAULT_PANIC_KEY", "boom")
        .env("LULL_FAULT_PANIC_TASK", task)
        .env("LULL_FAULT_LINGER_MS", "3000")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    let mut log = Lines::follow(child.stderr.take().expect("piped"));
    log.until_text("partitions assigned");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("ready", || {
        http_get_blocking(addr, "/health/ready").starts_with("HTTP/1.1 200")
    })
    .await;

    let producer = cluster.producer();
    send(
        &producer,
        &cluster.input,
        Some("boom"),
        &fragment("boom", 0),
        None,
        None,
    )
    .await;
    wait_for("readiness 503, worker_failed", || {
        let response = http_get_blocking(addr, "/health/ready");
        response.starts_with("HTTP/1.1 503") && response.contains("worker_failed")
    })
    .await;
    let end = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < end,
            "the process kept running after its {task} task died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = log.rest();
    assert_eq!(status.code(), Some(1), "exit 1: {log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains(named) && l.contains("panicked")),
        "the failure names the task ({named}): {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_worker_that_dies_makes_the_process_unready_and_exit_1() {
    a_task_that_dies_takes_the_process_down("worker", "partition", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_owner_that_dies_makes_the_process_unready_and_exit_1() {
    a_task_that_dies_takes_the_process_down("owner", "partition owner", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_that_dies_makes_the_process_unready_and_exit_1() {
    // Offsets are committed outside transactions in at_least_once.
    let env = [("LULL_DELIVERY", "at_least_once".to_string())];
    a_task_that_dies_takes_the_process_down("commit", "offset commit", &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_probe_that_dies_makes_the_process_unready_and_exit_1() {
    a_task_that_dies_takes_the_process_down("probe", "kafka probe", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_connection_task_that_dies_makes_the_process_unready_and_exit_1() {
    let redis = RedisServer::shared();
    let env = [
        ("REDIS_URL", redis.url.clone()),
        ("LULL_REDIS_PREFIX", unique_prefix("dies-redis")),
    ];
    a_task_that_dies_takes_the_process_down("redis", "redis connection", &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_monitor_trace_that_dies_makes_the_process_unready_and_exit_1() {
    let redis = RedisServer::shared();
    let env = [
        ("REDIS_URL", redis.url.clone()),
        ("LULL_REDIS_PREFIX", unique_prefix("dies-monitor")),
        ("LULL_DEBUG_REDIS_MONITOR", "true".to_string()),
    ];
    a_task_that_dies_takes_the_process_down("monitor", "redis monitor trace", &env).await;
}
