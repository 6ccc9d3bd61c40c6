//! `lull run`: the worker, until SIGINT/SIGTERM. It logs the effective configuration, installs the
//! signal handlers, runs [`lull::run`] and turns its outcome into the exit code.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use lull::config::Config;

/// `lull run`.
pub async fn main(config: Config) -> ExitCode {
    info!(version = env!("CARGO_PKG_VERSION"), "lull starting");
    for (name, value) in config.summary() {
        info!(setting = %name, value = %value, "config");
    }
    for key in &config.kafka_left_out {
        warn!(%key, "Java-only client setting in LULL_KAFKA_CONFIG_FILE, left out (librdkafka has no use for it)");
    }
    for (variable, nearest) in lull::config::unknown_variables(&lull::config::ProcessEnv) {
        match nearest {
            Some(n) => warn!(%variable, "unknown setting, ignored: did you mean {n}?"),
            None => warn!(%variable, "unknown setting, ignored (lull run --help lists them all)"),
        }
    }
    let token = CancellationToken::new();
    if let Err(e) = lull::ops::shutdown::install(token.clone()) {
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
            ExitCode::from(super::EXIT_CONFIG)
        }
        Err(e) => {
            error!(error = %e, "lull stopped on an error");
            ExitCode::FAILURE
        }
    }
}
