//! Typed settings, read from the environment (and a `.env` file) exactly as the README's
//! configuration table names them.
//!
//! Everything is validated as a whole at start: every problem is reported, one line each, naming
//! the variable, the value and what was expected, and start-up stops. Secrets (Kafka passwords,
//! the Redis URL's password) are wrapped so that `Debug` and the start-up dump mask them.

pub mod channels;
mod env;
pub mod properties;
mod reader;
pub mod settings;
mod summary;

use env::load_dotenv;
pub use env::{unknown_variables, Env, ProcessEnv, WithFlags};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Whether windows are formed at all (`LULL_BATCHING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Group each user's burst into one batch (the default).
    On,
    /// Pass every fragment straight through as a batch of one.
    Off,
}

/// Which clock stamps a fragment (`LULL_TIMESTAMP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampSource {
    /// The Kafka message timestamp: replays give the same batches.
    Kafka,
    /// The worker's clock when the fragment is read: immune to producer clocks, not replayable.
    Arrival,
}

/// What a crash, a rebalance or a paused process may do to the output (`LULL_DELIVERY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Output, input offsets and state records in one Kafka transaction per commit: a
    /// `read_committed` consumer sees every batch once (the default).
    ExactlyOnce,
    /// No transactions: an idempotent producer, offsets committed after acknowledgement; a
    /// crash or handoff may emit a batch again (with the same `batch_id`).
    AtLeastOnce,
}

impl Delivery {
    /// The value as written in `LULL_DELIVERY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::ExactlyOnce => "exactly_once",
            Delivery::AtLeastOnce => "at_least_once",
        }
    }
}

/// The suffix of the default state topic's name.
pub const STATE_TOPIC_SUFFIX: &str = ".lull-state";

/// The consumer group whose state topic is `<input>.lull-state`: `LULL_GROUP_ID`'s default.
const DEFAULT_GROUP: &str = "lull";

/// The state topic when `LULL_STATE_TOPIC` is unset: `<input>.lull-state` for the default group
/// `lull`, and `<input>.<group>.lull-state` for any other, so two groups reading one input (a
/// blue/green deploy, a debugging run) never share state records (a compacted topic keeps one
/// record per key: a shared one would let each group overwrite and delete the other's). Characters
/// a topic name cannot hold become `_`.
pub fn default_state_topic(input: &str, group: &str) -> String {
    if group == DEFAULT_GROUP {
        return format!("{input}{STATE_TOPIC_SUFFIX}");
    }
    let group: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{input}.{group}{STATE_TOPIC_SUFFIX}")
}

/// How log lines are written (`LULL_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for handing to the client library that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One `LULL_KAFKA_*` pass-through property; secret-looking ones are masked when shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaProperty {
    /// Shown as is.
    Plain(String),
    /// Masked in every dump and log line.
    Secret(Secret),
}

impl KafkaProperty {
    /// The value to hand to librdkafka.
    pub fn value(&self) -> &str {
        match self {
            KafkaProperty::Plain(v) => v,
            KafkaProperty::Secret(s) => s.expose(),
        }
    }
}

/// The whole effective configuration of a lull process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bootstrap servers (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Topic fragments are read from.
    pub input_topic: String,
    /// Topic batches are written to.
    pub output_topic: String,
    /// Topic invalid input is written to.
    pub dlq_topic: String,
    /// Consumer group every instance joins.
    pub group_id: String,
    /// Batching on, or pass-through.
    pub batching: Batching,
    /// A window closes after this long without a fragment of its key.
    pub quiet: Duration,
    /// A window closes at the latest this long after its first fragment.
    pub max_wait: Duration,
    /// A window closes at once when it holds this many fragments.
    pub max_fragments: usize,
    /// A window closes at once when its fragments' bytes reach this.
    pub max_batch_bytes: usize,
    /// Fragments larger than this go to the dead-letter topic.
    pub max_fragment_bytes: usize,
    /// How long past the close time lull waits for stragglers.
    pub grace: Duration,
    /// Which clock stamps fragments.
    pub timestamp: TimestampSource,
    /// How long one `typing` signal holds a window open (`LULL_TYPING_MS`).
    pub typing: Duration,
    /// `follows` window after a key's previous batch; zero = off (`LULL_FOLLOWUP_MS`).
    pub followup: Duration,
    /// Fragments whose `text` matches go out alone (`LULL_BYPASS_PATTERN`).
    pub bypass_pattern: Option<regex::Regex>,
    /// Per-channel overrides (`LULL_CHANNEL_<NAME>_<SETTING>`), sorted by name.
    pub channels: Vec<channels::Channel>,
    /// Where lifecycle events go; `None` = off (`LULL_EVENTS_TOPIC`).
    pub events_topic: Option<String>,
    /// Transactions or not (`LULL_DELIVERY`).
    pub delivery: Delivery,
    /// Longest a transaction stays open before it commits (`LULL_TRANSACTION_MS`).
    pub transaction: Duration,
    /// The state topic when set explicitly (`LULL_STATE_TOPIC`); see [`Config::state_topic`].
    pub state_topic_override: Option<String>,
    /// Shared state in Redis; `None` runs without it.
    pub redis_url: Option<Secret>,
    /// Namespace of every Redis key.
    pub redis_prefix: String,
    /// Trace Redis commands on lull's keys.
    pub debug_redis_monitor: bool,
    /// Where `/metrics` and the health endpoints are served.
    pub http_addr: SocketAddr,
    /// Names this process in logs, metrics and Redis ownership.
    pub instance_id: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// How long a graceful shutdown may take to deliver what is due and commit.
    pub drain_timeout: Duration,
    /// Global budget of bytes held in open windows and unacknowledged output
    /// (`LULL_MAX_OPEN_BYTES`); at the budget lull stops fetching until it is below again.
    pub max_open_bytes: usize,
    /// How long an event id is remembered for duplicate detection (`LULL_EVENT_TTL_MS`).
    pub event_ttl: Duration,
    /// How long a key's flushed watermark (and a partition's owner record) is kept after its
    /// last use (`LULL_FLUSHED_TTL_MS`): at least as long as a replay can reach back.
    pub flushed_ttl: Duration,
    /// librdkafka properties passed through from `LULL_KAFKA_CONFIG_FILE` and `LULL_KAFKA_*`
    /// (which wins).
    pub kafka: BTreeMap<String, KafkaProperty>,
    /// `LULL_KAFKA_CONFIG_FILE`, when given.
    pub kafka_config_file: Option<String>,
    /// Java-only keys of that file left out of the clients (`path:line key`), for the start-up
    /// log.
    pub kafka_left_out: Vec<String>,
}

/// One problem found while validating the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable at fault.
    pub variable: String,
    /// The value it had (already masked if secret).
    pub value: String,
    /// What was expected instead.
    pub expected: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

/// Every problem in the environment, so the operator can fix them all in one go.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<ConfigProblem>);

/// The bounds of the settings a channel may override (`LULL_QUIET_MS`, `LULL_MAX_WAIT_MS`,
/// `LULL_TYPING_MS`, `LULL_MAX_FRAGMENTS`), shared by the global reader and `channels`.
const QUIET_RANGE: (u64, u64) = (1, DAY_MS);
const MAX_WAIT_RANGE: (u64, u64) = (1, DAY_MS);
const TYPING_RANGE: (u64, u64) = (0, HOUR_MS);
const MAX_FRAGMENTS_RANGE: (u64, u64) = (1, 1_000_000);

/// Prefix of librdkafka pass-through variables.
const KAFKA_PREFIX: &str = "LULL_KAFKA_";

/// The setting naming a Java-style properties file of librdkafka properties ([`properties`]).
const KAFKA_CONFIG_FILE: &str = "LULL_KAFKA_CONFIG_FILE";

/// One hour, one day, thirty days and a year, in milliseconds: the upper bounds of durations.
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
const MONTH_MS: u64 = 30 * DAY_MS;
const YEAR_MS: u64 = 365 * DAY_MS;

/// One GiB: the upper bound of byte sizes of a single batch or fragment.
const GIB: u64 = 1 << 30;

/// librdkafka's own default `session.timeout.ms`, used to derive the drain timeout.
const LIBRDKAFKA_SESSION_TIMEOUT_MS: u64 = 45_000;

/// The drain timeout when neither it nor the session timeout is set.
const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;

/// The drain timeout used when `LULL_DRAIN_TIMEOUT_MS` is unset: [`DEFAULT_DRAIN_TIMEOUT_MS`],
/// or half the session timeout when that is shorter, so a draining member never outlives its
/// session (the group would move its partitions while it still delivers).
fn derived_drain_timeout(session_ms: Option<u64>) -> u64 {
    let session = session_ms.unwrap_or(LIBRDKAFKA_SESSION_TIMEOUT_MS);
    DEFAULT_DRAIN_TIMEOUT_MS.min(session / 2).max(1)
}

/// Why librdkafka refuses `property=value`, if it does (unknown property, bad value, or a
/// feature this build lacks); checked at start so a typo is one line and exit 2, not a failed
/// client later.
fn librdkafka_refusal(property: &str, value: &str) -> Option<String> {
    let mut c = rdkafka::ClientConfig::new();
    c.set(property, value);
    match c.create_native_config() {
        Ok(_) => None,
        Err(rdkafka::error::KafkaError::ClientConfig(_, desc, _, _)) => Some(desc),
        Err(other) => Some(other.to_string()),
    }
}

/// Whether a librdkafka property holds a secret and must be masked.
fn is_secret_property(property: &str) -> bool {
    ["password", "secret", "token", "jaas", ".pem", "key"]
        .iter()
        .any(|word| property.contains(word))
}

/// Masks the password of a `redis://user:password@host` URL for display.
pub fn mask_url_password(url: &str) -> String {
    // Several URLs (the seed nodes of a Redis Cluster): each masked.
    if url.contains(',') {
        return url
            .split(',')
            .map(mask_url_password)
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
        }
        None => url.to_string(),
    }
}

/// The default instance id: host name and process id.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "lull".to_string());
    format!("{host}-{}", std::process::id())
}

impl Config {
    /// Reads the process environment, after loading `env_file` (`--env-file`), or else `.env` from
    /// the working directory if present, with settings given as flags (`lull run --quiet-ms 500`)
    /// over their variables.
    pub fn from_process_env_with(
        env_file: Option<&std::path::Path>,
        flags: BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        load_dotenv(env_file)?;
        Self::from_env(&WithFlags(flags))
    }

    /// The defaults, as if the environment were empty (used by the demo and tests).
    pub fn defaults() -> Self {
        match Self::from_env(&BTreeMap::new()) {
            Ok(config) => config,
            Err(error) => unreachable!("the built-in defaults are valid: {error}"),
        }
    }

    /// The window engine's settings, derived from this configuration.
    pub fn window(&self) -> crate::model::window::WindowConfig {
        crate::model::window::WindowConfig {
            batching: self.batching == Batching::On,
            quiet_ms: self.quiet.as_millis() as i64,
            max_wait_ms: self.max_wait.as_millis() as i64,
            max_fragments: self.max_fragments,
            max_batch_bytes: self.max_batch_bytes,
            grace_ms: self.grace.as_millis() as i64,
            typing_ms: self.typing.as_millis() as i64,
            followup_ms: self.followup.as_millis() as i64,
        }
    }

    /// The state topic: `LULL_STATE_TOPIC`, else [`default_state_topic`] (derived when asked, so
    /// a caller that changes the input topic or the group gets the matching state topic).
    pub fn state_topic(&self) -> String {
        self.state_topic_override
            .clone()
            .unwrap_or_else(|| default_state_topic(&self.input_topic, &self.group_id))
    }

    /// How long a transaction may stay open at the broker (`transaction.timeout.ms`, lull's
    /// default unless `LULL_KAFKA_TRANSACTION_TIMEOUT_MS` says otherwise).
    pub fn transaction_timeout(&self) -> Duration {
        let ms = self
            .kafka
            .get("transaction.timeout.ms")
            .and_then(|t| t.value().parse::<u64>().ok())
            .unwrap_or(u64::from(crate::io::kafka::TRANSACTION_TIMEOUT_MS));
        Duration::from_millis(ms)
    }

    /// Whether output is written in Kafka transactions.
    pub fn exactly_once(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce
    }

    /// What fragment parsing needs from this configuration.
    pub fn rules(&self) -> crate::model::fragment::Rules {
        crate::model::fragment::Rules {
            max_fragment_bytes: self.max_fragment_bytes,
            bypass: self.bypass_pattern.clone(),
            channels: self
                .channels
                .iter()
                .map(|c| crate::model::fragment::ChannelRule {
                    name: c.name.clone(),
                    bypass: c.bypass_pattern.clone(),
                })
                .collect(),
        }
    }

    /// The engine's settings of each channel with overrides, in [`Config::channels`]' order
    /// (what [`crate::model::window::WindowEngine::with_channels`] takes).
    pub fn channel_windows(&self) -> Vec<crate::model::window::WindowConfig> {
        let global = self.window();
        self.channels
            .iter()
            .map(|c| crate::model::window::WindowConfig {
                quiet_ms: c.quiet.unwrap_or(self.quiet).as_millis() as i64,
                max_wait_ms: c.max_wait.unwrap_or(self.max_wait).as_millis() as i64,
                typing_ms: c.typing.unwrap_or(self.typing).as_millis() as i64,
                max_fragments: c.max_fragments.unwrap_or(self.max_fragments),
                ..global
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
