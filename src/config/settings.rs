//! Every setting lull reads, in one table: its variable, its default and what it means. Reading
//! ([`super::Config::from_env`]) takes its defaults from here, the start-up summary lists exactly
//! these, and the tests check that the two never drift apart.

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable.
    pub name: &'static str,
    /// The default, as it would be written in the environment ("" = unset).
    pub default: &'static str,
    /// What it is for, in a line.
    pub meaning: &'static str,
    /// Its value may hold a credential: never shown whole (help, start-up summary, errors).
    pub secret: bool,
}

const fn s(name: &'static str, default: &'static str, meaning: &'static str) -> Setting {
    Setting {
        name,
        default,
        meaning,
        secret: false,
    }
}

/// A setting whose value may hold a credential.
const fn secret(name: &'static str, default: &'static str, meaning: &'static str) -> Setting {
    Setting {
        secret: true,
        ..s(name, default, meaning)
    }
}

/// Every setting, in the order the README's table and the start-up summary list them.
pub const SETTINGS: &[Setting] = &[
    s("KAFKA_BROKERS", "localhost:9092", "bootstrap servers, comma-separated"),
    s("LULL_INPUT_TOPIC", "chat.fragments", "fragments in"),
    s("LULL_OUTPUT_TOPIC", "chat.batches", "batches out"),
    s("LULL_DLQ_TOPIC", "chat.fragments.dlq", "invalid input"),
    s("LULL_GROUP_ID", "lull", "consumer group"),
    s("LULL_BATCHING", "on", "off = pass-through: every fragment is a batch of one"),
    s("LULL_QUIET_MS", "2000", "a burst ends after this long without a fragment from the user"),
    s("LULL_MAX_WAIT_MS", "15000", "a batch goes out at the latest this long after its first fragment"),
    s("LULL_MAX_FRAGMENTS", "100", "a batch goes out at once when it holds this many fragments"),
    s("LULL_MAX_BATCH_BYTES", "262144", "... or when its fragments add up to this many bytes"),
    s("LULL_MAX_FRAGMENT_BYTES", "65536", "larger fragments go to the dead-letter topic"),
    s("LULL_GRACE_MS", "200", "how long past a burst's close time lull waits for stragglers"),
    s("LULL_TIMESTAMP", "kafka", "kafka (message timestamp) or arrival (lull's clock)"),
    s("LULL_TYPING_MS", "6000", "how long one typing signal holds a window open"),
    s("LULL_FOLLOWUP_MS", "10000", "follows: a batch names the key's previous one within this; 0 = off"),
    s("LULL_BYPASS_PATTERN", "", "regex on text: matching fragments go out alone (e.g. ^/ for commands)"),
    s("LULL_EVENTS_TOPIC", "", "lifecycle events (opened, flushed) topic; unset = off"),
    s("LULL_DELIVERY", "exactly_once", "exactly_once (Kafka transactions) or at_least_once (no transactions)"),
    s("LULL_TRANSACTION_MS", "100", "longest a transaction stays open before it commits (exactly_once)"),
    s("LULL_STATE_TOPIC", "", "compacted topic of per-key flushed records (exactly_once); default <input>.lull-state"),
    secret("REDIS_URL", "", "redis:// or rediss:// URL of the shared state (a Redis Cluster: one or more nodes, comma-separated); unset = none"),
    s("LULL_REDIS_PREFIX", "lull", "namespace of every Redis key"),
    s("LULL_DEBUG_REDIS_MONITOR", "false", "trace every Redis command on lull's keys (debug)"),
    s("LULL_EVENT_TTL_MS", "3600000", "how long an event_id is remembered for duplicate detection"),
    s("LULL_FLUSHED_TTL_MS", "604800000", "how long a user's flushed watermark is kept after last use"),
    s("LULL_HTTP_ADDR", "127.0.0.1:9898", "/metrics, /health/live, /health/ready"),
    s("LULL_INSTANCE_ID", "", "names this process in logs, metrics and Redis; default <host>-<pid>"),
    s("LULL_LOG_FORMAT", "pretty", "pretty or json; levels via RUST_LOG"),
    s("LULL_DRAIN_TIMEOUT_MS", "", "longest graceful shutdown; default 10000, or half the session timeout when that is below 20 s"),
    s("LULL_MAX_OPEN_BYTES", "268435456", "memory budget: open windows and unacknowledged output"),
    s("LULL_KAFKA_CONFIG_FILE", "", "a Java-style properties file (client.properties) of Kafka client settings for every client; LULL_KAFKA_* wins over it"),
];

/// The default of `name` as written in [`SETTINGS`] ("" when unset or not listed: a test checks
/// every name the reader asks for is listed).
pub fn default_of(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .map_or("", |s| s.default)
}
