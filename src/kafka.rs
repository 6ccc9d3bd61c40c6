//! librdkafka client settings built from [`Config`]: lull's safe defaults first, then every
//! `LULL_KAFKA_*` pass-through property on top, so an operator can override anything (SASL/SSL,
//! timeouts, `group.protocol`) without a new release.

use rdkafka::ClientConfig;

use crate::config::Config;

/// How long a fetch may wait at the broker for data; see [`consumer_config`].
pub const FETCH_WAIT_MAX_MS: u32 = 100;

/// librdkafka's own prefetch per partition, outside lull's memory budget (its default is 64 MiB).
pub const QUEUED_MAX_KBYTES: u32 = 8_192;

/// Settings shared by every client: brokers, client id and the pass-through properties.
fn base(config: &Config, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("lull-{role}-{}", config.instance_id));
    c
}

fn with_pass_through(mut c: ClientConfig, config: &Config) -> ClientConfig {
    for (property, value) in &config.kafka {
        c.set(property, value.value());
    }
    c
}

/// The consumer: manual commits of explicit offsets, partition EOF events (lull's "caught up"
/// signal), and the earliest offset for a group that has committed nothing.
///
/// `fetch.wait.max.ms` is lowered from librdkafka's 500 ms to [`FETCH_WAIT_MAX_MS`]: a broker
/// that does not answer a waiting fetch as soon as data arrives (librdkafka's mock cluster, some
/// Kafka-compatible brokers) would otherwise hold fragments back for up to half a second, longer
/// than the default grace, and make them late.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = base(config, "consumer");
    c.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES.to_string());
    with_pass_through(c, config)
}

/// The producer: idempotent, acks from all in-sync replicas, small linger for throughput, and a
/// bounded delivery timeout after which lull itself retries with backoff.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = base(config, "producer");
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    with_pass_through(c, config)
}

/// The admin client used by `lull topics`.
pub fn admin_config(config: &Config) -> ClientConfig {
    with_pass_through(base(config, "admin"), config)
}
