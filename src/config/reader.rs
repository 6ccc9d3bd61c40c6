//! The reader of settings: each typed read of one variable, collecting every problem found so all
//! of them are reported together.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

/// The inclusive bounds of a numeric setting.
pub(super) type Range = (u64, u64);

/// Collects problems while fields are parsed, so all of them are reported together.
pub(super) struct Reader<'e, E: Env> {
    pub(super) env: &'e E,
    pub(super) problems: Vec<ConfigProblem>,
}

impl<E: Env> Reader<'_, E> {
    pub(super) fn raw(&self, name: &str) -> Option<String> {
        self.env.get(name).map(|v| v.trim().to_string())
    }

    pub(super) fn problem(&mut self, name: &str, value: &str, expected: &str) {
        self.problems.push(ConfigProblem {
            variable: name.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        });
    }

    pub(super) fn string(&mut self, name: &str) -> String {
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

    pub(super) fn topic(&mut self, name: &str) -> String {
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
    pub(super) fn number(&mut self, name: &str, range: Range, what: &str) -> u64 {
        // The table's defaults are whole numbers (a test checks).
        let default = settings::default_of(name).parse().unwrap_or(0);
        self.number_opt(name, range, what).unwrap_or(default)
    }

    /// [`Reader::number`] for a setting whose default is derived from others: `None` if unset
    /// (or invalid, which is reported).
    pub(super) fn number_opt(&mut self, name: &str, range: Range, what: &str) -> Option<u64> {
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

    /// Checks one librdkafka property (`shown_as` names where it came from: its variable, or the
    /// properties file's line) and adds it to `kafka`, over any earlier value.
    pub(super) fn kafka_property(
        &mut self,
        kafka: &mut BTreeMap<String, KafkaProperty>,
        shown_as: &str,
        property: String,
        value: String,
    ) {
        let secret = is_secret_property(&property);
        if let Some(why) = librdkafka_refusal(&property, &value) {
            let shown = if secret { "***" } else { value.as_str() };
            self.problem(
                shown_as,
                shown,
                &format!("a librdkafka setting for {property} ({why})"),
            );
            return;
        }
        let value = if secret {
            KafkaProperty::Secret(Secret::new(value))
        } else {
            KafkaProperty::Plain(value)
        };
        kafka.insert(property, value);
    }

    /// A duration in `range` (milliseconds): bare milliseconds (`1500`) or with a unit (`1500ms`,
    /// `2s`, `1.5s`, `5m`, `1h`).
    pub(super) fn millis(&mut self, name: &str, range: Range) -> Duration {
        let default = settings::default_of(name).parse().unwrap_or(0);
        self.millis_opt(name, range)
            .unwrap_or(Duration::from_millis(default))
    }

    /// [`Reader::millis`] for a setting with no default of its own: `None` if unset (or
    /// invalid, which is reported).
    pub(super) fn millis_opt(&mut self, name: &str, range: Range) -> Option<Duration> {
        let v = self.raw(name)?;
        match parse_millis(&v) {
            Some(ms) if (range.0..=range.1).contains(&ms) => Some(Duration::from_millis(ms)),
            _ => {
                let expected = format!(
                    "milliseconds (a whole number, {} to {}), or a duration with a unit (1500ms, 2s, 5m, 1h)",
                    range.0, range.1
                );
                self.problem(name, &v, &expected);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, name: &str) -> bool {
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

    /// A regular expression (unset or empty: none).
    pub(super) fn pattern(&mut self, name: &str) -> Option<regex::Regex> {
        let v = self.raw(name).filter(|v| !v.is_empty())?;
        match regex::RegexBuilder::new(&v).size_limit(1 << 20).build() {
            Ok(re) => Some(re),
            Err(e) => {
                let why = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                self.problem(name, &v, &format!("a regular expression ({why})"));
                None
            }
        }
    }

    /// One of `options`; the default is the option the table names.
    pub(super) fn choice<T: Copy>(&mut self, name: &str, options: &[(&str, T)]) -> T {
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

impl Config {
    /// Reads and validates every setting from `env`, reporting all problems at once.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        let mut brokers = r.string("KAFKA_BROKERS");
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
        let quiet = r.millis("LULL_QUIET_MS", QUIET_RANGE);
        let max_wait = r.millis("LULL_MAX_WAIT_MS", MAX_WAIT_RANGE);
        let max_fragments = r.number(
            "LULL_MAX_FRAGMENTS",
            MAX_FRAGMENTS_RANGE,
            "a fragment count",
        ) as usize;
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
        let typing = r.millis("LULL_TYPING_MS", TYPING_RANGE);
        let followup = r.millis("LULL_FOLLOWUP_MS", (0, DAY_MS));
        let bypass_pattern = r.pattern("LULL_BYPASS_PATTERN");
        let channels = super::channels::read(&mut r, quiet, max_wait);
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
            Some(v)
                if v.split(',')
                    .map(str::trim)
                    .all(|u| u.starts_with("redis://") || u.starts_with("rediss://")) =>
            {
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
        let drain_timeout = r
            .millis_opt("LULL_DRAIN_TIMEOUT_MS", (1, HOUR_MS))
            .map(|d| d.as_millis() as u64);
        let event_ttl = r.millis("LULL_EVENT_TTL_MS", (1_000, MONTH_MS));
        let max_open_bytes = r.number("LULL_MAX_OPEN_BYTES", (1 << 20, 1 << 40), "bytes") as usize;
        let flushed_ttl = r.millis("LULL_FLUSHED_TTL_MS", (60_000, YEAR_MS));

        // The properties file first, then LULL_KAFKA_* over it.
        let mut kafka = BTreeMap::new();
        let kafka_config_file = r.raw(KAFKA_CONFIG_FILE).filter(|v| !v.is_empty());
        let mut kafka_left_out = Vec::new();
        if let Some(path) = &kafka_config_file {
            match std::fs::read_to_string(path) {
                Err(e) => r.problem(
                    KAFKA_CONFIG_FILE,
                    path,
                    &format!("a readable Java-style properties file ({e})"),
                ),
                Ok(text) => {
                    let read = properties::read(&text);
                    for p in read.properties {
                        let place = format!("{path}:{} {}", p.line, p.key);
                        r.kafka_property(&mut kafka, &place, p.key, p.value);
                    }
                    kafka_left_out = read
                        .left_out
                        .into_iter()
                        .map(|(line, key)| format!("{path}:{line} {key}"))
                        .collect();
                }
            }
        }
        for (name, value) in r.env.with_prefix(KAFKA_PREFIX) {
            if name == KAFKA_CONFIG_FILE {
                continue;
            }
            let property = name[KAFKA_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace('_', ".");
            if property.is_empty() {
                r.problem(&name, &value, "LULL_KAFKA_<PROPERTY>=value");
                continue;
            }
            r.kafka_property(&mut kafka, &name, property, value);
        }

        // One place names the brokers: KAFKA_BROKERS, or LULL_KAFKA_BOOTSTRAP_SERVERS alone (then it
        // is what KAFKA_BROKERS shows in the start-up summary); both, differing, is a mistake.
        if let Some(KafkaProperty::Plain(bootstrap)) = kafka.remove("bootstrap.servers") {
            match r.raw("KAFKA_BROKERS") {
                Some(set) if set != bootstrap.trim() => r.problem(
                    "LULL_KAFKA_BOOTSTRAP_SERVERS",
                    &bootstrap,
                    &format!(
                        "unset: KAFKA_BROKERS ({set}) names the brokers; set only one of the two"
                    ),
                ),
                _ => brokers = bootstrap.trim().to_string(),
            }
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
            channels,
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
            kafka_config_file,
            kafka_left_out,
        })
    }
}

/// Milliseconds from `1500` (bare milliseconds), `1500ms`, `2s`, `1.5s`, `5m` or `1h`; `None` for
/// anything else, a negative value, or a fraction of a millisecond.
pub(super) fn parse_millis(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    match number.split_once('.') {
        None => number.parse::<u64>().ok()?.checked_mul(scale),
        Some((whole, fraction)) => {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().ok()?
            };
            if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let digits = fraction.len().min(9) as u32;
            let fraction: u64 = fraction[..digits as usize].parse().ok()?;
            let part = fraction.checked_mul(scale)?;
            let denominator = 10u64.pow(digits);
            (part % denominator == 0)
                .then(|| whole.checked_mul(scale)?.checked_add(part / denominator))
                .flatten()
        }
    }
}
