//! `lull pending <user>`: is this user mid-burst, and when does the batch go out? Reads the
//! `pending:{user}` summary from Redis.

use std::process::ExitCode;
use std::time::Duration;

use lull::config::Config;

/// Pending arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PendingArgs {
    /// The user (grouping key).
    pub key: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// `lull pending`.
pub async fn main(config: Config, args: PendingArgs) -> ExitCode {
    let PendingArgs { key, json, .. } = args;
    super::init_tracing(config.log_format, "warn");
    if config.redis_url.is_none() {
        eprintln!("REDIS_URL is not set: lull keeps pending windows only in memory without it");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let supervisor = lull::ops::supervisor::Supervisor::standalone();
    let store = match lull::io::store::Store::connect(&config, &supervisor).await {
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
    let in_ms = v.flush_at - lull::ops::clock::now_ms();
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
