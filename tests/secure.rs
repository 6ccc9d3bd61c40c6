//! lull against secured Kafka, for real: the suite's single Apache Kafka node also listens with
//! TLS (`SSL`, a certificate authority made by `scripts/kafka.sh` with openssl) and with
//! `SASL_SSL` + SCRAM-SHA-512 (a user created at format time). lull batches over both, reads
//! zstd-compressed input, and never writes the password to its logs.
//!
//! Regression: lull was built without TLS, SCRAM and zstd ("OpenSSL not available at build
//! time", "No provider for SASL mechanism", "libzstd not available").

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let end = Instant::now() + DEADLINE;
    while !log
        .iter()
        .any(|l: &String| l.contains("partitions assigned"))
    {
        assert!(Instant::now() < end, "never assigned: {log:#?}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push(line);
        }
        assert!(child.try_wait().unwrap().is_none(), "lull exited: {log:#?}");
    }

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
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(line);
    }
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
    let stderr = child.stderr.take().expect("piped");
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    // First the broker refuses the credentials...
    wait_for("the authentication failure in the log", || {
        text.lock().unwrap().contains("Authentication failed")
    })
    .await;
    // ...and then readiness says so.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let end = Instant::now() + DEADLINE;
    let body = loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut b = String::new();
            s.read_to_string(&mut b).await.unwrap();
            if !b.is_empty() {
                break b;
            }
        }
        assert!(Instant::now() < end, "no readiness answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
    assert!(body.contains("not_in_group"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
    let text = text.lock().unwrap();
    assert!(!text.contains("not-the-Password-42"), "password shown");
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
