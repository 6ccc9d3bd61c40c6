//! lull against secured Kafka, for real: the suite's single Apache Kafka node also listens with
//! TLS (`SSL`, a certificate authority made by `scripts/kafka.sh` with openssl) and with
//! `SASL_SSL` + SCRAM-SHA-512 (a user created at format time). lull batches over both, reads
//! zstd-compressed input, and never writes the password to its logs.
//!
//! Regression: lull was built without TLS, SCRAM and zstd ("OpenSSL not available at build
//! time", "No provider for SASL mechanism", "libzstd not available").

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::FutureProducer;

/// Runs `lull run` with `security` settings against `bootstrap` in consumer group `group`, types
/// a zstd-compressed burst over plain text, and returns lull's log once the batch is out and lull
/// stopped on SIGTERM.
async fn batch_over(
    cluster: &Cluster,
    bootstrap: &str,
    security: &[(&str, String)],
    group: &str,
) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("run")
        .env_clear()
        .envs(cluster.process_env(group))
        .env("KAFKA_BROKERS", bootstrap)
        .envs(security.iter().map(|(k, v)| (k, v)))
        .env("LULL_QUIET_MS", "300")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("LULL_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    let mut log = Lines::follow(child.stderr.take().expect("piped"));
    log.until("the partitions assigned (or an early exit)", |seen| {
        seen.iter().any(|l| l.contains("partitions assigned"))
            || child.try_wait().ok().flatten().is_some()
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "lull exited: {:#?}",
        log.seen
    );
    let end = Instant::now() + DEADLINE;

    // The input arrives zstd-compressed; lull must decompress it.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("compression.type", "zstd")
        .set("linger.ms", "20")
        .create()
        .expect("zstd producer");
    let user = format!("z-{group}");
    let sends = (0..3).map(|seq| {
        let producer = producer.clone();
        let (user, topic) = (user.clone(), cluster.input.clone());
        async move {
            send(
                &producer,
                &topic,
                Some(&user),
                &fragment(&user, seq),
                None,
                None,
            )
            .await
        }
    });
    futures_util::future::join_all(sends).await;
    let mut out = cluster.collector(&cluster.output);
    let batch = out.until("the batch", |s| event_counts(s).len() == 3).await[0].clone();
    assert_eq!(batch.json()["count"], 3);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "lull did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = log.rest().to_vec();
    assert_eq!(status.code(), Some(0), "{log:#?}");
    log
}

/// lull's client settings for the node's SASL_SSL listener, as the SCRAM user it was formatted with.
fn scram(kafka: &KafkaEnv) -> Vec<(&'static str, String)> {
    vec![
        ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("LULL_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512".into()),
        (
            "LULL_KAFKA_SASL_USERNAME",
            kafka.get("KAFKA_SCRAM_USER").into(),
        ),
        (
            "LULL_KAFKA_SASL_PASSWORD",
            kafka.get("KAFKA_SCRAM_PASSWORD").into(),
        ),
        ("LULL_KAFKA_SSL_CA_LOCATION", kafka.get("KAFKA_CA").into()),
    ]
}

/// `kafka-acls.sh --add --allow-principal User:<user> …` on the suite's node, as the README's
/// "Production → ACLs" writes it.
fn allow(cluster: &Cluster, user: &str, rest: &[&str]) {
    let principal = format!("User:{user}");
    let mut args = vec![
        "--bootstrap-server",
        cluster.bootstrap(),
        "--add",
        "--allow-principal",
        &principal,
    ];
    args.extend_from_slice(rest);
    kafka_tool("org.apache.kafka.tools.AclCommand", &args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lull_batches_over_tls() {
    let cluster = Cluster::start(1).await;
    let kafka = cluster.kafka().clone();
    batch_over(
        &cluster,
        kafka.get("KAFKA_SSL_BOOTSTRAP"),
        &[
            ("LULL_KAFKA_SECURITY_PROTOCOL", "SSL".into()),
            ("LULL_KAFKA_SSL_CA_LOCATION", kafka.get("KAFKA_CA").into()),
        ],
        &unique("secure"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lull_batches_over_sasl_ssl_with_scram_and_never_logs_the_password() {
    let cluster = Cluster::start(1).await;
    let kafka = cluster.kafka().clone();
    let password = kafka.get("KAFKA_SCRAM_PASSWORD").to_string();
    let log = batch_over(
        &cluster,
        kafka.get("KAFKA_SASL_SSL_BOOTSTRAP"),
        &scram(&kafka),
        &unique("secure"),
    )
    .await;
    assert!(
        log.iter()
            .any(|l| l.contains("kafka:sasl.password") && l.contains("***")),
        "the setting is listed, masked"
    );
    let leaks: Vec<&String> = log.iter().filter(|l| l.contains(&password)).collect();
    assert!(leaks.is_empty(), "password in the log: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_is_never_ready_and_never_shown() {
    let cluster = Cluster::start(1).await;
    let kafka = cluster.kafka().clone();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("run")
        .env_clear()
        .envs(cluster.process_env(&unique("wrong-pw")))
        .env("KAFKA_BROKERS", kafka.get("KAFKA_SASL_SSL_BOOTSTRAP"))
        .env("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        .env("LULL_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512")
        .env("LULL_KAFKA_SASL_USERNAME", "lull")
        .env("LULL_KAFKA_SASL_PASSWORD", "not-the-Password-42")
        .env("LULL_KAFKA_SSL_CA_LOCATION", kafka.get("KAFKA_CA"))
        .env("LULL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LULL_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    // First the broker refuses the credentials...
    let mut log = Lines::follow(child.stderr.take().expect("piped"));
    log.until_text("Authentication failed");
    // ...and then readiness says so.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut body = String::new();
    wait_for("a readiness answer", || {
        body = http_get_blocking(addr, "/health/ready");
        !body.is_empty()
    })
    .await;
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
    assert!(body.contains("not_in_group"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !log.rest().iter().any(|l| l.contains("not-the-Password-42")),
        "password shown"
    );
}

/// The README's ACLs are all lull needs. The suite's node runs Kafka's StandardAuthorizer; this
/// test's topics and group get exactly the ACLs of README "Production → ACLs" for the SCRAM user,
/// which then batches over SASL_SSL. First, with Describe alone on the output, the same user's
/// write there is refused: the authorizer is live, and the ACLs are what let lull through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acls_are_all_lull_needs() {
    let cluster = Cluster::start(1).await;
    let kafka = cluster.kafka().clone();
    let user = kafka.get("KAFKA_SCRAM_USER").to_string();
    let group = unique("acl");
    // Any ACL on the output binds the user there: Describe alone, and lull cannot write.
    allow(
        &cluster,
        &user,
        &["--operation", "Describe", "--topic", &cluster.output],
    );
    let refused = write_as(&kafka, &cluster.output).await;
    assert!(
        refused.contains("authoriz") || refused.contains("Authoriz"),
        "the authorizer refuses a write the ACLs do not allow: {refused}"
    );

    allow(
        &cluster,
        &user,
        &[
            "--operation",
            "Read",
            "--operation",
            "Describe",
            "--topic",
            &cluster.input,
            "--group",
            &group,
        ],
    );
    allow(
        &cluster,
        &user,
        &[
            "--operation",
            "Write",
            "--operation",
            "Describe",
            "--topic",
            &cluster.output,
            "--topic",
            &cluster.dlq,
        ],
    );
    // exactly_once (the default): the state topic, and the transactional ids.
    let state = lull::config::default_state_topic(&cluster.input, &group);
    allow(
        &cluster,
        &user,
        &[
            "--operation",
            "Read",
            "--operation",
            "Write",
            "--operation",
            "Describe",
            "--topic",
            &state,
        ],
    );
    let prefix = format!("{group}/");
    // Describe alone binds the user to lull's transactional ids without letting it write:
    // `lull run` says so in one line and exits 2.
    allow(
        &cluster,
        &user,
        &[
            "--operation",
            "Describe",
            "--transactional-id",
            &prefix,
            "--resource-pattern-type",
            "prefixed",
        ],
    );
    let refused = run_to_exit(
        &cluster,
        kafka.get("KAFKA_SASL_SSL_BOOTSTRAP"),
        &scram(&kafka),
        &group,
    );
    assert_eq!(refused.0, Some(2), "{}", refused.1);
    let lines: Vec<&str> = refused.1.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", refused.1);
    assert!(
        lines[0].contains("transactional ids") && lines[0].contains("LULL_DELIVERY=at_least_once"),
        "{}",
        refused.1
    );
    allow(
        &cluster,
        &user,
        &[
            "--operation",
            "Write",
            "--operation",
            "Describe",
            "--transactional-id",
            &prefix,
            "--resource-pattern-type",
            "prefixed",
        ],
    );
    let listed = kafka_tool(
        "org.apache.kafka.tools.AclCommand",
        &[
            "--bootstrap-server",
            cluster.bootstrap(),
            "--list",
            "--principal",
            &format!("User:{user}"),
        ],
    );
    assert!(
        listed.contains(&cluster.input) && listed.contains(&group),
        "{listed}"
    );
    batch_over(
        &cluster,
        kafka.get("KAFKA_SASL_SSL_BOOTSTRAP"),
        &scram(&kafka),
        &group,
    )
    .await;
}

/// Runs `lull run` with `security` settings until it exits by itself (within the deadline);
/// returns its exit code and its standard error (logs at warn and above, as JSON, and anything
/// it prints itself).
fn run_to_exit(
    cluster: &Cluster,
    bootstrap: &str,
    security: &[(&str, String)],
    group: &str,
) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("run")
        .env_clear()
        .envs(cluster.process_env(group))
        .env("KAFKA_BROKERS", bootstrap)
        .envs(security.iter().map(|(k, v)| (k, v)))
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
    }
    (status.code(), text)
}

/// Tries to write one record to `topic` as the SCRAM user, with lull's own producer settings
/// (read from the same variables `lull run` gets); returns the error, or "" on success.
async fn write_as(kafka: &KafkaEnv, topic: &str) -> String {
    let mut env: std::collections::BTreeMap<String, String> = scram(kafka)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    env.insert(
        "KAFKA_BROKERS".into(),
        kafka.get("KAFKA_SASL_SSL_BOOTSTRAP").into(),
    );
    let lull_config = lull::config::Config::from_env(&env).expect("valid settings");
    let mut config = lull::io::kafka::producer_config(&lull_config);
    config.set("message.timeout.ms", "20000");
    let producer: FutureProducer = config.create().expect("SCRAM producer");
    let record = rdkafka::producer::FutureRecord::to(topic)
        .key("k")
        .payload("{}");
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => String::new(),
        Err((e, _)) => e.to_string(),
    }
}

/// Runs a `lull` tool (`args`) as the SCRAM user over the node's SASL_SSL listener (or, with
/// `bootstrap`, another address) with `stdin` as its input, until it exits (killed at the
/// deadline); returns its exit code, standard output and standard error.
fn tool_over_scram(
    cluster: &Cluster,
    bootstrap: &str,
    args: &[&str],
    stdin: &str,
) -> (Option<i32>, String, String) {
    let kafka = cluster.kafka().clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lull"))
        .args(args)
        .env_clear()
        .envs(cluster.process_env("tools"))
        .env("KAFKA_BROKERS", bootstrap)
        .envs(scram(&kafka))
        .env("LULL_QUIET_MS", "300")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull starts");
    let mut input = child.stdin.take().expect("piped");
    std::io::Write::write_all(&mut input, stdin.as_bytes()).expect("stdin");
    drop(input);
    let mut out = Lines::follow(child.stdout.take().expect("piped"));
    let mut err = Lines::follow(child.stderr.take().expect("piped"));
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), out.rest().join("\n"), err.rest().join("\n"))
}

/// Every tool takes the same `LULL_KAFKA_*` settings as `lull run` (they used to build clients of
/// their own: `simulate` ignored SASL_SSL and typed into a plaintext port, exit 0). Over
/// SASL_SSL + SCRAM: `send` and `simulate` type, `tail` and `verify` read what lull batched; and
/// the same settings against the plaintext port fail instead of being ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_send_simulate_tail_and_verify_over_sasl_ssl() {
    let cluster = Cluster::start(1).await;
    let kafka = cluster.kafka().clone();
    let secure = kafka.get("KAFKA_SASL_SSL_BOOTSTRAP").to_string();
    let password = kafka.get("KAFKA_SCRAM_PASSWORD").to_string();

    let (code, _, err) = tool_over_scram(
        &cluster,
        &secure,
        &["send"],
        "{\"user_id\":\"sasl-ana\",\"text\":\"hi\"}\n{\"user_id\":\"sasl-ana\",\"text\":\"there\"}\n",
    );
    assert_eq!(code, Some(0), "send: {err}");
    assert_eq!(err.matches("sent sasl-ana").count(), 2, "send: {err}");

    let (code, out, err) = tool_over_scram(
        &cluster,
        &secure,
        &[
            "simulate",
            "--users",
            "2",
            "--fragments",
            "4",
            "--quiet-ms",
            "300",
        ],
        "",
    );
    assert_eq!(code, Some(0), "simulate: {out}\n{err}");
    assert!(out.contains("typed 4 fragments"), "simulate: {out}\n{err}");

    // The settings are applied, not ignored: SASL_SSL against the plaintext port cannot work.
    let (code, out, err) = tool_over_scram(
        &cluster,
        cluster.bootstrap(),
        &[
            "simulate",
            "--users",
            "1",
            "--fragments",
            "1",
            "--quiet-ms",
            "300",
        ],
        "",
    );
    assert_ne!(
        code,
        Some(0),
        "simulate ignored the security settings: {out}\n{err}"
    );

    // lull itself (in-process, plain text) batches the six fragments.
    let mut cfg = cluster.config("tools-lull");
    cfg.quiet = Duration::from_millis(300);
    let lull = Running::start(cfg);
    lull.assigned(1).await;
    let mut out = cluster.collector(&cluster.output);
    out.until("every fragment batched", |s| {
        event_counts(s).values().sum::<usize>() == 6
    })
    .await;
    lull.stop().await;

    // `tail --from-beginning` exits only on Ctrl-C: read until it shows sasl-ana's batch.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_lull"))
        .args(["tail", "--from-beginning"])
        .env_clear()
        .envs(cluster.process_env("tools"))
        .env("KAFKA_BROKERS", &secure)
        .envs(scram(&kafka))
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lull tail starts");
    let mut shown = Lines::follow(tail.stdout.take().expect("piped"));
    shown.until_text("batch  sasl-ana  2 fragments");
    let _ = tail.kill();
    let _ = tail.wait();

    let (code, out, err) = tool_over_scram(&cluster, &secure, &["verify"], "");
    assert_eq!(code, Some(0), "verify: {out}\n{err}");
    assert!(out.contains("in exactly one batch  6"), "verify: {out}");
    for text in [&out, &err] {
        assert!(!text.contains(&password), "password shown: {text}");
    }
}
