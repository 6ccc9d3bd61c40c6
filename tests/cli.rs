//! The `lull` binary as an operator runs it: configuration errors, `dev-broker`, and `run` as an
//! OS process that batches real traffic and stops cleanly on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn lull() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lull"));
    // A clean environment in an empty directory: no stray LULL_* variables, no .env file.
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    c
}

#[test]
fn each_bad_variable_gets_its_own_line_and_a_non_zero_exit() {
    let out = lull()
        .arg("run")
        .env("LULL_QUIET_MS", "abc")
        .env("LULL_TIMESTAMP", "wallclock")
        .env("LULL_MAX_FRAGMENTS", "0")
        .env("REDIS_URL", "http://user:hunter2@localhost")
        .output()
        .expect("lull runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines.contains(&"LULL_QUIET_MS=abc: expected milliseconds (a whole number, 1 to 86400000), or a duration with a unit (1500ms, 2s, 5m, 1h)")
    );
    assert!(lines.contains(&"LULL_TIMESTAMP=wallclock: expected one of kafka, arrival"));
    assert!(lines.contains(
        &"LULL_MAX_FRAGMENTS=0: expected a fragment count (a whole number, 1 to 1000000)"
    ));
    assert!(lines
        .contains(&"REDIS_URL=http://user:***@localhost: expected a redis:// or rediss:// URL"));
    assert!(!stderr.contains("hunter2"), "secret leaked: {stderr}");
}

#[test]
fn a_kafka_property_librdkafka_refuses_is_exit_2_with_one_line() {
    let out = lull()
        .arg("run")
        .env("LULL_KAFKA_ENABLE_IDEMPOTENCE", "perhaps")
        .output()
        .expect("lull runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "LULL_KAFKA_ENABLE_IDEMPOTENCE=perhaps: expected a librdkafka setting for enable.idempotence"
        ),
        "{stderr}"
    );
}

#[test]
fn a_kafka_properties_file_is_read_and_checked_like_the_variables() {
    let dir = tempdir("kafka-config");
    let file = dir.join("client.properties");
    std::fs::write(
        &file,
        "# from the service's console\nsecurity.protocol=SASL_SSL\nsasl.password=hunter2\nacks=sometimes\n",
    )
    .unwrap();
    let out = lull()
        .args(["run", "--kafka-config"])
        .arg(&file)
        .output()
        .expect("lull runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:4 acks=sometimes: expected a librdkafka setting for acks",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn a_session_timeout_alone_does_not_stop_start_up() {
    // Only the session timeout is set: the drain timeout is derived below it and is no problem.
    // (A bad HTTP address makes lull stop at configuration instead of running: the one line
    // printed must be about that address alone.)
    let out = lull()
        .arg("run")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_HTTP_ADDR", "nowhere")
        .output()
        .expect("lull runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("LULL_HTTP_ADDR=nowhere"), "{stderr}");
}

#[test]
fn a_malformed_env_file_is_reported() {
    let dir = tempdir("envfile");
    std::fs::write(dir.join(".env"), "LULL_QUIET_MS=100\nthis is not a pair\n").unwrap();
    let out = lull()
        .arg("run")
        .current_dir(&dir)
        .output()
        .expect("lull runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with(".env="));
}

#[test]
fn env_file_values_are_read() {
    let dir = tempdir("envfile-ok");
    std::fs::write(dir.join(".env"), "LULL_GRACE_MS=nope\n").unwrap();
    let out = lull()
        .arg("run")
        .current_dir(&dir)
        .output()
        .expect("lull runs");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "LULL_GRACE_MS=nope: expected milliseconds (a whole number, 0 to 3600000), or a duration with a unit (1500ms, 2s, 5m, 1h)"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lull-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < end,
            "process did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the file at `path` contains `text`; fails with `what` after [`DEADLINE`].
fn wait_for_text(path: &Path, text: &str, what: &str) {
    let end = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_file(path: &Path) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        assert!(Instant::now() < end, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lull dev-broker` with two partitions (and `extra` arguments) as a process: it, and its
/// bootstrap address once it wrote it.
fn dev_broker(name: &str, extra: &[&str]) -> (Guard, String) {
    let bootstrap_file = tempdir(name).join("bootstrap");
    let broker = lull()
        .args(["dev-broker", "--partitions", "2"])
        .args(extra)
        .arg("--bootstrap-file")
        .arg(&bootstrap_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev-broker starts");
    let broker = Guard(broker);
    let bootstrap = wait_file(&bootstrap_file);
    (broker, bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_broker_and_run_as_processes_batch_traffic_and_stop_on_sigterm() {
    let (mut broker, bootstrap) = dev_broker("procs", &[]);

    // `lull topics` against the dev broker: its topics exist already, nothing to create.
    let topics = lull()
        .args(["topics", "--partitions", "2"])
        .env("KAFKA_BROKERS", &bootstrap)
        .output()
        .expect("lull topics runs");
    let listed = String::from_utf8_lossy(&topics.stdout);
    assert_eq!(topics.status.code(), Some(0), "{listed}");
    for t in ["chat.fragments", "chat.batches", "chat.fragments.dlq"] {
        assert!(listed.contains(&format!("exists  {t}")), "{listed}");
    }

    let worker = lull()
        .arg("run")
        .env("KAFKA_BROKERS", &bootstrap)
        .env("LULL_QUIET_MS", "300")
        .env("LULL_GRACE_MS", "250")
        .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("LULL_DRAIN_TIMEOUT_MS", "3000")
        .env("LULL_KAFKA_SASL_PASSWORD", "hunter2")
        .env("LULL_KAFKA_SECURITY_PROTOCOL", "plaintext")
        .env("LULL_LOG_FORMAT", "json")
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("lull run starts");
    let mut worker = Guard(worker);
    let mut lines = Lines::follow(worker.0.stderr.take().expect("stderr piped"));
    lines.until_text("partitions assigned");
    let log = &lines.seen;
    for line in log {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "JSON log line: {line}"
        );
    }
    assert!(
        log.iter().any(|l| l.contains("LULL_QUIET_MS")),
        "effective config logged"
    );
    assert!(
        !log.iter().any(|l| l.contains("hunter2")),
        "secret leaked into logs"
    );

    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for seq in 0..3 {
        send(
            &producer,
            "chat.fragments",
            Some("proc-user"),
            &fragment("proc-user", seq),
            None,
            None,
        )
        .await;
    }
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "cli-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    rdkafka::consumer::Consumer::subscribe(&consumer, &["chat.batches"]).expect("subscribe");
    let m = tokio::time::timeout(DEADLINE, consumer.recv())
        .await
        .expect("a batch in time")
        .expect("a batch");
    let v: serde_json::Value =
        serde_json::from_slice(rdkafka::Message::payload(&m).unwrap_or_default())
            .expect("JSON batch");
    assert_eq!(v["count"], 3);
    assert_eq!(v["key"], "proc-user");
    drop(m);
    drop(consumer);

    // `lull top --once` against the running instance: its readiness, and one row per partition.
    let http = lines
        .seen
        .iter()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["message"]
                .as_str()?
                .starts_with("serving /metrics")
                .then_some(())?;
            v["addr"].as_str().map(str::to_string)
        })
        .expect("the HTTP address is logged");
    let top = lull()
        .args(["top", "--once", "--interval", "200ms", "--url"])
        .arg(format!("http://{http}"))
        .output()
        .expect("lull top runs");
    let shown = String::from_utf8_lossy(&top.stdout);
    assert_eq!(top.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(&format!("at http://{http}: ready; 2 partitions")),
        "{shown}"
    );
    assert!(
        shown.contains("PARTITION  PHASE    OPEN  OLDEST_S  IN/S  OUT/S  LAG  COMMITS/S"),
        "{shown}"
    );
    for partition in ["0", "1"] {
        assert!(
            shown.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.get(1) == Some(&partition) && cells.get(2) == Some(&"running")
            }),
            "partition {partition}:\n{shown}"
        );
    }
    // The per-partition counters it reads: the three fragments and their one batch, on one
    // partition.
    let page = http_get_blocking(http.parse().expect("address"), "/metrics");
    let total = |family: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        total("lull_partition_fragments_received_total"),
        3.0,
        "{page}"
    );
    assert_eq!(total("lull_partition_batches_flushed_total"), 1.0, "{page}");
    // An instance that does not answer is named, and exit 1.
    let top = lull()
        .args(["top", "--once", "--interval", "100ms", "--url"])
        .arg(format!("127.0.0.1:{}", closed_port()))
        .output()
        .expect("lull top runs");
    assert_eq!(top.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&top.stdout).contains(": unreachable ("));

    signal(&worker.0, "-TERM");
    let status = wait_exit(&mut worker.0, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    signal(&broker.0, "-TERM");
    let status = wait_exit(&mut broker.0, Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "dev-broker exits cleanly on SIGTERM"
    );
}

/// `lull run` stopped and started again against `dev-broker` is back in its group within
/// seconds: the mock takes no new member until the last one's session has run out, even after it
/// left, so lull uses a short session there (before: 40-44 s, silent). With a long session set
/// by the operator the wait comes back, and lull says why it waits.
#[test]
fn run_restarted_against_dev_broker_rejoins_within_seconds_or_says_why_it_waits() {
    let (_broker, bootstrap) = dev_broker("restart", &[]);
    let start = |session_ms: Option<&str>| {
        let mut c = lull();
        c.arg("run")
            .env("KAFKA_BROKERS", &bootstrap)
            .env("LULL_HTTP_ADDR", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped());
        if let Some(ms) = session_ms {
            c.env("LULL_KAFKA_SESSION_TIMEOUT_MS", ms);
        }
        let mut child = Guard(c.spawn().expect("lull run starts"));
        let lines = Lines::follow(child.0.stderr.take().expect("stderr piped"));
        (child, lines)
    };
    let stop = |mut child: Guard| {
        signal(&child.0, "-TERM");
        assert_eq!(wait_exit(&mut child.0, DEADLINE).code(), Some(0));
    };
    for round in 0..2 {
        let began = Instant::now();
        let (child, mut lines) = start(None);
        lines.until_text("partitions assigned");
        assert!(lines.contains("librdkafka's mock cluster: session timeout 6 s"));
        // Before: 40-44 s on the second round. Generous for a loaded machine, far below that.
        assert!(
            began.elapsed() < Duration::from_secs(25),
            "round {round}: joined after {:?}",
            began.elapsed()
        );
        stop(child);
    }
    let (child, mut lines) = start(Some("45000"));
    lines.until_text("partitions assigned");
    assert!(
        !lines.contains("session timeout 6 s"),
        "the operator's setting wins"
    );
    stop(child);
    let (child, mut lines) = start(Some("45000"));
    lines.until_text("not in the consumer group yet");
    assert!(lines.contains("counts until its session times out"));
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_shows_an_open_window_or_none() {
    let redis = RedisServer::shared();
    let prefix = unique_prefix("cli-pending");
    let run = |key: &str| {
        lull()
            .args(["pending", key])
            .env("REDIS_URL", &redis.url)
            .env("LULL_REDIS_PREFIX", &prefix)
            .output()
            .expect("lull pending runs")
    };
    let out = run("nobody");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nobody: none (no open window)"
    );

    let mut config = redis.configure(lull::config::Config::defaults(), &prefix);
    config.instance_id = "host-7".into();
    let store =
        lull::io::store::Store::connect(&config, &lull::ops::supervisor::Supervisor::standalone())
            .await
            .unwrap();
    let fence = store.claim("chat.fragments", 2, "", false).await.unwrap();
    let now = lull::ops::clock::now_ms();
    store
        .publish_pending(
            &fence,
            &[lull::io::store::PendingSummary {
                key: "typist".into(),
                first_ts: now - 1_000,
                last_ts: now,
                count: 3,
                flush_at: now + 2_200,
                first_offset: 40,
            }],
        )
        .await
        .unwrap();
    let out = run("typist");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text.starts_with("typist: mid-burst, 3 fragment(s) on chat.fragments/2 held by host-7"),
        "{text}"
    );
    assert!(text.contains("batch expected"), "{text}");

    let out = lull()
        .args(["pending", "typist", "--json"])
        .env("REDIS_URL", &redis.url)
        .env("LULL_REDIS_PREFIX", &prefix)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["count"], 3);
    assert_eq!(v["first_offset"], 40);

    let out = lull().args(["pending", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "REDIS_URL is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_prints_a_timeline_of_commands_on_lull_keys() {
    let redis = RedisServer::shared();
    let prefix = unique_prefix("cli-monitor");
    let mut child = lull()
        .arg("monitor")
        .env("REDIS_URL", &redis.url)
        .env("LULL_REDIS_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lull monitor starts");
    let mut timeline = Lines::follow(child.stdout.take().unwrap());
    let mut conn = redis.conn().await;
    // Keys of the consumer group `lull` (LULL_GROUP_ID's default), which `lull monitor` follows.
    let key = lull::io::store::Keys::new(&prefix, "lull")
        .partition("chat.fragments", 0)
        .flushed("someone");
    let end = Instant::now() + DEADLINE;
    let line = loop {
        let _: () = redis::AsyncCommands::hset_multiple(
            &mut conn,
            &key,
            &[
                ("topic_id", "Vgz4yQp5QnqVv1GtYm9s2g"),
                ("partition", "0"),
                ("offset", "99"),
            ],
        )
        .await
        .unwrap();
        if let Some(line) = timeline.rest().first() {
            break line.clone();
        }
        assert!(Instant::now() < end, "monitor printed nothing");
    };
    assert!(line.contains("flushed:someone"), "{line}");
    assert!(line.contains("flushed up to 0:99"), "{line}");
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `lull run` against brokers that are not there for `for_at_least`, with stderr in a file,
/// then stops it with SIGINT; returns its log.
fn run_against_no_kafka(dir: &Path, format: &str, for_at_least: Duration) -> String {
    let log = dir.join(format!("lull-{format}.log"));
    let child = lull()
        .arg("run")
        .env("KAFKA_BROKERS", format!("127.0.0.1:{}", closed_port()))
        .env("LULL_LOG_FORMAT", format)
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .env("LULL_INSTANCE_ID", "inst-7")
        .env("LULL_QUIETMS", "500")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Guard(child);
    // Wait for the outage to be noticed, then let it last: the log must stay quiet meanwhile.
    wait_for_text(&log, "kafka unreachable", "the outage was never logged");
    std::thread::sleep(for_at_least);
    signal(&child.0, "-INT");
    let status = wait_exit(&mut child.0, DEADLINE);
    assert!(status.success(), "{status:?}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn kafka_down_is_one_line_not_a_stream_and_every_line_names_the_instance() {
    let dir = tempdir("kafka-down");
    // librdkafka retries the connection many times a second: before, each try was two lines.
    let log = run_against_no_kafka(&dir, "json", Duration::from_secs(5));
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert_eq!(l["instance"], "inst-7", "{l}");
        assert!(l["pid"].as_u64().is_some(), "{l}");
    }
    let said = |m: &str| lines.iter().filter(|l| l["message"] == m).count();
    assert_eq!(said("kafka unreachable"), 1, "{log}");
    let loud: Vec<_> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .collect();
    // The outage, and the mistyped LULL_QUIETMS with its nearest real name.
    assert_eq!(loud.len(), 2, "{loud:#?}");
    assert!(log.contains("did you mean LULL_QUIET_MS?"), "{log}");
    assert_eq!(
        said("shutting down: draining (a second signal exits at once)"),
        1
    );
}

#[test]
fn a_wrong_redis_password_is_named_as_such_and_a_stray_prefix_gets_its_hint() {
    let dir = tempdir("redis-auth");
    let port = free_port();
    let mut redis = spawn_redis(
        &["--port", &port.to_string(), "--requirepass", "right-pw"],
        port,
    );
    let log = dir.join("lull.log");
    let child = lull()
        .arg("run")
        .env("KAFKA_BROKERS", format!("127.0.0.1:{}", closed_port()))
        .env("REDIS_URL", format!("redis://:wrong-pw@127.0.0.1:{port}"))
        .env("LULL_REDIS_URL", "redis://elsewhere")
        .env("LULL_HTTP_ADDR", "127.0.0.1:0")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Guard(child);
    wait_for_text(
        &log,
        "redis refused lull's credentials: check the user and password in REDIS_URL",
        "the refused password was never named",
    );
    wait_for_text(
        &log,
        "did you mean REDIS_URL?",
        "LULL_REDIS_URL got no hint",
    );
    signal(&child.0, "-INT");
    let status = wait_exit(&mut child.0, DEADLINE);
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("wrong-pw"), "secret leaked: {text}");
    assert!(!text.contains("redis unreachable"), "{text}");
    let _ = redis.kill();
    let _ = redis.wait();
}

#[test]
fn pretty_logs_to_a_file_have_no_colour_codes() {
    let dir = tempdir("no-colour");
    let log = run_against_no_kafka(&dir, "pretty", Duration::ZERO);
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a file:\n{log}"
    );
    assert!(
        log.lines().all(|l| l.contains(" instance=inst-7 pid=")),
        "a line without the instance:\n{log}"
    );
}

/// Every command that talks to Kafka or Redis takes the same settings flags (and `--env-file`),
/// each listed in its `--help` with its default, validated like the variables: `lull tail --kafka-brokers X` works as `KAFKA_BROKERS=X lull tail`.
#[test]
fn every_tool_takes_the_settings_as_flags_and_an_env_file() {
    let tools = [
        "run", "check", "topics", "send", "tail", "simulate", "verify", "pending", "monitor",
        "bench", "demo", "top",
    ];
    for tool in tools {
        let out = lull().args([tool, "--help"]).output().unwrap();
        assert!(out.status.success(), "{tool}");
        let help = String::from_utf8_lossy(&out.stdout);
        for s in lull::config::settings::SETTINGS {
            assert!(
                help.contains(&format!("[env: {}", s.name)),
                "{tool}: {} missing:\n{help}",
                s.name
            );
            if !s.default.is_empty() {
                assert!(
                    help.contains(&format!("[default: {}]", s.default)),
                    "{tool}: {}:\n{help}",
                    s.name
                );
            }
        }
        assert!(help.contains("--env-file <PATH>"), "{tool}:\n{help}");
        // A bad value given as a flag is the same one-line configuration error on every tool.
        let key: &[&str] = if tool == "pending" { &["ana"] } else { &[] };
        let out = lull()
            .args([tool, "--grace-ms", "soon"])
            .args(key)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{tool}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("LULL_GRACE_MS=soon: expected"),
            "{tool}: {err}"
        );
    }

    // A flag is the same setting as its variable, validated the same way.
    let out = lull().args(["run", "--quiet-ms", "abc"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LULL_QUIET_MS=abc: expected"));

    // The flag is used, and wins over its variable: tail gives up on the broker the flag names.
    let port = closed_port();
    let err = gives_up(
        &["tail"],
        Some(&format!("127.0.0.1:{port}")),
        "elsewhere:9092",
    );
    assert!(
        err.contains(&format!("kafka unreachable at 127.0.0.1:{port}")),
        "{err}"
    );

    // --env-file is read instead of ./.env; the environment wins over it; a missing one is exit 2.
    let dir = tempdir("env-file-flag");
    std::fs::write(dir.join(".env"), "LULL_QUIET_MS=not-this-one\n").unwrap();
    let file = dir.join("prod.env");
    std::fs::write(
        &file,
        format!("KAFKA_BROKERS=127.0.0.1:{port}\nLULL_GRACE_MS=later\n"),
    )
    .unwrap();
    let out = lull()
        .args(["check", "--env-file"])
        .arg(&file)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("LULL_GRACE_MS=later: expected"), "{err}");
    let out = lull()
        .args(["check", "--quiet", "--env-file"])
        .arg(&file)
        .env("LULL_GRACE_MS", "100")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    let out = lull()
        .args(["check", "--env-file", "/nonexistent/lull.env"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "--env-file=/nonexistent/lull.env: expected a file of KEY=value lines (no such file)"
    );
}

/// Long work shows progress on a terminal (here a pseudo-terminal, from `script`) and nothing
/// extra when its output is piped.
#[test]
fn the_demo_shows_progress_on_a_terminal_only() {
    let bin = env!("CARGO_BIN_EXE_lull");
    // The clean environment of `lull()`, around `script`, which gives the demo a terminal.
    let out = Command::new("script")
        .args(["-qfec"])
        .arg(format!("{bin} demo --users 5 --fragments 40 --samples 0"))
        .arg("/dev/null")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("script (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("waiting for its partitions"), "{seen}");
    assert!(seen.contains("batched (typed"), "{seen}");

    let out = lull()
        .args([
            "demo",
            "--users",
            "5",
            "--fragments",
            "40",
            "--samples",
            "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stderr, "", "piped: nothing on stderr");
    assert!(
        !stdout.contains("batched (typed") && !stdout.contains('\r'),
        "{stdout}"
    );
}

/// The demo keeps its short quiet period only when the operator chose none: `LULL_QUIET_MS` and
/// `--quiet-ms` mean the same to it as to `lull run` and `simulate`.
#[test]
fn the_demo_takes_the_quiet_period_from_the_setting_when_given() {
    let demo = |extra: &[&str], env: Option<&str>| {
        let mut c = lull();
        c.args([
            "demo",
            "--users",
            "5",
            "--fragments",
            "10",
            "--samples",
            "0",
        ])
        .args(extra);
        if let Some(v) = env {
            c.env("LULL_QUIET_MS", v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(demo(&[], None).contains("quiet 500 ms"));
    assert!(demo(&[], Some("300")).contains("quiet 300 ms"));
    assert!(demo(&["--quiet-ms", "200ms"], Some("300")).contains("quiet 200 ms"));
}

/// Runs `args` (with `--kafka-brokers flag` when given) with `KAFKA_BROKERS=env_brokers` and an
/// empty stdin until it exits, which must be exit 1 (a broker that is not there); returns its
/// stderr.
fn gives_up(args: &[&str], flag: Option<&str>, env_brokers: &str) -> String {
    let mut c = lull();
    c.args(args).env("KAFKA_BROKERS", env_brokers);
    if let Some(b) = flag {
        c.args(["--kafka-brokers", b]);
    }
    let started = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, DEADLINE);
    assert_eq!(status.code(), Some(1), "{args:?}: {:?}", started.elapsed());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

/// `send`, `tail`, `simulate` and `verify` say once that Kafka is unreachable, naming it, and
/// give up with exit 1 (before: `send` printed hundreds of librdkafka lines, `tail` never ended).
#[test]
fn every_tool_says_once_that_kafka_is_unreachable_and_gives_up() {
    let closed = format!("127.0.0.1:{}", closed_port());
    for tool in ["send", "tail", "simulate", "verify"] {
        let err = gives_up(&[tool], None, &closed);
        assert!(
            err.contains(&format!("kafka unreachable at {closed} (")),
            "{tool}: {err}"
        );
        assert!(err.contains("gave up after 10 s"), "{tool}: {err}");
        assert!(err.lines().count() <= 4, "{tool}: {err}");
    }
}

/// The README's "try it by hand": `dev-broker`, `run`, `tail` and `send` as processes. ana's two
/// `typing` signals hold her burst open across a pause three times the quiet period: one batch
/// (the README's "Try it by hand", with its timings and the default settings).
/// bob makes the same pause without signals: two batches, the second `follows` the first.
#[test]
fn typing_sent_by_hand_holds_a_burst_open_and_tail_shows_it() {
    let (_broker, bootstrap) = dev_broker("by-hand", &["--topic", "chat.events"]);
    let dir = tempdir("by-hand-logs");
    let with_env = |c: &mut Command| {
        c.env("KAFKA_BROKERS", &bootstrap)
            .env("LULL_EVENTS_TOPIC", "chat.events")
            .env("LULL_HTTP_ADDR", "127.0.0.1:0")
            .env("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("LULL_DRAIN_TIMEOUT_MS", "3000");
    };
    let run_log = dir.join("run.log");
    let mut run = lull();
    with_env(run.arg("run"));
    let _run = Guard(
        run.stderr(std::fs::File::create(&run_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_text(
        &run_log,
        "partitions assigned",
        "lull run never got its partitions",
    );

    let mut tail = lull();
    with_env(tail.args(["tail", "--from-beginning"]));
    let mut tail = Guard(
        tail.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut tail_lines = Lines::follow(tail.0.stdout.take().unwrap());

    let mut send = lull();
    with_env(send.arg("send"));
    let mut send = Guard(
        send.stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdin = send.0.stdin.take().unwrap();
    // (seconds after the start, line): the README's walk-through, with its default settings
    // (quiet 2 s, typing 6 s) and its timings: `hi`, the first `typing` right after it, the
    // second about 3 s later, the message about 3 s after that.
    let script = [
        (0.0, r#"{"user_id":"ana","text":"hi"}"#),
        (0.0, r#"{"user_id":"bob","text":"hi"}"#),
        (0.5, r#"{"user_id":"ana","signal":"typing"}"#),
        (3.5, r#"{"user_id":"ana","signal":"typing"}"#),
        (6.5, r#"{"user_id":"ana","text":"my order never arrived"}"#),
        (6.5, r#"{"user_id":"bob","text":"my order never arrived"}"#),
    ];
    let start = Instant::now();
    for (at, line) in script {
        let due = start + Duration::from_secs_f64(at);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        std::io::Write::write_all(&mut stdin, format!("{line}\n").as_bytes()).unwrap();
    }
    drop(stdin);
    let status = wait_exit(&mut send.0, DEADLINE);
    assert!(status.success(), "lull send: {status:?}");

    tail_lines.until("three batches in tail", |lines| {
        lines.iter().filter(|l| l.starts_with("batch")).count() >= 3
    });
    let lines = &tail_lines.seen;
    let of = |user: &str| -> Vec<&String> {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("batch  {user}  ")))
            .collect()
    };
    let ana = of("ana");
    assert_eq!(ana.len(), 1, "{lines:#?}");
    assert!(
        ana[0].contains("2 fragments  quiet") && ana[0].contains("\"hi ⏎ my order never arrived\""),
        "{lines:#?}"
    );
    let bob = of("bob");
    assert_eq!(bob.len(), 2, "{lines:#?}");
    let first_id = bob[0].split_whitespace().nth(5).unwrap().to_string();
    assert!(
        bob[1].contains(&format!("follows {first_id}")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("event  ana  opened")),
        "{lines:#?}"
    );
    // bob's second window said it follows the first as soon as it opened.
    let following = format!("follows {first_id}");
    tail_lines.until("bob's second window opened, following the first", |lines| {
        lines
            .iter()
            .any(|l| l.starts_with("event  bob  opened") && l.contains(&following))
    });
}

/// The README's first command, small: `lull demo` on the mock cluster checks its own output and
/// prints the typing, channel and edit figures; every planned edit and delete shows (in place
/// while its window was open, alone with `amends` after).
#[test]
fn the_demo_passes_its_own_check_and_prints_the_chat_figures() {
    let out = lull()
        .args([
            "demo",
            "--users",
            "30",
            "--fragments",
            "300",
            "--quiet-ms",
            "300",
            "--edit-share",
            "0.1",
            "--delete-share",
            "0.05",
            "--channel-share",
            "0.2",
            // No commands: a command after an edit's target would make `amends` name the key's
            // later batch, not the one that carried the target.
            "--command-share",
            "0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("changes lost 0: PASS"), "{stdout}");
    let line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line: {stdout}"))
            .to_string()
    };
    let numbers = |l: &str| -> Vec<usize> {
        l.split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    // "N of M sent while the window was open ...; A of B sent after ... (C naming ...)".
    let edits = numbers(&line("edits and deletes"));
    assert_eq!(edits.len(), 5, "{edits:?}");
    assert!(
        edits[1] > 0 && edits[3] > 0,
        "changes planned both ways: {edits:?}"
    );
    assert_eq!(edits[0], edits[1], "every in-window change made in place");
    assert_eq!(edits[2], edits[3], "every late change sent alone");
    assert_eq!(
        edits[4], edits[3],
        "each names the batch that carried its target"
    );
    let channel = numbers(&line("kept whole by channel"));
    assert_eq!(channel[0], channel[1], "{channel:?}");
    assert!(line("kept whole by typing").contains(" of "));
}
