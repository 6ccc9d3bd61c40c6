//! The source: the Kafka consumer, its group membership, and the poll of its main queue.
//!
//! Each assigned partition's messages go to that partition's own queue, read by its worker
//! ([`crate::flow::rebalance`] splits them off); the main queue carries what is left — rebalance
//! callbacks and errors — and polling it is what keeps this member in the group. The loop also
//! proves liveness (it turns at least every [`TICK`]), checks that the brokers answer (it alone
//! records whether they do), and reports readiness. The owner of the partition set runs beside it
//! under the same supervisor.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::io::producer::Sink;
use crate::io::store::Store;
use crate::ops::budget::Budget;
use crate::ops::metrics::metrics;
use crate::ops::supervisor::Supervisor;

use super::partitions::{Owner, Shared};
use super::rebalance::{LullConsumer, LullContext};
use super::FlowError;

/// How often the loop proves it turns (liveness) and publishes readiness.
const TICK: Duration = Duration::from_millis(500);

/// How long lull waits to join its group before it says why it may wait (once).
const JOIN_PATIENCE: Duration = Duration::from_secs(15);

/// How often the brokers' reachability is checked (for readiness).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the consumer until `supervisor`'s run stops — a shutdown (then drains, commits and
/// returns), or a supervised task's failure (the supervisor keeps it). `plain_commits`: see
/// [`Shared::plain_commits`].
pub async fn run(
    config: Arc<Config>,
    sink: Sink,
    store: Option<Arc<Store>>,
    budget: Arc<Budget>,
    supervisor: Supervisor,
    plain_commits: bool,
) -> Result<(), FlowError> {
    let (shutdown, health) = (supervisor.stopping(), supervisor.health());
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let brokers_down = Arc::new(Notify::new());
    // A revocation may wait for the workers' drain and the final commit; a little more than that
    // for the answer.
    let revoke_wait = config.drain_timeout + Duration::from_secs(5);
    let context = LullContext::new(
        &config.input_topic,
        events_tx,
        brokers_down.clone(),
        revoke_wait,
    );
    let consumer: Arc<LullConsumer> = Arc::new(
        crate::io::kafka::consumer_config(&config)
            .create_with_context(context)
            .map_err(FlowError::Start)?,
    );
    consumer.context().attach(&consumer);
    consumer
        .subscribe(&[config.input_topic.as_str()])
        .map_err(FlowError::Start)?;
    info!(topic = %config.input_topic, group = %config.group_id, "consuming");

    // If this future is dropped before it returns (its task aborted), the owner and the workers
    // stop with it: nothing may keep the consumer, and its partitions, alive.
    let abandoned = CancellationToken::new();
    let _abandon_on_drop = abandoned.clone().drop_guard();
    let owner = Owner::new(Shared {
        config: config.clone(),
        topic: Arc::from(config.input_topic.as_str()),
        consumer: consumer.clone(),
        sink,
        store,
        budget,
        health: health.clone(),
        shutdown: shutdown.clone(),
        abandoned,
        supervisor: supervisor.clone(),
        plain_commits,
    });
    let owner_task = supervisor.spawn("partition owner", owner.run(events));

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe: Option<JoinHandle<Option<bool>>> = None;
    let subscribed = std::time::Instant::now();
    let mut waited_said = false;
    health.polled();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                // The tick is a branch of this very loop: it proves the loop turns (liveness).
                health.polled();
                let ready = crate::ops::http::readiness(&health, &config.instance_id).ready;
                metrics().ready.set(i64::from(ready));
                if !waited_said && !health.in_group() && subscribed.elapsed() > JOIN_PATIENCE {
                    waited_said = true;
                    info!(
                        group = %config.group_id,
                        waited_s = subscribed.elapsed().as_secs(),
                        "not in the consumer group yet (not ready: not_in_group): the group's \
                         coordinator waits for every member it still counts, and a member that \
                         stopped without leaving (killed, or cut off) counts until its session \
                         times out (session.timeout.ms: 45 s unless LULL_KAFKA_SESSION_TIMEOUT_MS \
                         says otherwise)"
                    );
                }
            }
            _ = brokers_down.notified() => health.set_kafka_reachable(false),
            outcome = finished(&mut probe), if probe.is_some() => {
                probe = None;
                // `None`: the probe panicked, and the supervisor is stopping the process.
                if let Ok(Some(ok)) = outcome {
                    health.set_kafka_reachable(ok);
                }
            }
            _ = probe_tick.tick(), if probe.is_none() => {
                probe = Some(spawn_probe(&supervisor, &consumer, &config.input_topic));
            }
            received = consumer.recv() => match received {
                // Every assigned partition has its own queue: a message here was not split off.
                Ok(m) => error!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "message on the consumer's main queue; its partition has no worker"
                ),
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) => crate::ops::kafka_log::kafka_log().error("consumer error", &e),
            },
        }
    }

    health.set_shutting_down();
    if let Some(t) = probe.take() {
        t.abort();
    }
    // The owner drains the workers and commits; then the consumer may close (leaving the group,
    // so its partitions move at once). Closing blocks briefly: off the async workers.
    let _ = owner_task.await;
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    Ok(())
}

/// The outcome of `task` once it finished; never, when there is none.
async fn finished<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// Checks on a blocking thread, supervised, whether the brokers answer a metadata request.
fn spawn_probe(
    supervisor: &Supervisor,
    consumer: &Arc<LullConsumer>,
    topic: &str,
) -> JoinHandle<Option<bool>> {
    let consumer = consumer.clone();
    let topic = topic.to_string();
    supervisor.spawn_blocking("kafka probe", move || {
        crate::ops::fault::panic_if_armed("probe");
        let ok = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(3))
            .is_ok();
        let log = crate::ops::kafka_log::kafka_log();
        if ok {
            log.reachable();
        } else {
            log.unreachable("metadata request failed");
        }
        ok
    })
}
