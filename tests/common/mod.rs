//! The integration-test harness: a fresh librdkafka mock cluster per test (real Kafka protocol,
//! real consumer groups), lull started in-process on it, a producer, and a collector that reads
//! the output and dead-letter topics back.
//!
//! Every wait is on a condition with a generous deadline, never a bare sleep, so the tests hold on
//! a loaded 2-core machine.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lull::config::{Config, KafkaProperty};
use lull::health::Health;
use lull::mock::MockBroker;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any single condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A mock cluster with lull's three topics.
pub struct Cluster {
    pub broker: MockBroker,
    pub partitions: i32,
}

impl Cluster {
    /// Starts a cluster whose input, output and DLQ topics have `partitions` partitions.
    pub fn start(partitions: i32) -> Self {
        let d = Config::defaults();
        let broker = MockBroker::start(
            1,
            &[
                (d.input_topic.clone(), partitions),
                (d.output_topic.clone(), partitions),
                (d.dlq_topic.clone(), partitions),
                ("chat.batches.replay".to_string(), partitions),
            ],
        )
        .expect("mock cluster starts");
        Self { broker, partitions }
    }

    /// lull's configuration against this cluster: test-friendly group timings.
    pub fn config(&self, group: &str) -> Config {
        let mut c = Config::defaults();
        c.brokers = self.broker.bootstrap().to_string();
        c.group_id = group.to_string();
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
        c
    }

    /// A plain producer to the cluster.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("linger.ms", "0")
            .create()
            .expect("producer")
    }

    /// A reader of every partition of `topic` from the beginning (no group, no commits).
    pub fn collector(&self, topic: &str) -> Collector {
        Collector::on(self.broker.bootstrap(), topic, self.partitions)
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

    /// Waits until this worker owns at least `n` partitions.
    pub async fn assigned(&self, n: usize) {
        wait_for("partitions assigned", || {
            self.health.assigned_partitions() >= n
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
    r = r.headers(OwnedHeaders::new().insert(Header {
        key: "trace",
        value: Some("t"),
    }));
    let d = producer
        .send(r, Duration::from_secs(30))
        .await
        .expect("produce");
    (d.partition, d.offset)
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
    /// The value parsed once on arrival (`Null` if it is not JSON).
    parsed: serde_json::Value,
}

impl OutMsg {
    /// Copies a consumed message, parsing its value once.
    fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        OutMsg {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
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
        let end = Instant::now() + DEADLINE;
        while !done(&self.seen) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
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
            let mut wait = left.min(Duration::from_millis(200));
            for _ in 0..1_000 {
                match tokio::time::timeout(wait, self.consumer.recv()).await {
                    Ok(Ok(m)) => self.seen.push(OutMsg::from_message(&m)),
                    _ => break,
                }
                wait = Duration::from_millis(1);
            }
        }
        &self.seen
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
    /// The shared test server, or a private one when none was given.
    pub fn shared() -> Self {
        match std::env::var("LULL_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Self {
                url,
                port: 0,
                child: None,
                dir: None,
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
        };
        s.start();
        s
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

    /// A plain connection for the test's own checks.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
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
pub async fn verify_clean(config: &lull::config::Config) -> lull::verify::VerifyReport {
    let config = config.clone();
    let report = tokio::task::spawn_blocking(move || {
        lull::verify::run(&config, &lull::verify::VerifyOptions::default())
    })
    .await
    .expect("verify task")
    .expect("verify runs");
    assert!(report.ok(), "verify found problems: {report:#?}");
    report
}
