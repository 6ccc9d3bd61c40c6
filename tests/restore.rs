//! A takeover's state restore is bounded (exactly_once), on real Apache Kafka (the suite's single
//! node): with 100,000 keys ever flushed on a partition and about 1,000 active, the partition's
//! next owner reads on the order of the active keys, not every key ever seen — lull deletes the
//! records that can never skip anything again (tombstones), and each commit's partition record
//! says from where a takeover must read, whether or not the log cleaner has compacted what lies
//! below. Prints the count and the time. Its own test binary: it reads lull's process-wide
//! metrics.

mod common;

use std::time::Duration;

use common::*;
use lull::ops::metrics::metrics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const EVER: usize = 100_000;
const ACTIVE: usize = 1_000;

/// The group's committed offset of partition 0.
fn committed(cluster: &Cluster, group: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&cluster.input, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10));
    let offset = got
        .ok()
        .and_then(|t| t.find_partition(&cluster.input, 0).map(|e| e.offset()));
    match offset {
        Some(Offset::Offset(o)) => o,
        _ => -1,
    }
}

/// Messages (records and tombstones) in partition 0 of `topic`, read to its end.
fn messages_in(bootstrap: &str, topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "restore-count")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let (low, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    if high <= low {
        return 0;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    c.assign(&tpl).expect("assign");
    let mut n = 0;
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => n += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return n,
            _ => {}
        }
        assert!(std::time::Instant::now() < end, "cannot read {topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_reads_about_the_active_keys_not_every_key_ever_flushed() {
    let cluster = Cluster::start(1).await;
    let cfg = cluster.config("restore");
    let group = cfg.group_id.clone();
    let state = cfg.state_topic();
    // The state topic as `lull topics` makes it, with segments small enough for the log cleaner
    // to get to some of them within the test (it need not have).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin");
    let quick = [
        ("segment.bytes", "1048576"),
        ("segment.ms", "2000"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "100"),
    ];
    let mut topic = NewTopic::new(&state, 1, TopicReplication::Fixed(1));
    for (k, v) in lull::io::STATE_TOPIC_CONFIG
        .iter()
        .filter(|(k, _)| !quick.iter().any(|(q, _)| q == k))
        .chain(quick.iter())
    {
        topic = topic.set(k, v);
    }
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create")
    {
        r.expect("state topic created");
    }

    // 100,000 users, one burst each, typed over the last ~17 minutes.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    let now = lull::ops::clock::now_ms();
    write_backlog(
        &producer,
        &cluster.input,
        0..EVER,
        now - 1_000_000 - 60_000,
        10,
    )
    .await;
    let first = Running::start(cfg.clone());
    first.assigned(1).await;
    wait_for("every old burst committed", || {
        committed(&cluster, &group) >= EVER as i64
    })
    .await;
    // About 1,000 users active now.
    let now = lull::ops::clock::now_ms();
    write_backlog(
        &producer,
        &cluster.input,
        EVER..EVER + ACTIVE,
        now - 5_000,
        1,
    )
    .await;
    wait_for("the active bursts committed", || {
        committed(&cluster, &group) >= (EVER + ACTIVE) as i64
    })
    .await;
    first.stop().await;

    // The takeover: the partition's next owner reads its state records.
    let (read0, took0) = (
        metrics().state_records_read.get(),
        metrics().state_restore_seconds.get_sample_sum(),
    );
    let second = Running::start(cfg);
    second.assigned(1).await;
    wait_for("the state restored", || {
        metrics().state_restore_seconds.get_sample_count() >= 2
    })
    .await;
    let read = metrics().state_records_read.get() - read0;
    let took = metrics().state_restore_seconds.get_sample_sum() - took0;
    let (b, s) = (cluster.bootstrap().to_string(), state.clone());
    let held = tokio::task::spawn_blocking(move || messages_in(&b, &s))
        .await
        .expect("count");
    eprintln!(
        "state restore: {EVER} keys ever flushed, {ACTIVE} active: the next owner read {read} of \
         the {held} messages the state partition holds, in {:.0} ms",
        took * 1000.0
    );
    assert!(
        read < (10 * ACTIVE) as u64,
        "the takeover read {read} state messages for {ACTIVE} active keys"
    );
    second.stop().await;
}
