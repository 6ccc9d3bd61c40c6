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

mod live;
mod phases;

use live::live;
use phases::{copy, takeover};

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
    /// Also time a plain librdkafka consume-and-produce copy of the same backlog: the machine's
    /// reference for the throughput phase.
    #[arg(long)]
    pub reference: bool,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
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
    super::verify::audit(config.clone(), Default::default())
        .await
        .map_err(BenchError::Audit)
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
    #[error("audit: {0}")]
    Audit(String),
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

/// Creates `topics` (name, partitions) on an external cluster, replication 1, with `config`'s
/// connection and security settings.
async fn create_topics(config: &Config, topics: &[(String, i32)]) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        lull::io::kafka::admin_config(config).create()?;
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
        ..PlanArgs::plain(
            args.users,
            args.fragments,
            config.quiet.as_millis() as u64,
            11,
        )
    });
    let mut writer = Writer::new(config, &config.input_topic)?;
    super::demo::write_backlog(&mut writer, &plan, lull::ops::clock::now_ms() - 3_600_000).await?;
    Ok(())
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
    let batched = super::progress::bar(args.fragments as u64, format!("{name}: batched"));
    while acked_fragments() - acked_before < args.fragments as u64 {
        batched.set_position(acked_fragments() - acked_before);
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
    batched.finish_and_clear();
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

/// Runs the benchmark.
pub async fn run(base: Config, args: BenchArgs) -> Result<BenchReport, BenchError> {
    let quiet_ms = super::demo::tool_quiet_ms(&base, &args.settings);
    // A real cluster only when named on the command line: a KAFKA_BROKERS in the environment (or
    // a deployment's .env) never points a benchmark at production.
    let kafka = args.settings.flag("KAFKA_BROKERS").map(str::to_string);
    let mut base = base;
    base.quiet = Duration::from_millis(quiet_ms);
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
    let run = match &kafka {
        Some(_) => format!("{}.", lull::ops::clock::now_ms()),
        None => String::new(),
    };
    for (name, _) in &names {
        for suffix in ["in", "out", "dlq"] {
            topics.push((
                format!("bench.{run}{name}.{suffix}"),
                args.partitions.max(1),
            ));
        }
        if kafka.is_none() {
            // The mock cannot create topics; on Kafka `lull run` creates the state topic itself.
            let phase = phase_config(&base, "", &run, name, true);
            topics.push((phase.state_topic(), args.partitions.max(1)));
        }
    }
    let (_broker, brokers) = match &kafka {
        None => {
            let broker = MockBroker::start(args.brokers.max(1), &topics)?;
            let brokers = broker.bootstrap().to_string();
            (Some(broker), brokers)
        }
        Some(bootstrap) => {
            let mut admin = base.clone();
            admin.brokers = bootstrap.clone();
            create_topics(&admin, &topics).await?;
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
