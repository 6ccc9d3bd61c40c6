//! `lull run`: the worker, until SIGINT/SIGTERM. It logs the effective configuration, installs the
//! signal handlers, runs [`lull::run`] and turns its outcome into the exit code.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use lull::config::Config;

/// `lull run`'s options: one per setting of [`lull::config::settings::SETTINGS`], each also read
/// from its environment variable, so `lull run --help` lists every setting with its default and
/// meaning, and `lull run --quiet-ms 500` is `LULL_QUIET_MS=500`. The values are validated by
/// [`Config`], like the environment's.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    /// Settings given as flags, by variable name.
    pub flags: std::collections::BTreeMap<String, String>,
}

/// The flag of a setting: its variable without the `LULL_` prefix, in kebab case
/// (`LULL_QUIET_MS` -> `--quiet-ms`, `KAFKA_BROKERS` -> `--kafka-brokers`).
fn flag_of(variable: &str) -> String {
    variable
        .trim_start_matches("LULL_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

impl clap::FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = std::collections::BTreeMap::new();
        for s in lull::config::settings::SETTINGS {
            if matches.value_source(s.name) == Some(clap::parser::ValueSource::CommandLine) {
                if let Some(v) = matches.get_one::<String>(s.name) {
                    flags.insert(s.name.to_string(), v.clone());
                }
            }
        }
        Ok(Self { flags })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for RunArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(lull::config::settings::SETTINGS.iter().map(|s| {
            let default = if s.default.is_empty() {
                String::new()
            } else {
                format!(" [default: {}]", s.default)
            };
            let arg = clap::Arg::new(s.name).long(flag_of(s.name));
            // Named as Kafka's tools name it (`--command-config`'s file), shorter.
            let arg = if s.name == "LULL_KAFKA_CONFIG_FILE" {
                arg.visible_alias("kafka-config")
            } else {
                arg
            };
            arg.env(s.name)
                .value_name("VALUE")
                .hide_env_values(s.secret)
                .help(format!("{}{default}", s.meaning))
        }))
        .after_help(
            "Every setting is also read from its environment variable (and a .env file); a flag \
wins. LULL_KAFKA_<PROPERTY>=value passes any librdkafka property (LULL_KAFKA_SECURITY_PROTOCOL=SSL \
-> security.protocol) to the clients it applies to. LULL_CHANNEL_<NAME>_<SETTING>=value overrides \
QUIET_MS, MAX_WAIT_MS, TYPING_MS, MAX_FRAGMENTS or BYPASS_PATTERN for fragments whose \"channel\" \
is <NAME> (upper-cased, - as _; e.g. LULL_CHANNEL_WHATSAPP_QUIET_MS=3500); a window keeps its \
first fragment's channel. See the README's Configuration section.",
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

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
