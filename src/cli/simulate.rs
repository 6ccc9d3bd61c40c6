//! `lull simulate`: simulated users type bursts into `LULL_INPUT_TOPIC` on `KAFKA_BROKERS`, in
//! real time, to try a running lull against a real broker.

use std::process::ExitCode;

use std::time::Duration;

use tokio::time::Instant;

use lull::config::Config;
use lull::devkit::load::{Plan, PlanArgs, Writer};

use super::demo::DemoError;

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
    let plan = Plan::new(PlanArgs {
        users: args.users,
        fragments: args.fragments,
        quiet_ms: args.quiet_ms,
        max_burst: 5,
        text_bytes: None,
        seed: args.seed,
    });
    let mut writer = Writer::new(&config.brokers, &config.input_topic)?;
    eprintln!(
        "typing {} fragments in {} bursts for {} users into {}",
        plan.events.len(),
        plan.bursts,
        args.users,
        config.input_topic
    );
    let start = Instant::now();
    // Event ids of this run only: typing the same session twice is not a producer retry.
    let run = format!("{:x}-", lull::model::wire::now_ms());
    for e in &plan.events {
        tokio::time::sleep_until(start + Duration::from_millis(e.at_ms)).await;
        let (key, value) = plan.message(e, &run);
        writer.send(&key, &value, None).await?;
    }
    Ok(writer.finish().await?)
}

/// `lull simulate`.
pub async fn main(config: Config, args: SimulateArgs) -> ExitCode {
    super::init_tracing(config.log_format, "warn");
    match simulate(&config, &args).await {
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
