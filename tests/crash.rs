//! The crash test: two `lull run` OS processes in one consumer group against real Apache Kafka
//! (the suite's single node) and one Redis; users type bursts; one process is `kill -9`-ed
//! mid-burst and restarted. Every
//! fragment must end up in exactly one emitted batch, no batch may be emitted twice, and the batch
//! ids must be those of an undisturbed run over the same log.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const USERS: usize = 24;
const PARTITIONS: i32 = 4;

/// A `lull` child process and the partitions its log says it owns.
struct Proc {
    child: Child,
    assigned: Arc<Mutex<usize>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lull() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lull"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    c
}

fn start_worker(cluster: &Cluster, group: &str, redis: &str, prefix: &str, instance: &str) -> Proc {
    let mut child = lull()
        .arg("run")
        .envs(cluster.process_env(group))
        .env("REDIS_URL", redis)
        .env("LULL_REDIS_PREFIX", prefix)
        .env("LULL_INSTANCE_ID", instance)
        .env("LULL_QUIET_MS", "2000")
        .env("LULL_GRACE_MS", "300")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
        .env("LULL_DRAIN_TIMEOUT_MS", "3000")
        .env("LULL_LOG_FORMAT", "json")
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    let assigned = Arc::new(Mutex::new(0));
    let seen = assigned.clone();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let mut n = seen.lock().unwrap();
            match v["message"].as_str() {
                Some("partitions assigned") => {
                    let list = v["partitions"].as_str().unwrap_or("[]");
                    *n = list
                        .split(',')
                        .filter(|p| p.trim().trim_matches(['[', ']']).parse::<i32>().is_ok())
                        .count();
                }
                Some(m) if m.starts_with("partitions revoked") => *n = 0,
                _ => {}
            }
        }
    });
    Proc { child, assigned }
}

fn owned(p: &Proc) -> usize {
    *p.assigned.lock().unwrap()
}

async fn both_own_partitions(a: &Proc, b: &Proc) {
    wait_for("both processes to own partitions", || {
        let (x, y) = (owned(a), owned(b));
        x > 0 && y > 0 && x + y == PARTITIONS as usize
    })
    .await;
}

fn user(u: usize) -> String {
    format!("k{u:02}")
}

async fn type_fragment(
    producer: &rdkafka::producer::FutureProducer,
    input: &str,
    round: usize,
    i: usize,
) {
    for u in 0..USERS {
        let name = user(u);
        send(
            producer,
            input,
            Some(&name),
            &fragment(&name, round * 3 + i),
            None,
            None,
        )
        .await;
    }
}

fn shapes(batches: &[OutMsg]) -> BTreeMap<String, Vec<String>> {
    batches
        .iter()
        .map(|b| {
            (
                b.json()["batch_id"].as_str().unwrap().to_string(),
                b.event_ids(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_and_restart_emits_every_burst_exactly_once() {
    let redis = RedisServer::shared();
    let prefix = unique_prefix("crash");
    let cluster = Cluster::start(PARTITIONS).await;
    let group = unique("crash");
    let producer = cluster.producer();
    let mut out = cluster.collector(&cluster.output);

    let a = start_worker(&cluster, &group, &redis.url, &prefix, "A");
    let b = start_worker(&cluster, &group, &redis.url, &prefix, "B");
    both_own_partitions(&a, &b).await;

    // A slow typist on every partition keeps a window open (a fragment every 700 ms, quiet is
    // 2 s) from before round 0 until after the kill. Their open windows hold each partition's
    // commit point back, so when A dies, round 0's batches on its partitions are emitted but not
    // committed: the survivor replays them, and only Redis's flushed watermarks keep them from
    // being emitted twice.
    let slow_stop = tokio_util::sync::CancellationToken::new();
    let slow = {
        let producer = producer.clone();
        let stop = slow_stop.clone();
        let input = cluster.input.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                for p in 0..PARTITIONS {
                    let name = format!("slow{p}");
                    send(
                        &producer,
                        &input,
                        Some(&name),
                        &fragment(&name, n),
                        Some(p),
                        None,
                    )
                    .await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            n
        })
    };
    let typed = |s: &[OutMsg]| {
        event_counts(s)
            .keys()
            .filter(|id| id.starts_with('k'))
            .count()
    };

    // Round 0: undisturbed.
    for i in 0..3 {
        type_fragment(&producer, &cluster.input, 0, i).await;
    }
    out.until("round 0", |s| typed(s) == USERS * 3).await;

    // Round 1: two fragments typed, both owners hold open windows (seen in Redis), then A dies.
    type_fragment(&producer, &cluster.input, 1, 0).await;
    type_fragment(&producer, &cluster.input, 1, 1).await;
    let mut conn = redis.conn().await;
    let keys = lull::io::store::Keys::new(&prefix, &group);
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Each user's summary is in the partition that holds the user's window.
        let mut pipe = redis::pipe();
        for u in 0..USERS {
            for p in 0..PARTITIONS {
                pipe.hget(keys.partition(&cluster.input, p).pending(&user(u)), "count");
            }
        }
        let found: Vec<Option<u32>> = pipe.query_async(&mut conn).await.unwrap();
        let counts: Vec<Option<u32>> = found
            .chunks(PARTITIONS as usize)
            .map(|c| c.iter().flatten().copied().max())
            .collect();
        if counts.iter().all(|c| *c == Some(2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "open windows never showed up: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut a = a;
    a.child.kill().expect("kill -9");
    a.child.wait().expect("reaped");
    type_fragment(&producer, &cluster.input, 1, 2).await;
    slow_stop.cancel();
    let slow_fragments = slow.await.expect("slow typist") * PARTITIONS as usize;
    out.until("round 1, after the survivor took over", |s| {
        typed(s) == USERS * 6
    })
    .await;

    // A comes back; the group rebalances again; round 2 runs on both.
    let a = start_worker(&cluster, &group, &redis.url, &prefix, "A");
    both_own_partitions(&a, &b).await;
    for i in 0..3 {
        type_fragment(&producer, &cluster.input, 2, i).await;
    }
    let total = USERS * 9 + slow_fragments;
    out.until("round 2 and the slow typists", |s| {
        event_counts(s).len() == total
    })
    .await;
    out.settle(Duration::from_secs(3)).await;

    let counts = event_counts(&out.seen);
    let duplicated: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "fragments in more than one batch: {duplicated:?}"
    );
    assert_eq!(counts.len(), total, "every fragment in a batch");
    let mut ids: HashMap<String, usize> = HashMap::new();
    for b in &out.seen {
        *ids.entry(b.json()["batch_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(ids.values().all(|&n| n == 1), "a batch was emitted twice");
    let typed_batches = out
        .seen
        .iter()
        .filter(|b| b.json()["key"].as_str().unwrap().starts_with('k'))
        .count();
    assert_eq!(typed_batches, USERS * 3, "one batch per user per round");

    // The same log, read undisturbed by a fresh group without Redis, gives the same batches.
    let mut cfg = cluster.config("undisturbed");
    cfg.output_topic = cluster.replay.clone();
    cfg.quiet = Duration::from_millis(2000);
    cfg.grace = Duration::from_millis(300);
    let reference = Running::start(cfg);
    let mut replay = cluster.collector(&cluster.replay);
    replay
        .until("the undisturbed run", |s| event_counts(s).len() == total)
        .await;
    reference.stop().await;
    assert_eq!(
        shapes(&out.seen),
        shapes(&replay.seen),
        "batch ids and contents as undisturbed"
    );
    let mut audit = cluster.config("audit");
    audit.quiet = Duration::from_millis(2000);
    audit.grace = Duration::from_millis(300);
    let r = verify_clean(&audit).await;
    assert_eq!((r.in_batches, r.boundary_violations), (total, 0));

    eprintln!(
        "crash test: fragments {total}, batches {}, lost {}, duplicated {}",
        out.seen.len(),
        total - counts.len(),
        duplicated.len()
    );
    drop(a);
    drop(b);
}
