//! The settings as command-line flags, one clap group shared by every command that talks to Kafka
//! or Redis: one flag per setting of [`lull::config::settings::SETTINGS`], each also read from its
//! environment variable, plus `--env-file`. So `lull tail --kafka-brokers X` is
//! `KAFKA_BROKERS=X lull tail`, and `--help` of every such command lists every setting with its
//! default and meaning. The values are validated by [`lull::config::Config`], like the
//! environment's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lull::config::settings::SETTINGS;

/// The id (and long name) of `--env-file`.
const ENV_FILE: &str = "env-file";

/// The settings given on the command line.
#[derive(Debug, Clone, Default)]
pub struct SettingsArgs {
    /// Settings given as flags, by variable name.
    pub flags: BTreeMap<String, String>,
    /// `--env-file`: the file of `KEY=value` lines read instead of `./.env`.
    pub env_file: Option<PathBuf>,
}

impl SettingsArgs {
    /// The value of setting `variable` if it was given on the command line.
    pub fn flag(&self, variable: &str) -> Option<&str> {
        self.flags.get(variable).map(String::as_str)
    }

    /// Whether setting `variable` was given at all: as a flag, in the environment or in the env
    /// file (read by then). Tools with defaults of their own (the demo's short quiet period) keep
    /// them only where the operator did not choose.
    pub fn given(&self, variable: &str) -> bool {
        self.flags.contains_key(variable) || std::env::var_os(variable).is_some()
    }
}

/// The flag of a setting: its variable without the `LULL_` prefix, in kebab case
/// (`LULL_QUIET_MS` -> `--quiet-ms`, `KAFKA_BROKERS` -> `--kafka-brokers`).
fn flag_of(variable: &str) -> String {
    variable
        .trim_start_matches("LULL_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

impl clap::FromArgMatches for SettingsArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = BTreeMap::new();
        for s in SETTINGS {
            if matches.value_source(s.name) == Some(clap::parser::ValueSource::CommandLine) {
                if let Some(v) = matches.get_one::<String>(s.name) {
                    flags.insert(s.name.to_string(), v.clone());
                }
            }
        }
        let env_file = matches.get_one::<PathBuf>(ENV_FILE).cloned();
        Ok(Self { flags, env_file })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for SettingsArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.next_help_heading("Settings (each flag wins over its environment variable)");
        let env_file = clap::Arg::new(ENV_FILE)
            .long(ENV_FILE)
            .value_name("PATH")
            .value_parser(clap::value_parser!(PathBuf))
            .help(
                "Read settings from this file of KEY=value lines instead of ./.env (variables \
already in the environment win over it)",
            );
        cmd.arg(env_file)
            .args(SETTINGS.iter().map(|s| {
                let default = if s.default.is_empty() {
                    String::new()
                } else {
                    format!(" [default: {}]", s.default)
                };
                let arg = clap::Arg::new(s.name).long(flag_of(s.name));
                let arg = match s.name {
                    // Named as Kafka's tools name it (`--command-config`'s file), shorter.
                    "LULL_KAFKA_CONFIG_FILE" => arg.visible_alias("kafka-config"),
                    // `lull bench --kafka` came first; kept so its command lines still work.
                    "KAFKA_BROKERS" => arg.alias("kafka"),
                    _ => arg,
                };
                arg.env(s.name)
                    .value_name("VALUE")
                    .hide_env_values(s.secret)
                    .help(format!("{}{default}", s.meaning))
            }))
            .after_help(
                "Every setting is also read from its environment variable (and a .env file, or \
--env-file); a flag wins. LULL_KAFKA_<PROPERTY>=value passes any librdkafka property \
(LULL_KAFKA_SECURITY_PROTOCOL=SSL -> security.protocol) to the clients it applies to. \
LULL_CHANNEL_<NAME>_<SETTING>=value overrides QUIET_MS, MAX_WAIT_MS, TYPING_MS, MAX_FRAGMENTS or \
BYPASS_PATTERN for fragments whose \"channel\" is <NAME> (upper-cased, - as _; e.g. \
LULL_CHANNEL_WHATSAPP_QUIET_MS=3500); a window keeps its first fragment's channel. See the \
README's Configuration section.",
            )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}
