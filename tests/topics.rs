//! `lull topics` on real Apache Kafka (the suite's single node): it creates lull's topics (input,
//! output, DLQ and the compacted state topic) with the replication the cluster can hold, and
//! leaves existing ones alone. The three-node case
//! (replication 3) is in `chaos.rs`, which owns that cluster.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Runs `lull topics` with `args` against `bootstrap` for topics under `base`; (exit code, stdout).
pub fn lull_topics(bootstrap: &str, base: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("topics")
        .args(args)
        .env_clear()
        .env("KAFKA_BROKERS", bootstrap)
        .env("LULL_INPUT_TOPIC", format!("{base}.in"))
        .env("LULL_OUTPUT_TOPIC", format!("{base}.out"))
        .env("LULL_DLQ_TOPIC", format!("{base}.dlq"))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("lull topics runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Partitions and replicas per partition of `topic`, from the cluster's metadata.
pub fn shape(bootstrap: &str, topic: &str) -> (usize, usize) {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let t = &md.topics()[0];
    (
        t.partitions().len(),
        t.partitions().first().map_or(0, |p| p.replicas().len()),
    )
}

#[test]
fn topics_are_created_once_with_the_replication_a_single_node_holds() {
    let kafka = KafkaEnv::single();
    let base = unique("topics");
    let (code, text) = lull_topics(kafka.bootstrap(), &base, &["--partitions", "3"]);
    assert_eq!(code, Some(0), "{text}");
    for t in ["in", "out", "dlq"] {
        assert!(
            text.contains(&format!("created {base}.{t} (3 partitions, replication 1)")),
            "{text}"
        );
        assert_eq!(shape(kafka.bootstrap(), &format!("{base}.{t}")), (3, 1));
    }
    // The state topic of the default group, compacted, with the input's partitions.
    let state = format!("{base}.in.lull-state");
    assert!(
        text.contains(&format!("created {state} (3 partitions, replication 1)")),
        "{text}"
    );
    let configs = kafka_tool(
        "kafka.admin.ConfigCommand",
        &[
            "--bootstrap-server",
            kafka.bootstrap(),
            "--entity-type",
            "topics",
            "--entity-name",
            &state,
            "--describe",
        ],
    );
    assert!(configs.contains("cleanup.policy=compact"), "{configs}");
    let (code, text) = lull_topics(kafka.bootstrap(), &base, &["--partitions", "5"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("exists").count(), 4, "{text}");
    assert_eq!(
        shape(kafka.bootstrap(), &format!("{base}.in")).0,
        3,
        "left alone"
    );

    // Asking for more copies than there are brokers is the broker's refusal, said plainly.
    let (code, text) = lull_topics(
        kafka.bootstrap(),
        &unique("topics"),
        &["--partitions", "1", "--replication", "3"],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot create topic"), "{text}");
}
