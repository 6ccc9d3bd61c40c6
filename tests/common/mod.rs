//! The integration-test harness: a Kafka cluster with fresh topics per test, lull started
//! in-process on it, a producer, and a collector that reads the output and dead-letter topics
//! back.
//!
//! Two kinds of Kafka, said explicitly by each test:
//! * [`Cluster::start`]: **real Apache Kafka** (a single KRaft node that `scripts/test.sh` starts
//!   with `scripts/kafka.sh` and names in `LULL_TEST_KAFKA`), with topics of this test's own, so
//!   tests share the broker but never each other's data. The ground truth of the suite.
//! * [`Cluster::mock`]: librdkafka's in-process mock cluster, only where a test needs its fault
//!   injection (a broker down on command) or its speed.
//!
//! Every wait is on a condition with a generous deadline, never a bare sleep, so the tests hold on
//! a loaded 2-core machine.

#![allow(dead_code)]

pub mod procs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lull::config::{Config, KafkaProperty};
use lull::devkit::mock::MockBroker;
use lull::ops::health::Health;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Runs one of Kafka's own command-line tools (`scripts/kafka.sh tool CLASS ARGS`, the jars the
/// suite's broker runs from) and returns its standard output; fails the test, with both outputs,
/// if the tool fails.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("tool")
        .arg(class)
        .args(args)
        .output()
        .expect("kafka.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{class} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// How long any single condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A real Kafka cluster started by `scripts/kafka.sh`, as its `cluster.env` describes it.
#[derive(Debug, Clone)]
pub struct KafkaEnv {
    pub dir: PathBuf,
    vars: HashMap<String, String>,
}

impl KafkaEnv {
    /// The single node of the integration suite (`LULL_TEST_KAFKA`).
    pub fn single() -> Self {
        Self::from_var("LULL_TEST_KAFKA")
    }

    /// The three-node cluster of the chaos suite (`LULL_TEST_KAFKA3`).
    pub fn three() -> Self {
        Self::from_var("LULL_TEST_KAFKA3")
    }

    fn from_var(var: &str) -> Self {
        let dir = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: run the tests through scripts/test.sh, which starts real Kafka"
            )
        });
        let text = std::fs::read_to_string(dir.join("cluster.env"))
            .unwrap_or_else(|e| panic!("{}/cluster.env: {e}", dir.display()));
        let vars = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self { dir, vars }
    }

    /// A value of `cluster.env`, e.g. `KAFKA_SSL_BOOTSTRAP`.
    pub fn get(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from {}/cluster.env", self.dir.display()))
    }

    /// The plain-text bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        self.get("KAFKA_BOOTSTRAP")
    }

    /// Runs `scripts/kafka.sh <action> DIR <node>` (kill-node, stop-node, start-node).
    pub fn node(&self, action: &str, id: i32) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg(action)
            .arg(&self.dir)
            .arg(id.to_string())
            .status()
            .expect("scripts/kafka.sh runs");
        assert!(status.success(), "kafka.sh {action} {id} failed");
    }
}

/// A name no other test uses, for topics, groups and key prefixes.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `topics` (name, partitions) with `replication` on the cluster at `bootstrap`, and
/// waits until every partition has a leader.
pub async fn create_topics(bootstrap: &str, topics: &[(String, i32)], replication: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(&new, &opts)
        .await
        .expect("create topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
    }
    let end = Instant::now() + DEADLINE;
    loop {
        let ready = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|md| {
                topics.iter().all(|(name, partitions)| {
                    md.topics().iter().any(|t| {
                        t.name() == name
                            && t.partitions().len() == *partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < end, "topics {topics:?} never got leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum Backend {
    Real(KafkaEnv),
    Mock(MockBroker),
}

/// A Kafka cluster with this test's input, output, DLQ and replay topics.
pub struct Cluster {
    backend: Backend,
    bootstrap: String,
    pub partitions: i32,
    pub input: String,
    pub output: String,
    pub dlq: String,
    /// A second output topic, for a replay to compare with the first run.
    pub replay: String,
}

impl Cluster {
    /// Real Apache Kafka (the suite's single node), with fresh topics of `partitions`
    /// partitions each.
    pub async fn start(partitions: i32) -> Self {
        Self::real(KafkaEnv::single(), partitions, 1).await
    }

    /// Fresh topics on a real cluster, replicated `replication` times.
    pub async fn real(env: KafkaEnv, partitions: i32, replication: i32) -> Self {
        let base = unique("t");
        let cluster = Self {
            bootstrap: env.bootstrap().to_string(),
            partitions,
            input: format!("{base}.fragments"),
            output: format!("{base}.batches"),
            dlq: format!("{base}.fragments.dlq"),
            replay: format!("{base}.batches.replay"),
            backend: Backend::Real(env),
        };
        create_topics(&cluster.bootstrap, &cluster.topics(), replication).await;
        cluster
    }

    /// librdkafka's mock cluster (one broker) with lull's default topic names, for tests that
    /// need its fault injection.
    pub fn mock(partitions: i32) -> Self {
        let d = Config::defaults();
        let state = d.state_topic();
        let names = [
            d.input_topic,
            d.output_topic,
            d.dlq_topic,
            "chat.batches.replay".to_string(),
        ];
        let topics: Vec<(String, i32)> = names
            .iter()
            .chain([&state])
            .map(|n| (n.clone(), partitions))
            .collect();
        let broker = MockBroker::start(1, &topics).expect("mock cluster starts");
        let [input, output, dlq, replay] = names;
        Self {
            bootstrap: broker.bootstrap().to_string(),
            backend: Backend::Mock(broker),
            partitions,
            input,
            output,
            dlq,
            replay,
        }
    }

    fn topics(&self) -> Vec<(String, i32)> {
        [&self.input, &self.output, &self.dlq, &self.replay]
            .iter()
            .map(|t| (t.to_string(), self.partitions))
            .collect()
    }

    /// Bootstrap servers of this cluster.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The mock broker, for fault injection; panics on real Kafka.
    pub fn mock_broker(&self) -> &MockBroker {
        match &self.backend {
            Backend::Mock(b) => b,
            Backend::Real(_) => panic!("fault injection needs Cluster::mock"),
        }
    }

    /// The real cluster's description; panics on the mock.
    pub fn kafka(&self) -> &KafkaEnv {
        match &self.backend {
            Backend::Real(env) => env,
            Backend::Mock(_) => panic!("not a real cluster"),
        }
    }

    /// lull's configuration against this cluster and its topics: test-friendly group timings.
    pub fn config(&self, group: &str) -> Config {
        let mut c = Config::defaults();
        c.brokers = self.bootstrap.clone();
        c.input_topic = self.input.clone();
        c.output_topic = self.output.clone();
        c.dlq_topic = self.dlq.clone();
        c.group_id = unique(group);
        c.quiet = Duration::from_millis(300);
        c.grace = Duration::from_millis(250);
        c.drain_timeout = Duration::from_secs(3);
        c.http_addr = "127.0.0.1:0".parse().expect("address");
        c.kafka.insert(
            "session.timeout.ms".into(),
            KafkaProperty::Plain("6000".into()),
        );
        c.kafka.insert(
            "heartbeat.interval.ms".into(),
            KafkaProperty::Plain("500".into()),
        );
        self.state_topic_for(&c);
        c
    }

    /// On the mock, which cannot create topics on request, creates `config`'s state topic (a
    /// group of its own has a state topic of its own); real Kafka's `lull run` creates it.
    pub fn state_topic_for(&self, config: &Config) {
        if let Backend::Mock(broker) = &self.backend {
            let (topic, partitions) = (config.state_topic(), self.partitions);
            broker
                .with(move |cluster| {
                    let _ = cluster.create_topic(&topic, partitions, 1);
                })
                .expect("the mock cluster runs");
        }
    }

    /// The environment a `lull` process needs for this cluster and its topics.
    pub fn process_env(&self, group: &str) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", self.bootstrap.clone()),
            ("LULL_INPUT_TOPIC", self.input.clone()),
            ("LULL_OUTPUT_TOPIC", self.output.clone()),
            ("LULL_DLQ_TOPIC", self.dlq.clone()),
            ("LULL_GROUP_ID", group.to_string()),
        ]
    }

    /// A plain producer to the cluster.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "0")
            .create()
            .expect("producer")
    }

    /// A reader of every partition of `topic` from the beginning (no group, no commits).
    pub fn collector(&self, topic: &str) -> Collector {
        Collector::on(&self.bootstrap, topic, self.partitions)
    }
}

impl Collector {
    /// A reader of `partitions` partitions of `topic` at `bootstrap`, from the beginning.
    pub fn on(bootstrap: &str, topic: &str, partitions: i32) -> Collector {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "test-collector")
            .set("enable.auto.commit", "false")
            .create()
            .expect("collector");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        Collector {
            consumer,
            seen: Vec::new(),
        }
    }
}

/// One lull worker running in this process.
pub struct Running {
    pub token: CancellationToken,
    pub health: Arc<Health>,
    pub handle: JoinHandle<Result<(), lull::RunError>>,
}

impl Running {
    /// Starts lull with `config`.
    pub fn start(config: Config) -> Self {
        let token = CancellationToken::new();
        let health = Arc::new(Health::new());
        let handle = tokio::spawn(lull::run_with_health(config, token.clone(), health.clone()));
        Self {
            token,
            health,
            handle,
        }
    }

    /// Waits until this worker owns at least `n` partitions and reads them (exactly_once: its
    /// transactions started and its state records read).
    pub async fn assigned(&self, n: usize) {
        wait_for("partitions assigned", || {
            self.health.assigned_partitions() >= n && self.health.running_partitions() >= n
        })
        .await;
    }

    /// Graceful stop; panics if the worker failed.
    pub async fn stop(self) {
        self.token.cancel();
        let r = tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("worker stops in time")
            .expect("worker task");
        r.expect("worker ends cleanly");
    }
}

/// Polls `cond` every 20 ms until it holds; panics after [`DEADLINE`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Produces one message; returns its (partition, offset).
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
    partition: Option<i32>,
    timestamp: Option<i64>,
) -> (i32, i64) {
    let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(value);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(p) = partition {
        r = r.partition(p);
    }
    if let Some(ts) = timestamp {
        r = r.timestamp(ts);
    }
    r = r.headers(lull::io::headers::build(&[
        lull::model::wire::RawHeader::new("trace", "t"),
    ]));
    let d = producer
        .send(r, Duration::from_secs(30))
        .await
        .expect("produce");
    (d.partition, d.offset)
}

/// Types the fragments `seqs` of each user in turn (every one of a user, then the next user's),
/// keyed by the user.
pub async fn send_bursts(
    producer: &FutureProducer,
    topic: &str,
    users: impl IntoIterator<Item = impl AsRef<str>>,
    seqs: std::ops::Range<usize>,
) {
    for user in users {
        let user = user.as_ref();
        for seq in seqs.clone() {
            send(
                producer,
                topic,
                Some(user),
                &fragment(user, seq),
                None,
                None,
            )
            .await;
        }
    }
}

/// Writes fragment 0 of each user `u{n}` for `n` in `users`, keyed by the user, stamped `gap_ms`
/// apart from `start_ms`, with many sends in flight: a backlog of any size, quickly.
pub async fn write_backlog(
    producer: &FutureProducer,
    topic: &str,
    users: std::ops::Range<usize>,
    start_ms: i64,
    gap_ms: i64,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut pending = FuturesUnordered::new();
    for (i, u) in users.enumerate() {
        let user = format!("u{u}");
        let value = fragment(&user, 0);
        let producer = producer.clone();
        let topic = topic.to_string();
        pending.push(async move {
            let r: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                .key(user.as_str())
                .payload(value.as_slice())
                .timestamp(start_ms + i as i64 * gap_ms);
            producer
                .send(r, Duration::from_secs(60))
                .await
                .expect("produce");
        });
        if pending.len() >= 5_000 {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
}

/// A fragment's JSON for `user`, with an event id and text.
pub fn fragment(user: &str, seq: usize) -> Vec<u8> {
    serde_json::json!({
        "user_id": user,
        "event_id": format!("{user}-{seq}"),
        "seq": seq,
        "text": format!("{user} says {seq}"),
    })
    .to_string()
    .into_bytes()
}

/// A message read back from an output or DLQ topic.
#[derive(Debug, Clone)]
pub struct OutMsg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    /// Every header as it came: name bytes, value or null, in order.
    pub raw_headers: Vec<lull::model::wire::RawHeader>,
    /// The value parsed once on arrival (`Null` if it is not JSON).
    parsed: serde_json::Value,
}

impl OutMsg {
    /// Copies a consumed message, parsing its value once.
    fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let raw_headers = m.headers().map(lull::io::headers::read).unwrap_or_default();
        let headers = raw_headers
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(&h.name).into_owned(),
                    String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        OutMsg {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            raw_headers,
            parsed: m
                .payload()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// The value parsed as JSON.
    pub fn json(&self) -> &serde_json::Value {
        assert!(!self.parsed.is_null(), "not a JSON value");
        &self.parsed
    }

    /// The event ids of a batch's fragments, in order.
    pub fn event_ids(&self) -> Vec<String> {
        self.json()["fragments"]
            .as_array()
            .expect("fragments array")
            .iter()
            .map(|f| f["event_id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Reads a topic back.
pub struct Collector {
    consumer: StreamConsumer,
    pub seen: Vec<OutMsg>,
}

impl Collector {
    /// Reads until `done(seen)` holds; panics after [`DEADLINE`] with what it saw. Messages are
    /// taken in bunches and the condition checked between bunches, so long runs stay linear.
    pub async fn until(&mut self, what: &str, done: impl Fn(&[OutMsg]) -> bool) -> &[OutMsg] {
        if !self.try_until(DEADLINE, &done).await {
            panic!(
                "timed out waiting for {what}; saw {} messages: {:#?}",
                self.seen.len(),
                self.seen
                    .iter()
                    .take(5)
                    .map(|m| {
                        let v = String::from_utf8_lossy(m.value.as_deref().unwrap_or_default());
                        v.chars().take(300).collect::<String>()
                    })
                    .collect::<Vec<_>>()
            );
        }
        &self.seen
    }

    /// [`Collector::until`] without the panic: whether `done(seen)` held within `within`.
    pub async fn try_until(&mut self, within: Duration, done: impl Fn(&[OutMsg]) -> bool) -> bool {
        let end = Instant::now() + within;
        while !done(&self.seen) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut wait = left.min(Duration::from_millis(200));
            for _ in 0..1_000 {
                match tokio::time::timeout(wait, self.consumer.recv()).await {
                    Ok(Ok(m)) => self.seen.push(OutMsg::from_message(&m)),
                    _ => break,
                }
                wait = Duration::from_millis(1);
            }
        }
        true
    }

    /// Reads until it holds everything its topic holds now (each partition's position at the
    /// high watermark it has now): once every writer has stopped, the whole topic, as an audit
    /// reading it afterwards sees it.
    pub async fn read_to_end(&mut self) {
        let assignment = self.consumer.assignment().expect("assignment");
        let ends: Vec<(String, i32, i64, i64)> = assignment
            .elements()
            .iter()
            .map(|e| {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                    .expect("watermarks");
                (e.topic().to_string(), e.partition(), low, high)
            })
            .collect();
        let end = Instant::now() + DEADLINE;
        loop {
            let position = self.consumer.position().expect("position");
            let at_end = ends.iter().all(|(topic, p, low, high)| {
                match position.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o >= *high,
                    _ => low == high,
                }
            });
            if at_end {
                return;
            }
            assert!(
                Instant::now() < end,
                "the collector did not reach the topic's end {ends:?}: {position:?}"
            );
            let _ = self.try_until(Duration::from_millis(200), |_| false).await;
        }
    }

    /// Reads for `period` more, collecting whatever arrives (to catch duplicates).
    pub async fn settle(&mut self, period: Duration) {
        let end = Instant::now() + period;
        let _ = tokio::time::timeout_at(end, self.until("settle", |_| false)).await;
    }
}

/// Every event id across `batches`, with how often it was seen.
pub fn event_counts(batches: &[OutMsg]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for b in batches {
        for id in b.event_ids() {
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

/// A Redis server for a test: the one `scripts/test.sh` started (`LULL_TEST_REDIS_URL`), or a
/// private `redis-server` this process starts (and stops on drop).
pub struct RedisServer {
    pub url: String,
    port: u16,
    child: Option<std::process::Child>,
    dir: Option<std::path::PathBuf>,
    /// A Redis Cluster (`url` lists seed nodes), and the directory of a private one this test
    /// started (stopped on drop).
    clustered: bool,
    private_cluster: Option<std::path::PathBuf>,
}

/// Starts `redis-server` on loopback with no snapshots plus `args`, and waits until `port`
/// accepts connections. The caller owns (and kills) the process.
pub fn spawn_redis(args: &[&str], port: u16) -> std::process::Child {
    let bin = std::env::var("LULL_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = std::process::Command::new(&bin)
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} ({e}): run the tests through scripts/test.sh")
        });
    let end = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < end,
            "redis-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// `config` pointed at this server, with its keys under `prefix`.
    pub fn configure(&self, mut config: Config, prefix: &str) -> Config {
        config.redis_url = Some(lull::config::Secret::new(self.url.clone()));
        config.redis_prefix = prefix.to_string();
        config
    }

    /// The shared test server, or a private one when none was given.
    pub fn shared() -> Self {
        match std::env::var("LULL_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Self {
                url,
                port: 0,
                child: None,
                dir: None,
                clustered: false,
                private_cluster: None,
            },
            _ => Self::private(),
        }
    }

    /// A private server this test controls (it can be stopped and started again).
    pub fn private() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("lull-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = Self {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child: None,
            dir: Some(dir),
            clustered: false,
            private_cluster: None,
        };
        s.start();
        s
    }

    /// The shared Redis Cluster (`LULL_TEST_REDIS_CLUSTER`, started by `scripts/test.sh`: three
    /// primaries and three replicas), or a private one `scripts/redis-cluster.sh` starts.
    pub fn cluster() -> Self {
        let (dir, private) = match std::env::var("LULL_TEST_REDIS_CLUSTER") {
            Ok(dir) if !dir.is_empty() => (std::path::PathBuf::from(dir), false),
            _ => {
                let dir = std::env::temp_dir().join(format!(
                    "lull-redis-cluster-{}-{}",
                    std::process::id(),
                    unique("c")
                ));
                let started = std::process::Command::new(redis_cluster_script())
                    .args(["start", &dir.to_string_lossy()])
                    .status()
                    .expect("scripts/redis-cluster.sh runs");
                assert!(started.success(), "the private redis cluster did not start");
                (dir, true)
            }
        };
        let env = std::fs::read_to_string(dir.join("cluster.env")).expect("cluster.env");
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("REDIS_CLUSTER_URL="))
            .expect("REDIS_CLUSTER_URL in cluster.env")
            .to_string();
        Self {
            url,
            port: 0,
            child: None,
            dir: None,
            clustered: true,
            private_cluster: private.then_some(dir),
        }
    }

    /// (Re)starts a private server on its port and waits until it answers.
    pub fn start(&mut self) {
        let dir = self.dir.as_ref().expect("a private server");
        let port = self.port.to_string();
        let dir = dir.to_string_lossy().into_owned();
        let args = [
            "--port",
            port.as_str(),
            "--appendonly",
            "no",
            "--dir",
            dir.as_str(),
        ];
        self.child = Some(spawn_redis(&args, self.port));
    }

    /// Stops a private server (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether this is a Redis Cluster (`url` lists its seeds).
    pub fn is_cluster(&self) -> bool {
        self.clustered
    }

    /// A plain connection for the test's own checks (to the whole cluster, for a cluster).
    pub async fn conn(&self) -> lull::io::store::Conn {
        if self.clustered {
            let seeds = lull::io::store::client::seed_urls(&self.url);
            return lull::io::store::client::cluster(&seeds, Duration::from_secs(5))
                .await
                .expect("redis cluster connection");
        }
        lull::io::store::Conn::Single(
            redis::Client::open(self.url.as_str())
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection"),
        )
    }
}

fn redis_cluster_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster.sh")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(dir) = self.private_cluster.take() {
            let _ = std::process::Command::new(redis_cluster_script())
                .args(["stop", &dir.to_string_lossy()])
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
        self.stop();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    unique(&format!("t-{name}"))
}

/// A plain HTTP/1.1 GET: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: lull\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line in a Prometheus text page (`name{labels}` as written), if any.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Runs `lull verify` over `config`'s topics and asserts a clean report; returns it.
pub async fn verify_clean(config: &lull::config::Config) -> lull::devkit::audit::VerifyReport {
    let config = config.clone();
    let report = tokio::task::spawn_blocking(move || {
        lull::devkit::audit::run(&config, &lull::devkit::audit::VerifyOptions::default())
    })
    .await
    .expect("verify task")
    .expect("verify runs");
    assert!(report.ok(), "verify found problems: {report:#?}");
    report
}

/// A `lull dev-broker` process (the mock cluster in a process of its own), stopped on drop.
pub struct DevBroker {
    child: std::process::Child,
    pub bootstrap: String,
    dir: PathBuf,
}

impl DevBroker {
    /// Starts one with lull's default topics of `partitions` partitions and waits for its address.
    pub fn start(partitions: i32) -> Self {
        Self::start_for(partitions, "lull")
    }

    /// [`DevBroker::start`], with the state topic of consumer group `group` too.
    pub fn start_for(partitions: i32, group: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("lull-dev-broker"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("bootstrap");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lull"))
            .args(["dev-broker", "--partitions", &partitions.to_string()])
            .args(["--group", group])
            .arg("--bootstrap-file")
            .arg(&file)
            .env_clear()
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dev-broker starts");
        let end = std::time::Instant::now() + DEADLINE;
        let bootstrap = loop {
            if let Ok(s) = std::fs::read_to_string(&file) {
                if !s.trim().is_empty() {
                    break s.trim().to_string();
                }
            }
            assert!(std::time::Instant::now() < end, "dev-broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            bootstrap,
            dir,
        }
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tests/kafkajs` with kafkajs installed (once per test binary: `npm install` of the pinned
/// version), for the tests that read lull's output with KafkaJS.
pub fn kafkajs_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafkajs");
        if !dir.join("node_modules/kafkajs/package.json").exists() {
            let status = std::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir)
                .status()
                .expect("npm runs (Node.js is needed for the KafkaJS reader)");
            assert!(status.success(), "npm install kafkajs failed");
        }
        dir
    })
    .clone()
}

/// Prints a chaos or upgrade run's one-line summary and appends it to the file
/// `LULL_CHAOS_REPORT` names, if any (`scripts/test.sh` prints that file at the end).
pub fn report_line(line: &str) {
    eprintln!("{line}");
    if let Ok(path) = std::env::var("LULL_CHAOS_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// What a child process writes to one of its pipes, line by line, read on a thread of its own so
/// a test can wait for a line with a deadline (never a bare sleep) and show every line seen when
/// it fails.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Lines {
    /// Follows `pipe` (a child's stdout or stderr) until it closes.
    pub fn follow(pipe: impl std::io::Read + Send + 'static) -> Self {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to [`DEADLINE`]) until the lines seen satisfy `done`; fails naming `what` and
    /// showing them.
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&[String]) -> bool) {
        let end = std::time::Instant::now() + DEADLINE;
        while !done(&self.seen) {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}: {:#?}",
                self.seen
            );
            if let Ok(line) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
        }
    }

    /// Waits until a line contains `text`.
    pub fn until_text(&mut self, text: &str) {
        self.until(text, |seen| seen.iter().any(|l| l.contains(text)));
    }

    /// Takes in what is still coming, until the pipe is quiet for 200 ms or closed.
    pub fn rest(&mut self) -> &[String] {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Whether any line seen contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.seen.iter().any(|l| l.contains(text))
    }
}

/// A plain blocking HTTP/1.1 GET, for use inside a [`wait_for`] condition: the whole response
/// (status line, headers, body), or "" when nothing listens.
pub fn http_get_blocking(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: lull\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response
}
