//! lull against a real Redis Cluster (redis-server in cluster mode, 3 primaries and 3 replicas on
//! loopback, formed with `redis-cli --cluster create` by `scripts/redis-cluster.sh`; the one
//! `scripts/test.sh` started, `LULL_TEST_REDIS_CLUSTER`, or a private one) and real Apache Kafka.
//!
//! One test, in phases, because its last phase kills a primary of the shared cluster: the
//! store's calls on partitions spread over every shard, and MONITOR following every primary; two
//! lull processes in one group batching
//! with no Redis error at all (every MOVED/ASK followed by the client, no CROSSSLOT); then the
//! first seed of `REDIS_URL`, a primary, killed mid-typing — its replica is promoted, lull
//! reconnects through the other seeds by itself, nothing is lost and nothing repeated
//! (exactly_once).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lull::io::store::{Candidate, Flushed, Keys, PendingSummary, Store};
use lull::ops::supervisor::Supervisor;

/// A Redis Cluster for the test: its directory (with `cluster.env`), stopped on drop when this
/// test started it.
struct RedisCluster {
    dir: PathBuf,
    private: bool,
    /// `cluster.env`, read once.
    env: std::collections::HashMap<String, String>,
}

impl RedisCluster {
    fn get() -> Self {
        if let Ok(dir) = std::env::var("LULL_TEST_REDIS_CLUSTER") {
            if !dir.is_empty() {
                return Self::at(dir.into(), false);
            }
        }
        let dir = std::env::temp_dir().join(format!("lull-redis-cluster-{}", std::process::id()));
        let status = Command::new(script())
            .args(["start", &dir.to_string_lossy()])
            .status()
            .expect("scripts/redis-cluster.sh runs");
        assert!(status.success(), "the private redis cluster did not start");
        Self::at(dir, true)
    }

    fn at(dir: PathBuf, private: bool) -> Self {
        let text = std::fs::read_to_string(dir.join("cluster.env")).expect("cluster.env");
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self { dir, private, env }
    }

    fn env(&self, name: &str) -> String {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} in cluster.env"))
            .clone()
    }

    fn url(&self) -> String {
        self.env("REDIS_CLUSTER_URL")
    }

    fn port(&self, node: usize) -> u16 {
        self.env(&format!("REDIS_NODE_{node}_PORT"))
            .parse()
            .expect("port")
    }

    /// The node (1-6) serving `key`'s slot as a primary now.
    fn primary_of(&self, key: &str) -> usize {
        let slot: u16 = redis_cli(self.port(1), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("slot");
        let nodes = redis_cli(self.port(1), &["cluster", "nodes"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f.get(2).is_some_and(|flags| flags.contains("master")) || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("node port");
                return (1..=6).find(|&n| self.port(n) == port).expect("our node");
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// kill -9 of node `node`, by the PID the script recorded.
    fn kill(&self, node: usize) {
        let pid = std::fs::read_to_string(self.dir.join(format!("node{node}/pid"))).expect("pid");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Starts node `node` again: it rejoins the cluster as a replica. Never panics (it runs in
    /// a drop); whoever needs the node waits for the cluster to be ok.
    fn restart(&self, node: usize) {
        let _ = Command::new(script())
            .args(["restart", &self.dir.to_string_lossy(), &node.to_string()])
            .status();
    }

    /// Makes node `node` a primary (after an earlier run's failover it may be a replica): a
    /// coordinated `CLUSTER FAILOVER` on it, then waits until it is one.
    fn make_primary(&self, node: usize) {
        let is_primary = || redis_cli(self.port(node), &["role"]).lines().next() == Some("master");
        if is_primary() {
            return;
        }
        redis_cli(self.port(node), &["cluster", "failover"]);
        let end = std::time::Instant::now() + DEADLINE;
        while !(is_primary() && self.ok(None)) {
            assert!(
                std::time::Instant::now() < end,
                "node {node} never became a primary"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether every live node says the cluster is ok.
    fn ok(&self, except: Option<usize>) -> bool {
        (1..=6)
            .filter(|&n| Some(n) != except)
            .all(|n| redis_cli(self.port(n), &["cluster", "info"]).contains("cluster_state:ok"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if self.private {
            let _ = Command::new(script())
                .args(["stop", &self.dir.to_string_lossy()])
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts a killed node again when dropped, even when the test failed: the shared cluster goes
/// back to three primaries and three replicas.
struct Rejoin<'a> {
    rc: &'a RedisCluster,
    node: usize,
}

impl Drop for Rejoin<'_> {
    fn drop(&mut self) {
        self.rc.restart(self.node);
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster.sh")
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_holds_every_partitions_state_and_survives_a_primary_failover() {
    let rc = RedisCluster::get();
    let errors = || lull::ops::metrics::metrics().redis_errors.get();

    // 1. The store's calls, on eight partitions spread over the three shards.
    let prefix = unique_prefix("cluster-store");
    let mut config = lull::config::Config::defaults();
    config.redis_url = Some(lull::config::Secret::new(rc.url()));
    config.redis_prefix = prefix.clone();
    let supervisor = Supervisor::standalone();
    let store = Store::connect(&config, &supervisor).await.expect("store");
    assert!(!store.is_degraded(), "the cluster is reachable");
    let keys = Keys::new(&prefix, &config.group_id);
    let shards: std::collections::HashSet<usize> = (0..8)
        .map(|p| rc.primary_of(&keys.partition("t", p).owner()))
        .collect();
    assert_eq!(shards.len(), 3, "eight partitions land on every shard");
    let before = errors();
    for p in 0..8 {
        let fence = store.claim("t", p, "tid", false).await.expect("claim");
        let users: Vec<String> = (0..20).map(|u| format!("u{u}")).collect();
        let events: Vec<String> = (0..20).map(|u| format!("e{p}-{u}")).collect();
        let candidates: Vec<Candidate<'_>> = users
            .iter()
            .zip(&events)
            .enumerate()
            .map(|(i, (key, event))| Candidate {
                key,
                offset: i as i64,
                event_id: Some(event),
                ts: 1_000,
                needs_record: true,
            })
            .collect();
        let admission = store.admit(&fence, 100, &candidates).await.expect("admit");
        assert_eq!(admission.verdicts.len(), 20);
        let windows = vec![PendingSummary {
            key: format!("user-of-{p}"),
            first_ts: 1,
            last_ts: 2,
            count: 2,
            flush_at: 3,
            first_offset: 0,
        }];
        let flushed = vec![Flushed {
            key: "u0".into(),
            first_offset: 0,
            last_offset: 0,
            last_ts: 1_000,
            batch_id: format!("t/{p}/0"),
        }];
        store
            .sync(&fence, 100, &windows, &[format!("gone-of-{p}")], &flushed)
            .await
            .expect("pending and flush in one pipeline, one slot");
        let again = store.admit(&fence, 100, &candidates[..1]).await.unwrap();
        assert_eq!(
            again.verdicts,
            [lull::io::store::Verdict::Emitted],
            "partition {p}: the flushed record is read back"
        );
        let view = store
            .read_pending(&format!("user-of-{p}"))
            .await
            .expect("read")
            .expect("found without knowing the partition");
        assert_eq!(view.partition, p);
    }
    assert_eq!(
        errors(),
        before,
        "no call failed: no CROSSSLOT, MOVED followed"
    );

    // `lull monitor` (and LULL_DEBUG_REDIS_MONITOR) follow every primary: commands on keys of
    // all three shards show. MONITOR starts asynchronously: claims go on until they show.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (url, namespace) = (rc.url(), keys.namespace().to_string());
    let follower = tokio::spawn(async move {
        lull::io::store::monitor::follow(&url, &namespace, |e| {
            let _ = tx.send(e);
        })
        .await
    });
    // Each partition's shard, asked once here: asking inside the loop would send commands naming
    // lull's keys, which MONITOR shows in turn.
    let shard_of: std::collections::HashMap<String, usize> = (0..8)
        .map(|p| {
            let owner = keys.partition("t", p).owner();
            (format!("{{t/{p}}}"), rc.primary_of(&owner))
        })
        .collect();
    let mut seen_on = std::collections::HashSet::new();
    tokio::time::timeout(DEADLINE, async {
        while seen_on.len() < 3 {
            for p in 0..8 {
                store.claim("t", p, "tid", false).await.expect("claim");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(e) = rx.try_recv() {
                for key in e.keys(keys.namespace()) {
                    let shard = shard_of.iter().find(|(tag, _)| key.contains(tag.as_str()));
                    if let Some((_, &shard)) = shard {
                        seen_on.insert(shard);
                    }
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("monitor saw keys of shards {seen_on:?} only"));
    follower.abort();
    drop(store);
    drop(supervisor);

    // 2. Two lull processes in one group on real Kafka, with the cluster: no Redis error at all.
    const PARTITIONS: i32 = 6;
    let cluster = Cluster::start(PARTITIONS).await;
    let prefix = unique_prefix("cluster-run");
    let mut cfg = cluster.config("cluster-run");
    cfg.redis_url = Some(lull::config::Secret::new(rc.url()));
    cfg.redis_prefix = prefix.clone();
    cfg.quiet = Duration::from_millis(300);
    let a = Running::start(cfg.clone());
    let b = Running::start(cfg.clone());
    wait_for("both instances to own partitions", || {
        a.health.running_partitions() > 0
            && b.health.running_partitions() > 0
            && a.health.running_partitions() + b.health.running_partitions() == PARTITIONS as usize
    })
    .await;
    let before = errors();
    let producer = cluster.producer();
    let users: Vec<String> = (0..30).map(|u| format!("c{u}")).collect();
    let mut out = cluster.collector(&cluster.output);
    send_bursts(&producer, &cluster.input, &users, 0..3).await;
    out.until("round 0", |s| event_counts(s).len() == 90).await;
    assert_eq!(errors(), before, "no Redis error while two processes batch");
    assert_eq!(a.health.redis(), Some(true));
    assert_eq!(b.health.redis(), Some(true));
    let partitions = claimed_partitions(&rc, &Keys::new(&prefix, &cfg.group_id));
    assert_eq!(partitions, PARTITIONS as usize, "every partition claimed");

    // 3. The first seed of REDIS_URL, a primary, dies mid-typing; its replica takes over. Every
    //    reconnection must find the cluster through the other seeds.
    let victim = 1;
    rc.make_primary(victim);
    let keys = Keys::new(&prefix, &cfg.group_id);
    let on_victim: Vec<i32> = (0..PARTITIONS)
        .filter(|&p| rc.primary_of(&keys.partition(&cluster.input, p).owner()) == victim)
        .collect();
    send_bursts(&producer, &cluster.input, &users, 3..4).await;
    let before_failover = errors();
    let rejoin = Rejoin {
        rc: &rc,
        node: victim,
    };
    rc.kill(victim);
    send_bursts(&producer, &cluster.input, &users, 4..6).await;
    wait_for("the replica to be promoted", || rc.ok(Some(victim))).await;
    let fresh = Store::connect(&cfg, &Supervisor::standalone())
        .await
        .expect("store");
    assert!(
        !fresh.is_degraded(),
        "a new connection finds the cluster with its first seed down"
    );
    drop(fresh);
    out.until("round 1 through the failover", |s| {
        event_counts(s).len() == 180
    })
    .await;
    wait_for("both instances to use Redis again", || {
        a.health.redis() == Some(true) && b.health.redis() == Some(true)
    })
    .await;
    send_bursts(&producer, &cluster.input, &users, 6..7).await;
    out.until("round 2 after the failover", |s| {
        event_counts(s).len() == 210
    })
    .await;
    out.settle(Duration::from_millis(800)).await;
    // The partitions whose state the dead primary held are claimed on its promoted replica
    // (read through any live node; redis-cli follows the redirection once every node knows).
    for &p in &on_victim {
        let owner = keys.partition(&cluster.input, p).owner();
        wait_for(
            &format!("partition {p}'s claim on the promoted replica"),
            || {
                !redis_cli(rc.port(2), &["-c", "hget", &owner, "generation"])
                    .trim()
                    .is_empty()
            },
        )
        .await;
    }
    eprintln!(
        "redis cluster failover: node {victim} (the first seed; {} of {PARTITIONS} partitions' \
         state) killed, {} failed redis calls while its replica took over, {} fragments \
         delivered once each",
        on_victim.len(),
        errors() - before_failover,
        event_counts(&out.seen).len()
    );
    let counts = event_counts(&out.seen);
    assert!(
        counts.values().all(|&n| n == 1),
        "exactly_once: nothing lost, nothing repeated through the failover: {counts:?}"
    );
    a.stop().await;
    b.stop().await;
    drop(rejoin);
    wait_for("the old primary to rejoin", || rc.ok(None)).await;
}

/// How many partitions the group has listed as claimed.
fn claimed_partitions(rc: &RedisCluster, keys: &Keys) -> usize {
    redis_cli(rc.port(1), &["-c", "scard", &keys.partitions()])
        .trim()
        .parse()
        .unwrap_or(0)
}
