//! Creating lull's topics (input, output, dead-letter, and in exactly_once the compacted state
//! topic) with the admin API, so nothing relies on broker auto-creation. A topic that already
//! exists is fine.

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use lull::config::Config;

/// The outcome for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Newly created, with these partitions and this replication factor.
    Created {
        /// Partitions.
        partitions: i32,
        /// Replicas per partition.
        replication: i32,
    },
    /// It was there already (its partition count was left as it is).
    Exists,
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The admin client could not be created.
    #[error("cannot create the Kafka admin client: {0}")]
    Client(#[source] KafkaError),
    /// The request failed as a whole (broker unreachable, timeout).
    #[error(
        "cannot create topics: {0} (is KAFKA_BROKERS reachable? note that `lull dev-broker` \
             creates lull's topics itself: the mock cluster does not support creating topics)"
    )]
    Request(#[source] KafkaError),
    /// The broker refused one topic.
    #[error("cannot create topic {topic}: {code}")]
    Topic {
        /// The topic refused.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// The replication factor used when none is given: three copies where the cluster has three
/// brokers or more (survives a broker loss with `min.insync.replicas=2`), else one per broker.
pub fn default_replication(brokers: usize) -> i32 {
    i32::try_from(brokers.clamp(1, 3)).unwrap_or(3)
}

/// Creates the configured input, output and dead-letter topics with `partitions` partitions each
/// and `replication` copies (default: [`default_replication`] of the cluster's brokers).
pub async fn create(
    config: &Config,
    partitions: i32,
    replication: Option<i32>,
) -> Result<Vec<(String, TopicOutcome)>, TopicsError> {
    let admin: AdminClient<DefaultClientContext> = lull::io::kafka::admin_config(config)
        .create()
        .map_err(TopicsError::Client)?;
    // The lifecycle events topic too, when LULL_EVENTS_TOPIC is set, and the state topic in
    // exactly_once (compacted, with the same partition count as the input).
    let state = config.exactly_once().then(|| config.state_topic());
    let names: Vec<&String> = [&config.input_topic, &config.output_topic, &config.dlq_topic]
        .into_iter()
        .chain(config.events_topic.as_ref())
        .chain(state.as_ref())
        .collect();
    // Topics that exist already are left alone, and need no CreateTopics request at all (which
    // an ACL may forbid, and librdkafka's mock cluster behind `lull dev-broker` does not serve).
    let (existing, brokers, input_partitions): (Vec<String>, usize, Option<i32>) = {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(15))
            .map_err(TopicsError::Request)?;
        let live = || {
            metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        };
        let existing = live().map(|t| t.name().to_string()).collect();
        let input = live()
            .find(|t| t.name() == config.input_topic)
            .and_then(|t| i32::try_from(t.partitions().len()).ok());
        (existing, metadata.brokers().len(), input)
    };
    let replication = replication.unwrap_or_else(|| default_replication(brokers));
    let mut out: Vec<(String, TopicOutcome)> = names
        .iter()
        .filter(|n| existing.contains(n))
        .map(|n| (n.to_string(), TopicOutcome::Exists))
        .collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .filter(|n| !existing.contains(n))
        .map(|n| {
            if Some(*n) == state.as_ref() {
                // As many partitions as the input has (an existing input keeps its count).
                let count = input_partitions.unwrap_or(partitions);
                let topic = NewTopic::new(n, count, TopicReplication::Fixed(replication));
                lull::io::STATE_TOPIC_CONFIG
                    .iter()
                    .fold(topic, |t, (k, v)| t.set(k, v))
            } else {
                NewTopic::new(n, partitions, TopicReplication::Fixed(replication))
            }
        })
        .collect();
    if new.is_empty() {
        return Ok(out);
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(15)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(TopicsError::Request)?;
    for r in results {
        match r {
            Ok(name) => {
                let partitions = match (&state, input_partitions) {
                    (Some(s), Some(n)) if *s == name => n,
                    _ => partitions,
                };
                out.push((
                    name,
                    TopicOutcome::Created {
                        partitions,
                        replication,
                    },
                ))
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((name, TopicOutcome::Exists))
            }
            Err((topic, code)) => return Err(TopicsError::Topic { topic, code }),
        }
    }
    Ok(out)
}

/// `lull topics`: create the input, output, dead-letter (events) and state topics.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicsArgs {
    /// Partitions per topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Replication factor [default: min(3, brokers in the cluster)].
    #[arg(long)]
    pub replication: Option<i32>,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// `lull topics`.
pub async fn main(config: Config, args: TopicsArgs) -> ExitCode {
    let TopicsArgs {
        partitions,
        replication,
        ..
    } = args;
    super::init_tracing(config.log_format, "warn");
    if partitions < 1 || replication.is_some_and(|r| r < 1) {
        eprintln!("--partitions and --replication must be at least 1");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    match create(&config, partitions, replication).await {
        Ok(outcomes) => {
            for (name, outcome) in outcomes {
                match outcome {
                    TopicOutcome::Created {
                        partitions,
                        replication,
                    } => println!(
                        "created {name} ({partitions} partitions, replication {replication})"
                    ),
                    TopicOutcome::Exists => println!("exists  {name}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_defaults_to_three_copies_or_one_per_broker() {
        assert_eq!(default_replication(0), 1);
        assert_eq!(default_replication(1), 1);
        assert_eq!(default_replication(2), 2);
        assert_eq!(default_replication(3), 3);
        assert_eq!(default_replication(9), 3);
    }
}
