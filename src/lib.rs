//! lull: rapid-fire protection for chat bots.
//!
//! Fragments (one user's quick messages) come in on a Kafka topic keyed by user; lull holds each
//! user's burst in memory in the one worker that owns the user's partition and emits one batch per
//! burst once the user goes quiet, with a hard cap on waiting. The data path is one straight line:
//!
//! ```text
//! consumer ──(bounded channel)──▶ partition worker ──▶ window engine ──▶ sink ──▶ commit
//! consumer.rs                     partition.rs         window.rs         sink.rs   offsets.rs
//! ```
//!
//! * [`config`]: typed settings from the environment, validated as a whole.
//! * [`fragment`]: bytes in → a [`fragment::Fragment`], or a reason for the dead-letter topic.
//! * [`window`]: the window engine; pure, synchronous, deterministic.
//! * [`offsets`]: the per-partition commit point (low watermark).
//! * [`partition`]: one task per assigned partition; owns its windows, timers and deliveries.
//! * [`consumer`]: the Kafka consumer loop, rebalances, dispatch and commits.
//! * [`output`]: the batch and dead-letter wire formats.
//! * [`sink`]: the idempotent producer and the retry policy.
//! * [`store`]: shared state in Redis (ownership fencing, flushed watermarks, duplicates,
//!   pending-window summaries), its Lua scripts and MONITOR tracing.
//! * [`kafka`]: librdkafka client settings, with `LULL_KAFKA_*` pass-through.
//! * [`headers`]: message headers as bytes (any name a producer can send).
//! * [`metrics`]: the metric families.
//! * [`health`]: per-run facts (partitions owned, poll loop liveness) and the memory budget.
//! * [`http`]: `/metrics`, `/health/live`, `/health/ready`.
//! * [`mock`]: librdkafka's in-process mock cluster, for `demo`, `dev-broker` and tests.
//! * [`topics`]: creating the input, output and dead-letter topics.
//! * [`verify`]: the delivery audit of input, output and dead-letter topics.
//! * [`bench`]: the end-to-end benchmark (`lull bench`).
//! * [`demo`]: the self-contained demonstration with its own end-to-end check.
//! * [`shutdown`]: SIGINT/SIGTERM handling.

pub mod config;
pub mod devkit;
pub mod flow;
pub mod io;
pub mod model;
pub mod ops;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Errors that stop a running lull.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The producer could not be created.
    #[error(transparent)]
    Sink(#[from] io::producer::SinkError),
    /// The consumer failed to start, or a worker failed fatally.
    #[error(transparent)]
    Flow(#[from] flow::FlowError),
    /// The HTTP endpoints could not be served (address in use, no permission).
    #[error("cannot serve HTTP on {0} (LULL_HTTP_ADDR): {1}")]
    Http(std::net::SocketAddr, #[source] std::io::Error),
    /// `REDIS_URL` cannot be used at all (an unreachable server is not an error: lull degrades).
    #[error(transparent)]
    Store(#[from] io::store::StoreError),
}

impl RunError {
    /// Whether the operator's settings are at fault (a Kafka client librdkafka refuses to create
    /// with them, an HTTP address that cannot be bound): exit 2, like a bad value at start.
    pub fn is_configuration(&self) -> bool {
        use rdkafka::error::KafkaError;
        let client = |e: &KafkaError| {
            matches!(
                e,
                KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..)
            )
        };
        match self {
            RunError::Sink(io::producer::SinkError::Create(e)) => client(e),
            RunError::Flow(flow::FlowError::Start(e)) => client(e),
            RunError::Http(..) => true,
            _ => false,
        }
    }
}

/// Runs the worker until `shutdown` is cancelled (then drains, commits and returns `Ok`), or
/// until something fails that cannot be retried.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with_health(config, shutdown, Arc::new(ops::health::Health::new())).await
}

/// [`run`], reporting its state into `health` (tests and the demo watch it).
pub async fn run_with_health(
    config: Config,
    shutdown: CancellationToken,
    health: Arc<ops::health::Health>,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let sink = io::producer::Sink::new(&config)?;
    let addr = ops::http::serve(
        config.http_addr,
        health.clone(),
        config.instance_id.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| RunError::Http(config.http_addr, e))?;
    health.set_http_addr(addr);
    let budget = Arc::new(ops::budget::Budget::new(config.max_open_bytes));
    ops::metrics::metrics()
        .budget_bytes
        .set(i64::try_from(config.max_open_bytes).unwrap_or(i64::MAX));
    let store = match &config.redis_url {
        None => {
            tracing::info!("REDIS_URL is unset: running without shared state");
            health.set_redis(None);
            None
        }
        Some(url) => {
            let store = io::store::Store::connect(&config, health.clone()).await?;
            if config.debug_redis_monitor {
                io::store::monitor::spawn_trace(
                    url.expose().to_string(),
                    config.redis_prefix.clone(),
                    config.instance_id.clone(),
                );
            }
            Some(store)
        }
    };
    let result = flow::run(
        config.clone(),
        sink.clone(),
        store,
        budget,
        shutdown,
        health,
    )
    .await;
    let flush_sink = sink.clone();
    let timeout = config.drain_timeout;
    let _ = tokio::task::spawn_blocking(move || flush_sink.flush(timeout)).await;
    result.map_err(RunError::from)
}
