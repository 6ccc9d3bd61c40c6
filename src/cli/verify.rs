//! `lull verify`: the delivery audit ([`lull::devkit::audit`]) as a command: a report on stdout,
//! exit 1 on any loss, duplicate or alteration.

use std::process::ExitCode;

use lull::config::Config;
use lull::devkit::audit::{VerifyOptions, VerifyReport};

/// Verify arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Only fragments with a timestamp at or after this (Unix ms or RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Only fragments with a timestamp before this (Unix ms or RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// Runs the audit off the async workers (it blocks), with a bar per topic read on a terminal.
pub async fn audit(config: Config, opts: VerifyOptions) -> Result<VerifyReport, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = VerifyOptions {
        progress: Some(tx),
        ..opts
    };
    let mut work = tokio::task::spawn_blocking(move || lull::devkit::audit::run(&config, &opts));
    let mut shown: Option<(String, indicatif::ProgressBar)> = None;
    let result = loop {
        tokio::select! {
            done = &mut work => break done,
            Some(p) = rx.recv() => {
                if shown.as_ref().is_none_or(|(topic, _)| *topic != p.topic) {
                    if let Some((_, bar)) = shown.take() {
                        bar.finish_and_clear();
                    }
                    let bar = super::progress::bar(p.total, format!("reading {}", p.topic));
                    shown = Some((p.topic.clone(), bar));
                }
                if let Some((_, bar)) = &shown {
                    bar.set_position(p.read.min(p.total));
                }
            }
        }
    };
    if let Some((_, bar)) = shown {
        bar.finish_and_clear();
    }
    match result {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// `lull verify`.
pub async fn main(config: Config, args: VerifyArgs) -> ExitCode {
    let VerifyArgs { from, to, json, .. } = args;
    super::init_tracing(config.log_format, "warn");
    let mut opts = VerifyOptions::default();
    for (arg, slot) in [(from, &mut opts.from_ms), (to, &mut opts.to_ms)] {
        if let Some(s) = arg {
            match lull::devkit::audit::parse_time(&s) {
                Ok(ms) => *slot = Some(ms),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(super::EXIT_CONFIG);
                }
            }
        }
    }
    if let Err(why) = super::reach::reach(&config, &config.input_topic).await {
        eprintln!("{why}");
        return ExitCode::FAILURE;
    }
    let report = match audit(config, opts).await {
        Ok(r) => r,
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
