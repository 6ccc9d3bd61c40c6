//! `lull check`: is this deployment ready to run? Checks what `lull run` would need — the
//! configuration, the way to Kafka step by step (DNS, TCP, TLS, SASL), the topics and their
//! partitions, reading the input and the consumer group's offsets, Redis — without joining the
//! consumer group, so it never takes partitions from running instances. One line per check, ✔ or
//! ✘ (`ok` / `FAIL` when piped). Exit 0 when every check passed, 1 when one failed, 2 for a bad
//! configuration (reported before any check, like every command).

use std::io::IsTerminal;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};

use lull::config::{Config, Delivery, KafkaProperty};
use lull::io::kafka::{probe_config, reader_config};

/// How long one network step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// `lull check`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Do not list the effective configuration.
    #[arg(long)]
    pub quiet: bool,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// The lines printed and whether any check failed.
struct Report {
    tty: bool,
    failed: usize,
}

impl Report {
    fn section(&self, name: &str) {
        println!("{name}");
    }

    fn ok(&mut self, what: impl AsRef<str>) {
        let mark = if self.tty { "✔" } else { "ok  " };
        println!("  {mark} {}", what.as_ref());
    }

    fn fail(&mut self, what: impl AsRef<str>) {
        self.failed += 1;
        let mark = if self.tty { "✘" } else { "FAIL" };
        println!("  {mark} {}", what.as_ref());
    }

    fn note(&self, what: impl AsRef<str>) {
        println!("      {}", what.as_ref());
    }
}

/// A client context that keeps librdkafka's error reasons (to tell a TLS failure from a SASL one)
/// and prints none of them.
#[derive(Clone, Default)]
struct Reasons(Arc<Mutex<Vec<String>>>);

impl Reasons {
    fn all(&self) -> String {
        self.0.lock().map(|r| r.join("; ")).unwrap_or_default()
    }
}

impl ClientContext for Reasons {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, message: &str) {
        if let Ok(mut r) = self.0.lock() {
            if r.len() < 20 && !r.iter().any(|m| m == message) {
                r.push(message.to_string());
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let line = format!("{error}: {reason}");
        if let Ok(mut r) = self.0.lock() {
            if r.len() < 20 && !r.contains(&line) {
                r.push(line);
            }
        }
    }
}

impl ConsumerContext for Reasons {}

/// `lull check`.
pub async fn main(config: Config, args: CheckArgs) -> ExitCode {
    let result = tokio::task::spawn_blocking(move || check(&config, &args)).await;
    match result {
        Ok(0) => {
            println!("every check passed");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("{n} check{} failed", if n == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("check failed to run: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every check; returns how many failed.
fn check(config: &Config, args: &CheckArgs) -> usize {
    let mut r = Report {
        tty: std::io::stdout().is_terminal(),
        failed: 0,
    };
    r.section("configuration");
    r.ok("every setting is valid");
    if !args.quiet {
        for (name, value) in config.summary() {
            r.note(format!("{name} = {value}"));
        }
    }
    for key in &config.kafka_left_out {
        r.note(format!("left out (Java-only): {key}"));
    }
    r.section(&format!("kafka ({})", config.brokers));
    if let Some(metadata) = kafka(config, &mut r) {
        if topics(config, &metadata, &mut r) {
            group(config, &mut r);
        }
    }
    if let Some(url) = &config.redis_url {
        r.section("redis");
        redis(url.expose(), &mut r);
    }
    r.failed
}

/// DNS, TCP, then the Kafka handshake (TLS, SASL) and metadata: the metadata when it all worked.
fn kafka(config: &Config, r: &mut Report) -> Option<Metadata> {
    let mut reached = false;
    for broker in config.brokers.split(',').map(str::trim) {
        let addrs: Vec<_> = match broker.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                r.fail(format!("DNS: {broker} does not resolve ({e})"));
                continue;
            }
        };
        let Some(addr) = addrs.first() else {
            r.fail(format!("DNS: {broker} resolves to no address"));
            continue;
        };
        match TcpStream::connect_timeout(addr, STEP_TIMEOUT) {
            Ok(_) => {
                r.ok(format!(
                    "DNS and TCP: {broker} ({addr}) accepts connections"
                ));
                reached = true;
            }
            Err(e) => r.fail(format!("TCP: {broker} ({addr}): {e}")),
        }
    }
    if !reached {
        return None;
    }
    let property = |name: &str| match config.kafka.get(name) {
        Some(KafkaProperty::Plain(v)) => Some(v.to_ascii_uppercase()),
        _ => None,
    };
    let protocol = property("security.protocol").unwrap_or_else(|| "PLAINTEXT".into());
    let reasons = Reasons::default();
    let client: BaseConsumer<Reasons> = match probe_config(config)
        .set("log_level", "7")
        .create_with_context(reasons.clone())
    {
        Ok(c) => c,
        Err(e) => {
            r.fail(format!("Kafka client: {e}"));
            return None;
        }
    };
    match client.fetch_metadata(None, STEP_TIMEOUT) {
        Ok(metadata) => {
            if protocol.contains("SSL") {
                r.ok("TLS: handshake completed, certificate verified");
            }
            if protocol.contains("SASL") {
                let who = match config.kafka.get("sasl.username") {
                    Some(KafkaProperty::Plain(u)) => format!(" as {u}"),
                    _ => String::new(),
                };
                r.ok(format!("SASL: authenticated{who}"));
            }
            r.ok(format!(
                "Kafka: {} broker(s) answered over {protocol}",
                metadata.brokers().len()
            ));
            Some(metadata)
        }
        Err(e) => {
            // librdkafka's reasons (a TLS alert, a SASL refusal) come as events: serve them.
            for _ in 0..10 {
                let _ = client.poll(Duration::from_millis(100));
            }
            let why = reasons.all();
            let lower = why.to_ascii_lowercase();
            let step = if lower.contains("sasl") || lower.contains("authentication") {
                "SASL: the broker refused the credentials"
            } else if lower.contains("ssl") || lower.contains("certificate") {
                "TLS: the handshake failed"
            } else if !protocol.contains("SSL") && !protocol.contains("SASL") {
                // TCP got through, the Kafka protocol did not: most often a secured listener.
                "Kafka: the broker does not answer plain Kafka (a TLS or SASL listener? set LULL_KAFKA_SECURITY_PROTOCOL)"
            } else {
                "Kafka: no answer"
            };
            r.fail(format!("{step} ({e})"));
            if !why.is_empty() {
                r.note(first_chars(&why, 300));
            }
            None
        }
    }
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The topics lull reads and writes: present, described, partitioned as lull needs. Whether the
/// input is there (to read it next).
fn topics(config: &Config, metadata: &Metadata, r: &mut Report) -> bool {
    let partitions_of = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .map(|t| (t.partitions().len(), t.error()))
    };
    let mut wanted = vec![
        ("input", config.input_topic.clone()),
        ("output", config.output_topic.clone()),
        ("dead-letter", config.dlq_topic.clone()),
    ];
    if let Some(events) = &config.events_topic {
        wanted.push(("events", events.clone()));
    }
    if config.delivery == Delivery::ExactlyOnce {
        wanted.push(("state", config.state_topic()));
    }
    let mut input_partitions = None;
    for (role, name) in &wanted {
        match partitions_of(name) {
            None => r.fail(format!(
                "{role} topic {name}: missing (`lull topics` creates lull's topics)"
            )),
            Some((_, Some(e))) => r.fail(format!(
                "{role} topic {name}: {} (DESCRIBE ACL on the topic?)",
                rdkafka::error::RDKafkaErrorCode::from(e)
            )),
            Some((0, None)) => r.fail(format!("{role} topic {name}: no partitions")),
            Some((n, None)) => {
                if *role == "input" {
                    input_partitions = Some(n);
                }
                if *role == "state" && input_partitions.is_some_and(|i| i != n) {
                    r.fail(format!(
                        "state topic {name}: {n} partitions, the input has {}: it needs as many",
                        input_partitions.unwrap_or(0)
                    ));
                } else {
                    r.ok(format!("{role} topic {name}: {n} partitions"));
                }
            }
        }
    }
    input_partitions.is_some()
}

/// Reading the input (a fetch outside the group) and the group's committed offsets (which need
/// no membership): the READ and DESCRIBE ACLs lull needs on them.
fn group(config: &Config, r: &mut Report) {
    let reasons = Reasons::default();
    let consumer: BaseConsumer<Reasons> = match reader_config(config, &config.group_id)
        .set("enable.auto.commit", "false")
        .set("log_level", "7")
        .create_with_context(reasons)
    {
        Ok(c) => c,
        Err(e) => {
            r.fail(format!("Kafka consumer: {e}"));
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&config.input_topic, 0, Offset::End)
        .is_err()
    {
        return;
    }
    match consumer.assign(&tpl) {
        Err(e) => r.fail(format!("reading {}: {e}", config.input_topic)),
        Ok(()) => match consumer.poll(Duration::from_secs(3)) {
            Some(Err(e)) => r.fail(format!(
                "reading {}: {e} (READ ACL on the topic?)",
                config.input_topic
            )),
            _ => r.ok(format!("reading {}: allowed", config.input_topic)),
        },
    }
    let _ = consumer.unassign();
    match consumer.committed_offsets(tpl, STEP_TIMEOUT) {
        Ok(_) => r.ok(format!(
            "consumer group {}: its committed offsets are readable (lull run joins it; check does not)",
            config.group_id
        )),
        Err(e) => r.fail(format!(
            "consumer group {}: {e} (DESCRIBE and READ ACLs on the group?)",
            config.group_id
        )),
    }
    if config.delivery == Delivery::ExactlyOnce {
        r.note("write ACLs (output, dead-letter, state topics) and the transactional ids are not checked: that would write");
    }
}

/// Each seed of `REDIS_URL`: reachable, logged in, and which kind of server.
fn redis(urls: &str, r: &mut Report) {
    for url in lull::io::store::client::seed_urls(urls) {
        let shown = lull::config::mask_url_password(url);
        let answer = redis::Client::open(url).and_then(|c| {
            let mut conn = c.get_connection_with_timeout(STEP_TIMEOUT)?;
            let _: String = redis::cmd("PING").query(&mut conn)?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query(&mut conn)
                .unwrap_or_default();
            Ok(info.contains("cluster_enabled:1"))
        });
        match answer {
            Ok(cluster) => r.ok(format!(
                "{shown}: logged in, PING answered ({})",
                if cluster {
                    "a Redis Cluster node"
                } else {
                    "a single server"
                }
            )),
            Err(e) => {
                let auth = matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
                    || ["WRONGPASS", "NOAUTH"].iter().any(|c| e.code() == Some(c));
                if auth {
                    r.fail(format!(
                        "{shown}: authentication failed: check the user and password in REDIS_URL ({e})"
                    ));
                } else {
                    r.fail(format!("{shown}: unreachable ({e})"));
                }
            }
        }
    }
}
