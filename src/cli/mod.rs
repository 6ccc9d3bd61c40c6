//! The operator commands, one file each: `run` (the worker), and the tools around it — `check`,
//! `demo`, `bench`, `simulate`, `send`, `tail`, `verify`, `topics`, `top`, `pending`, `monitor`,
//! `dev-broker`. They sit on top of
//! the library (and its [`lull::devkit`]); nothing in the library imports them.
//!
//! Exit codes: 0 success; 1 a runtime failure (or a check failed: demo, bench, verify); 2 bad
//! configuration or usage; 130 a second SIGINT/SIGTERM cut a graceful shutdown short.

pub mod bench;
pub mod chat;
pub mod check;
pub mod demo;
pub mod dev_broker;
mod logging;
pub mod monitor;
pub mod pending;
mod progress;
mod reach;
pub mod run;
pub mod settings;
pub mod simulate;
pub mod top;
pub mod topics;
pub mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use lull::config::{Config, LogFormat};

/// Exit code for configuration errors and bad usage.
pub const EXIT_CONFIG: u8 = 2;

/// The command line.
#[derive(Parser)]
#[command(
    name = "lull",
    version,
    about = "Rapid-fire protection for chat bots: one batch per burst of a user's messages",
    long_about = "lull consumes chat fragments from a Kafka topic keyed by user, holds each user's \
burst in memory, and emits one batch per burst once the user goes quiet, with a hard cap on \
waiting. Configuration comes from the environment (and a .env file); see the README."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the worker against KAFKA_BROKERS until SIGINT/SIGTERM. Every setting is an
    /// environment variable (or the flag listed here).
    Run(settings::SettingsArgs),
    /// Run everything in-process on a mock Kafka cluster, type bursts, and check the batches (quiet
    /// period 500 ms unless LULL_QUIET_MS is given).
    Demo(demo::DemoArgs),
    /// Check a deployment without joining the consumer group: every setting, the way to Kafka
    /// (DNS, TCP, TLS, SASL), the topics and their partitions, reading the input and the group's
    /// offsets, Redis. One line per check; exit 0 all passed, 1 a check failed, 2 bad configuration.
    Check(check::CheckArgs),
    /// Create the input, output and dead-letter topics on KAFKA_BROKERS.
    Topics(topics::TopicsArgs),
    /// Benchmark the whole path on the embedded mock cluster, or on the cluster --kafka-brokers
    /// (alias --kafka) names on this command line (KAFKA_BROKERS from the environment is not
    /// used), and Redis when REDIS_URL is set: throughput through a backlog, then live flush
    /// lateness; prints JSON. Fails if any fragment is lost or duplicated. Quiet period 500 ms
    /// unless LULL_QUIET_MS is given. Build with --release for meaningful figures.
    Bench(bench::BenchArgs),
    /// Type simulated users' bursts into LULL_INPUT_TOPIC on KAFKA_BROKERS, in real time (to try
    /// a running lull against a real broker).
    Simulate(simulate::SimulateArgs),
    /// Send chat messages by hand: each JSON line typed on stdin (a fragment or a signal) goes to
    /// LULL_INPUT_TOPIC at once, keyed by its user_id (or --key).
    Send(chat::SendArgs),
    /// Print the batches lull writes to LULL_OUTPUT_TOPIC (and its lifecycle events when
    /// LULL_EVENTS_TOPIC is set), one line each, until Ctrl-C.
    Tail(chat::TailArgs),
    /// Audit delivery: read the input, output and DLQ topics and report fragments lost,
    /// duplicated or altered, batches breaking the configured boundaries, and latency. Exits 1 on
    /// any loss, duplicate or alteration.
    Verify(verify::VerifyArgs),
    /// A live view of running instances from their /metrics: per partition its phase, open
    /// windows, the oldest window's age, fragments in and batches out per second, lag and
    /// commits; per instance its readiness and why not. Keys sort; --once prints one snapshot.
    Top(top::TopArgs),
    /// Show a user's open window from Redis: is this user mid-burst, and when does the batch go
    /// out? Prints "none" when there is no open window. Needs REDIS_URL.
    Pending(pending::PendingArgs),
    /// Follow every Redis command on lull's keys, from any process, as a per-key timeline (who
    /// updated a window, who flushed it, which TTL was set). Uses Redis MONITOR, which costs the
    /// server throughput: for debugging only. Needs REDIS_URL; Ctrl-C to stop.
    Monitor(settings::SettingsArgs),
    /// Run librdkafka's mock Kafka cluster as a process of its own, for local development and
    /// tests. It keeps everything in memory (nothing on disk; all data is gone when it stops) and
    /// keeps only about 5 MiB per partition. Runs until SIGINT/SIGTERM.
    DevBroker(dev_broker::DevBrokerArgs),
}

impl Command {
    /// The settings given on this command's line; `None` for a command that takes none.
    pub fn settings(&self) -> Option<&settings::SettingsArgs> {
        match self {
            Command::Run(s) | Command::Monitor(s) => Some(s),
            Command::Demo(a) => Some(&a.settings),
            Command::Check(a) => Some(&a.settings),
            Command::Topics(a) => Some(&a.settings),
            Command::Bench(a) => Some(&a.settings),
            Command::Simulate(a) => Some(&a.settings),
            Command::Send(a) => Some(&a.settings),
            Command::Tail(a) => Some(&a.settings),
            Command::Verify(a) => Some(&a.settings),
            Command::Pending(a) => Some(&a.settings),
            Command::Top(a) => Some(&a.settings),
            Command::DevBroker(_) => None,
        }
    }
}

/// Runs one command to its exit code.
pub async fn dispatch(command: Command, config: Config) -> ExitCode {
    match command {
        Command::Run(_) => {
            // Every line this run logs, from any thread, carries the instance id and pid.
            logging::init(config.log_format, "info", Some(&config.instance_id));
            run::main(config).await
        }
        Command::Demo(args) => demo::main(config, args).await,
        Command::Topics(args) => topics::main(config, args).await,
        Command::Check(args) => check::main(config, args).await,
        Command::Pending(args) => pending::main(config, args).await,
        Command::Verify(args) => verify::main(config, args).await,
        Command::Bench(args) => bench::main(config, args).await,
        Command::Simulate(args) => simulate::main(config, args).await,
        Command::Send(args) => chat::send(config, args).await,
        Command::Tail(args) => chat::tail(config, args).await,
        Command::Top(args) => top::main(config, args).await,
        Command::Monitor(_) => monitor::main(config).await,
        Command::DevBroker(args) => dev_broker::main(config, args).await,
    }
}

/// Logs to stderr, pretty or JSON, with levels from `RUST_LOG` (else `default_filter`); see
/// [`logging`].
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    logging::init(format, default_filter, None);
}
