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
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Share of users who type slowly and send `typing` signals (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub typing_share: f64,
    /// Share of bursts that end with a `"final": true` fragment (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub final_share: f64,
    /// Share of fragments that are bot commands (`/status`; set LULL_BYPASS_PATTERN=^/ on lull).
    #[arg(long, default_value_t = 0.0)]
    pub command_share: f64,
    /// Share of users who write with `"channel":"whatsapp"` and pause for 1.2 to 1.8 quiet
    /// periods inside a burst: their bursts stay whole when lull runs with
    /// LULL_CHANNEL_WHATSAPP_QUIET_MS at twice LULL_QUIET_MS (and
    /// LULL_CHANNEL_WHATSAPP_MAX_WAIT_MS at ten times it).
    #[arg(long, default_value_t = 0.0)]
    pub channel_share: f64,
    /// Share of fragments the user corrects with an `edit` signal: half soon after the fragment
    /// (lull changes it in place), half after its batch went out (sent alone, with `amends`).
    #[arg(long, default_value_t = 0.0)]
    pub edit_share: f64,
    /// Share of fragments the user takes back with a `delete` signal (timed like the edits).
    #[arg(long, default_value_t = 0.0)]
    pub delete_share: f64,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// Types simulated bursts into `LULL_INPUT_TOPIC` on `KAFKA_BROKERS`, in real time, and returns
/// how many fragments were acknowledged. For trying lull (or anything else) against a real broker.
pub async fn simulate(config: &Config, args: &SimulateArgs) -> Result<usize, DemoError> {
    // The typing is planned around the quiet period (gaps inside a burst under 2/5 of it, pauses
    // between bursts 2-4 times it): LULL_QUIET_MS, as `lull run` reads it, so a running lull cuts
    // exactly the planned bursts.
    let quiet_ms = config.quiet.as_millis() as u64;
    let plan = Plan::new(PlanArgs {
        typing_share: args.typing_share,
        final_share: args.final_share,
        command_share: args.command_share,
        channel_share: args.channel_share,
        edit_share: args.edit_share,
        delete_share: args.delete_share,
        ..PlanArgs::plain(args.users, args.fragments, quiet_ms, args.seed)
    });
    let mut writer = Writer::new(config, &config.input_topic)?;
    eprintln!(
        "typing {} fragments in {} bursts for {} users into {} (planned around a {} ms quiet period)",
        plan.fragments(),
        plan.bursts,
        args.users,
        config.input_topic,
        quiet_ms
    );
    let start = Instant::now();
    // Event ids of this run only: typing the same session twice is not a producer retry.
    let run = format!("{:x}-", lull::ops::clock::now_ms());
    let typed = super::progress::bar(plan.events.len() as u64, "typed (messages)");
    for e in &plan.events {
        tokio::time::sleep_until(start + Duration::from_millis(e.at_ms)).await;
        let (key, value) = plan.message(e, &run);
        writer.send(&key, &value, None).await?;
        typed.inc(1);
    }
    typed.set_message("waiting for acknowledgements");
    writer.finish().await?;
    typed.finish_and_clear();
    Ok(plan.fragments())
}

/// `lull simulate`.
pub async fn main(config: Config, args: SimulateArgs) -> ExitCode {
    super::init_tracing(config.log_format, "warn");
    if let Err(why) = super::reach::reach(&config, &config.input_topic).await {
        eprintln!("{why}");
        return ExitCode::FAILURE;
    }
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
