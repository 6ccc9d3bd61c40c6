//! `lull demo`: the whole path on nothing but this binary.
//!
//! It starts librdkafka's mock cluster in-process, creates the topics, runs the real worker
//! against it, and drives simulated users typing in bursts. Then it reads every batch back and
//! checks, itself, that every fragment is in exactly one batch, none lost, none duplicated, and
//! each user's fragments in order. The result decides the exit code.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rdkafka::Message;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::mock::MockBroker;
use crate::partition::sleep_until_opt;
use crate::verify::percentile;

/// The demo's knobs (all have defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Fragments to send in total (about; spread over the users).
    #[arg(long, default_value_t = 20_000)]
    pub fragments: usize,
    /// Quiet period in milliseconds (overrides LULL_QUIET_MS).
    #[arg(long, default_value_t = 500)]
    pub quiet_ms: u64,
    /// Partitions of each topic on the mock cluster.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Sample batches to print.
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Random seed for the typing simulation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the whole typing session to Kafka first (timestamped in the past), then start the
    /// worker: it batches a lagged log in catch-up, as after an outage. Shows throughput and the
    /// Redis round trips per fragment under load; flush lateness does not apply.
    #[arg(long)]
    pub backlog: bool,
}

/// Why the demo could not run (as opposed to its check failing).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The mock cluster did not start.
    #[error(transparent)]
    Mock(#[from] crate::mock::MockError),
    /// A Kafka client of the demo failed.
    #[error("demo Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The worker stopped with an error.
    #[error("the worker failed: {0}")]
    Worker(#[from] crate::RunError),
}

/// The figures the demo ends with.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Fragments produced.
    pub fragments_in: usize,
    /// Batches read back.
    pub batches_out: usize,
    /// Bursts the simulation meant to type.
    pub bursts_planned: usize,
    /// Fragments never seen in a batch.
    pub lost: usize,
    /// Fragments seen in more than one batch (extra copies).
    pub duplicated: usize,
    /// Fragments seen out of their user's order.
    pub out_of_order: usize,
    /// Flush lateness p50 and p99 in milliseconds.
    pub lateness_ms: (i64, i64),
    /// Last fragment to flush, p50 and p99 in milliseconds.
    pub end_to_end_ms: (i64, i64),
}

impl DemoReport {
    /// Whether the end-to-end check passed.
    pub fn passed(&self) -> bool {
        self.fragments_in > 0 && self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

const PHRASES: &[&str] = &[
    "hi",
    "I need help",
    "with my order #123",
    "it hasn't arrived yet",
    "can you check?",
    "also",
    "the tracking page is blank",
    "my email changed",
    "one more thing",
    "thanks!",
    "hello?",
    "is anyone there",
];

/// One planned fragment: when it is typed, by whom, and its place in that user's sequence.
struct Planned {
    at_ms: u64,
    user: usize,
    seq: usize,
    text: &'static str,
}

/// Plans users typing bursts: a few fragments with short gaps, then a pause well past quiet.
fn plan(args: &DemoArgs) -> (Vec<Planned>, usize) {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let users = args.users.max(1);
    let mut events = Vec::with_capacity(args.fragments);
    let mut bursts = 0;
    let quiet = args.quiet_ms.max(1);
    for user in 0..users {
        let share = args.fragments / users + usize::from(user < args.fragments % users);
        let mut t = rng.gen_range(0..2_000u64);
        let mut seq = 0;
        while seq < share {
            let size = rng.gen_range(1..=5usize).min(share - seq);
            bursts += 1;
            for i in 0..size {
                if i > 0 {
                    t += rng.gen_range(20..=(quiet * 2 / 5).max(21));
                }
                events.push(Planned {
                    at_ms: t,
                    user,
                    seq,
                    text: PHRASES[rng.gen_range(0..PHRASES.len())],
                });
                seq += 1;
            }
            t += rng.gen_range(quiet * 2..=quiet * 4);
        }
    }
    events.sort_by_key(|e| (e.at_ms, e.user, e.seq));
    (events, bursts)
}

fn user_name(user: usize) -> String {
    format!("user-{user:04}")
}

/// The key and JSON value of a planned fragment; `run` prefixes its event id.
fn fragment_json(e: &Planned, run: &str) -> (String, String) {
    let user = user_name(e.user);
    let payload = serde_json::json!({
        "user_id": user,
        "event_id": format!("{run}{user}-{}", e.seq),
        "seq": e.seq,
        "text": e.text,
    })
    .to_string();
    (user, payload)
}

#[derive(Deserialize)]
struct BatchView {
    key: String,
    reason: String,
    first_ts: i64,
    last_ts: i64,
    flushed_at: i64,
    fragments: Vec<FragmentView>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct FragmentView {
    event_id: String,
    seq: usize,
}

/// A one-line progress bar on stderr (only when stderr is a terminal).
struct Progress {
    tty: bool,
    total: usize,
    last_draw: Option<std::time::Instant>,
}

impl Progress {
    fn draw(&mut self, produced: usize, batched: usize, force: bool) {
        if !self.tty {
            return;
        }
        let now = std::time::Instant::now();
        if !force
            && self
                .last_draw
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        let width = 30;
        let filled = (batched * width)
            .checked_div(self.total)
            .unwrap_or(0)
            .min(width);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r  [{bar}] typed {produced:>6}/{total}  batched {batched:>6}/{total}",
            total = self.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Runs the demo; returns its report (check [`DemoReport::passed`]).
pub async fn run(base: Config, args: DemoArgs) -> Result<DemoReport, DemoError> {
    let mut config = base;
    config.quiet = Duration::from_millis(args.quiet_ms.max(1));
    if config.max_wait < config.quiet {
        config.max_wait = config.quiet;
    }
    let partitions = args.partitions.max(1);
    let broker = MockBroker::start(
        1,
        &[
            (config.input_topic.clone(), partitions),
            (config.output_topic.clone(), partitions),
            (config.dlq_topic.clone(), partitions),
        ],
    )?;
    config.brokers = broker.bootstrap().to_string();
    config.group_id = format!("lull-demo-{}", std::process::id());
    // The demo must not collide with a `lull run` on the same machine.
    config.http_addr.set_port(0);

    println!("lull demo");
    println!(
        "  mock Kafka cluster at {} ({} partitions per topic, in memory)",
        broker.bootstrap(),
        partitions
    );
    match &config.redis_url {
        None => println!("  REDIS_URL is unset: running without shared state (batching is in memory; Kafka is the log of record)"),
        Some(url) => {
            // A fresh mock cluster restarts offsets at 0: keys from an earlier run must not be
            // mistaken for this run's flushed watermarks.
            config.redis_prefix = format!(
                "{}:demo-{}-{}",
                config.redis_prefix,
                std::process::id(),
                crate::output::now_ms()
            );
            println!(
                "  REDIS_URL is set: shared state in Redis at {} under {}:*",
                crate::config::mask_url_password(url.expose()),
                config.redis_prefix
            );
        }
    }
    let (events, bursts) = plan(&args);
    println!(
        "  {} users typing {} fragments in {} bursts; quiet {} ms, max wait {} ms, grace {} ms",
        args.users,
        events.len(),
        bursts,
        config.quiet.as_millis(),
        config.max_wait.as_millis(),
        config.grace.as_millis()
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .create()?;
    let total = events.len();
    let fragment_of = |e: &Planned| fragment_json(e, "");
    let mut produced = 0;
    let mut next = 0;
    let mut read_started: Option<std::time::Instant> = None;
    if args.backlog {
        let span_ms = events.last().map_or(0, |e| e.at_ms) as i64;
        let base = crate::output::now_ms() - span_ms - 10_000;
        let mut pending = FuturesUnordered::new();
        for e in &events {
            let (user, payload) = fragment_of(e);
            let mut record = FutureRecord::to(&config.input_topic)
                .key(&user)
                .payload(&payload)
                .timestamp(base + e.at_ms as i64);
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        record = back;
                        if let Some(Ok(Err((err, _)))) = pending.next().await {
                            return Err(DemoError::Kafka(err));
                        }
                    }
                    Err((err, _)) => return Err(DemoError::Kafka(err)),
                }
            }
        }
        while let Some(d) = pending.next().await {
            if let Ok(Err((err, _))) = d {
                return Err(DemoError::Kafka(err));
            }
        }
        produced = total;
        next = total;
        println!("  backlog of {total} fragments written; starting the worker on it");
    }

    let token = CancellationToken::new();
    let health = Arc::new(crate::health::Health::new());
    let mut worker = tokio::spawn(crate::run_with_health(
        config.clone(),
        token.clone(),
        health.clone(),
    ));
    let mut worker_result = None;

    // Type only once the worker owns its partitions, so the first bursts are not read late.
    let join_deadline = Instant::now() + Duration::from_secs(60);
    while health.assigned_partitions() < partitions as usize {
        if worker.is_finished() || Instant::now() > join_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if args.backlog {
        read_started = Some(std::time::Instant::now());
    }

    let collector: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}-check", config.group_id))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    collector.subscribe(&[config.output_topic.as_str()])?;

    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total,
        last_draw: None,
    };
    let span_ms = events.last().map_or(0, |e| e.at_ms);
    let start = Instant::now();
    let deadline = start
        + Duration::from_millis(span_ms)
        + config.max_wait
        + config.grace
        + Duration::from_secs(60);

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_seq: HashMap<String, usize> = HashMap::new();
    let mut out_of_order = 0;
    let mut batches: Vec<BatchView> = Vec::new();
    let mut deliveries = FuturesUnordered::new();
    let mut all_batched_at = None;
    let mut settle_until: Option<Instant> = None;

    loop {
        let next_at = events
            .get(next)
            .map(|e| start + Duration::from_millis(e.at_ms));
        tokio::select! {
            _ = sleep_until_opt(next_at), if next_at.is_some() => {
                // Send everything due now in one go.
                let now = Instant::now();
                while let Some(e) = events.get(next) {
                    if start + Duration::from_millis(e.at_ms) > now {
                        break;
                    }
                    let (user, payload) = fragment_of(e);
                    let record = FutureRecord::to(&config.input_topic).key(&user).payload(&payload);
                    match producer.send_result(record) {
                        Ok(d) => deliveries.push(d),
                        Err((err, _)) => return Err(DemoError::Kafka(err)),
                    }
                    next += 1;
                }
            }
            Some(d) = deliveries.next(), if !deliveries.is_empty() => {
                if let Ok(Err((err, _))) = d {
                    return Err(DemoError::Kafka(err));
                }
                produced += 1;
            }
            received = collector.recv() => {
                let m = received?;
                if let Some(b) = m.payload().and_then(|p| serde_json::from_slice::<BatchView>(p).ok()) {
                    for f in &b.fragments {
                        *seen.entry(f.event_id.clone()).or_default() += 1;
                        if let Some(prev) = last_seq.insert(b.key.clone(), f.seq) {
                            if f.seq <= prev {
                                out_of_order += 1;
                            }
                        }
                    }
                    batches.push(b);
                }
                if seen.len() >= total && settle_until.is_none() {
                    all_batched_at = Some(std::time::Instant::now());
                    // Everything arrived: wait a little longer for any duplicate to show up.
                    settle_until = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            _ = sleep_until_opt(settle_until), if settle_until.is_some() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            r = &mut worker, if worker_result.is_none() => {
                worker_result = Some(r);
                break;
            }
        }
        progress.draw(produced, seen.len().min(total), false);
    }
    progress.draw(produced, seen.len().min(total), true);
    progress.finish();

    token.cancel();
    let finished = match worker_result {
        Some(r) => r,
        None => worker.await,
    };
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DemoError::Worker(e)),
        Err(e) => {
            return Err(DemoError::Worker(crate::RunError::Sink(
                crate::sink::SinkError::Fatal(format!("worker task failed: {e}")),
            )))
        }
    }
    drop(collector);
    drop(producer);
    drop(broker);

    let quiet = config.quiet.as_millis() as i64;
    let max_wait = config.max_wait.as_millis() as i64;
    let grace = config.grace.as_millis() as i64;
    let mut lateness: Vec<i64> = Vec::new();
    let mut e2e: Vec<i64> = Vec::new();
    for b in &batches {
        let close = (b.last_ts + quiet).min(b.first_ts + max_wait);
        if b.reason == "quiet" || b.reason == "max_wait" {
            lateness.push((b.flushed_at - close - grace).max(0));
        }
        e2e.push(b.flushed_at - b.last_ts);
    }
    lateness.sort_unstable();
    e2e.sort_unstable();

    let duplicated: usize = seen.values().map(|c| c.saturating_sub(1)).sum();
    let report = DemoReport {
        fragments_in: total,
        batches_out: batches.len(),
        bursts_planned: bursts,
        lost: total.saturating_sub(seen.len()),
        duplicated,
        out_of_order,
        lateness_ms: (percentile(&lateness, 50.0), percentile(&lateness, 99.0)),
        end_to_end_ms: (percentile(&e2e, 50.0), percentile(&e2e, 99.0)),
    };

    println!();
    println!("sample batches:");
    for b in batches
        .iter()
        .filter(|b| b.fragments.len() >= 3)
        .take(args.samples)
    {
        let text = b.text.as_deref().unwrap_or("").replace('\n', " ⏎ ");
        println!(
            "  {}  {} fragments  {:<8}  \"{}\"",
            b.key,
            b.fragments.len(),
            b.reason,
            text
        );
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &batches {
        *reasons.entry(b.reason.as_str()).or_default() += 1;
    }
    println!();
    println!("summary:");
    println!("  fragments in            {}", report.fragments_in);
    println!(
        "  batches out             {} ({})",
        report.batches_out,
        reasons
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  bursts typed            {}", report.bursts_planned);
    println!(
        "  fragments per batch     {:.2}",
        report.fragments_in as f64 / report.batches_out.max(1) as f64
    );
    if let (Some(start), Some(end)) = (read_started, all_batched_at) {
        let secs = (end - start).as_secs_f64();
        println!(
            "  catch-up                {:.2} s for the backlog, {:.0} fragments/s (debug builds are far slower)",
            secs,
            report.fragments_in as f64 / secs.max(1e-9)
        );
    } else {
        println!(
            "  flush lateness          p50 {} ms, p99 {} ms (after close time + grace)",
            report.lateness_ms.0, report.lateness_ms.1
        );
        println!(
            "  last fragment -> batch  p50 {} ms, p99 {} ms",
            report.end_to_end_ms.0, report.end_to_end_ms.1
        );
    }
    if config.redis_url.is_some() {
        let calls: u64 = crate::store::Script::ALL
            .iter()
            .map(|s| {
                crate::metrics::metrics()
                    .redis_call_seconds
                    .with_label_values(&[s.name()])
                    .get_sample_count()
            })
            .sum();
        println!(
            "  redis round trips       {} script calls, {:.3} per fragment",
            calls,
            calls as f64 / report.fragments_in.max(1) as f64
        );
    }
    println!(
        "  check                   lost {}, duplicated {}, out of order {}: {}",
        report.lost,
        report.duplicated,
        report.out_of_order,
        if report.passed() { "PASS" } else { "FAIL" }
    );
    Ok(report)
}

/// `lull simulate`'s knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Fragments to send in total (about; spread over the users).
    #[arg(long, default_value_t = 1_000)]
    pub fragments: usize,
    /// The quiet period the typing is planned around: gaps inside a burst stay under 2/5 of it,
    /// pauses between bursts are 2-4 times it.
    #[arg(long, default_value_t = 500)]
    pub quiet_ms: u64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Types simulated bursts into `LULL_INPUT_TOPIC` on `KAFKA_BROKERS`, in real time, and returns
/// how many fragments were acknowledged. For trying lull (or anything else) against a real broker.
pub async fn simulate(config: &Config, args: &SimulateArgs) -> Result<usize, DemoError> {
    let demo = DemoArgs {
        users: args.users,
        fragments: args.fragments,
        quiet_ms: args.quiet_ms,
        partitions: 1,
        samples: 0,
        seed: args.seed,
        backlog: false,
    };
    let (events, bursts) = plan(&demo);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("linger.ms", "2")
        .create()?;
    eprintln!(
        "typing {} fragments in {} bursts for {} users into {}",
        events.len(),
        bursts,
        args.users,
        config.input_topic
    );
    let start = Instant::now();
    let mut deliveries = FuturesUnordered::new();
    let run = format!("{:x}-", crate::output::now_ms());
    for e in &events {
        tokio::time::sleep_until(start + Duration::from_millis(e.at_ms)).await;
        let (user, payload) = fragment_json(e, &run);
        let record = FutureRecord::to(&config.input_topic)
            .key(&user)
            .payload(&payload);
        match producer.send_result(record) {
            Ok(d) => deliveries.push(d),
            Err((err, _)) => return Err(DemoError::Kafka(err)),
        }
        while let Some(Some(d)) = futures_util::FutureExt::now_or_never(deliveries.next()) {
            if let Ok(Err((err, _))) = d {
                return Err(DemoError::Kafka(err));
            }
        }
    }
    while let Some(d) = deliveries.next().await {
        if let Ok(Err((err, _))) = d {
            return Err(DemoError::Kafka(err));
        }
    }
    Ok(events.len())
}
