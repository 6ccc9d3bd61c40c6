//! `lull check` as an operator runs it before a deployment, against the suite's real Kafka node
//! (plain, and its SASL_SSL listener with the SCRAM user, under Kafka's StandardAuthorizer) and a
//! real Redis: right and wrong credentials, a missing topic, a missing ACL, a bad setting. Output
//! is piped here, so each line says `ok` or `FAIL`.

mod common;

use std::process::Command;

use common::*;

/// Runs `lull check --quiet` with `env` (over the cluster's topics and `group`): exit code and
/// standard output.
fn check(cluster: &Cluster, group: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lull"))
        .args(["check", "--quiet"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(cluster.process_env(group))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("lull check runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn scram(kafka: &KafkaEnv, password: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "KAFKA_BROKERS",
            kafka.get("KAFKA_SASL_SSL_BOOTSTRAP").into(),
        ),
        ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("LULL_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512".into()),
        (
            "LULL_KAFKA_SASL_USERNAME",
            kafka.get("KAFKA_SCRAM_USER").into(),
        ),
        ("LULL_KAFKA_SASL_PASSWORD", password.into()),
        ("LULL_KAFKA_SSL_CA_LOCATION", kafka.get("KAFKA_CA").into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_ready_deployment_and_names_each_problem() {
    let cluster = Cluster::start(2).await;
    let group = unique("check");
    // The state topic exactly_once needs: created as `lull topics` would.
    let (code, out) = check(&cluster, &group, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("FAIL state topic {}.", cluster.input)) && out.contains("missing"),
        "{out}"
    );
    let (code, out) = check(
        &cluster,
        &group,
        &[("LULL_DELIVERY", "at_least_once".into())],
    );
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "ok   DNS and TCP:",
        "ok   Kafka: 1 broker(s) answered over PLAINTEXT",
        &format!("ok   input topic {}: 2 partitions", cluster.input),
        &format!("ok   reading {}: allowed", cluster.input),
        &format!("ok   consumer group {group}:"),
        "every check passed",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    assert!(!out.contains('✔'), "plain text when piped: {out}");

    // A bad setting: exit 2 before any check, as every command.
    let (code, out) = check(&cluster, &group, &[("LULL_QUIET_MS", "abc".into())]);
    assert_eq!(code, Some(2), "{out}");

    // SASL_SSL: the right password, then a wrong one (never shown).
    let kafka = cluster.kafka().clone();
    let mut right = scram(&kafka, kafka.get("KAFKA_SCRAM_PASSWORD"));
    right.push(("LULL_DELIVERY", "at_least_once".into()));
    let (code, out) = check(&cluster, &group, &right);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok   TLS: handshake completed"), "{out}");
    assert!(out.contains("ok   SASL: authenticated as "), "{out}");
    let mut wrong = scram(&kafka, "not-the-Password-42");
    wrong.push(("LULL_DELIVERY", "at_least_once".into()));
    let (code, out) = check(&cluster, &group, &wrong);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL SASL: the broker refused the credentials"),
        "{out}"
    );
    assert!(!out.contains("not-the-Password-42"), "{out}");

    // Plain text against the SASL_SSL listener: TCP works, Kafka does not.
    let (code, out) = check(
        &cluster,
        &group,
        &[(
            "KAFKA_BROKERS",
            kafka.get("KAFKA_SASL_SSL_BOOTSTRAP").into(),
        )],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("a TLS or SASL listener?"), "{out}");

    // A missing topic.
    let (code, out) = check(
        &cluster,
        &group,
        &[
            ("LULL_DELIVERY", "at_least_once".into()),
            ("LULL_DLQ_TOPIC", unique("no-such-topic")),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL dead-letter topic") && out.contains("missing"),
        "{out}"
    );

    // A missing ACL: the SCRAM user may describe the input but not read it.
    let user = kafka.get("KAFKA_SCRAM_USER").to_string();
    kafka_tool(
        "org.apache.kafka.tools.AclCommand",
        &[
            "--bootstrap-server",
            cluster.bootstrap(),
            "--add",
            "--allow-principal",
            &format!("User:{user}"),
            "--operation",
            "Describe",
            "--topic",
            &cluster.input,
        ],
    );
    let (code, out) = check(&cluster, &group, &right);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("FAIL reading {}", cluster.input)) && out.contains("READ ACL"),
        "{out}"
    );

    // Redis that refuses the password is named as such.
    let redis = RedisServer::shared();
    let port = free_port();
    let mut guarded = spawn_redis(
        &["--port", &port.to_string(), "--requirepass", "right"],
        port,
    );
    let (code, out) = check(
        &cluster,
        &group,
        &[
            ("LULL_DELIVERY", "at_least_once".into()),
            ("REDIS_URL", format!("redis://:wrong@127.0.0.1:{port}")),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("authentication failed"), "{out}");
    assert!(!out.contains(":wrong@"), "{out}");
    let (code, out) = check(
        &cluster,
        &group,
        &[
            ("LULL_DELIVERY", "at_least_once".into()),
            ("REDIS_URL", redis.url.clone()),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("logged in, PING answered (a single server)"),
        "{out}"
    );
    let _ = guarded.kill();
    let _ = guarded.wait();
}
