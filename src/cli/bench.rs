//! `lull bench`: the end-to-end benchmark, on the embedded mock cluster (and Redis when
//! `REDIS_URL` is set), with the real worker, producer and commits.
//!
//! Two phases, each on fresh topics, each checked with [`lull::devkit::audit`] (a run with any lost or
//! duplicated fragment fails):
//! * **throughput** — a backlog of bursts is written first; the worker then reads it in catch-up,
//!   timed from partition assignment until every fragment is in an acknowledged batch;
//! * **live** — users type in real time for a while; flush lateness (flush − close − grace) and
//!   end-to-end latency are measured from the batches, with hdrhistogram.
//!
//! `--compare` repeats the throughput phase with batching off, for reference. The report is JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use lull::config::{Batching, Config, Delivery};
use lull::devkit::batches::{reader, Tally};
use lull::devkit::load::{Plan, PlanArgs, Writer};
use lull::devkit::mock::MockBroker;
use lull::ops::metrics::metrics;

/// The load model.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Users in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Fragments in the throughput phase.
    #[arg(long, default_value_t = 400_000)]
    pub fragments: usize,
    /// Largest burst (bursts are 1..=this fragments).
    #[arg(long, default_value_t = 5)]
    pub burst: usize,
    /// Gap between fragments of a burst in the live phase, ms (the throughput phase's gaps stay
    /// under 2/5 of the quiet period).
    #[arg(long, default_value_t = 150)]
    pub gap_ms: u64,
    /// Bytes of `text` per fragment.
    #[arg(long, default_value_t = 60)]
    pub payload: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 16)]
    pub partitions: i32,
    /// Quiet period, ms.
    #[arg(long, default_value_t = 500)]
    pub quiet_ms: u64,
    /// Users typing in the live phase (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub live_users: usize,
    /// Length of the live phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub live_seconds: u64,
    /// Also run the throughput phase with LULL_BATCHING=off.
    #[arg(long)]
    pub compare: bool,
    /// Also run the throughput phase in the other delivery mode (at_least_once when
    /// LULL_DELIVERY is exactly_once, and the other way round), on a backlog of its own.
    #[arg(long)]
    pub compare_delivery: bool,
    /// Takeovers to time after a worker went through the throughput backlog: a new worker
    /// replaces the last one this many times (each reads the partitions' state records); the
    /// report gives assignment-to-reading p50/p99 (0 skips the phase).
    #[arg(long, default_value_t = 0)]
    pub takeovers: usize,
    /// Brokers in the mock cluster (each serves its requests on one thread; partitions are
    /// spread over them).
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Run on this Kafka cluster (bootstrap servers) instead of the embedded mock: fresh topics
    /// are created there for each phase (replication 1).
    #[arg(long)]
    pub kafka: Option<String>,
    /// Also time a plain librdkafka consume-and-produce copy of the same backlog: the machine's
    /// reference for the throughput phase.
    #[arg(long)]
    pub reference: bool,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PhaseReport {
    /// What ran.
    pub phase: String,
    /// Batching on or off.
    pub batching: bool,
    /// `exactly_once` or `at_least_once`.
    pub delivery: String,
    /// Fragments processed.
    pub fragments: usize,
    /// Batches delivered.
    pub batches: usize,
    /// Wall time of the timed part, seconds.
    pub seconds: f64,
    /// Fragments per second sustained.
    pub fragments_per_sec: f64,
    /// Batches per second.
    pub batches_per_sec: f64,
    /// CPU seconds of the whole process during the timed part.
    pub cpu_seconds: f64,
    /// Flush lateness, ms: p50, p99, max (live phase).
    pub flush_lateness_ms: Option<(u64, u64, u64)>,
    /// Last fragment to flush, ms: p50, p99, max (live phase).
    pub end_to_end_ms: Option<(u64, u64, u64)>,
    /// Most windows open at once (sampled).
    pub peak_open_windows: i64,
    /// Held bytes (queued input, windows, unacknowledged output) per open window at that peak.
    pub held_bytes_per_open_window: Option<f64>,
    /// Redis round trips per fragment (script calls and pipelines), when Redis is on.
    pub redis_round_trips_per_fragment: Option<f64>,
    /// Takeover phase: from a partition's assignment until its worker reads input, ms: p50,
    /// p99, and the number of partition starts timed (from the metric's buckets).
    pub partition_start_ms: Option<(u64, u64, u64)>,
    /// Live phase, exactly_once: how long a commit took, ms: p50, p99, and the commits timed
    /// (from the metric's buckets).
    pub transaction_commit_ms: Option<(u64, u64, u64)>,
    /// From `lull verify`: lost and duplicated fragments (must be 0).
    pub lost: usize,
    /// See `lost`.
    pub duplicated: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Logical CPUs of this machine.
    pub cpus: usize,
    /// Peak resident memory of the process, bytes.
    pub peak_rss_bytes: u64,
    /// Redis in use.
    pub redis: bool,
    /// The phases.
    pub phases: Vec<PhaseReport>,
    /// Every phase lost and duplicated nothing.
    pub correct: bool,
}

/// The delivery audit of a phase's topics (it blocks: off the async workers).
async fn audit(config: &Config) -> Result<lull::devkit::audit::VerifyReport, BenchError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        lull::devkit::audit::run(&config, &lull::devkit::audit::VerifyOptions::default())
    })
    .await
    .map_err(|e| BenchError::Worker(e.to_string()))?
    .map_err(BenchError::from)
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The mock cluster did not start.
    #[error(transparent)]
    Mock(#[from] lull::devkit::mock::MockError),
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The worker failed.
    #[error("worker: {0}")]
    Worker(String),
    /// The audit failed to run.
    #[error(transparent)]
    Verify(#[from] lull::devkit::audit::VerifyError),
    /// The phase did not finish in time.
    #[error("{0} did not finish within the time limit")]
    Timeout(String),
}

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn acked_fragments() -> u64 {
    metrics().batch_fragments.get_sample_sum() as u64
}

/// A batch's value as a reader received it, and when (Unix ms).
type Received = (Vec<u8>, i64);

/// The throughput phase in the other delivery mode (`--compare-delivery`).
const OTHER_DELIVERY: &str = "other-delivery";

/// Fresh topics for one phase, and the config pointing at them.
fn phase_config(base: &Config, brokers: &str, run: &str, name: &str, batching: bool) -> Config {
    let mut c = base.clone();
    if name == OTHER_DELIVERY {
        c.delivery = match base.delivery {
            Delivery::ExactlyOnce => Delivery::AtLeastOnce,
            Delivery::AtLeastOnce => Delivery::ExactlyOnce,
        };
    }
    c.brokers = brokers.to_string();
    c.input_topic = format!("bench.{run}{name}.in");
    c.output_topic = format!("bench.{run}{name}.out");
    c.dlq_topic = format!("bench.{run}{name}.dlq");
    c.group_id = format!("bench-{name}-{}", std::process::id());
    c.batching = if batching {
        Batching::On
    } else {
        Batching::Off
    };
    c.http_addr.set_port(0);
    if c.redis_url.is_some() {
        c.redis_prefix = format!(
            "{}:bench-{}-{}",
            base.redis_prefix,
            std::process::id(),
            name
        );
    }
    c
}

/// Creates `topics` (name, partitions) on an external cluster, replication 1.
async fn create_topics(bootstrap: &str, topics: &[(String, i32)]) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        if let Err((topic, code)) = r {
            return Err(BenchError::Worker(format!("cannot create {topic}: {code}")));
        }
    }
    Ok(())
}

/// The backlog every throughput-like phase reads: a typing session an hour old.
async fn write_backlog(args: &BenchArgs, config: &Config) -> Result<(), BenchError> {
    let plan = Plan::new(PlanArgs {
        max_burst: args.burst,
        text_bytes: Some(args.payload),
        ..PlanArgs::plain(args.users, args.fragments, args.quiet_ms, 11)
    });
    let base = lull::model::wire::now_ms() - 3_600_000;
    let mut writer = Writer::new(&config.brokers, &config.input_topic)?;
    for e in &plan.events {
        let (key, value) = plan.message(e, "");
        writer
            .send(&key, &value, Some(base + e.at_ms as i64))
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The reference: librdkafka alone copies the backlog from the input topic to the output topic
/// (consume, produce with lull's producer settings, wait for every acknowledgement), timed like
/// the throughput phase. lull's rate divided by this one is how close lull comes to the machine.
async fn copy(args: &BenchArgs, config: &Config) -> Result<PhaseReport, BenchError> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    write_backlog(args, config).await?;
    let consumer: StreamConsumer = lull::io::kafka::consumer_config(config).create()?;
    consumer.subscribe(&[config.input_topic.as_str()])?;
    let producer: FutureProducer = lull::io::kafka::producer_config(config).create()?;
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let (mut read, mut acked) = (0usize, 0usize);
    let deadline = start + Duration::from_secs(600);
    while acked < args.fragments {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout("copy".into()));
        }
        tokio::select! {
            m = consumer.recv(), if read < args.fragments => match m {
                Ok(m) => {
                    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&config.output_topic);
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    if let Some(v) = m.payload() {
                        record = record.payload(v);
                    }
                    loop {
                        match producer.send_result(record) {
                            Ok(d) => {
                                pending.push(d);
                                break;
                            }
                            Err((_, back)) => {
                                record = back;
                                use futures_util::StreamExt;
                                if pending.next().await.is_some() {
                                    acked += 1;
                                }
                            }
                        }
                    }
                    read += 1;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
                Err(e) => return Err(BenchError::Kafka(e)),
            },
            Some(_) = futures_util::StreamExt::next(&mut pending), if !pending.is_empty() => acked += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(PhaseReport {
        phase: "copy".into(),
        batching: false,
        delivery: "at_least_once".into(),
        fragments: args.fragments,
        batches: args.fragments,
        seconds,
        fragments_per_sec: args.fragments as f64 / seconds,
        batches_per_sec: args.fragments as f64 / seconds,
        cpu_seconds: cpu_seconds() - cpu0,
        ..PhaseReport::default()
    })
}

/// A fragment value of about `payload` bytes of text.
fn value(user: usize, seq: usize, payload: usize) -> String {
    serde_json::json!({
        "user_id": format!("u{user}"),
        "event_id": format!("u{user}-{seq}"),
        "text": "x".repeat(payload),
    })
    .to_string()
}

/// Starts the worker and waits until it owns every partition.
async fn start_worker(
    config: &Config,
    partitions: i32,
    reading: bool,
) -> Result<
    (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), lull::RunError>>,
    ),
    BenchError,
> {
    let token = CancellationToken::new();
    let health = Arc::new(lull::ops::health::Health::new());
    let handle = tokio::spawn(lull::run_with_health(
        config.clone(),
        token.clone(),
        health.clone(),
    ));
    let end = Instant::now() + Duration::from_secs(60);
    // Assigned: timing starts there, so a worker's start (in exactly_once its transactions and
    // its state read, timed on their own in `partition_start_ms`) counts, as in production;
    // `reading`: until every partition's worker reads.
    let ready = || {
        let n = if reading {
            health.running_partitions()
        } else {
            health.assigned_partitions()
        };
        n >= partitions as usize
    };
    while !ready() {
        if handle.is_finished() || Instant::now() > end {
            return Err(BenchError::Worker("never got its partitions".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((token, handle))
}

async fn stop_worker(
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), lull::RunError>>,
) -> Result<(), BenchError> {
    token.cancel();
    match handle.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BenchError::Worker(e.to_string())),
        Err(e) => Err(BenchError::Worker(e.to_string())),
    }
}

/// The cumulative bucket counts of a histogram: (upper bound, observations at or below it).
fn buckets(h: &prometheus::Histogram) -> Vec<(f64, u64)> {
    use prometheus::core::Collector;
    h.collect()
        .first()
        .and_then(|family| family.get_metric().first())
        .map(|m| {
            m.get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `q` quantile of the observations made between two snapshots of a histogram's buckets,
/// in ms, interpolated within its bucket (as Prometheus' `histogram_quantile` does).
fn quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> u64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|((bound, a), (_, b))| (*bound, a - b))
        .collect();
    let total = counts.last().map_or(0, |(_, n)| *n);
    if total == 0 {
        return 0;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, n) in &counts {
        if n as f64 >= rank {
            let span = (n - lower.1).max(1) as f64;
            let at = lower.0 + (bound - lower.0) * ((rank - lower.1 as f64) / span);
            return (at * 1000.0).round() as u64;
        }
        lower = (bound, n);
    }
    (lower.0 * 1000.0) as u64
}

/// A worker goes through the throughput backlog (its state records written), then new workers
/// replace it `--takeovers` times; each start of each partition is timed, assignment to reading.
async fn takeover(args: &BenchArgs, config: &Config) -> Result<PhaseReport, BenchError> {
    write_backlog(args, config).await?;
    let read_before = metrics().fragments_received.get();
    let (token, handle) = start_worker(config, args.partitions, false).await?;
    let end = Instant::now() + Duration::from_secs(600);
    while (metrics().fragments_received.get() - read_before) < args.fragments as u64
        || metrics().open_windows.get() > 0
    {
        if Instant::now() > end {
            return Err(BenchError::Worker("the backlog was never read".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_worker(token, handle).await?;
    let before = buckets(&metrics().partition_start_seconds);
    let start = Instant::now();
    for _ in 0..args.takeovers {
        let (token, handle) = start_worker(config, args.partitions, true).await?;
        stop_worker(token, handle).await?;
    }
    let after = buckets(&metrics().partition_start_seconds);
    let starts = after.last().map_or(0, |(_, n)| *n) - before.last().map_or(0, |(_, n)| *n);
    let audit = audit(config).await?;
    Ok(PhaseReport {
        phase: "takeover".into(),
        batching: true,
        delivery: config.delivery.as_str().into(),
        fragments: args.fragments,
        seconds: start.elapsed().as_secs_f64(),
        partition_start_ms: Some((
            quantile_ms(&before, &after, 0.5),
            quantile_ms(&before, &after, 0.99),
            starts,
        )),
        lost: audit.lost,
        duplicated: audit.duplicated,
        ..PhaseReport::default()
    })
}

/// Writes the backlog, then times the worker through it.
async fn throughput(
    args: &BenchArgs,
    config: &Config,
    name: &str,
) -> Result<PhaseReport, BenchError> {
    write_backlog(args, config).await?;

    let acked_before = acked_fragments();
    let batches_before: u64 = metrics().batch_fragments.get_sample_count();
    let redis_before = lull::io::store::round_trips();
    let (token, handle) = start_worker(config, args.partitions, false).await?;
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut peak_windows = 0;
    let mut peak_held = 0;
    let deadline = start + Duration::from_secs(600);
    while acked_fragments() - acked_before < args.fragments as u64 {
        let w = metrics().open_windows.get();
        if w > peak_windows {
            peak_windows = w;
            peak_held = metrics().held_bytes.get();
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(name.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let batches = (metrics().batch_fragments.get_sample_count() - batches_before) as usize;
    let redis = lull::io::store::round_trips() - redis_before;
    stop_worker(token, handle).await?;

    let audit = audit(config).await?;
    Ok(PhaseReport {
        phase: name.to_string(),
        batching: config.batching == Batching::On,
        delivery: config.delivery.as_str().into(),
        fragments: args.fragments,
        batches,
        seconds,
        fragments_per_sec: args.fragments as f64 / seconds,
        batches_per_sec: batches as f64 / seconds,
        cpu_seconds: cpu,
        flush_lateness_ms: None,
        end_to_end_ms: None,
        peak_open_windows: peak_windows,
        held_bytes_per_open_window: (peak_windows > 0)
            .then(|| peak_held as f64 / peak_windows as f64),
        redis_round_trips_per_fragment: config
            .redis_url
            .is_some()
            .then(|| redis as f64 / args.fragments as f64),
        partition_start_ms: None,
        transaction_commit_ms: None,
        lost: audit.lost,
        duplicated: audit.duplicated,
    })
}

/// Users type in real time; lateness and latency run from the batches' due times to the moment
/// a `read_committed` reader received them (in exactly_once, when their transaction committed).
async fn live(args: &BenchArgs, config: &Config) -> Result<PhaseReport, BenchError> {
    let mut writer = Writer::new(&config.brokers, &config.input_topic)?;
    let (token, handle) = start_worker(config, args.partitions, false).await?;
    let consumer = reader(
        &config.brokers,
        &config.output_topic,
        &format!("{}-read", config.group_id),
    )?;
    let received: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
    let reading = CancellationToken::new();
    let read_task = {
        let (received, reading) = (received.clone(), reading.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = reading.cancelled() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            let at = lull::model::wire::now_ms();
                            if let Some(payload) = m.payload() {
                                if let Ok(mut r) = received.lock() {
                                    r.push((payload.to_vec(), at));
                                }
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                }
            }
        })
    };
    let users = args.live_users.max(1);
    let burst = args.burst.max(1);
    // Each user repeats: a burst of `burst` fragments `gap_ms` apart, then a pause of 2-3x quiet.
    let cycle_ms = burst as u64 * args.gap_ms + args.quiet_ms * 5 / 2;
    let rate = users as f64 * burst as f64 / (cycle_ms as f64 / 1000.0);
    let commits_before = buckets(&metrics().transaction_seconds);
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let end = start + Duration::from_secs(args.live_seconds);
    let redis_before = lull::io::store::round_trips();
    let mut sent = 0usize;
    let mut seqs = vec![0usize; users];
    let mut peak_windows = 0;
    let mut peak_held = 0;
    // Users are spread evenly over the cycle; user u types fragment i of a burst at
    // offset(u) + i * gap within each cycle.
    while Instant::now() < end {
        let elapsed = start.elapsed().as_millis() as u64;
        let due = ((elapsed as f64 / 1000.0) * rate) as usize;
        while sent < due {
            let slot = sent % (users * burst);
            let (u, _i) = (slot / burst, slot % burst);
            let seq = seqs[u];
            seqs[u] += 1;
            let v = value(u, seq, args.payload);
            writer.send(&format!("u{u}"), &v, None).await?;
            sent += 1;
        }
        let w = metrics().open_windows.get();
        if w > peak_windows {
            peak_windows = w;
            peak_held = metrics().held_bytes.get();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.finish().await?;
    // Let every window close, then stop.
    let quiet_end = Instant::now() + config.max_wait + config.grace + Duration::from_secs(2);
    while Instant::now() < quiet_end && metrics().open_windows.get() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let redis = lull::io::store::round_trips() - redis_before;
    stop_worker(token, handle).await?;

    // Every batch received (or nothing new for 10 s), then the tally at the times they came.
    let mut tally = Tally::new(config.quiet, config.max_wait, config.grace);
    let mut taken = 0;
    let mut idle_since = Instant::now();
    while tally.distinct() < sent && idle_since.elapsed() < Duration::from_secs(10) {
        let fresh: Vec<Received> = match received.lock() {
            Ok(r) => r[taken..].to_vec(),
            Err(_) => Vec::new(),
        };
        if fresh.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        taken += fresh.len();
        idle_since = Instant::now();
        for (payload, at) in &fresh {
            tally.add_seen(payload, Some(*at));
        }
    }
    reading.cancel();
    let _ = read_task.await;
    let audit = audit(config).await?;
    Ok(PhaseReport {
        phase: "live".into(),
        batching: true,
        delivery: config.delivery.as_str().into(),
        fragments: sent,
        batches: tally.batches,
        seconds,
        fragments_per_sec: sent as f64 / args.live_seconds as f64,
        batches_per_sec: tally.batches as f64 / seconds,
        cpu_seconds: cpu,
        flush_lateness_ms: Some(tally.lateness_ms()),
        end_to_end_ms: Some(tally.end_to_end_ms()),
        peak_open_windows: peak_windows,
        held_bytes_per_open_window: (peak_windows > 0)
            .then(|| peak_held as f64 / peak_windows as f64),
        redis_round_trips_per_fragment: config
            .redis_url
            .is_some()
            .then(|| redis as f64 / sent.max(1) as f64),
        partition_start_ms: None,
        transaction_commit_ms: config.exactly_once().then(|| {
            let after = buckets(&metrics().transaction_seconds);
            let n =
                after.last().map_or(0, |(_, n)| *n) - commits_before.last().map_or(0, |(_, n)| *n);
            (
                quantile_ms(&commits_before, &after, 0.5),
                quantile_ms(&commits_before, &after, 0.99),
                n,
            )
        }),
        lost: audit.lost,
        duplicated: audit.duplicated,
    })
}

/// Runs the benchmark.
pub async fn run(base: Config, args: BenchArgs) -> Result<BenchReport, BenchError> {
    let mut base = base;
    base.quiet = Duration::from_millis(args.quiet_ms.max(1));
    if base.max_wait < base.quiet {
        base.max_wait = base.quiet;
    }
    let mut topics = Vec::new();
    let mut names = vec![("throughput", true)];
    if args.reference {
        names.push(("copy", true));
    }
    if args.compare {
        names.push(("passthrough", false));
    }
    if args.compare_delivery {
        names.push((OTHER_DELIVERY, true));
    }
    if args.takeovers > 0 {
        names.push(("takeover", true));
    }
    if args.live_users > 0 {
        names.push(("live", true));
    }
    // On an external cluster the topics of each run are new; the mock starts empty.
    let run = match &args.kafka {
        Some(_) => format!("{}.", lull::model::wire::now_ms()),
        None => String::new(),
    };
    for (name, _) in &names {
        for suffix in ["in", "out", "dlq"] {
            topics.push((
                format!("bench.{run}{name}.{suffix}"),
                args.partitions.max(1),
            ));
        }
        if args.kafka.is_none() {
            // The mock cannot create topics; on Kafka `lull run` creates the state topic itself.
            let phase = phase_config(&base, "", &run, name, true);
            topics.push((phase.state_topic(), args.partitions.max(1)));
        }
    }
    let (_broker, brokers) = match &args.kafka {
        None => {
            let broker = MockBroker::start(args.brokers.max(1), &topics)?;
            let brokers = broker.bootstrap().to_string();
            (Some(broker), brokers)
        }
        Some(bootstrap) => {
            create_topics(bootstrap, &topics).await?;
            (None, bootstrap.clone())
        }
    };
    let mut phases = Vec::new();
    for (name, batching) in names {
        let config = phase_config(&base, &brokers, &run, name, batching);
        eprintln!("bench: {name} phase");
        let report = match name {
            "live" => live(&args, &config).await?,
            "copy" => copy(&args, &config).await?,
            "takeover" => takeover(&args, &config).await?,
            _ => throughput(&args, &config, name).await?,
        };
        phases.push(report);
    }
    let correct = phases.iter().all(|p| p.lost == 0 && p.duplicated == 0);
    Ok(BenchReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        peak_rss_bytes: peak_rss(),
        redis: base.redis_url.is_some(),
        phases,
        correct,
    })
}

/// `lull bench`: the report as JSON on stdout; exit 1 if any fragment was lost or duplicated.
pub async fn main(config: Config, args: BenchArgs) -> std::process::ExitCode {
    super::init_tracing(config.log_format, "warn");
    match run(config, args).await {
        Ok(report) => {
            match serde_json::to_string_pretty(&report) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("{e}"),
            }
            if report.correct {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("bench: fragments were lost or duplicated");
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
