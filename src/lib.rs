//! lull: rapid-fire protection for chat bots.
//!
//! Fragments (one user's quick messages) come in on a Kafka topic keyed by user; lull holds each
//! user's burst in memory in the one worker that owns the user's partition and emits one batch per
//! burst once the user goes quiet, with a hard cap on waiting. `ARCHITECTURE.md` at the top of the
//! repository describes the whole; this is its map. Layers point down only:
//!
//! ```text
//! flow      source ─▶ rebalance ─▶ partitions ─▶ worker: intake ▸ gate ▸ engine ▸ outbox ▸ ledger ▸ progress ─▶ commit
//! model     fragment, window (the engine), deadlines, offsets, wire   pure: no tokio, rdkafka, redis
//! io        kafka, headers, producer, store (Redis + lua/), backoff
//! ops       health, budget, http, metrics, process, shutdown
//! config    every setting, read and validated as a whole
//! devkit    mock cluster, load generator, batch tally, audit    for the tools and tests; the worker never imports it
//! ```
//!
//! * [`config`]: typed settings from the environment, validated as a whole.
//! * [`model`]: what a fragment, a window and a batch are, when a window closes
//!   ([`model::window`]), which offset may be committed ([`model::offsets`]), and the wire formats
//!   ([`model::wire`]).
//! * [`flow`]: the data path: the consumer ([`flow::source`]), its rebalance callbacks
//!   ([`flow::rebalance`]), the owner of the partition set and the commits
//!   ([`flow::partitions`], [`flow::commit`]), one worker per partition ([`flow::worker`]).
//! * [`io`]: Kafka client settings and topic identity, headers as bytes, the producer, the Redis
//!   store and its scripts, the retry backoff.
//! * [`ops`]: per-run health, the memory budget, `/metrics` and `/health/*`, the metric families,
//!   signal handling, the wall clock, and the supervisor every task runs under (a task that dies
//!   takes the process down).
//! * [`devkit`]: what the operator tools (the binary's `cli/`) and the tests share.

pub mod config;
pub mod devkit;
pub(crate) mod flow;
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
    /// The consumer failed to start.
    #[error(transparent)]
    Flow(#[from] flow::FlowError),
    /// A supervised task failed or panicked (named in the message).
    #[error(transparent)]
    Task(#[from] ops::supervisor::TaskFailed),
    /// The HTTP endpoints could not be served (address in use, no permission).
    #[error("cannot serve HTTP on {0} (LULL_HTTP_ADDR): {1}")]
    Http(std::net::SocketAddr, #[source] std::io::Error),
    /// `REDIS_URL` cannot be used at all (an unreachable server is not an error: lull degrades).
    #[error(transparent)]
    Store(#[from] io::store::StoreError),
    /// exactly_once cannot run here: the brokers refuse transactions to this client.
    #[error(
        "LULL_DELIVERY=exactly_once needs Kafka transactions, and {0}; set \
         LULL_DELIVERY=at_least_once to run without them"
    )]
    Transactions(String),
    /// The state topic cannot be used (exactly_once).
    #[error(transparent)]
    StateTopic(#[from] io::state_topic::StateTopicError),
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
            RunError::Http(..) | RunError::Transactions(_) => true,
            RunError::StateTopic(e) => e.is_configuration(),
            _ => false,
        }
    }
}

/// How long the start-up check of transactions may take before lull goes on without knowing.
const TRANSACTIONS_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// exactly_once at start: makes sure the state topic exists, and that the brokers run
/// transactions for this client (a refusal stops lull with one line: exit 2). A cluster that
/// cannot be asked yet is not a refusal: lull starts, and each partition starts its transactions
/// once it can. Returns whether offsets must also be committed outside the transactions: on
/// librdkafka's mock cluster (`lull demo`, `lull dev-broker`), which answers transactional offset
/// commits without keeping them.
async fn check_transactions(config: &Config, cluster: Option<String>) -> Result<bool, RunError> {
    let probe = io::transactional::TxnProducer::probe(config)
        .map_err(|e| RunError::Transactions(e.to_string()))?;
    let probe = Arc::new(probe);
    let Some(cluster) = cluster else {
        // Kafka cannot be reached (said once by the connection log): the partitions start their
        // transactions, and read the state topic, once it can.
        return Ok(false);
    };
    let mock = io::kafka::is_mock_cluster(&cluster);
    match io::state_topic::ensure(config).await {
        Ok(io::state_topic::Ensured::Exists) => {}
        Ok(io::state_topic::Ensured::Created {
            partitions,
            replication,
        }) => tracing::info!(
            topic = %config.state_topic(),
            partitions,
            replication,
            "state topic created"
        ),
        Err(e) if e.is_configuration() => return Err(e.into()),
        Err(e) => tracing::warn!(error = %e, "cannot check the state topic yet"),
    }
    let outcome = tokio::task::spawn_blocking(move || probe.init(TRANSACTIONS_CHECK_TIMEOUT))
        .await
        .map_err(|e| RunError::Transactions(format!("the check failed: {e}")))?;
    match outcome {
        Ok(()) => {}
        Err(
            io::transactional::TxnError::Refused(why) | io::transactional::TxnError::Fatal(why),
        ) => return Err(RunError::Transactions(why)),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot start a transaction yet; partitions start theirs once the brokers can (a \
             cluster with fewer brokers than transaction.state.log.replication.factor, 3 by \
             default, never can)"
        ),
    }
    if mock {
        tracing::info!(
            "librdkafka's mock cluster keeps no offsets committed inside transactions: lull also \
             commits them after each transaction"
        );
    }
    Ok(mock)
}

/// The session timeout lull's consumer uses on librdkafka's mock cluster unless
/// `LULL_KAFKA_SESSION_TIMEOUT_MS` says otherwise.
const MOCK_SESSION_TIMEOUT_MS: u64 = 6_000;

/// Asks the brokers who they are (`None`: they cannot be reached within 5 s; the connection log
/// says so) and fits the configuration to librdkafka's mock cluster (`lull dev-broker`): when a
/// group's last member leaves, the mock takes no new member until that member's session
/// timeout has run out (librdkafka's default: 45 s), so a restarted lull would wait that long,
/// silent, outside the group. On the mock, lull's session timeout is 6 s (and the drain timeout
/// at most half of it) unless the operator set one.
async fn fit_to_the_brokers(mut config: Config) -> (Config, Option<String>) {
    let probe = config.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        io::kafka::cluster_id(&probe, std::time::Duration::from_secs(5))
    })
    .await
    .unwrap_or_default();
    let mock = cluster.as_deref().is_some_and(io::kafka::is_mock_cluster);
    if mock && !config.kafka.contains_key("session.timeout.ms") {
        config.kafka.insert(
            "session.timeout.ms".to_string(),
            config::KafkaProperty::Plain(MOCK_SESSION_TIMEOUT_MS.to_string()),
        );
        let drain = config.drain_timeout.min(std::time::Duration::from_millis(
            MOCK_SESSION_TIMEOUT_MS / 2,
        ));
        config.drain_timeout = drain;
        tracing::info!(
            session_timeout_ms = MOCK_SESSION_TIMEOUT_MS,
            drain_timeout_ms = drain.as_millis() as u64,
            "librdkafka's mock cluster: session timeout 6 s, so a restarted lull joins within \
             seconds (the mock waits out the session of a group's last member even after it \
             left); LULL_KAFKA_SESSION_TIMEOUT_MS overrides it"
        );
    }
    (config, cluster)
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
    let (config, cluster) = fit_to_the_brokers(config).await;
    let config = Arc::new(config);
    let supervisor = ops::supervisor::Supervisor::new(health.clone(), shutdown.clone());
    let sink = io::producer::Sink::new(&config)?;
    let plain_commits = if config.exactly_once() {
        check_transactions(&config, cluster).await?
    } else {
        true
    };
    // The endpoints outlive the drain (readiness says `shutting_down`) and stop with the run,
    // whatever way it returns.
    let http_stop = CancellationToken::new();
    let _http_stops_with_the_run = http_stop.clone().drop_guard();
    let addr = ops::http::serve(
        config.http_addr,
        health.clone(),
        config.instance_id.clone(),
        &supervisor,
        http_stop,
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
            let store = io::store::Store::connect(&config, &supervisor).await?;
            if config.debug_redis_monitor {
                io::store::monitor::spawn_trace(
                    &supervisor,
                    url.expose().to_string(),
                    store.keys().namespace().to_string(),
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
        supervisor.clone(),
        plain_commits,
    )
    .await;
    let flush_sink = sink.clone();
    let timeout = config.drain_timeout;
    let _ = tokio::task::spawn_blocking(move || flush_sink.flush(timeout)).await;
    if let Some(failure) = supervisor.take() {
        ops::fault::linger_after_failure().await;
        return Err(failure.into());
    }
    result.map_err(RunError::from)
}
