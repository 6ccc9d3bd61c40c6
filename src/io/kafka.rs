//! librdkafka client settings built from [`Config`]: lull's safe defaults first, then every
//! `LULL_KAFKA_*` pass-through property on top, so an operator can override anything (SASL/SSL,
//! timeouts, `group.protocol`) without a new release.

use std::ffi::CStr;
use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::Config;

/// How long a fetch may wait at the broker for data; see [`consumer_config`].
pub const FETCH_WAIT_MAX_MS: u32 = 100;

/// librdkafka's own prefetch per partition, outside lull's memory budget (its default is 64 MiB).
pub const QUEUED_MAX_KBYTES: u32 = 8_192;

/// Bytes one fetch may bring per partition (librdkafka's default is 1 MiB). Fetches already on
/// their way when the memory budget pauses a partition still land, so this bounds how far the
/// budget can be overshot: one fetch per partition. Chat fragments are small; 64 KiB is hundreds
/// of them per round trip.
pub const MAX_PARTITION_FETCH_BYTES: u32 = 65_536;

/// Settings shared by every client: brokers, client id and the pass-through properties.
fn base(config: &Config, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("lull-{role}-{}", config.instance_id));
    c
}

/// librdkafka's producer-only properties (CONFIGURATION.md, "C/P" column `P`, librdkafka 2.12).
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.level",
    "compression.type",
    "delivery.report.only.error",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "partitioner",
    "produce.offset.report",
    "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queuing.strategy",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
    "transactional.id",
];

/// librdkafka's consumer-only properties (CONFIGURATION.md, "C/P" column `C`, librdkafka 2.12).
const CONSUMER_ONLY: &[&str] = &[
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "session.timeout.ms",
];

/// The kind of librdkafka client a configuration is for: each `LULL_KAFKA_*` property goes only
/// to the clients it applies to, so librdkafka has nothing to warn about at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads the input (and, for the tools, the output).
    Consumer,
    /// Writes batches, dead letters and events.
    Producer,
    /// Creates and describes topics (a producer-type handle in librdkafka).
    Admin,
    /// A tool's reader (`verify`, `tail`, the demo's and bench's readers): a consumer in a group
    /// of its own, so the group's membership settings (`group.*`, `session.timeout.ms`, …) meant
    /// for lull's own consumer are not its.
    Reader,
}

/// Consumer properties that belong to lull's membership of its consumer group, never to a
/// tool's reader in a group of its own (a static `group.instance.id` shared with the running
/// lull would even fence it).
const MEMBERSHIP: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "session.timeout.ms",
];

impl Role {
    /// Whether `property` is meant for this kind of client.
    pub fn takes(self, property: &str) -> bool {
        match self {
            Role::Consumer => !PRODUCER_ONLY.contains(&property),
            Role::Producer => !CONSUMER_ONLY.contains(&property),
            Role::Admin => !PRODUCER_ONLY.contains(&property) && !CONSUMER_ONLY.contains(&property),
            Role::Reader => !PRODUCER_ONLY.contains(&property) && !MEMBERSHIP.contains(&property),
        }
    }
}

fn with_pass_through(mut c: ClientConfig, config: &Config, role: Role) -> ClientConfig {
    for (property, value) in &config.kafka {
        if role.takes(property) {
            c.set(property, value.value());
        }
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
        // librdkafka's default too, said here because exactly_once depends on it: offsets
        // committed in a transaction are fetched only once that transaction has ended, and
        // nothing of an aborted transaction is ever read.
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES.to_string())
        .set(
            "max.partition.fetch.bytes",
            MAX_PARTITION_FETCH_BYTES.to_string(),
        );
    let mut c = with_pass_through(c, config, Role::Consumer);
    if config.exactly_once() {
        c.set("isolation.level", "read_committed");
    }
    c
}

/// The producer: idempotent, acks from all in-sync replicas, small linger for throughput, and a
/// bounded delivery timeout after which lull itself retries with backoff.
///
/// Compression is gzip: every common Kafka client reads it without plugins (KafkaJS, the most
/// used Node.js client, reads neither lz4 nor zstd and fails on them). Measured on a real
/// single-node Kafka (BENCHMARKS.md): gzip makes the output 15 x smaller than none at the same
/// throughput; lz4 is faster (about 1.5 x) at 1.7 x gzip's size, for consumers that read it
/// (`LULL_KAFKA_COMPRESSION_TYPE=lz4`).
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = base(config, "producer");
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "gzip")
        .set("message.timeout.ms", "30000");
    with_pass_through(c, config, Role::Producer)
}

/// How long a transaction may stay open at the broker before its coordinator aborts it
/// (librdkafka's default is a minute). A process that dies or freezes with a transaction open
/// holds back every `read_committed` reader of the partitions it wrote to until then (or until the
/// next owner of its input partition fences it, which is at once), so it is short, as in Kafka
/// Streams; it is far above any commit lull makes (`LULL_TRANSACTION_MS`).
pub const TRANSACTION_TIMEOUT_MS: u32 = 10_000;

/// The transactional id of the producer that owns `partition` of `topic` for consumer group
/// `group`: `{group}/{topic}/{partition}`. One per input partition, the same for whichever
/// process owns the partition, so the next owner's producer fences the previous one (a crashed
/// or paused process) the moment it starts. Topic names cannot hold `/`, so no two (group, topic,
/// partition) share an id. The ACL prefix for a group is `{group}/`.
pub fn transactional_id(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}/{topic}/{partition}")
}

/// The transactional producer of one input partition (exactly_once): [`producer_config`] plus its
/// transactional id, deliveries bounded by the transaction timeout (librdkafka requires
/// `message.timeout.ms` ≤ `transaction.timeout.ms`), and lingering up to `LULL_TRANSACTION_MS`.
/// `LULL_KAFKA_*` still win.
pub fn transactional_producer_config(config: &Config, partition: i32) -> ClientConfig {
    let mut c = base(config, &format!("producer-{partition}"));
    // Records become visible at commit, and a commit sends everything queued at once (librdkafka
    // flushes without lingering): lingering up to the commit costs no latency and makes one large
    // compressed batch per output partition per commit instead of many small ones.
    let linger = config.transaction.as_millis().clamp(5, 1_000);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.to_string())
        .set("compression.type", "gzip")
        .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string())
        .set("message.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string())
        .set(
            "transactional.id",
            transactional_id(&config.group_id, &config.input_topic, partition),
        );
    let mut c = with_pass_through(c, config, Role::Producer);
    // An operator's longer transaction timeout lets deliveries wait as long.
    if let Some(t) = config.kafka.get("transaction.timeout.ms") {
        if !config.kafka.contains_key("message.timeout.ms") {
            c.set("message.timeout.ms", t.value());
        }
    }
    c
}

/// A reader of the state topic (exactly_once): no group, nothing committed, only what committed
/// transactions wrote.
pub fn state_reader_config(config: &Config) -> ClientConfig {
    let mut c = base(config, "state-reader");
    c.set("group.id", format!("{}-state-reader", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string());
    let mut c = with_pass_through(c, config, Role::Consumer);
    // Whatever the operator set for the group's consumer, this reader must see only committed
    // records.
    c.set("isolation.level", "read_committed");
    c
}

/// The admin client used by `lull topics`.
pub fn admin_config(config: &Config) -> ClientConfig {
    with_pass_through(base(config, "admin"), config, Role::Admin)
}

/// A tool's reader of lull's output (`verify`, `tail`, the demo's and bench's readers) in its own
/// `group`: what a downstream consumer sees — committed transactions only, each batch once — from
/// `auto.offset.reset` (`earliest` unless an operator's `LULL_KAFKA_AUTO_OFFSET_RESET` says
/// otherwise), committing nothing. The operator's connection and security settings apply as to
/// every client.
pub fn reader_config(config: &Config, group: &str) -> ClientConfig {
    let mut c = base(config, "reader");
    c.set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A batch is seen as soon as it is there (latencies are measured with this reader).
        .set("fetch.wait.max.ms", "20");
    let mut c = with_pass_through(c, config, Role::Reader);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    c
}

/// A tool's writer of input (`send`, `simulate`, the demo's and bench's load): lingering and lz4
/// for throughput, a deep queue, and a minute before a delivery counts as failed. The operator's
/// connection and security settings apply as to every client.
pub fn writer_config(config: &Config) -> ClientConfig {
    let mut c = base(config, "writer");
    c.set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000");
    let mut c = with_pass_through(c, config, Role::Producer);
    // A tool's writer is never one of lull's transactional producers.
    c.remove("transactional.id");
    c
}

/// A client that only asks for metadata (the tools' "is Kafka there?" before they start).
pub fn probe_config(config: &Config) -> ClientConfig {
    let mut c = base(config, "probe");
    c.set("log_level", "0");
    with_pass_through(c, config, Role::Admin)
}

/// What names this incarnation of `topic`: its Kafka topic id (base64, as Kafka's tools print
/// it), or, from a cluster that gives no topic ids (librdkafka's mock behind `lull dev-broker`,
/// brokers before Kafka 2.8), `cluster:<cluster id>`; `Ok(None)` when neither is known. Blocks
/// for up to about twice `timeout`: call it off the async workers.
///
/// A topic deleted and created again under the same name gets another topic id; a replaced dev
/// cluster, another cluster id. lull stores the identity with every fact in Redis and in the
/// state topic that names offsets, so facts about an earlier incarnation are recognised and never
/// used to skip input (see `store`, `model::state`). The answer must therefore never change for
/// one topic: a cluster that has topic ids but cannot say now (its controller restarting) is an
/// error, never the cluster-id fallback (seen in a rolling restart: a takeover took its own
/// records for another topic's and emitted their batches again).
pub fn topic_identity<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let cluster = client.fetch_cluster_id(timeout);
    let mock = cluster.as_deref().is_some_and(is_mock_cluster);
    if !mock {
        if let Some(id) = topic_id(client, topic, timeout)? {
            return Ok(Some(id));
        }
    }
    Ok(cluster.map(|id| format!("cluster:{id}")))
}

/// The brokers' cluster id, `None` when they cannot be asked within `timeout` (or give none).
/// Blocks: call it off the async workers.
pub fn cluster_id(config: &Config, timeout: Duration) -> Option<String> {
    use rdkafka::consumer::Consumer;
    let client: rdkafka::consumer::BaseConsumer<crate::ops::kafka_log::ClientLog> =
        probe_config(config)
            .create_with_context(crate::ops::kafka_log::ClientLog::CONSUMER)
            .ok()?;
    client.client().fetch_cluster_id(timeout)
}

/// Whether `cluster_id` is that of librdkafka's in-process mock cluster (`lull demo`,
/// `lull dev-broker`), which has no topic ids and no transactional offsets.
pub fn is_mock_cluster(cluster_id: &str) -> bool {
    cluster_id.starts_with("mockCluster")
}

/// The Kafka topic id of `topic`, asked of the cluster with DescribeTopics; `Ok(None)` when the
/// cluster has none to give (an all-zero id, or brokers too old to be asked); an error when it
/// cannot say now. Blocks up to about twice `timeout`. Not for librdkafka's mock cluster, whose
/// metadata names a controller that does not exist: asking it only times out.
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    use rdkafka::bindings as rd;
    use std::ffi::{c_char, CStr, CString};

    /// Frees what librdkafka allocated for one request, whatever way the function returns.
    struct Request {
        queue: *mut rd::rd_kafka_queue_t,
        options: *mut rd::rd_kafka_AdminOptions_t,
        topics: *mut rd::rd_kafka_TopicCollection_t,
        event: *mut rd::rd_kafka_event_t,
    }
    impl Drop for Request {
        fn drop(&mut self) {
            // SAFETY: each pointer is null or was returned by its constructor and not freed.
            unsafe {
                if !self.event.is_null() {
                    rd::rd_kafka_event_destroy(self.event);
                }
                if !self.topics.is_null() {
                    rd::rd_kafka_TopicCollection_destroy(self.topics);
                }
                if !self.options.is_null() {
                    rd::rd_kafka_AdminOptions_destroy(self.options);
                }
                if !self.queue.is_null() {
                    rd::rd_kafka_queue_destroy(self.queue);
                }
            }
        }
    }
    let text = |p: *const c_char| {
        // SAFETY: librdkafka returns NUL-terminated strings that live as long as the event.
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };

    let name = CString::new(topic).map_err(|_| "topic name contains NUL".to_string())?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let rk = client.native_ptr();
    // DescribeTopics goes to the controller the client's metadata names; a fresh metadata
    // answer names one that is up (a cached name may be a broker stopped since).
    client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    // SAFETY: `rk` is a live client for the duration of the borrow of `client`; every object
    // created below is owned by `req` and freed exactly once by its Drop; the topic name array
    // and the CString outlive the DescribeTopics call that copies them.
    unsafe {
        let mut req = Request {
            queue: rd::rd_kafka_queue_new(rk),
            options: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            topics: std::ptr::null_mut(),
            event: std::ptr::null_mut(),
        };
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            req.options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let mut names = [name.as_ptr()];
        req.topics = rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1);
        rd::rd_kafka_DescribeTopics(rk, req.topics, req.options, req.queue);
        req.event = rd::rd_kafka_queue_poll(req.queue, timeout_ms.saturating_add(1_000));
        if req.event.is_null() {
            return Err("DescribeTopics timed out".into());
        }
        match rd::rd_kafka_event_error(req.event) {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
            // Brokers that cannot describe topics by id have no topic ids to give.
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE
            | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION => return Ok(None),
            _ => return Err(text(rd::rd_kafka_event_error_string(req.event))),
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(req.event);
        if result.is_null() {
            return Err("DescribeTopics returned no result".into());
        }
        let mut count = 0usize;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        for i in 0..count {
            let d = *descriptions.add(i);
            if text(rd::rd_kafka_TopicDescription_name(d)) != topic {
                continue;
            }
            let error = rd::rd_kafka_TopicDescription_error(d);
            if !error.is_null()
                && rd::rd_kafka_error_code(error)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return Err(text(rd::rd_kafka_error_string(error)));
            }
            let id = rd::rd_kafka_TopicDescription_topic_id(d);
            if id.is_null()
                || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                    && rd::rd_kafka_Uuid_least_significant_bits(id) == 0)
            {
                return Ok(None);
            }
            return Ok(Some(text(rd::rd_kafka_Uuid_base64str(id))));
        }
        Err(format!("DescribeTopics did not describe {topic}"))
    }
}

/// The partition's high watermark as librdkafka last saw it in a fetch response (a local
/// lookup, no request); `None` while unknown.
pub fn cached_high_watermark<C: ClientContext>(
    client: &Client<C>,
    topic: &CStr,
    partition: i32,
) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` is borrowed, `topic` is a valid
    // NUL-terminated string, and the out-pointers point at live locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(&env).expect("valid configuration")
    }

    #[test]
    fn each_property_goes_only_to_the_clients_it_applies_to() {
        let c = config(&[
            ("LULL_KAFKA_SESSION_TIMEOUT_MS", "45000"),
            ("LULL_KAFKA_LINGER_MS", "20"),
            ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ]);
        let (consumer, producer, admin) =
            (consumer_config(&c), producer_config(&c), admin_config(&c));
        assert_eq!(consumer.get("session.timeout.ms"), Some("45000"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(admin.get("linger.ms"), None);
        assert_eq!(admin.get("session.timeout.ms"), None);
        for client in [&consumer, &producer, &admin] {
            assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        }
    }

    #[test]
    fn a_tools_clients_take_the_security_settings_but_not_lulls_group() {
        let c = config(&[
            ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("LULL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("LULL_KAFKA_GROUP_INSTANCE_ID", "lull-0"),
            ("LULL_KAFKA_SESSION_TIMEOUT_MS", "45000"),
            ("LULL_KAFKA_ISOLATION_LEVEL", "read_uncommitted"),
            ("LULL_KAFKA_TRANSACTIONAL_ID", "x"),
        ]);
        let reader = reader_config(&c, "lull-verify-1");
        let writer = writer_config(&c);
        let probe = probe_config(&c);
        for client in [&reader, &writer, &probe] {
            assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        }
        assert_eq!(reader.get("group.id"), Some("lull-verify-1"));
        assert_eq!(reader.get("group.instance.id"), None);
        assert_eq!(reader.get("session.timeout.ms"), None);
        assert_eq!(reader.get("isolation.level"), Some("read_committed"));
        assert_eq!(writer.get("transactional.id"), None);
        assert_eq!(probe.get("session.timeout.ms"), None);
    }

    /// The tables name real librdkafka properties of the right kind: librdkafka itself warns
    /// when one is set on the other kind of client, so check each against a native config.
    #[test]
    fn the_role_tables_name_real_properties() {
        for property in PRODUCER_ONLY.iter().chain(CONSUMER_ONLY).chain(MEMBERSHIP) {
            let mut c = ClientConfig::new();
            // Any value librdkafka parses is fine; a name it does not know is refused outright.
            c.set(*property, "1");
            if let Err(rdkafka::error::KafkaError::ClientConfig(_, desc, _, _)) =
                c.create_native_config()
            {
                assert!(
                    !desc.contains("No such configuration property"),
                    "{property}: {desc}"
                );
            }
        }
    }
}
