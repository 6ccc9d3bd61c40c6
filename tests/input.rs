//! Every byte a producer can send becomes a fragment, a signal or a dead letter, and nothing a
//! producer sends can stall a partition: against real Apache Kafka (the suite's single node).
//!
//! Regressions: a header *name* that is not UTF-8 panicked the partition worker (rdkafka's
//! `Header.key` unwraps UTF-8) and the partition stalled while readiness stayed green; the DLQ
//! dropped `x-` headers and turned null values into empty ones; a repeated JSON member went to the
//! DLQ as "not valid JSON"; a worker that died left the process ready and exiting 0.

mod common;

use std::io::{BufRead, BufReader};
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
        let page = futures_executor_get(addr, "/metrics");
        metric(&page, "lull_consumer_lag{partition=\"0\"}") == Some(0.0)
    })
    .await;
    assert_eq!(http_get(addr, "/health/ready").await.0, 200);
    lull.stop().await;

    // verify reads any bytes too (it used to panic on the same topic).
    let r = verify_clean(&cfg).await;
    assert_eq!((r.in_batches, r.dead_lettered), (3, 1));
}

/// A blocking GET for use inside a `wait_for` condition.
fn futures_executor_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lull\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_makes_the_process_unready_and_exit_non_zero() {
    let cluster = Cluster::start(2).await;
    let group = unique("dies");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("run")
        .env_clear()
        .envs(cluster.process_env(&group))
        .env("LULL_QUIET_MS", "300")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LULL_LOG_FORMAT", "json")
        // Test-only (the fault-injection feature): the worker that reads this key panics.
        .env("LULL_FAULT_PANIC_KEY", "boom")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut log = Vec::new();
    let end = std::time::Instant::now() + DEADLINE;
    while !log
        .iter()
        .any(|l: &String| l.contains("partitions assigned"))
    {
        assert!(std::time::Instant::now() < end, "never assigned: {log:#?}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push(line);
        }
    }
    wait_for("ready", || {
        futures_executor_get(addr, "/health/ready").starts_with("HTTP/1.1 200")
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
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < end,
            "the process kept running after its worker died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(line);
    }
    assert_eq!(status.code(), Some(1), "non-zero exit: {log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("partition") && l.contains("panicked")),
        "the failure is logged: {log:#?}"
    );
}
