//! The metric families, defined once, in one registry.
//!
//! Nothing here is labelled by user or key: labels are small fixed sets (reasons, partitions).
//! The registry is process-wide because a process has one `/metrics` page.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric lull exports.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Input messages read.
    pub fragments_received: IntCounter,
    /// Input messages refused, by reason.
    pub fragments_invalid: IntCounterVec,
    /// Fragments that opened a window after their own could already have flushed.
    pub fragments_late: IntCounter,
    /// Fragments whose future timestamp was clamped to the wall clock.
    pub fragments_clamped: IntCounter,
    /// Batches produced and acknowledged, by reason.
    pub batches_flushed: IntCounterVec,
    /// Batches delivered, by the channel whose settings they kept.
    pub channel_batches: IntCounterVec,
    /// Fragments per batch.
    pub batch_fragments: Histogram,
    /// Fragment bytes per batch.
    pub batch_bytes: Histogram,
    /// Flush time minus close time minus grace.
    pub flush_lateness: Histogram,
    /// Flush time minus the last fragment's timestamp.
    pub end_to_end: Histogram,
    /// Open windows across assigned partitions.
    pub open_windows: IntGauge,
    /// Fragment bytes held in open windows.
    pub open_window_bytes: IntGauge,
    /// Messages written to the dead-letter topic.
    pub dlq_messages: IntCounter,
    /// Output records re-sent after a failed delivery.
    pub produce_retries: IntCounter,
    /// Successful offset commits.
    pub commits: IntCounter,
    /// Offset commits refused or failed (rebalances make some expected).
    pub commit_failures: IntCounter,
    /// Partitions currently assigned to this process.
    pub assigned_partitions: IntGauge,
    /// Partitions currently paused for backpressure.
    pub backpressure_paused: IntGauge,
    /// Fragments dropped because their event id was first seen at another offset.
    pub fragments_duplicate: IntCounter,
    /// Fragments skipped on replay because they were already emitted in a batch.
    pub fragments_skipped: IntCounter,
    /// Chat signals read, by signal and outcome (`applied`, `ignored`, `expired`).
    pub signals: IntCounterVec,
    /// Lifecycle events delivered (`LULL_EVENTS_TOPIC`).
    pub events: IntCounter,
    /// Flushed records in Redis ignored because they cannot describe the log being read, by
    /// reason (`topic_id`, `beyond_high_watermark`).
    pub redis_stale_records: IntCounterVec,
    /// Redis calls that failed (connection, timeout, server error).
    pub redis_errors: IntCounter,
    /// Duration of Redis script calls, by script.
    pub redis_call_seconds: HistogramVec,
    /// 1 while Redis is unreachable and lull runs without shared state.
    pub redis_degraded: IntGauge,
    /// Partition workers fenced off: another owner of their partition took over (its Kafka
    /// transactions, or its Redis claim).
    pub fenced_off: IntCounter,
    /// Transactions ended, by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// How long a commit took (records flushed, offsets sent, transaction ended).
    pub transaction_seconds: Histogram,
    /// How long reading a partition's state records took when it was assigned.
    pub state_restore_seconds: Histogram,
    /// State topic messages read (records and tombstones) when partitions were assigned.
    pub state_records_read: IntCounter,
    /// From a partition's assignment until its worker reads input (exactly_once: transactions
    /// started, state read): the takeover's own cost.
    pub partition_start_seconds: Histogram,
    /// Age of the oldest open window (now minus its first fragment's timestamp).
    pub oldest_open_window_age: prometheus::Gauge,
    /// Messages behind the end of each assigned partition.
    pub consumer_lag: IntGaugeVec,
    /// Bytes held against the memory budget (open windows plus unacknowledged output).
    pub held_bytes: IntGauge,
    /// The memory budget, `LULL_MAX_OPEN_BYTES`.
    pub budget_bytes: IntGauge,
    /// 1 while `/health/ready` would answer ready, else 0.
    pub ready: IntGauge,
    /// The per-partition families (`lull top`).
    pub partitions: crate::ops::partition_metrics::PartitionFamilies,
}

/// Registers `metric` and hands it back: every family is defined in code, so its definition is
/// valid and its name unique (a mistake is a bug caught by any test that starts lull).
pub(super) fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    registered(registry, c)
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registered(registry, c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition is valid");
    registered(registry, g)
}

pub(super) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let g =
        IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition is valid");
    registered(registry, g)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition is valid");
    registered(registry, h)
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let seconds = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        let build = IntGauge::with_opts(
            Opts::new(
                "lull_build_info",
                "Build information; the value is always 1.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("static metric definition is valid");
        registered(&registry, build).set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: what
        // an operator checks first, read from /proc at each scrape (Linux only).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(crate::ops::process::ProcessMetrics::for_self()))
            .expect("metric names are unique");
        Self {
            fragments_received: counter(
                &registry,
                "lull_fragments_received_total",
                "Input messages read.",
            ),
            fragments_invalid: counter_vec(
                &registry,
                "lull_fragments_invalid_total",
                "Input messages sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            fragments_late: counter(
                &registry,
                "lull_fragments_late_total",
                "Fragments that arrived after their window could already have flushed.",
            ),
            fragments_clamped: counter(
                &registry,
                "lull_fragments_clamped_total",
                "Fragments whose timestamp was in the future and was clamped to now.",
            ),
            batches_flushed: counter_vec(
                &registry,
                "lull_batches_flushed_total",
                "Batches delivered to the output topic, by reason.",
                &["reason"],
            ),
            channel_batches: counter_vec(
                &registry,
                "lull_channel_batches_total",
                "Batches delivered, by the channel whose settings they kept (LULL_CHANNEL_<NAME>_*: \
                 its NAME; any other channel, or none: other).",
                &["channel"],
            ),
            batch_fragments: histogram(
                &registry,
                "lull_batch_fragments",
                "Fragments per batch.",
                vec![
                    1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 50.0, 100.0, 250.0, 1000.0,
                ],
            ),
            batch_bytes: histogram(
                &registry,
                "lull_batch_bytes",
                "Fragment bytes per batch.",
                prometheus::exponential_buckets(64.0, 4.0, 9).expect("valid buckets"),
            ),
            flush_lateness: histogram(
                &registry,
                "lull_flush_lateness_seconds",
                "Flush time minus the window's close time minus grace.",
                seconds.clone(),
            ),
            end_to_end: histogram(
                &registry,
                "lull_end_to_end_seconds",
                "Flush time minus the last fragment's timestamp.",
                seconds.clone(),
            ),
            open_windows: gauge(&registry, "lull_open_windows", "Open windows."),
            open_window_bytes: gauge(
                &registry,
                "lull_open_window_bytes",
                "Fragment bytes held in open windows.",
            ),
            dlq_messages: counter(
                &registry,
                "lull_dlq_messages_total",
                "Messages written to the dead-letter topic.",
            ),
            produce_retries: counter(
                &registry,
                "lull_produce_retries_total",
                "Output records re-sent after a failed delivery.",
            ),
            commits: counter(
                &registry,
                "lull_commits_total",
                "Successful offset commits.",
            ),
            commit_failures: counter(
                &registry,
                "lull_commit_failures_total",
                "Offset commits that failed (some are expected during rebalances).",
            ),
            assigned_partitions: gauge(
                &registry,
                "lull_assigned_partitions",
                "Input partitions assigned to this process.",
            ),
            backpressure_paused: gauge(
                &registry,
                "lull_backpressure_paused",
                "Input partitions paused because their worker is full.",
            ),
            fragments_duplicate: counter(
                &registry,
                "lull_fragments_duplicate_total",
                "Fragments dropped as duplicates (event id first seen at another offset).",
            ),
            redis_stale_records: counter_vec(
                &registry,
                "lull_redis_stale_records_total",
                "Flushed records in Redis ignored because they belong to another incarnation of the input topic or lie beyond its high watermark.",
                &["reason"],
            ),
            signals: counter_vec(
                &registry,
                "lull_signals_total",
                "Chat signals read (typing, stopped, flush), by what they did: applied to an open window, ignored (none open, or batching off), expired (after the window's close time: it went out first).",
                &["signal", "outcome"],
            ),
            events: counter(
                &registry,
                "lull_events_total",
                "Lifecycle events (opened, flushed) acknowledged by the events topic.",
            ),
            fragments_skipped: counter(
                &registry,
                "lull_fragments_skipped_total",
                "Fragments skipped on replay because a batch already delivered them.",
            ),
            redis_errors: counter(
                &registry,
                "lull_redis_errors_total",
                "Redis calls that failed.",
            ),
            redis_call_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "lull_redis_call_seconds",
                        "Duration of Redis script calls, by script.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ]),
                    &["script"],
                )
                .expect("static metric definition is valid");
                registered(&registry, h)
            },
            redis_degraded: gauge(
                &registry,
                "lull_redis_degraded",
                "1 while Redis is unreachable and lull runs without shared state.",
            ),
            fenced_off: counter(
                &registry,
                "lull_fenced_off_total",
                "Partition workers fenced off: another owner of their partition took over (Kafka transactions or Redis).",
            ),
            transactions: counter_vec(
                &registry,
                "lull_transactions_total",
                "Kafka transactions ended (exactly_once), by outcome: committed or aborted.",
                &["outcome"],
            ),
            transaction_seconds: histogram(
                &registry,
                "lull_transaction_commit_seconds",
                "How long committing one transaction took (exactly_once).",
                seconds.clone(),
            ),
            state_restore_seconds: histogram(
                &registry,
                "lull_state_restore_seconds",
                "How long reading an assigned partition's state records took (exactly_once).",
                seconds,
            ),
            state_records_read: counter(
                &registry,
                "lull_state_records_read_total",
                "State topic messages read when partitions were assigned (exactly_once).",
            ),
            partition_start_seconds: histogram(
                &registry,
                "lull_partition_start_seconds",
                "From a partition's assignment until its worker reads input (exactly_once: transactions started and state read).",
                vec![
                    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
                ],
            ),
            oldest_open_window_age: {
                let g = prometheus::Gauge::new(
                    "lull_oldest_open_window_age_seconds",
                    "Age of the oldest open window: the delivery SLO signal.",
                )
                .expect("static metric definition is valid");
                registered(&registry, g)
            },
            consumer_lag: gauge_vec(
                &registry,
                "lull_consumer_lag",
                "Messages between lull's commit point (the oldest fragment not yet delivered) and the end of each assigned partition.",
                &["partition"],
            ),
            held_bytes: gauge(
                &registry,
                "lull_held_bytes",
                "Bytes held against the memory budget: queued input, open windows, unacknowledged output.",
            ),
            budget_bytes: gauge(
                &registry,
                "lull_memory_budget_bytes",
                "The memory budget, LULL_MAX_OPEN_BYTES.",
            ),
            ready: gauge(
                &registry,
                "lull_ready",
                "1 while this instance is ready (see /health/ready), else 0.",
            ),
            partitions: crate::ops::partition_metrics::PartitionFamilies::new(&registry),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
