//! The teams downstream of lull, as they are: a Node.js service reading lull's output and DLQ with
//! KafkaJS 2 (the most used Node client), no codec plugins, on the suite's real Kafka node. With
//! lull's default compression it sees every batch and every dead letter; with lz4 (the default
//! before) it fails, which is why the default changed — the second test keeps that proven.
//!
//! Needs `node` and `npm`; the first run installs kafkajs into `tests/kafkajs/node_modules`.

mod common;

use std::process::Command;

use common::*;
use lull::config::KafkaProperty;

/// What the KafkaJS consumer saw.
#[derive(Debug, serde::Deserialize)]
struct Seen {
    batches: Vec<SeenBatch>,
    dead: Vec<SeenDead>,
    errors: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct SeenBatch {
    key: String,
    batch_id: String,
    count: u64,
    header_batch_id: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct SeenDead {
    value: Option<String>,
    error: Option<String>,
}

/// Runs the KafkaJS reader until it saw `batches` batches and `dead` dead letters.
fn kafkajs_reads(
    cluster: &Cluster,
    batches: usize,
    dead: usize,
    deadline_ms: u64,
    fail_fast: bool,
) -> Seen {
    let out = Command::new("node")
        .arg("read.js")
        .args([
            cluster.bootstrap(),
            &cluster.output,
            &cluster.dlq,
            &batches.to_string(),
            &dead.to_string(),
            &deadline_ms.to_string(),
            if fail_fast { "fail-fast" } else { "patient" },
        ])
        .current_dir(kafkajs_dir())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the reader's output is not its JSON summary ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Types bursts for a few users and one invalid message, waits until lull wrote them all, and
/// returns the batch ids lull wrote.
async fn a_session_through_lull(cluster: &Cluster, lull: &Running) -> Vec<String> {
    lull.assigned(cluster.partitions as usize).await;
    let producer = cluster.producer();
    send_bursts(&producer, &cluster.input, ["ana", "bo", "cy", "di"], 0..3).await;
    send(
        &producer,
        &cluster.input,
        Some("ana"),
        b"not json",
        None,
        None,
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    let seen = out
        .until("every fragment in a batch", |s| {
            s.iter()
                .map(|b| b.json()["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 12
        })
        .await;
    let mut ids: Vec<String> = seen
        .iter()
        .map(|b| b.json()["batch_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut dlq = cluster.collector(&cluster.dlq);
    dlq.until("the dead letter", |s| s.len() == 1).await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafkajs_consumer_reads_every_batch_and_dead_letter_with_the_defaults() {
    let cluster = Cluster::start(2).await;
    let lull = Running::start(cluster.config("kafkajs"));
    let ids = a_session_through_lull(&cluster, &lull).await;
    let seen = kafkajs_reads(&cluster, ids.len(), 1, DEADLINE.as_millis() as u64, false);
    lull.stop().await;

    assert!(seen.errors.is_empty(), "KafkaJS failed: {:?}", seen.errors);
    let mut got: Vec<String> = seen.batches.iter().map(|b| b.batch_id.clone()).collect();
    got.sort();
    assert_eq!(got, ids, "KafkaJS saw other batches than lull wrote");
    for b in &seen.batches {
        assert_eq!(b.header_batch_id.as_deref(), Some(b.batch_id.as_str()));
        assert!(["ana", "bo", "cy", "di"].contains(&b.key.as_str()));
    }
    assert_eq!(seen.batches.iter().map(|b| b.count).sum::<u64>(), 12);
    assert_eq!(seen.dead.len(), 1);
    assert_eq!(seen.dead[0].value.as_deref(), Some("not json"));
    assert!(seen.dead[0].error.as_deref().is_some_and(|e| !e.is_empty()));
}

/// Why the default is not lz4: KafkaJS cannot read it. If this starts to pass, KafkaJS learnt
/// lz4 and the choice of default can be revisited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_cannot_read_lz4_output() {
    let cluster = Cluster::start(1).await;
    let mut config = cluster.config("kafkajs-lz4");
    config.kafka.insert(
        "compression.type".into(),
        KafkaProperty::Plain("lz4".into()),
    );
    let lull = Running::start(config);
    let ids = a_session_through_lull(&cluster, &lull).await;
    let seen = kafkajs_reads(&cluster, ids.len(), 1, DEADLINE.as_millis() as u64, true);
    lull.stop().await;
    assert!(
        seen.errors.iter().any(|e| e.contains("LZ4")),
        "expected KafkaJS to fail on lz4, it saw {} batches: {:?}",
        seen.batches.len(),
        seen.errors
    );
}
