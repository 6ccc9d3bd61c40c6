//! Typed settings, read from the environment (and a `.env` file) exactly as the README's
//! configuration table names them.
//!
//! Everything is validated as a whole at start: every problem is reported, one line each, naming
//! the variable, the value and what was expected, and start-up stops. Secrets (Kafka passwords,
//! the Redis URL's password) are wrapped so that `Debug` and the start-up dump mask them.

pub mod settings;

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
    /// librdkafka properties passed through from `LULL_KAFKA_*`.
    pub kafka: BTreeMap<String, KafkaProperty>,
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

/// A source of variables: the process environment in production, a map in tests.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
    /// All `(name, value)` pairs whose name starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// Adds a `.env` file in the working directory to the process environment (real variables win).
fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Err(error) if !error.not_found() => Err(ConfigError(vec![ConfigProblem {
            variable: ".env".to_string(),
            value: "(file)".to_string(),
            expected: format!("KEY=value lines ({error})"),
        }])),
        _ => Ok(()),
    }
}

/// The real process environment.
pub struct ProcessEnv;

/// Settings given on the command line (`lull run --quiet-ms 500`) over the process environment:
/// a flag wins over its variable.
pub struct WithFlags(pub BTreeMap<String, String>);

impl Env for WithFlags {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned().or_else(|| ProcessEnv.get(name))
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut all: BTreeMap<String, String> =
            ProcessEnv.with_prefix(prefix).into_iter().collect();
        for (k, v) in &self.0 {
            if k.starts_with(prefix) {
                all.insert(k.clone(), v.clone());
            }
        }
        all.into_iter().collect()
    }
}

/// `LULL_*` variables that belong to lull's tooling around the worker (PM2 file, test suite,
/// caches), not to the worker: never reported as unknown.
const TOOLING_PREFIXES: &[&str] = &["LULL_TEST_", "LULL_PM2_", "LULL_FAULT_", "LULL_KAFKA_PORT_"];
const TOOLING_NAMES: &[&str] = &["LULL_BIN", "LULL_CACHE", "LULL_KAFKA_CACHE"];

/// `LULL_*` variables set in `env` that lull does not read (a typo like `LULL_QUIETMS`), each with
/// the nearest real setting when one is close. `LULL_KAFKA_*` are librdkafka's and are checked
/// with librdkafka instead.
pub fn unknown_variables(env: &impl Env) -> Vec<(String, Option<&'static str>)> {
    let mut out = Vec::new();
    for (name, _) in env.with_prefix("LULL_") {
        let known = settings::SETTINGS.iter().any(|s| s.name == name)
            || TOOLING_NAMES.contains(&name.as_str())
            || TOOLING_PREFIXES.iter().any(|p| name.starts_with(p))
            || name.starts_with(KAFKA_PREFIX);
        if !known {
            out.push((name.clone(), nearest_setting(&name)));
        }
    }
    out.sort();
    out
}

/// The setting whose name is closest to `name`, if it is close enough to be a typo.
fn nearest_setting(name: &str) -> Option<&'static str> {
    settings::SETTINGS
        .iter()
        .map(|s| (strsim::levenshtein(name, s.name), s.name))
        .filter(|(d, s)| *d <= 3.max(s.len() / 4))
        .min()
        .map(|(_, s)| s)
}

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Prefix of librdkafka pass-through variables.
const KAFKA_PREFIX: &str = "LULL_KAFKA_";

/// The inclusive bounds of a numeric setting.
type Range = (u64, u64);

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

/// Collects problems while fields are parsed, so all of them are reported together.
struct Reader<'e, E: Env> {
    env: &'e E,
    problems: Vec<ConfigProblem>,
}

impl<E: Env> Reader<'_, E> {
    fn raw(&self, name: &str) -> Option<String> {
        self.env.get(name).map(|v| v.trim().to_string())
    }

    fn problem(&mut self, name: &str, value: &str, expected: &str) {
        self.problems.push(ConfigProblem {
            variable: name.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        });
    }

    fn string(&mut self, name: &str) -> String {
        let default = settings::default_of(name);
        match self.raw(name) {
            Some(v) if v.is_empty() => {
                self.problem(name, "", "a non-empty value");
                default.to_string()
            }
            Some(v) => v,
            None => default.to_string(),
        }
    }

    fn topic(&mut self, name: &str) -> String {
        let value = self.string(name);
        let valid = !value.is_empty()
            && value.len() <= 249
            && value != "."
            && value != ".."
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            self.problem(
                name,
                &value,
                "a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
            );
        }
        value
    }

    /// A whole number in `range`: every setting has an upper bound too, so an absurd value
    /// (`u64::MAX` milliseconds) is refused here instead of overflowing a Redis TTL later.
    fn number(&mut self, name: &str, range: Range, what: &str) -> u64 {
        // The table's defaults are whole numbers (a test checks).
        let default = settings::default_of(name).parse().unwrap_or(0);
        self.number_opt(name, range, what).unwrap_or(default)
    }

    /// [`Reader::number`] for a setting whose default is derived from others: `None` if unset
    /// (or invalid, which is reported).
    fn number_opt(&mut self, name: &str, range: Range, what: &str) -> Option<u64> {
        let v = self.raw(name)?;
        match v.parse::<u64>() {
            Ok(n) if (range.0..=range.1).contains(&n) => Some(n),
            _ => {
                let expected = format!("{what} (a whole number, {} to {})", range.0, range.1);
                self.problem(name, &v, &expected);
                None
            }
        }
    }

    fn millis(&mut self, name: &str, range: Range) -> Duration {
        Duration::from_millis(self.number(name, range, "milliseconds"))
    }

    fn boolean(&mut self, name: &str) -> bool {
        let default = settings::default_of(name) == "true";
        let Some(v) = self.raw(name) else {
            return default;
        };
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.problem(name, &v, "true or false");
                default
            }
        }
    }

    /// One of `options`; the default is the option the table names.
    fn choice<T: Copy>(&mut self, name: &str, options: &[(&str, T)]) -> T {
        let default = settings::default_of(name);
        let default = options
            .iter()
            .find(|(n, _)| *n == default)
            .or(options.first())
            .map(|(_, v)| *v);
        let Some(default) = default else {
            unreachable!("choice settings have options")
        };
        let Some(v) = self.raw(name) else {
            return default;
        };
        let lower = v.to_ascii_lowercase();
        if let Some((_, value)) = options.iter().find(|(n, _)| *n == lower) {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.problem(name, &v, &format!("one of {}", names.join(", ")));
        default
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
    /// Reads the process environment, after loading `.env` from the working directory if present,
    /// with settings given as flags (`lull run --quiet-ms 500`) over their variables.
    pub fn from_process_env_with(flags: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        load_dotenv()?;
        Self::from_env(&WithFlags(flags))
    }

    /// Reads and validates every setting from `env`, reporting all problems at once.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        let brokers = r.string("KAFKA_BROKERS");
        if brokers.split(',').any(|b| b.trim().is_empty()) {
            r.problem("KAFKA_BROKERS", &brokers, "host:port[,host:port...]");
        }
        let input_topic = r.topic("LULL_INPUT_TOPIC");
        let output_topic = r.topic("LULL_OUTPUT_TOPIC");
        let dlq_topic = r.topic("LULL_DLQ_TOPIC");
        let group_id = r.string("LULL_GROUP_ID");
        let batching = r.choice(
            "LULL_BATCHING",
            &[
                ("on", Batching::On),
                ("off", Batching::Off),
                ("true", Batching::On),
                ("false", Batching::Off),
            ],
        );
        let quiet = r.millis("LULL_QUIET_MS", (1, DAY_MS));
        let max_wait = r.millis("LULL_MAX_WAIT_MS", (1, DAY_MS));
        let max_fragments =
            r.number("LULL_MAX_FRAGMENTS", (1, 1_000_000), "a fragment count") as usize;
        let max_batch_bytes = r.number("LULL_MAX_BATCH_BYTES", (1, GIB), "bytes") as usize;
        let max_fragment_bytes = r.number("LULL_MAX_FRAGMENT_BYTES", (1, GIB), "bytes") as usize;
        let grace = r.millis("LULL_GRACE_MS", (0, HOUR_MS));
        let timestamp = r.choice(
            "LULL_TIMESTAMP",
            &[
                ("kafka", TimestampSource::Kafka),
                ("arrival", TimestampSource::Arrival),
            ],
        );
        let typing = r.millis("LULL_TYPING_MS", (0, HOUR_MS));
        let followup = r.millis("LULL_FOLLOWUP_MS", (0, DAY_MS));
        let bypass_pattern = match r.raw("LULL_BYPASS_PATTERN") {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => match regex::RegexBuilder::new(&v).size_limit(1 << 20).build() {
                Ok(re) => Some(re),
                Err(e) => {
                    let why = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    r.problem(
                        "LULL_BYPASS_PATTERN",
                        &v,
                        &format!("a regular expression ({why})"),
                    );
                    None
                }
            },
        };
        let events_topic = match r.raw("LULL_EVENTS_TOPIC") {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(_) => Some(r.topic("LULL_EVENTS_TOPIC")),
        };
        let delivery = r.choice(
            "LULL_DELIVERY",
            &[
                ("exactly_once", Delivery::ExactlyOnce),
                ("at_least_once", Delivery::AtLeastOnce),
            ],
        );
        let transaction = r.millis("LULL_TRANSACTION_MS", (1, 60_000));
        let state_topic_override = match r.raw("LULL_STATE_TOPIC") {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(_) => Some(r.topic("LULL_STATE_TOPIC")),
        };
        let state_topic = state_topic_override
            .clone()
            .unwrap_or_else(|| default_state_topic(&input_topic, &group_id));
        if state_topic_override.is_none() && state_topic.len() > 249 {
            r.problem(
                "LULL_INPUT_TOPIC",
                &input_topic,
                "names short enough for the state topic (at most 249 characters), or LULL_STATE_TOPIC set",
            );
        }
        if [&input_topic, &output_topic, &dlq_topic].contains(&&state_topic)
            || events_topic.as_ref() == Some(&state_topic)
        {
            r.problem(
                "LULL_STATE_TOPIC",
                &state_topic,
                "a topic of its own (not the input, output, DLQ or events topic)",
            );
        }
        let redis_url = match r.raw("REDIS_URL") {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) if v.starts_with("redis://") || v.starts_with("rediss://") => {
                Some(Secret::new(v))
            }
            Some(v) => {
                r.problem(
                    "REDIS_URL",
                    &mask_url_password(&v),
                    "a redis:// or rediss:// URL",
                );
                None
            }
        };
        let redis_prefix = r.string("LULL_REDIS_PREFIX");
        if redis_prefix.contains(char::is_whitespace) {
            r.problem(
                "LULL_REDIS_PREFIX",
                &redis_prefix,
                "a prefix without spaces",
            );
        }
        let debug_redis_monitor = r.boolean("LULL_DEBUG_REDIS_MONITOR");
        let http_text = r.string("LULL_HTTP_ADDR");
        let http_addr = match http_text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                r.problem("LULL_HTTP_ADDR", &http_text, "ip:port, e.g. 127.0.0.1:9898");
                SocketAddr::from(([127, 0, 0, 1], 9898))
            }
        };
        let instance_id = match r.raw("LULL_INSTANCE_ID") {
            Some(v) if !v.is_empty() => v,
            Some(_) => {
                r.problem("LULL_INSTANCE_ID", "", "a non-empty id");
                default_instance_id()
            }
            None => default_instance_id(),
        };
        let log_format = r.choice(
            "LULL_LOG_FORMAT",
            &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)],
        );
        let drain_timeout = r.number_opt("LULL_DRAIN_TIMEOUT_MS", (1, HOUR_MS), "milliseconds");
        let event_ttl = r.millis("LULL_EVENT_TTL_MS", (1_000, MONTH_MS));
        let max_open_bytes = r.number("LULL_MAX_OPEN_BYTES", (1 << 20, 1 << 40), "bytes") as usize;
        let flushed_ttl = r.millis("LULL_FLUSHED_TTL_MS", (60_000, YEAR_MS));

        let mut kafka = BTreeMap::new();
        for (name, value) in r.env.with_prefix(KAFKA_PREFIX) {
            let property = name[KAFKA_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace('_', ".");
            if property.is_empty() {
                r.problem(&name, &value, "LULL_KAFKA_<PROPERTY>=value");
                continue;
            }
            let secret = is_secret_property(&property);
            if let Some(why) = librdkafka_refusal(&property, &value) {
                let shown = if secret { "***" } else { value.as_str() };
                r.problem(
                    &name,
                    shown,
                    &format!("a librdkafka setting for {property} ({why})"),
                );
                continue;
            }
            let value = if secret {
                KafkaProperty::Secret(Secret::new(value))
            } else {
                KafkaProperty::Plain(value)
            };
            kafka.insert(property, value);
        }

        if max_wait < quiet {
            r.problem(
                "LULL_MAX_WAIT_MS",
                &max_wait.as_millis().to_string(),
                &format!("at least LULL_QUIET_MS ({})", quiet.as_millis()),
            );
        }
        if max_fragment_bytes > max_batch_bytes {
            r.problem(
                "LULL_MAX_FRAGMENT_BYTES",
                &max_fragment_bytes.to_string(),
                &format!("at most LULL_MAX_BATCH_BYTES ({max_batch_bytes})"),
            );
        }
        if max_open_bytes < max_batch_bytes.saturating_mul(2) {
            r.problem(
                "LULL_MAX_OPEN_BYTES",
                &max_open_bytes.to_string(),
                &format!(
                    "at least twice LULL_MAX_BATCH_BYTES ({})",
                    max_batch_bytes * 2
                ),
            );
        }
        let distinct = [&input_topic, &output_topic, &dlq_topic];
        if events_topic.as_ref() == Some(&input_topic) {
            r.problem(
                "LULL_EVENTS_TOPIC",
                &input_topic,
                "a topic other than the input topic",
            );
        }
        if output_topic == input_topic || dlq_topic == input_topic {
            r.problem(
                "LULL_OUTPUT_TOPIC",
                &format!("{}/{}/{}", distinct[0], distinct[1], distinct[2]),
                "input, output and DLQ topics to be different",
            );
        }
        // A transaction left open longer than its timeout is aborted by the broker (and its
        // producer fenced): every commit must come well inside it.
        let transaction_timeout = kafka
            .get("transaction.timeout.ms")
            .and_then(|t| t.value().parse::<u64>().ok())
            .unwrap_or(u64::from(crate::io::kafka::TRANSACTION_TIMEOUT_MS));
        let transaction_ms = transaction.as_millis() as u64;
        if transaction_ms.saturating_mul(2) > transaction_timeout {
            r.problem(
                "LULL_TRANSACTION_MS",
                &transaction_ms.to_string(),
                &format!(
                    "at most half the transaction timeout ({transaction_timeout} ms; \
                     LULL_KAFKA_TRANSACTION_TIMEOUT_MS raises it)"
                ),
            );
        }
        let session_ms = kafka
            .get("session.timeout.ms")
            .and_then(|s| s.value().parse::<u64>().ok());
        let drain_timeout = match (drain_timeout, session_ms) {
            // Only a value the operator chose can conflict; a derived one never does.
            (Some(drain), Some(session)) if drain >= session => {
                r.problem(
                    "LULL_DRAIN_TIMEOUT_MS",
                    &drain.to_string(),
                    &format!("less than session.timeout.ms ({session}) from LULL_KAFKA_SESSION_TIMEOUT_MS"),
                );
                Duration::from_millis(drain)
            }
            (Some(drain), _) => Duration::from_millis(drain),
            (None, session) => Duration::from_millis(derived_drain_timeout(session)),
        };

        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems));
        }
        Ok(Config {
            brokers,
            input_topic,
            output_topic,
            dlq_topic,
            group_id,
            batching,
            quiet,
            max_wait,
            max_fragments,
            max_batch_bytes,
            max_fragment_bytes,
            grace,
            timestamp,
            typing,
            followup,
            bypass_pattern,
            events_topic,
            delivery,
            transaction,
            state_topic_override,
            redis_url,
            redis_prefix,
            debug_redis_monitor,
            http_addr,
            instance_id,
            log_format,
            drain_timeout,
            event_ttl,
            flushed_ttl,
            max_open_bytes,
            kafka,
        })
    }

    /// The defaults, as if the environment were empty (used by the demo and tests).
    pub fn defaults() -> Self {
        match Self::from_env(&BTreeMap::new()) {
            Ok(config) => config,
            Err(error) => unreachable!("the built-in defaults are valid: {error}"),
        }
    }

    /// The effective settings as `name = value` pairs, secrets masked, for the start-up log:
    /// every setting of [`settings::SETTINGS`], in its order, then the `LULL_KAFKA_*` properties.
    pub fn summary(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = settings::SETTINGS
            .iter()
            .map(|s| (s.name.to_string(), self.shown(s.name)))
            .collect();
        for (property, value) in &self.kafka {
            let shown = match value {
                KafkaProperty::Plain(v) => v.clone(),
                KafkaProperty::Secret(_) => "***".to_string(),
            };
            out.push((format!("kafka:{property}"), shown));
        }
        out
    }

    /// The effective value of setting `name`, as it would be written in the environment
    /// (secrets masked); `None` for a name this configuration does not have.
    fn value_of(&self, name: &str) -> Option<String> {
        let ms = |d: Duration| d.as_millis().to_string();
        Some(match name {
            "KAFKA_BROKERS" => self.brokers.clone(),
            "LULL_INPUT_TOPIC" => self.input_topic.clone(),
            "LULL_OUTPUT_TOPIC" => self.output_topic.clone(),
            "LULL_DLQ_TOPIC" => self.dlq_topic.clone(),
            "LULL_GROUP_ID" => self.group_id.clone(),
            "LULL_BATCHING" => match self.batching {
                Batching::On => "on".into(),
                Batching::Off => "off".into(),
            },
            "LULL_QUIET_MS" => ms(self.quiet),
            "LULL_MAX_WAIT_MS" => ms(self.max_wait),
            "LULL_MAX_FRAGMENTS" => self.max_fragments.to_string(),
            "LULL_MAX_BATCH_BYTES" => self.max_batch_bytes.to_string(),
            "LULL_MAX_FRAGMENT_BYTES" => self.max_fragment_bytes.to_string(),
            "LULL_GRACE_MS" => ms(self.grace),
            "LULL_TIMESTAMP" => match self.timestamp {
                TimestampSource::Kafka => "kafka".into(),
                TimestampSource::Arrival => "arrival".into(),
            },
            "LULL_TYPING_MS" => ms(self.typing),
            "LULL_FOLLOWUP_MS" => ms(self.followup),
            "LULL_BYPASS_PATTERN" => self
                .bypass_pattern
                .as_ref()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            "LULL_EVENTS_TOPIC" => self.events_topic.clone().unwrap_or_default(),
            "LULL_DELIVERY" => self.delivery.as_str().into(),
            "LULL_TRANSACTION_MS" => ms(self.transaction),
            "LULL_STATE_TOPIC" => self.state_topic(),
            "REDIS_URL" => self
                .redis_url
                .as_ref()
                .map(|u| mask_url_password(u.expose()))
                .unwrap_or_default(),
            "LULL_REDIS_PREFIX" => self.redis_prefix.clone(),
            "LULL_DEBUG_REDIS_MONITOR" => self.debug_redis_monitor.to_string(),
            "LULL_EVENT_TTL_MS" => ms(self.event_ttl),
            "LULL_FLUSHED_TTL_MS" => ms(self.flushed_ttl),
            "LULL_HTTP_ADDR" => self.http_addr.to_string(),
            "LULL_INSTANCE_ID" => self.instance_id.clone(),
            "LULL_LOG_FORMAT" => match self.log_format {
                LogFormat::Pretty => "pretty".into(),
                LogFormat::Json => "json".into(),
            },
            "LULL_DRAIN_TIMEOUT_MS" => ms(self.drain_timeout),
            "LULL_MAX_OPEN_BYTES" => self.max_open_bytes.to_string(),
            _ => return None,
        })
    }

    fn shown(&self, name: &str) -> String {
        match self.value_of(name) {
            Some(v) if v.is_empty() => "(unset)".to_string(),
            Some(v) => v,
            None => "?".to_string(),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_design_table() {
        let c = Config::defaults();
        assert_eq!(c.brokers, "localhost:9092");
        assert_eq!(c.input_topic, "chat.fragments");
        assert_eq!(c.output_topic, "chat.batches");
        assert_eq!(c.dlq_topic, "chat.fragments.dlq");
        assert_eq!(c.group_id, "lull");
        assert_eq!(c.batching, Batching::On);
        assert_eq!(c.quiet, Duration::from_millis(2000));
        assert_eq!(c.max_wait, Duration::from_millis(15000));
        assert_eq!(c.max_fragments, 100);
        assert_eq!(c.max_batch_bytes, 262_144);
        assert_eq!(c.max_fragment_bytes, 65_536);
        assert_eq!(c.grace, Duration::from_millis(200));
        assert_eq!(c.timestamp, TimestampSource::Kafka);
        assert!(c.redis_url.is_none());
        assert_eq!(c.redis_prefix, "lull");
        assert!(!c.debug_redis_monitor);
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9898");
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.delivery, Delivery::ExactlyOnce);
        assert_eq!(c.transaction, Duration::from_millis(100));
        assert_eq!(c.state_topic(), "chat.fragments.lull-state");
    }

    #[test]
    fn the_state_topic_follows_the_input_unless_set() {
        let mut c = Config::from_env(&env(&[("LULL_INPUT_TOPIC", "in")])).unwrap();
        assert_eq!(c.state_topic(), "in.lull-state");
        c.input_topic = "other".into();
        assert_eq!(c.state_topic(), "other.lull-state");
        c.group_id = "blue/green".into();
        assert_eq!(c.state_topic(), "other.blue_green.lull-state");
        let c = Config::from_env(&env(&[("LULL_STATE_TOPIC", "s")])).unwrap();
        assert_eq!(c.state_topic(), "s");
        let e = Config::from_env(&env(&[("LULL_STATE_TOPIC", "chat.batches")])).unwrap_err();
        assert_eq!(e.0[0].variable, "LULL_STATE_TOPIC");
        let e = Config::from_env(&env(&[("LULL_TRANSACTION_MS", "8000")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LULL_TRANSACTION_MS=8000: expected at most half the transaction timeout (10000 ms; \
             LULL_KAFKA_TRANSACTION_TIMEOUT_MS raises it)"
        );
        Config::from_env(&env(&[
            ("LULL_TRANSACTION_MS", "8000"),
            ("LULL_KAFKA_TRANSACTION_TIMEOUT_MS", "30000"),
        ]))
        .unwrap();
        let e = Config::from_env(&env(&[("LULL_DELIVERY", "twice")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LULL_DELIVERY=twice: expected one of exactly_once, at_least_once"
        );
    }

    #[test]
    fn every_problem_is_reported_on_its_own_line() {
        let e = Config::from_env(&env(&[
            ("LULL_QUIET_MS", "abc"),
            ("LULL_BATCHING", "maybe"),
            ("LULL_TIMESTAMP", "wall"),
            ("LULL_HTTP_ADDR", "nowhere"),
        ]))
        .unwrap_err();
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines
            .contains(&"LULL_QUIET_MS=abc: expected milliseconds (a whole number, 1 to 86400000)"));
        assert!(lines.contains(&"LULL_BATCHING=maybe: expected one of on, off, true, false"));
        assert!(lines.contains(&"LULL_TIMESTAMP=wall: expected one of kafka, arrival"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("LULL_HTTP_ADDR=nowhere: expected")));
    }

    #[test]
    fn unknown_lull_variables_are_named_with_the_nearest_setting() {
        let unknown = unknown_variables(&env(&[
            ("LULL_QUIETMS", "500"),
            ("LULL_MAX_WAIT", "9000"),
            ("LULL_SOMETHING_ELSE_ENTIRELY", "1"),
            ("LULL_QUIET_MS", "500"),
            ("LULL_KAFKA_LINGER_MS", "5"),
            ("LULL_PM2_INSTANCES", "2"),
            ("LULL_TEST_KAFKA", "/tmp/k"),
            ("PATH", "/bin"),
        ]));
        assert_eq!(
            unknown,
            vec![
                ("LULL_MAX_WAIT".to_string(), Some("LULL_MAX_WAIT_MS")),
                ("LULL_QUIETMS".to_string(), Some("LULL_QUIET_MS")),
                ("LULL_SOMETHING_ELSE_ENTIRELY".to_string(), None),
            ]
        );
    }

    #[test]
    fn cross_field_rules_are_checked() {
        let e = Config::from_env(&env(&[
            ("LULL_QUIET_MS", "5000"),
            ("LULL_MAX_WAIT_MS", "1000"),
            ("LULL_MAX_FRAGMENT_BYTES", "1000"),
            ("LULL_MAX_BATCH_BYTES", "10"),
            ("LULL_OUTPUT_TOPIC", "chat.fragments"),
        ]))
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("LULL_MAX_WAIT_MS=1000: expected at least LULL_QUIET_MS (5000)"));
        assert!(text
            .contains("LULL_MAX_FRAGMENT_BYTES=1000: expected at most LULL_MAX_BATCH_BYTES (10)"));
        assert!(text.contains("input, output and DLQ topics to be different"));
    }

    #[test]
    fn kafka_pass_through_is_mapped_and_secrets_masked() {
        let c = Config::from_env(&env(&[
            ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("LULL_KAFKA_SASL_PASSWORD", "hunter2"),
            ("REDIS_URL", "redis://lull:topsecret@localhost:6379/0"),
        ]))
        .unwrap();
        assert_eq!(c.kafka["security.protocol"].value(), "SASL_SSL");
        assert_eq!(c.kafka["sasl.password"].value(), "hunter2");
        let dump = format!("{:?} {:?}", c, c.summary());
        assert!(!dump.contains("hunter2"), "{dump}");
        assert!(!dump.contains("topsecret"), "{dump}");
        assert!(dump.contains("redis://lull:***@localhost:6379/0"));
    }

    /// A setting marked secret in the table never shows its credential in the start-up summary
    /// (the help hides such values by the same mark).
    #[test]
    fn every_secret_setting_is_masked_in_the_summary() {
        let secrets: Vec<&str> = settings::SETTINGS
            .iter()
            .filter(|s| s.secret)
            .map(|s| s.name)
            .collect();
        assert_eq!(secrets, ["REDIS_URL"]);
        for name in secrets {
            let c =
                Config::from_env(&env(&[(name, "redis://u:topsecret@localhost:6379/0")])).unwrap();
            let summary = format!("{:?}", c.summary());
            assert!(!summary.contains("topsecret"), "{name}: {summary}");
        }
    }

    #[test]
    fn bad_redis_url_is_masked_in_the_error() {
        let e = Config::from_env(&env(&[("REDIS_URL", "http://u:pw@host")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "REDIS_URL=http://u:***@host: expected a redis:// or rediss:// URL"
        );
    }

    #[test]
    fn drain_timeout_must_be_below_session_timeout() {
        let e = Config::from_env(&env(&[
            ("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("LULL_DRAIN_TIMEOUT_MS", "6000"),
        ]))
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("less than session.timeout.ms (6000)"));
    }

    #[test]
    fn a_session_timeout_alone_derives_the_drain_timeout_below_it() {
        let c = Config::from_env(&env(&[("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")])).unwrap();
        assert_eq!(c.drain_timeout, Duration::from_millis(3000));
        let c = Config::defaults();
        assert_eq!(c.drain_timeout, Duration::from_millis(10_000));
        let c = Config::from_env(&env(&[("LULL_KAFKA_SESSION_TIMEOUT_MS", "60000")])).unwrap();
        assert_eq!(c.drain_timeout, Duration::from_millis(10_000));
        let c = Config::from_env(&env(&[
            ("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("LULL_DRAIN_TIMEOUT_MS", "5000"),
        ]))
        .unwrap();
        assert_eq!(c.drain_timeout, Duration::from_millis(5000));
    }

    #[test]
    fn absurd_values_are_refused_with_their_bounds() {
        let e = Config::from_env(&env(&[
            ("LULL_FLUSHED_TTL_MS", "18446744073709551615"),
            ("LULL_QUIET_MS", "9223372036854775807"),
            ("LULL_GRACE_MS", "3600001"),
        ]))
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("LULL_FLUSHED_TTL_MS=18446744073709551615: expected milliseconds (a whole number, 60000 to 31536000000)"),
            "{text}"
        );
        assert!(
            text.contains("LULL_QUIET_MS=9223372036854775807: expected milliseconds (a whole number, 1 to 86400000)"),
            "{text}"
        );
        assert!(text.contains("LULL_GRACE_MS=3600001"), "{text}");
    }

    #[test]
    fn a_kafka_property_librdkafka_refuses_is_one_line_naming_the_variable() {
        let e = Config::from_env(&env(&[
            ("LULL_KAFKA_NO_SUCH_THING", "1"),
            ("LULL_KAFKA_ACKS", "sometimes"),
            ("LULL_KAFKA_SASL_PASSWORD", "hunter2"),
        ]))
        .unwrap_err();
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0]
                .starts_with("LULL_KAFKA_ACKS=sometimes: expected a librdkafka setting for acks"),
            "{text}"
        );
        assert!(
            lines[1].starts_with(
                "LULL_KAFKA_NO_SUCH_THING=1: expected a librdkafka setting for no.such.thing"
            ),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn this_build_speaks_tls_scram_and_zstd() {
        let c = Config::from_env(&env(&[
            ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("LULL_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("LULL_KAFKA_COMPRESSION_TYPE", "zstd"),
        ]));
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn the_settings_table_drives_reading_and_the_summary() {
        let c = Config::defaults();
        let summary = c.summary();
        assert_eq!(
            summary.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            settings::SETTINGS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>(),
            "the summary lists exactly the table"
        );
        for s in settings::SETTINGS {
            let value = c.value_of(s.name);
            assert!(value.is_some(), "{} is in the table but not read", s.name);
            if !s.default.is_empty() {
                assert_eq!(
                    value.as_deref(),
                    Some(s.default),
                    "{}: the default read is the table's",
                    s.name
                );
            }
            assert!(!s.meaning.is_empty());
        }
    }
}
