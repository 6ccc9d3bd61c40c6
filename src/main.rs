//! The `lull` binary: parse the command line, load and validate the configuration, start
//! tracing, call into the library, and turn the outcome into an exit code.
//!
//! Exit codes: 0 success; 1 a runtime failure (or the demo's check failed); 2 bad configuration
//! or usage; 130 a second SIGINT/SIGTERM cut a graceful shutdown short.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, Instrument};

use lull::config::{Config, LogFormat};

/// mimalloc: lull allocates per message (copies of fragments, output records, delivery
/// futures) from several threads; glibc's allocator spent a quarter of the CPU on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for configuration errors.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "lull",
    version,
    about = "Rapid-fire protection for chat bots: one batch per burst of a user's messages",
    long_about = "lull consumes chat fragments from a Kafka topic keyed by user, holds each user's \
burst in memory, and emits one batch per burst once the user goes quiet, with a hard cap on \
waiting. Configuration comes from the environment (and a .env file); see the README."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker against KAFKA_BROKERS until SIGINT/SIGTERM.
    Run,
    /// Run everything in-process on a mock Kafka cluster, type bursts, and check the batches.
    Demo(lull::demo::DemoArgs),
    /// Create the input, output and dead-letter topics on KAFKA_BROKERS.
    Topics {
        /// Partitions per topic.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replication factor [default: min(3, brokers in the cluster)].
        #[arg(long)]
        replication: Option<i32>,
    },
    /// Benchmark the whole path on the embedded mock cluster (and Redis when REDIS_URL is set):
    /// throughput through a backlog, then live flush lateness; prints JSON. Fails if any fragment
    /// is lost or duplicated. Build with --release for meaningful figures.
    Bench(lull::bench::BenchArgs),
    /// Type simulated users' bursts into LULL_INPUT_TOPIC on KAFKA_BROKERS, in real time (to try
    /// a running lull against a real broker).
    Simulate(lull::demo::SimulateArgs),
    /// Audit delivery: read the input, output and DLQ topics and report fragments lost,
    /// duplicated or altered, batches breaking the configured boundaries, and latency. Exits 1 on
    /// any loss, duplicate or alteration.
    Verify {
        /// Only fragments with a timestamp at or after this (Unix ms or RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only fragments with a timestamp before this (Unix ms or RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a user's open window from Redis: is this user mid-burst, and when does the batch go
    /// out? Prints "none" when there is no open window. Needs REDIS_URL.
    Pending {
        /// The user (grouping key).
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow every Redis command on lull's keys, from any process, as a per-key timeline (who
    /// updated a window, who flushed it, which TTL was set). Uses Redis MONITOR, which costs the
    /// server throughput: for debugging only. Needs REDIS_URL; Ctrl-C to stop.
    Monitor,
    /// Run librdkafka's mock Kafka cluster as a process of its own, for local development and
    /// tests. It keeps everything in memory (nothing on disk; all data is gone when it stops) and
    /// keeps only about 5 MiB per partition. Runs until SIGINT/SIGTERM.
    DevBroker {
        /// Partitions of each of lull's topics, created at start.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Number of mock brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Also write the bootstrap address to this file (written once the broker is ready).
        #[arg(long)]
        bootstrap_file: Option<std::path::PathBuf>,
        /// Another topic to create (repeatable), with the same partition count.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn load_config() -> Result<Config, ExitCode> {
    Config::from_process_env().map_err(|e| {
        for problem in &e.0 {
            eprintln!("{problem}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run => {
                init_tracing(config.log_format, "info");
                // Every line this run logs, from any task, carries the instance id and pid.
                let span = tracing::info_span!(
                    "lull",
                    instance = %config.instance_id,
                    pid = std::process::id()
                );
                run(config).instrument(span).await
            }
            Command::Demo(args) => demo(config, args).await,
            Command::Topics {
                partitions,
                replication,
            } => topics(config, partitions, replication).await,
            Command::Pending { key, json } => pending(config, key, json).await,
            Command::Verify { from, to, json } => verify(config, from, to, json).await,
            Command::Bench(args) => {
                init_tracing(config.log_format, "warn");
                match lull::bench::run(config, args).await {
                    Ok(report) => {
                        match serde_json::to_string_pretty(&report) {
                            Ok(s) => println!("{s}"),
                            Err(e) => eprintln!("{e}"),
                        }
                        if report.correct {
                            ExitCode::SUCCESS
                        } else {
                            eprintln!("bench: fragments were lost or duplicated");
                            ExitCode::FAILURE
                        }
                    }
                    Err(e) => {
                        eprintln!("bench failed: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Simulate(args) => {
                init_tracing(config.log_format, "warn");
                match lull::demo::simulate(&config, &args).await {
                    Ok(n) => {
                        println!("typed {n} fragments");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("simulate failed: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Monitor => monitor(config).await,
            Command::DevBroker {
                partitions,
                brokers,
                bootstrap_file,
                topics,
            } => dev_broker(config, partitions, brokers, bootstrap_file, topics).await,
        }
    })
}

async fn run(config: Config) -> ExitCode {
    info!(
        instance = %config.instance_id,
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "lull starting"
    );
    for (name, value) in config.summary() {
        info!(setting = %name, value = %value, "config");
    }
    let token = CancellationToken::new();
    if let Err(e) = lull::shutdown::install(token.clone()) {
        error!(error = %e, "cannot install signal handlers");
        return ExitCode::FAILURE;
    }
    let drain = config.drain_timeout;
    let worker = lull::run(config, token.clone()).in_current_span();
    tokio::pin!(worker);
    let result = tokio::select! {
        r = &mut worker => r,
        _ = async {
            token.cancelled().await;
            tokio::time::sleep(drain + Duration::from_secs(5)).await;
        } => {
            error!("shutdown did not finish within the drain timeout; exiting");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => {
            info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) if e.is_configuration() => {
            // One line, like every other configuration problem.
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            error!(error = %e, "lull stopped on an error");
            ExitCode::FAILURE
        }
    }
}

async fn demo(config: Config, args: lull::demo::DemoArgs) -> ExitCode {
    init_tracing(config.log_format, "warn");
    match lull::demo::run(config, args).await {
        Ok(report) if report.passed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn topics(config: Config, partitions: i32, replication: Option<i32>) -> ExitCode {
    init_tracing(config.log_format, "warn");
    if partitions < 1 || replication.is_some_and(|r| r < 1) {
        eprintln!("--partitions and --replication must be at least 1");
        return ExitCode::from(EXIT_CONFIG);
    }
    match lull::topics::create(&config, partitions, replication).await {
        Ok(outcomes) => {
            for (name, outcome) in outcomes {
                match outcome {
                    lull::topics::TopicOutcome::Created { replication } => println!(
                        "created {name} ({partitions} partitions, replication {replication})"
                    ),
                    lull::topics::TopicOutcome::Exists => println!("exists  {name}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn dev_broker(
    config: Config,
    partitions: i32,
    brokers: i32,
    bootstrap_file: Option<std::path::PathBuf>,
    extra_topics: Vec<String>,
) -> ExitCode {
    init_tracing(config.log_format, "warn");
    if partitions < 1 || brokers < 1 {
        eprintln!("--partitions and --brokers must be at least 1");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut topics = vec![
        (config.input_topic.clone(), partitions),
        (config.output_topic.clone(), partitions),
        (config.dlq_topic.clone(), partitions),
    ];
    topics.extend(extra_topics.into_iter().map(|t| (t, partitions)));
    let broker = match lull::mock::MockBroker::start(brokers, &topics) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &bootstrap_file {
        // Write then rename, so a reader never sees a half-written address.
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, broker.bootstrap()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{}", broker.bootstrap());
    eprintln!(
        "mock Kafka cluster at {} with {} ({} partitions each); in memory only, Ctrl-C to stop",
        broker.bootstrap(),
        topics
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        partitions
    );
    match lull::shutdown::next_signal().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot wait for signals: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn pending(config: Config, key: String, json: bool) -> ExitCode {
    init_tracing(config.log_format, "warn");
    if config.redis_url.is_none() {
        eprintln!("REDIS_URL is not set: lull keeps pending windows only in memory without it");
        return ExitCode::from(EXIT_CONFIG);
    }
    let health = std::sync::Arc::new(lull::health::Health::new());
    let store = match lull::store::Store::connect(&config, health).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let view = match store.read_pending(&key).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(v) = view else {
        if json {
            println!("null");
        } else {
            println!("{key}: none (no open window)");
        }
        return ExitCode::SUCCESS;
    };
    if json {
        match serde_json::to_string(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let at = |ms: i64| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
        )
        .to_string()
    };
    let in_ms = v.flush_at - lull::output::now_ms();
    println!(
        "{key}: mid-burst, {} fragment(s) on {}/{} held by {}",
        v.count, config.input_topic, v.partition, v.owner
    );
    println!("  first fragment  {}", at(v.first_ts));
    println!("  last fragment   {}", at(v.last_ts));
    if in_ms >= 0 {
        println!(
            "  batch expected  {} (in {:.1} s)",
            at(v.flush_at),
            in_ms as f64 / 1000.0
        );
    } else {
        println!(
            "  batch expected  {} (due; being delivered)",
            at(v.flush_at)
        );
    }
    println!(
        "  summary expires in {:.1} s if its owner dies",
        v.ttl_ms as f64 / 1000.0
    );
    ExitCode::SUCCESS
}

async fn monitor(config: Config) -> ExitCode {
    init_tracing(config.log_format, "warn");
    let Some(url) = config.redis_url.clone() else {
        eprintln!("REDIS_URL is not set");
        return ExitCode::from(EXIT_CONFIG);
    };
    eprintln!(
        "following Redis commands on {}:* (MONITOR slows Redis down; debugging only; Ctrl-C to stop)",
        config.redis_prefix
    );
    let prefix = config.redis_prefix.clone();
    let follow = lull::store::monitor::follow(url.expose(), &prefix, |e| {
        for line in lull::store::monitor::timeline(&e, &prefix) {
            println!("{line}");
        }
    });
    tokio::select! {
        r = follow => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("redis MONITOR failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ = lull::shutdown::next_signal() => ExitCode::SUCCESS,
    }
}

async fn verify(config: Config, from: Option<String>, to: Option<String>, json: bool) -> ExitCode {
    init_tracing(config.log_format, "warn");
    let mut opts = lull::verify::VerifyOptions::default();
    for (arg, slot) in [(from, &mut opts.from_ms), (to, &mut opts.to_ms)] {
        if let Some(s) = arg {
            match lull::verify::parse_time(&s) {
                Ok(ms) => *slot = Some(ms),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    }
    let report = match tokio::task::spawn_blocking(move || lull::verify::run(&config, &opts)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("verify failed: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("verify failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("{e}"),
        }
    } else {
        let r = &report;
        println!("fragments in          {}", r.fragments_in);
        println!("  in exactly one batch  {}", r.in_batches);
        println!("  lost                  {}", r.lost);
        println!("  duplicated            {}", r.duplicated);
        println!("  still open            {}", r.still_open);
        println!("  dropped duplicates    {}", r.dropped_duplicates);
        println!("batches               {}", r.batches);
        println!("  altered fragments     {}", r.altered);
        println!("  repeated batch ids    {}", r.repeated_batch_ids);
        println!("  boundary violations   {}", r.boundary_violations);
        println!(
            "invalid input         {} ({} in the DLQ)",
            r.invalid_in, r.dead_lettered
        );
        println!(
            "latency (flush - last fragment)  p50 {} ms, p99 {} ms, max {} ms",
            r.latency_ms.0, r.latency_ms.1, r.latency_ms.2
        );
        for e in &r.examples {
            println!("  ! {e}");
        }
        println!("{}", if r.ok() { "OK" } else { "FAILED" });
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
