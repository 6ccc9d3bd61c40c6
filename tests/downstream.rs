//! Downstream readers see each batch once (exactly_once), on the suite's real Kafka node: lull is
//! `kill -9`-ed in the middle of a transaction, so the output topic holds an aborted
//! transaction's batches beside the committed ones, and then restarted. Three consumers as the
//! teams downstream run them — KafkaJS (Node.js), confluent-kafka (Python), and Kafka's own Java
//! console consumer with `isolation.level=read_committed` — each see every batch exactly once.
//! The Java consumer with its default (`read_uncommitted`) sees the aborted batches too: the one
//! setting the README tells Java teams to change.
//!
//! Needs `node`/`npm` (KafkaJS, installed on first run as in `tests/kafkajs.rs`) and `python3`
//! (confluent-kafka, installed on first run into `target/downstream-venv`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
const USERS: usize = 30_000;

/// The pinned confluent-kafka for Python, in a virtual environment of its own (once per run).
fn python() -> PathBuf {
    static PY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/downstream-venv");
        let py = venv.join("bin/python");
        let ready = Command::new(&py)
            .args(["-c", "import confluent_kafka"])
            .status()
            .is_ok_and(|s| s.success());
        if !ready {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 runs (needed for the confluent-kafka reader)");
            assert!(made.success(), "python3 -m venv failed");
            let installed = Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "confluent-kafka==2.12.1"])
                .status()
                .expect("pip runs");
            assert!(installed.success(), "pip install confluent-kafka failed");
        }
        py
    })
    .clone()
}

/// batch id -> how many times a reader saw it.
fn tally(ids: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for id in ids {
        *out.entry(id).or_default() += 1;
    }
    out
}

/// What a reader saw, checked against the committed batches.
fn assert_each_once(reader: &str, seen: &BTreeMap<String, usize>, want: &BTreeMap<String, usize>) {
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{reader} saw batches twice: {twice:?}");
    assert_eq!(
        seen.len(),
        want.len(),
        "{reader} saw {} of {} batches",
        seen.len(),
        want.len()
    );
    assert!(seen.keys().eq(want.keys()), "{reader}: other batches");
}

/// A `lull run` process on the cluster.
fn lull_run(cluster: &Cluster, group: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("run")
        .env_clear()
        .envs(cluster.process_env(group))
        .env("LULL_QUIET_MS", "300")
        // Long transactions while the backlog is read: the kill lands in one.
        .env("LULL_TRANSACTION_MS", "5000")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join(format!("{group}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("lull run starts")
}

/// Java's console consumer on `topic` from the beginning, until nothing new for 6 s; the batch
/// ids of the values it printed. `committed`: with `isolation.level=read_committed`.
fn java_reads(cluster: &Cluster, topic: &str, committed: bool) -> Vec<String> {
    let mut args = vec![
        "--bootstrap-server",
        cluster.bootstrap(),
        "--topic",
        topic,
        "--from-beginning",
        "--timeout-ms",
        "6000",
    ];
    if committed {
        args.extend(["--consumer-property", "isolation.level=read_committed"]);
    }
    let out = kafka_tool("org.apache.kafka.tools.consumer.ConsoleConsumer", &args);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["batch_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_sees_each_batch_once_beside_an_aborted_transaction() {
    let cluster = Cluster::start(PARTITIONS).await;
    let group = unique("downstream");
    let producer = cluster.producer();
    write_backlog(
        &producer,
        &cluster.input,
        0..USERS,
        lull::ops::clock::now_ms() - 3_600_000,
        50,
    )
    .await;

    // Batches written but not committed: lull is in the middle of a transaction. kill -9.
    let uncommitted: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "downstream-uncommitted")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&cluster.output, p, Offset::Beginning)
            .expect("partition");
    }
    uncommitted.assign(&tpl).expect("assign");
    let mut first = lull_run(&cluster, &group);
    let _ = tokio::time::timeout(DEADLINE, uncommitted.recv())
        .await
        .expect("lull writes batches")
        .expect("a batch");
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    let mut committed = cluster.collector(&cluster.output);
    committed.settle(Duration::from_secs(1)).await;
    assert!(
        committed.seen.is_empty(),
        "the kill came after a commit: no transaction was left open"
    );

    // The next owner aborts that transaction, replays, and finishes.
    let mut second = lull_run(&cluster, &group);
    committed
        .until("every fragment in a committed batch", |s| {
            event_counts(s).len() == USERS
        })
        .await;
    committed.settle(Duration::from_secs(2)).await;
    let _ = second.kill();
    let _ = second.wait();
    let want = tally(
        committed
            .seen
            .iter()
            .map(|b| b.json()["batch_id"].as_str().unwrap().to_string()),
    );
    assert!(want.values().all(|n| *n == 1), "librdkafka read_committed");

    // KafkaJS.
    let out = Command::new("node")
        .arg("read.js")
        .args([
            cluster.bootstrap(),
            &cluster.output,
            &cluster.dlq,
            &want.len().to_string(),
            "0",
            "120000",
            "patient",
        ])
        .current_dir(kafkajs_dir())
        .output()
        .expect("node runs");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the KafkaJS reader prints JSON");
    let ids = v["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["batch_id"].as_str().unwrap().to_string());
    assert_each_once("KafkaJS", &tally(ids), &want);

    // confluent-kafka for Python.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/downstream/read.py");
    let out = Command::new(python())
        .arg(script)
        .args([
            cluster.bootstrap(),
            &cluster.output,
            &want.len().to_string(),
            "120000",
        ])
        .output()
        .expect("python runs");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the Python reader prints JSON");
    let ids = v["batch_ids"]
        .as_array()
        .expect("batch_ids")
        .iter()
        .map(|b| b.as_str().unwrap().to_string());
    assert_each_once("confluent-kafka (Python)", &tally(ids), &want);

    // Java, read_committed as the README says; and Java's default, for contrast.
    let java = java_reads(&cluster, &cluster.output, true);
    assert_each_once(
        "the Java console consumer (read_committed)",
        &tally(java),
        &want,
    );
    let java_default = java_reads(&cluster, &cluster.output, false);
    assert!(
        java_default.len() > want.len(),
        "read_uncommitted shows the aborted batches too ({} messages, {} batches)",
        java_default.len(),
        want.len()
    );
    eprintln!(
        "downstream: {} batches; KafkaJS, Python and Java (read_committed) each saw every one once; \
         Java read_uncommitted saw {} messages",
        want.len(),
        java_default.len()
    );
}
