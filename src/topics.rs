//! Creating lull's topics (input, output, dead-letter) with the admin API, so nothing relies on
//! broker auto-creation. A topic that already exists is fine.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Config;

/// The outcome for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Newly created.
    Created,
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

/// Creates the configured input, output and dead-letter topics with `partitions` partitions each.
pub async fn create(
    config: &Config,
    partitions: i32,
    replication: i32,
) -> Result<Vec<(String, TopicOutcome)>, TopicsError> {
    let admin: AdminClient<DefaultClientContext> = crate::kafka::admin_config(config)
        .create()
        .map_err(TopicsError::Client)?;
    let names = [&config.input_topic, &config.output_topic, &config.dlq_topic];
    // Topics that exist already are left alone, and need no CreateTopics request at all (which
    // an ACL may forbid, and librdkafka's mock cluster behind `lull dev-broker` does not serve).
    let existing: Vec<String> = {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(15))
            .map_err(TopicsError::Request)?;
        metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name().to_string())
            .collect()
    };
    let mut out: Vec<(String, TopicOutcome)> = names
        .iter()
        .filter(|n| existing.contains(n))
        .map(|n| (n.to_string(), TopicOutcome::Exists))
        .collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .filter(|n| !existing.contains(n))
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
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
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((name, TopicOutcome::Exists))
            }
            Err((topic, code)) => return Err(TopicsError::Topic { topic, code }),
        }
    }
    Ok(out)
}
