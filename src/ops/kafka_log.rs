//! Kafka's connection trouble, logged as state changes rather than as a stream.
//!
//! With the brokers unreachable, librdkafka reports every reconnect attempt (several a second,
//! from the consumer and the producer alike) and every poll returns the same error. Logged as they
//! come, that is dozens of lines a second that bury everything else. Here they become: one WARN
//! when Kafka becomes unreachable (with the first reason), a reminder every
//! [`STILL_DOWN_EVERY`] while it stays so (with how long and how many reports were folded in), and
//! one INFO when it is reachable again. Other client errors are logged at most once a minute per
//! kind, with the number folded in. Readiness is not decided here (see `ops::health`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error, info, warn};

/// How often "still unreachable" is repeated while Kafka stays down.
pub const STILL_DOWN_EVERY: Duration = Duration::from_secs(300);

/// How often one kind of other client error is logged at most.
pub const SAME_ERROR_EVERY: Duration = Duration::from_secs(60);

/// The state the log follows.
#[derive(Default)]
struct State {
    /// Since when Kafka is unreachable, and when that was last said.
    down: Option<(Instant, Instant)>,
    /// Reports folded into the current down period since it was last said.
    folded: u64,
    /// Other errors by kind: when last logged, and how many were folded in since.
    others: HashMap<String, (Instant, u64)>,
}

/// The process-wide Kafka connection log (a process has one view of its brokers).
pub struct KafkaLog {
    state: Mutex<State>,
}

/// The one [`KafkaLog`] of this process.
pub fn kafka_log() -> &'static KafkaLog {
    static LOG: OnceLock<KafkaLog> = OnceLock::new();
    LOG.get_or_init(|| KafkaLog {
        state: Mutex::new(State::default()),
    })
}

/// Whether an error means "the brokers cannot be reached" (as opposed to a refusal by a
/// reachable broker).
pub fn is_unreachable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::BrokerNotAvailable
        )
    )
}

impl KafkaLog {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kafka cannot be reached, for `reason`.
    pub fn unreachable(&self, reason: &str) {
        let now = Instant::now();
        let mut s = self.state();
        match s.down {
            None => {
                s.down = Some((now, now));
                s.folded = 0;
                drop(s);
                warn!(reason, "kafka unreachable");
            }
            Some((since, said)) if now.duration_since(said) >= STILL_DOWN_EVERY => {
                let folded = std::mem::take(&mut s.folded);
                s.down = Some((since, now));
                drop(s);
                warn!(
                    down_for_s = since.elapsed().as_secs(),
                    reports = folded + 1,
                    reason,
                    "kafka still unreachable"
                );
            }
            Some(_) => {
                s.folded += 1;
                drop(s);
                debug!(reason, "kafka unreachable");
            }
        }
    }

    /// Kafka answered.
    pub fn reachable(&self) {
        let mut s = self.state();
        if let Some((since, _)) = s.down.take() {
            let folded = std::mem::take(&mut s.folded);
            drop(s);
            info!(
                down_for_s = since.elapsed().as_secs(),
                reports_folded = folded,
                "kafka reachable again"
            );
        }
    }

    /// An error from a client's error callback, with librdkafka's `reason`: an unreachable
    /// cluster is the state above; anything else is [`KafkaLog::error`] of kind `what`.
    pub fn client_error(&self, what: &'static str, error: &KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_)) {
            // The end of a partition, which a reader asked to be told of: not an error.
            debug!(reason, "{what}: end of partition");
        } else if is_unreachable(error) {
            self.unreachable(reason);
        } else {
            self.error(what, error);
        }
    }

    /// Any other client error, of kind `what` (e.g. "consumer error"): logged at most once per
    /// [`SAME_ERROR_EVERY`] per kind and detail, with the count folded in. While Kafka is down,
    /// errors that only say so are folded into the down period instead.
    pub fn error(&self, what: &'static str, error: &KafkaError) {
        if is_unreachable(error) {
            self.unreachable(&error.to_string());
            return;
        }
        let detail = error.to_string();
        if let Some(folded) = self.due(format!("{what}: {detail}")) {
            warn!(error = %detail, repeated = folded, "{what}");
        }
    }

    /// A line of librdkafka's own log. Connection churn (a broker going away, a reconnect
    /// failing) is the state above, reported by the client's error callback: here it is debug.
    /// The rest keeps its level, at most once a minute per facility and message.
    pub fn librdkafka(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let churn = matches!(facility, "FAIL" | "BROKERFAIL" | "CONNECT" | "DISCONNECT")
            || message.contains("Connection refused")
            || message.contains("Disconnected");
        if churn {
            debug!(target: "librdkafka", facility, "{message}");
            return;
        }
        let due = || {
            self.due(format!("librdkafka {facility}: {message}"))
                .is_some()
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if due() {
                    error!(target: "librdkafka", facility, "{message}");
                }
            }
            RDKafkaLogLevel::Warning => {
                if due() {
                    warn!(target: "librdkafka", facility, "{message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Counts one more report of `key`. `Some(folded)` when it is due to be logged (its first
    /// report, or the first after [`SAME_ERROR_EVERY`]), with the reports folded in since the
    /// last time it was; `None` while it is being folded.
    fn due(&self, key: String) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state();
        match s.others.get_mut(&key) {
            Some((last, n)) if now.duration_since(*last) < SAME_ERROR_EVERY => {
                *n += 1;
                None
            }
            Some((last, n)) => {
                *last = now;
                Some(std::mem::take(n))
            }
            None => {
                // Bounded: kinds are few, but details may vary without end.
                if s.others.len() > 1_000 {
                    s.others.clear();
                }
                s.others.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The context of lull's Kafka clients (the worker's producer, the tools' producer and
/// consumer): their errors and librdkafka's log lines go through [`kafka_log`], so a broker that
/// goes away is one line, not a stream. It carries the kind of client its error lines name.
#[derive(Debug, Clone, Copy)]
pub struct ClientLog(&'static str);

impl ClientLog {
    /// For a producer.
    pub const PRODUCER: ClientLog = ClientLog("kafka producer error");
    /// For a consumer.
    pub const CONSUMER: ClientLog = ClientLog("kafka consumer error");
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka_log().librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_log().client_error(self.0, &error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ClientLog {}
