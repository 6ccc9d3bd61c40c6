//! The chaos suite, on a real three-node Apache Kafka cluster (replication 3,
//! `min.insync.replicas=2`, started by `scripts/test.sh` and named by `LULL_TEST_KAFKA3`), with
//! lull as OS processes, while simulated users type bursts:
//!
//! * `kill -9` of the leader of the busiest input partition mid-burst, then its restart;
//! * `kill -9` of the consumer group's coordinator, and of a transaction coordinator;
//! * a rolling restart of all three brokers under load;
//! * repeated `kill -9` of lull processes while users type;
//! * a **zombie**: one of two lull processes paused (SIGSTOP) past its session timeout while
//!   users type, its partitions moved to the other, then woken (SIGCONT);
//!
//! with consumer groups on the classic protocol (cooperative-sticky) and on KIP-848
//! (`group.protocol=consumer`). In the default delivery, exactly_once, and **without Redis**, a
//! `read_committed` reader must see every fragment in exactly one batch: 0 lost, 0 repeated, in
//! every scenario. at_least_once (with Redis) runs the kill loop too, for comparison: there a
//! killed process may emit again only the batches inside its acknowledgement-to-Redis window
//! (acknowledged by Kafka but not yet recorded in Redis when it died); those are counted,
//! reported, and each must be an exact repeat. Every run is audited by `lull verify` (nothing
//! lost or altered, boundaries kept) and compared with an undisturbed run over the same log (the
//! same batch ids and contents).
//!
//! The scenarios share the cluster and kill its brokers, so they run one at a time (a lock here,
//! and a nextest test group). `LULL_CHAOS_REPORT` names a file that collects one line per run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::procs::{Typing, Worker};
use common::*;
use lull::config::KafkaProperty;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

/// One scenario at a time: they share the cluster and kill its brokers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 6;
const USERS: usize = 36;
const QUIET_MS: u64 = 500;
/// Wide enough to cover a leader failover: a fragment held up first in the producer and then in
/// lull's fetch by a dead leader (broker session timeout 4 s, then metadata refreshes on both
/// sides) still joins its burst, so the batches equal those of an undisturbed run. Beyond the
/// grace a fragment is late by design (a new batch): lull closes windows by the wall clock while
/// it believes it has read everything, and cannot tell a stalled fetch from a quiet user.
const GRACE_MS: u64 = 12_000;
/// A repeated batch counts as "inside the acknowledgement-to-Redis window" of a kill if it was
/// first flushed at most this long before the kill (send, acknowledgement, then the next Redis
/// sync, which runs every 50 ms).
const ACK_TO_REDIS_WINDOW_MS: i64 = 2_000;
/// `offsets.topic.num.partitions` in scripts/kafka.sh.
const OFFSETS_PARTITIONS: i32 = 10;
/// `transaction.state.log.num.partitions` in scripts/kafka.sh.
const TXN_STATE_PARTITIONS: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// The classic group protocol with the cooperative-sticky assignor.
    Classic,
    /// KIP-848, the broker-side consumer group protocol.
    Consumer,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9 the leader of the busiest input partition, restart it after a while.
    LeaderKill,
    /// kill -9 the group coordinator, restart it after a while.
    CoordinatorKill,
    /// kill -9 the transaction coordinator of the busiest input partition's producer, restart
    /// it after a while.
    TxnCoordinatorKill,
    /// SIGSTOP one lull process past its session timeout, wait for the other to own every
    /// partition, SIGCONT it.
    Zombie,
    /// Stop and start each broker in turn, waiting for full replication in between.
    RollingRestart,
    /// kill -9 a lull process this many times, restarting it each time.
    WorkerKills(usize),
}

/// What a scenario runs lull with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The default: Kafka transactions, no Redis.
    ExactlyOnce,
    /// No transactions; Redis records what was delivered.
    AtLeastOnceWithRedis,
}

struct Run {
    cluster: Cluster,
    group: String,
    redis: Option<(String, String)>,
    protocol: Protocol,
    mode: Mode,
}

impl Run {
    fn worker(&self, instance: &str) -> Worker {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lull"));
        c.arg("run")
            .env_clear()
            .envs(self.cluster.process_env(&self.group))
            .env(
                "LULL_DELIVERY",
                match self.mode {
                    Mode::ExactlyOnce => "exactly_once",
                    Mode::AtLeastOnceWithRedis => "at_least_once",
                },
            )
            .env("LULL_INSTANCE_ID", instance)
            .env("LULL_QUIET_MS", QUIET_MS.to_string())
            .env("LULL_GRACE_MS", GRACE_MS.to_string())
            .env("LULL_HTTP_ADDR", "127.0.0.1:0")
            .env("LULL_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("LULL_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .current_dir(std::env::temp_dir());
        if let Some((url, prefix)) = &self.redis {
            c.env("REDIS_URL", url).env("LULL_REDIS_PREFIX", prefix);
        }
        match self.protocol {
            Protocol::Classic => {
                c.env(
                    "LULL_KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
                    "cooperative-sticky",
                )
                .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
                .env("LULL_KAFKA_HEARTBEAT_INTERVAL_MS", "500");
            }
            Protocol::Consumer => {
                c.env("LULL_KAFKA_GROUP_PROTOCOL", "consumer");
            }
        }
        Worker::spawn(c)
    }
}

/// `scripts/kafka.sh <action>` on one node, off the async workers (it waits for the node).
async fn node(kafka: &KafkaEnv, action: &'static str, id: i32) {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || kafka.node(action, id))
        .await
        .expect("kafka.sh task");
}

fn metadata_client(bootstrap: &str) -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client")
}

/// The broker leading `topic`/`partition` now.
async fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c = metadata_client(&bootstrap);
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        md.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .expect("partition")
    })
    .await
    .expect("metadata task")
}

/// Waits until `topic`/`partition` is led by a broker other than `old` (a killed leader's
/// partitions move once its broker session times out).
async fn wait_for_leader_change(bootstrap: &str, topic: &str, partition: i32, old: i32) {
    let end = Instant::now() + DEADLINE;
    loop {
        let now = leader_of(bootstrap, topic, partition).await;
        if now >= 0 && now != old {
            return;
        }
        assert!(
            Instant::now() < end,
            "{topic}/{partition} still led by killed broker {old}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Java's `String.hashCode`, which Kafka uses to place a group on `__consumer_offsets`.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The broker coordinating `group`: the leader of its `__consumer_offsets` partition.
async fn coordinator_of(bootstrap: &str, group: &str) -> i32 {
    let h = java_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    leader_of(bootstrap, "__consumer_offsets", abs % OFFSETS_PARTITIONS).await
}

/// Waits until every partition of `topics` has all three replicas in sync.
async fn fully_replicated(bootstrap: &str, topics: &[&str]) {
    let end = Instant::now() + DEADLINE * 2;
    loop {
        let (b, t): (String, Vec<String>) = (
            bootstrap.to_string(),
            topics.iter().map(|s| s.to_string()).collect(),
        );
        let ok = tokio::task::spawn_blocking(move || {
            let c = metadata_client(&b);
            t.iter().all(|topic| {
                c.fetch_metadata(Some(topic), Duration::from_secs(5))
                    .map(|md| {
                        md.topics().iter().all(|t| {
                            !t.partitions().is_empty()
                                && t.partitions()
                                    .iter()
                                    .all(|p| p.leader() >= 0 && p.isr().len() == 3)
                        })
                    })
                    .unwrap_or(false)
            })
        })
        .await
        .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < end,
            "the cluster never got back to full replication"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// batch id -> fragment event ids, once per id (a repeat must be identical: checked).
fn shapes(batches: &[OutMsg]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in batches {
        let id = b.json()["batch_id"].as_str().unwrap().to_string();
        let ids = b.event_ids();
        if let Some(seen) = out.get(&id) {
            assert_eq!(seen, &ids, "batch {id} repeated with other contents");
        }
        out.insert(id, ids);
    }
    out
}

/// The leader of `__transaction_state`'s partition for `transactional_id`: its coordinator.
async fn txn_coordinator_of(bootstrap: &str, transactional_id: &str) -> i32 {
    let h = java_hash(transactional_id);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    leader_of(bootstrap, "__transaction_state", abs % TXN_STATE_PARTITIONS).await
}

/// Waits until the lull process listening at `addr` owns `n` partitions.
async fn owns(addr: std::net::SocketAddr, n: usize) {
    let end = Instant::now() + DEADLINE;
    loop {
        let (_, body) = http_get(addr, "/health/ready").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["assigned_partitions"].as_u64() == Some(n as u64) {
            return;
        }
        assert!(Instant::now() < end, "never owned {n} partitions: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn scenario(name: &str, protocol: Protocol, workers: usize, fault: Fault, mode: Mode) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let kafka = KafkaEnv::three();
    let cluster = Cluster::real(kafka.clone(), PARTITIONS, 3).await;
    let redis = (mode == Mode::AtLeastOnceWithRedis).then(RedisServer::shared);
    let run = Run {
        group: unique(&format!("chaos-{name}")),
        redis: redis.as_ref().map(|r| (r.url.clone(), unique_prefix(name))),
        protocol,
        mode,
        cluster,
    };
    let bootstrap = run.cluster.bootstrap().to_string();
    let names: Vec<String> = (0..workers).map(|i| format!("{name}-w{i}")).collect();
    let mut procs: Vec<Worker> = names.iter().map(|n| run.worker(n)).collect();
    wait_for("every lull process in the group", || {
        procs.iter().all(Worker::assigned)
    })
    .await;

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    let mut out = run.cluster.collector(&run.cluster.output);
    let typing = Typing::start(&producer, &run.cluster.input, name, USERS, QUIET_MS);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut kills_ms: Vec<i64> = Vec::new();
    let mut broker_faults = 0;
    match fault {
        Fault::LeaderKill => {
            let p = typing.busiest_partition();
            let leader = leader_of(&bootstrap, &run.cluster.input, p).await;
            node(&kafka, "kill-node", leader).await;
            broker_faults += 1;
            // The fault took: another broker leads the partition now.
            wait_for_leader_change(&bootstrap, &run.cluster.input, p, leader).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            node(&kafka, "start-node", leader).await;
        }
        Fault::TxnCoordinatorKill => {
            let p = typing.busiest_partition();
            let id = lull::io::kafka::transactional_id(&run.group, &run.cluster.input, p);
            let coordinator = txn_coordinator_of(&bootstrap, &id).await;
            node(&kafka, "kill-node", coordinator).await;
            broker_faults += 1;
            let h = java_hash(&id);
            let part = if h == i32::MIN { 0 } else { h.abs() } % TXN_STATE_PARTITIONS;
            wait_for_leader_change(&bootstrap, "__transaction_state", part, coordinator).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            node(&kafka, "start-node", coordinator).await;
        }
        Fault::Zombie => {
            // The zombie is paused past its session timeout (6 s) while users type; the group
            // moves its partitions to the other process, which must own all of them.
            let live = procs[1].http_addr().expect("the live process serves HTTP");
            procs[0].signal("STOP");
            kills_ms.push(lull::ops::clock::now_ms());
            owns(live, PARTITIONS as usize).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            procs[0].signal("CONT");
            // Woken, it is fenced; the group takes its partitions back and shares them again.
            wait_for("the woken process to rejoin with partitions", || {
                procs[0]
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take_while(|l| !l.contains("partitions revoked"))
                    .any(|l| l.contains("partitions assigned"))
            })
            .await;
        }
        Fault::CoordinatorKill => {
            let coordinator = coordinator_of(&bootstrap, &run.group).await;
            node(&kafka, "kill-node", coordinator).await;
            broker_faults += 1;
            let h = java_hash(&run.group);
            let p = if h == i32::MIN { 0 } else { h.abs() } % OFFSETS_PARTITIONS;
            wait_for_leader_change(&bootstrap, "__consumer_offsets", p, coordinator).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            node(&kafka, "start-node", coordinator).await;
        }
        Fault::RollingRestart => {
            let topics = [
                run.cluster.input.as_str(),
                run.cluster.output.as_str(),
                "__consumer_offsets",
            ];
            for id in 1..=3 {
                node(&kafka, "stop-node", id).await;
                node(&kafka, "start-node", id).await;
                broker_faults += 1;
                fully_replicated(&bootstrap, &topics).await;
            }
        }
        Fault::WorkerKills(n) => {
            for k in 0..n {
                let i = k % procs.len();
                // SIGKILL: no drain, no commit, no Redis sync.
                procs[i].child.kill().expect("kill -9");
                procs[i].child.wait().expect("reaped");
                kills_ms.push(lull::ops::clock::now_ms());
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                procs[i] = run.worker(&names[i]);
                tokio::time::sleep(Duration::from_millis(2_500)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let typed = typing.finish().await;
    out.until("every typed fragment in a batch", |s| {
        event_counts(s).len() == typed
    })
    .await;
    // Long enough for any batch still to come out twice to show up.
    out.settle(Duration::from_millis(GRACE_MS + 3_000)).await;
    for w in procs {
        w.stop().await;
    }
    // Everything written, to the end, as the audit below reads it: a killed worker's successor
    // may repeat batches after the settle above (its takeover waits for the session timeout).
    out.read_to_end().await;

    // After a leader moved, its new leader's high watermark catches up only as the followers
    // fetch: the audit reads to the ends it sees, so wait until they cover everything typed.
    let (b, input) = (bootstrap.clone(), run.cluster.input.clone());
    let end = Instant::now() + DEADLINE;
    loop {
        let (b, input) = (b.clone(), input.clone());
        let written = tokio::task::spawn_blocking(move || {
            let c = metadata_client(&b);
            (0..PARTITIONS)
                .map(|p| {
                    c.fetch_watermarks(&input, p, Duration::from_secs(5))
                        .map_or(0, |(low, high)| high - low)
                })
                .sum::<i64>()
        })
        .await
        .expect("watermarks");
        if written >= typed as i64 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the input's ends show {written} of {typed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The audit: nothing lost or altered, boundaries kept.
    let mut audit = run.cluster.config("audit");
    audit.quiet = Duration::from_millis(QUIET_MS);
    audit.grace = Duration::from_millis(GRACE_MS);
    let report = tokio::task::spawn_blocking(move || {
        lull::devkit::audit::run(&audit, &lull::devkit::audit::VerifyOptions::default())
    })
    .await
    .expect("verify task")
    .expect("verify runs");
    assert_eq!(report.fragments_in, typed, "{report:#?}");
    assert_eq!(report.lost, 0, "{report:#?}");
    assert_eq!(report.altered, 0, "{report:#?}");
    assert_eq!(report.boundary_violations, 0, "{report:#?}");

    // Repeats: none in exactly_once; in at_least_once none from broker faults, and from killed
    // workers only inside the acknowledgement-to-Redis window, exact.
    let live = shapes(&out.seen);
    let mut first_flushed: HashMap<String, i64> = HashMap::new();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for b in &out.seen {
        let id = b.json()["batch_id"].as_str().unwrap().to_string();
        let at = b.json()["flushed_at"].as_i64().unwrap();
        first_flushed
            .entry(id.clone())
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
        *copies.entry(id).or_default() += 1;
    }
    let repeated: Vec<&String> = copies
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(id, _)| id)
        .collect();
    if mode == Mode::ExactlyOnce {
        assert!(
            repeated.is_empty(),
            "exactly_once: batches a read_committed reader saw twice: {repeated:?}"
        );
        assert_eq!(report.duplicated, 0, "{report:#?}");
    }
    let outside: Vec<&&String> = repeated
        .iter()
        .filter(|id| {
            let at = first_flushed[**id];
            !kills_ms
                .iter()
                .any(|k| at <= *k + 100 && at >= *k - ACK_TO_REDIS_WINDOW_MS)
        })
        .collect();
    assert!(
        outside.is_empty(),
        "batches emitted twice outside any killed worker's acknowledgement-to-Redis window: {outside:?}"
    );
    // A repeat is a whole batch again, under its batch_id: never a fragment in batches of two
    // ids (a consumer deduplicating by batch_id would pass it on twice).
    let mut ids_of: HashMap<String, Vec<&OutMsg>> = HashMap::new();
    for b in &out.seen {
        for eid in b.event_ids() {
            ids_of.entry(eid).or_default().push(b);
        }
    }
    let split: Vec<String> = ids_of
        .iter()
        .filter(|(_, batches)| {
            let first = batches[0].json()["batch_id"].clone();
            batches.iter().any(|b| b.json()["batch_id"] != first)
        })
        .map(|(eid, batches)| {
            let seen: Vec<String> = batches
                .iter()
                .map(|b| {
                    let v = b.json();
                    format!(
                        "p{} @{} {} flushed_at {} {:?}",
                        b.partition,
                        b.offset,
                        v["batch_id"],
                        v["flushed_at"],
                        b.event_ids()
                    )
                })
                .collect();
            format!("{eid}: {seen:?}")
        })
        .collect();
    assert!(
        split.is_empty(),
        "fragments in batches of different ids (kills at {kills_ms:?}): {split:#?}"
    );
    assert_eq!(
        report.duplicated,
        repeated.iter().map(|id| live[*id].len()).sum::<usize>()
    );

    // The same log read by an undisturbed lull (fresh group, no Redis) gives the same batches.
    let mut cfg = run.cluster.config("undisturbed");
    cfg.output_topic = run.cluster.replay.clone();
    cfg.quiet = Duration::from_millis(QUIET_MS);
    cfg.grace = Duration::from_millis(GRACE_MS);
    cfg.kafka.insert(
        "session.timeout.ms".into(),
        KafkaProperty::Plain("6000".into()),
    );
    let reference = Running::start(cfg);
    let mut replay = run.cluster.collector(&run.cluster.replay);
    replay
        .until("the undisturbed run", |s| event_counts(s).len() == typed)
        .await;
    reference.stop().await;
    assert_eq!(
        live,
        shapes(&replay.seen),
        "batch ids and contents as undisturbed"
    );

    let line = format!(
        "chaos {name} ({}, {protocol:?}, {workers} lull processes): fragments {typed}, batches {}, \
         broker faults {broker_faults}, lull kills/pauses {}, lost {}, altered {}, repeated \
         batches {}{}, wall {:.0} s",
        match mode {
            Mode::ExactlyOnce => "exactly_once, no Redis",
            Mode::AtLeastOnceWithRedis => "at_least_once, Redis",
        },
        live.len(),
        kills_ms.len(),
        report.lost,
        report.altered,
        repeated.len(),
        match mode {
            Mode::ExactlyOnce => "",
            Mode::AtLeastOnceWithRedis => " (all inside the ack-to-Redis window of a kill)",
        },
        started.elapsed().as_secs_f64()
    );
    report_line(&line);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_busiest_partitions_leader_mid_burst() {
    scenario(
        "leader",
        Protocol::Classic,
        2,
        Fault::LeaderKill,
        Mode::ExactlyOnce,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_group_coordinator() {
    scenario(
        "coordinator",
        Protocol::Consumer,
        2,
        Fault::CoordinatorKill,
        Mode::ExactlyOnce,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_transaction_coordinator() {
    scenario(
        "txn-coordinator",
        Protocol::Classic,
        2,
        Fault::TxnCoordinatorKill,
        Mode::ExactlyOnce,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_all_three_brokers_under_load() {
    scenario(
        "rolling",
        Protocol::Classic,
        2,
        Fault::RollingRestart,
        Mode::ExactlyOnce,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_of_lull_processes_classic_protocol() {
    scenario(
        "kills-classic",
        Protocol::Classic,
        3,
        Fault::WorkerKills(4),
        Mode::ExactlyOnce,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_of_lull_processes_kip_848() {
    scenario(
        "kills-848",
        Protocol::Consumer,
        3,
        Fault::WorkerKills(4),
        Mode::ExactlyOnce,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_process_woken_after_its_partitions_moved_writes_nothing_visible() {
    scenario(
        "zombie",
        Protocol::Classic,
        2,
        Fault::Zombie,
        Mode::ExactlyOnce,
    )
    .await;
}

/// at_least_once with Redis, for comparison: repeats only inside the ack-to-Redis window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_of_lull_processes_at_least_once_with_redis() {
    scenario(
        "kills-alo",
        Protocol::Classic,
        3,
        Fault::WorkerKills(4),
        Mode::AtLeastOnceWithRedis,
    )
    .await;
}

/// The input topic's identity is written into every state record (and Redis fact); records of
/// another identity are ignored. So it must never change while a broker is down: it once fell
/// back to the cluster's id when the controller a client had cached was gone, and a takeover in a
/// rolling restart ignored its own records and emitted their batches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_topics_identity_holds_while_the_controller_is_down() {
    let _serial = SERIAL.lock().await;
    let kafka = KafkaEnv::three();
    let cluster = Cluster::real(kafka.clone(), PARTITIONS, 3).await;
    let (bootstrap, input) = (cluster.bootstrap().to_string(), cluster.input.clone());
    // One long-lived client, as lull's producers are: its cached metadata goes stale.
    let client = std::sync::Arc::new(metadata_client(&bootstrap));
    let ask = {
        let (client, input) = (client.clone(), input.clone());
        move || {
            let (client, input) = (client.clone(), input.clone());
            tokio::task::spawn_blocking(move || {
                lull::io::kafka::topic_identity(client.client(), &input, Duration::from_secs(2))
            })
        }
    };
    let id = ask()
        .await
        .expect("identity task")
        .expect("identity")
        .expect("a topic id");
    assert!(
        !id.starts_with("cluster:"),
        "a real cluster has topic ids: {id}"
    );
    let controller = {
        let client = client.clone();
        tokio::task::spawn_blocking(move || {
            // SAFETY: the client is alive for the call; librdkafka only reads its metadata cache.
            unsafe { rdkafka::bindings::rd_kafka_controllerid(client.client().native_ptr(), 5_000) }
        })
        .await
        .expect("controller task")
    };
    assert!(controller >= 0, "the client knows a controller");
    // A graceful stop, as in a rolling restart: the broker leaves the metadata at once, while
    // the client's cache still names it as the controller.
    node(&kafka, "stop-node", controller).await;
    let end = Instant::now() + Duration::from_secs(5);
    let (mut same, mut other, mut errors) = (0, Vec::new(), 0);
    while Instant::now() < end {
        match ask().await.expect("identity task") {
            Ok(got) if got.as_deref() == Some(id.as_str()) => same += 1,
            Ok(got) => other.push(got),
            Err(_) => errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The broker comes back before any verdict: the other scenarios need it.
    node(&kafka, "start-node", controller).await;
    fully_replicated(&bootstrap, &[&input]).await;
    assert!(other.is_empty(), "the identity {id} changed to {other:?}");
    assert!(
        same > 0,
        "no answer while the broker was down ({errors} errors)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_replication_three_on_three_brokers() {
    let _serial = SERIAL.lock().await;
    let kafka = KafkaEnv::three();
    let base = unique("topics3");
    let out = Command::new(env!("CARGO_BIN_EXE_lull"))
        .args(["topics", "--partitions", "4"])
        .env_clear()
        .env("KAFKA_BROKERS", kafka.bootstrap())
        .env("LULL_INPUT_TOPIC", format!("{base}.in"))
        .env("LULL_OUTPUT_TOPIC", format!("{base}.out"))
        .env("LULL_DLQ_TOPIC", format!("{base}.dlq"))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("lull topics runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("(4 partitions, replication 3)"), "{text}");
    let c = metadata_client(kafka.bootstrap());
    let md = c
        .fetch_metadata(Some(&format!("{base}.in")), Duration::from_secs(10))
        .expect("metadata");
    assert!(md.topics()[0]
        .partitions()
        .iter()
        .all(|p| p.replicas().len() == 3));
}
