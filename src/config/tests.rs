//! Tests of `config`.

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_design_table() {
    let c = Config::defaults();
    assert_eq!(c.brokers, "localhost:9092");
    assert_eq!(c.input_topic, "chat.fragments");
    assert_eq!(c.output_topic, "chat.batches");
    assert_eq!(c.dlq_topic, "chat.fragments.dlq");
    assert_eq!(c.group_id, "lull");
    assert_eq!(c.batching, Batching::On);
    assert_eq!(c.quiet, Duration::from_millis(2000));
    assert_eq!(c.max_wait, Duration::from_millis(15000));
    assert_eq!(c.max_fragments, 100);
    assert_eq!(c.max_batch_bytes, 262_144);
    assert_eq!(c.max_fragment_bytes, 65_536);
    assert_eq!(c.grace, Duration::from_millis(200));
    assert_eq!(c.timestamp, TimestampSource::Kafka);
    assert!(c.redis_url.is_none());
    assert_eq!(c.redis_prefix, "lull");
    assert!(!c.debug_redis_monitor);
    assert_eq!(c.http_addr.to_string(), "127.0.0.1:9898");
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.delivery, Delivery::ExactlyOnce);
    assert_eq!(c.transaction, Duration::from_millis(100));
    assert_eq!(c.state_topic(), "chat.fragments.lull-state");
}

#[test]
fn the_state_topic_follows_the_input_unless_set() {
    let mut c = Config::from_env(&env(&[("LULL_INPUT_TOPIC", "in")])).unwrap();
    assert_eq!(c.state_topic(), "in.lull-state");
    c.input_topic = "other".into();
    assert_eq!(c.state_topic(), "other.lull-state");
    c.group_id = "blue/green".into();
    assert_eq!(c.state_topic(), "other.blue_green.lull-state");
    let c = Config::from_env(&env(&[("LULL_STATE_TOPIC", "s")])).unwrap();
    assert_eq!(c.state_topic(), "s");
    let e = Config::from_env(&env(&[("LULL_STATE_TOPIC", "chat.batches")])).unwrap_err();
    assert_eq!(e.0[0].variable, "LULL_STATE_TOPIC");
    let e = Config::from_env(&env(&[("LULL_TRANSACTION_MS", "8000")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "LULL_TRANSACTION_MS=8000: expected at most half the transaction timeout (10000 ms; \
         LULL_KAFKA_TRANSACTION_TIMEOUT_MS raises it)"
    );
    Config::from_env(&env(&[
        ("LULL_TRANSACTION_MS", "8000"),
        ("LULL_KAFKA_TRANSACTION_TIMEOUT_MS", "30000"),
    ]))
    .unwrap();
    let e = Config::from_env(&env(&[("LULL_DELIVERY", "twice")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "LULL_DELIVERY=twice: expected one of exactly_once, at_least_once"
    );
}

#[test]
fn every_problem_is_reported_on_its_own_line() {
    let e = Config::from_env(&env(&[
        ("LULL_QUIET_MS", "abc"),
        ("LULL_BATCHING", "maybe"),
        ("LULL_TIMESTAMP", "wall"),
        ("LULL_HTTP_ADDR", "nowhere"),
    ]))
    .unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines.contains(&"LULL_QUIET_MS=abc: expected milliseconds (a whole number, 1 to 86400000), or a duration with a unit (1500ms, 2s, 5m, 1h)")
    );
    assert!(lines.contains(&"LULL_BATCHING=maybe: expected one of on, off, true, false"));
    assert!(lines.contains(&"LULL_TIMESTAMP=wall: expected one of kafka, arrival"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("LULL_HTTP_ADDR=nowhere: expected")));
}

#[test]
fn unknown_lull_variables_are_named_with_the_nearest_setting() {
    let unknown = unknown_variables(&env(&[
        ("LULL_QUIETMS", "500"),
        ("LULL_MAX_WAIT", "9000"),
        ("LULL_SOMETHING_ELSE_ENTIRELY", "1"),
        ("LULL_QUIET_MS", "500"),
        ("LULL_KAFKA_LINGER_MS", "5"),
        ("LULL_PM2_INSTANCES", "2"),
        ("LULL_TEST_KAFKA", "/tmp/k"),
        ("PATH", "/bin"),
    ]));
    assert_eq!(
        unknown,
        vec![
            ("LULL_MAX_WAIT".to_string(), Some("LULL_MAX_WAIT_MS")),
            ("LULL_QUIETMS".to_string(), Some("LULL_QUIET_MS")),
            ("LULL_SOMETHING_ELSE_ENTIRELY".to_string(), None),
        ]
    );
}

#[test]
fn cross_field_rules_are_checked() {
    let e = Config::from_env(&env(&[
        ("LULL_QUIET_MS", "5000"),
        ("LULL_MAX_WAIT_MS", "1000"),
        ("LULL_MAX_FRAGMENT_BYTES", "1000"),
        ("LULL_MAX_BATCH_BYTES", "10"),
        ("LULL_OUTPUT_TOPIC", "chat.fragments"),
    ]))
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("LULL_MAX_WAIT_MS=1000: expected at least LULL_QUIET_MS (5000)"));
    assert!(
        text.contains("LULL_MAX_FRAGMENT_BYTES=1000: expected at most LULL_MAX_BATCH_BYTES (10)")
    );
    assert!(text.contains("input, output and DLQ topics to be different"));
}

#[test]
fn kafka_pass_through_is_mapped_and_secrets_masked() {
    let c = Config::from_env(&env(&[
        ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("LULL_KAFKA_SASL_PASSWORD", "hunter2"),
        ("REDIS_URL", "redis://lull:topsecret@localhost:6379/0"),
    ]))
    .unwrap();
    assert_eq!(c.kafka["security.protocol"].value(), "SASL_SSL");
    assert_eq!(c.kafka["sasl.password"].value(), "hunter2");
    let dump = format!("{:?} {:?}", c, c.summary());
    assert!(!dump.contains("hunter2"), "{dump}");
    assert!(!dump.contains("topsecret"), "{dump}");
    assert!(dump.contains("redis://lull:***@localhost:6379/0"));
}

/// A setting marked secret in the table never shows its credential in the start-up summary
/// (the help hides such values by the same mark).
#[test]
fn every_secret_setting_is_masked_in_the_summary() {
    let secrets: Vec<&str> = settings::SETTINGS
        .iter()
        .filter(|s| s.secret)
        .map(|s| s.name)
        .collect();
    assert_eq!(secrets, ["REDIS_URL"]);
    for name in secrets {
        let c = Config::from_env(&env(&[(name, "redis://u:topsecret@localhost:6379/0")])).unwrap();
        let summary = format!("{:?}", c.summary());
        assert!(!summary.contains("topsecret"), "{name}: {summary}");
    }
}

#[test]
fn cluster_seed_urls_are_each_checked_and_masked() {
    let c = Config::from_env(&env(&[(
        "REDIS_URL",
        "redis://:pw1@a:7000, redis://:pw2@b:7001",
    )]))
    .unwrap();
    assert!(c.redis_url.is_some());
    assert_eq!(
        mask_url_password("redis://:pw1@a:7000,redis://:pw2@b:7001"),
        "redis://:***@a:7000,redis://:***@b:7001"
    );
    let e = Config::from_env(&env(&[("REDIS_URL", "redis://:pw@a:1,http://b:2")])).unwrap_err();
    assert!(e.to_string().contains("redis://:***@a:1"), "{e}");
}

#[test]
fn bad_redis_url_is_masked_in_the_error() {
    let e = Config::from_env(&env(&[("REDIS_URL", "http://u:pw@host")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "REDIS_URL=http://u:***@host: expected a redis:// or rediss:// URL"
    );
}

#[test]
fn drain_timeout_must_be_below_session_timeout() {
    let e = Config::from_env(&env(&[
        ("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("LULL_DRAIN_TIMEOUT_MS", "6000"),
    ]))
    .unwrap_err();
    assert!(e
        .to_string()
        .contains("less than session.timeout.ms (6000)"));
}

#[test]
fn a_session_timeout_alone_derives_the_drain_timeout_below_it() {
    let c = Config::from_env(&env(&[("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000")])).unwrap();
    assert_eq!(c.drain_timeout, Duration::from_millis(3000));
    let c = Config::defaults();
    assert_eq!(c.drain_timeout, Duration::from_millis(10_000));
    let c = Config::from_env(&env(&[("LULL_KAFKA_SESSION_TIMEOUT_MS", "60000")])).unwrap();
    assert_eq!(c.drain_timeout, Duration::from_millis(10_000));
    let c = Config::from_env(&env(&[
        ("LULL_KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("LULL_DRAIN_TIMEOUT_MS", "5000"),
    ]))
    .unwrap();
    assert_eq!(c.drain_timeout, Duration::from_millis(5000));
}

#[test]
fn absurd_values_are_refused_with_their_bounds() {
    let e = Config::from_env(&env(&[
        ("LULL_FLUSHED_TTL_MS", "18446744073709551615"),
        ("LULL_QUIET_MS", "9223372036854775807"),
        ("LULL_GRACE_MS", "3600001"),
    ]))
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("LULL_FLUSHED_TTL_MS=18446744073709551615: expected milliseconds (a whole number, 60000 to 31536000000), or a duration with a unit (1500ms, 2s, 5m, 1h)"),
        "{text}"
    );
    assert!(
        text.contains("LULL_QUIET_MS=9223372036854775807: expected milliseconds (a whole number, 1 to 86400000), or a duration with a unit (1500ms, 2s, 5m, 1h)"),
        "{text}"
    );
    assert!(text.contains("LULL_GRACE_MS=3600001"), "{text}");
}

#[test]
fn a_kafka_property_librdkafka_refuses_is_one_line_naming_the_variable() {
    let e = Config::from_env(&env(&[
        ("LULL_KAFKA_NO_SUCH_THING", "1"),
        ("LULL_KAFKA_ACKS", "sometimes"),
        ("LULL_KAFKA_SASL_PASSWORD", "hunter2"),
    ]))
    .unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("LULL_KAFKA_ACKS=sometimes: expected a librdkafka setting for acks"),
        "{text}"
    );
    assert!(
        lines[1].starts_with(
            "LULL_KAFKA_NO_SUCH_THING=1: expected a librdkafka setting for no.such.thing"
        ),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
}

#[test]
fn this_build_speaks_tls_scram_and_zstd() {
    let c = Config::from_env(&env(&[
        ("LULL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("LULL_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
        ("LULL_KAFKA_COMPRESSION_TYPE", "zstd"),
    ]));
    assert!(c.is_ok(), "{:?}", c.err());
}

#[test]
fn the_settings_table_drives_reading_and_the_summary() {
    let c = Config::defaults();
    let summary = c.summary();
    assert_eq!(
        summary.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        settings::SETTINGS
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>(),
        "the summary lists exactly the table"
    );
    for s in settings::SETTINGS {
        let value = c.value_of(s.name);
        assert!(value.is_some(), "{} is in the table but not read", s.name);
        if !s.default.is_empty() {
            assert_eq!(
                value.as_deref(),
                Some(s.default),
                "{}: the default read is the table's",
                s.name
            );
        }
        assert!(!s.meaning.is_empty());
    }
}

#[test]
fn channels_override_their_settings_and_bad_ones_are_each_one_line() {
    let c = Config::from_env(&env(&[
        ("LULL_CHANNEL_WHATSAPP_QUIET_MS", "3500"),
        ("LULL_CHANNEL_WHATSAPP_MAX_WAIT_MS", "20000"),
        ("LULL_CHANNEL_WEB_CHAT_BYPASS_PATTERN", "^!"),
        ("LULL_CHANNEL_VOICE_TYPING_MS", "0"),
    ]))
    .expect("valid");
    let names: Vec<&str> = c.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["VOICE", "WEB_CHAT", "WHATSAPP"]);
    let windows = c.channel_windows();
    assert_eq!(
        (windows[2].quiet_ms, windows[2].max_wait_ms),
        (3500, 20_000)
    );
    assert_eq!(
        windows[2].typing_ms, 6000,
        "not overridden: the global setting"
    );
    assert_eq!(windows[0].typing_ms, 0);
    let rules = c.rules();
    assert_eq!(
        rules.channels[1].bypass.as_ref().map(|r| r.as_str()),
        Some("^!")
    );
    assert!(c
        .summary()
        .contains(&("LULL_CHANNEL_WHATSAPP_QUIET_MS".into(), "3500".into())));
    assert!(unknown_variables(&env(&[("LULL_CHANNEL_WHATSAPP_QUIET_MS", "3500")])).is_empty());

    let err = Config::from_env(&env(&[
        ("LULL_CHANNEL_WHATSAPP_QUIET_MS", "soon"),
        ("LULL_CHANNEL_SMS_COLOUR", "red"),
        ("LULL_CHANNEL_WEB_BYPASS_PATTERN", "(["),
        ("LULL_CHANNEL_VOICE_QUIET_MS", "30000"),
    ]))
    .expect_err("four problems");
    let mut vars: Vec<&str> = err.0.iter().map(|p| p.variable.as_str()).collect();
    vars.sort_unstable();
    assert_eq!(
        vars,
        vec![
            "LULL_CHANNEL_SMS_COLOUR",
            "LULL_CHANNEL_VOICE_MAX_WAIT_MS",
            "LULL_CHANNEL_WEB_BYPASS_PATTERN",
            "LULL_CHANNEL_WHATSAPP_QUIET_MS",
        ],
        "{err}"
    );
    for problem in &err.0 {
        assert!(!problem.to_string().contains('\n'), "one line: {problem}");
    }
}

#[test]
fn durations_take_bare_milliseconds_or_a_unit() {
    use super::reader::parse_millis;
    for (text, ms) in [
        ("1500", Some(1_500)),
        ("1500ms", Some(1_500)),
        ("2s", Some(2_000)),
        ("1.5s", Some(1_500)),
        ("0.25s", Some(250)),
        ("5m", Some(300_000)),
        ("1h", Some(3_600_000)),
        (" 2s ", Some(2_000)),
        ("2 s", Some(2_000)),
        ("1.0005s", None),
        ("-2s", None),
        ("2d", None),
        ("s", None),
        ("1.s", None),
        ("abc", None),
    ] {
        assert_eq!(parse_millis(text), ms, "{text:?}");
    }
    let c = Config::from_env(&env(&[
        ("LULL_QUIET_MS", "2s"),
        ("LULL_MAX_WAIT_MS", "1m"),
        ("LULL_DRAIN_TIMEOUT_MS", "3s"),
    ]))
    .unwrap();
    assert_eq!(c.quiet, Duration::from_secs(2));
    assert_eq!(c.max_wait, Duration::from_secs(60));
    assert_eq!(c.drain_timeout, Duration::from_secs(3));
    let e = Config::from_env(&env(&[("LULL_QUIET_MS", "2 days")])).unwrap_err();
    assert_eq!(e.0[0].variable, "LULL_QUIET_MS");
}

#[test]
fn a_setting_spelt_with_a_stray_lull_prefix_is_named() {
    let found = unknown_variables(&env(&[
        ("LULL_REDIS_URL", "redis://x"),
        ("LULL_QUIETMS", "1"),
    ]));
    assert_eq!(
        found,
        vec![
            ("LULL_QUIETMS".to_string(), Some("LULL_QUIET_MS")),
            ("LULL_REDIS_URL".to_string(), Some("REDIS_URL")),
        ]
    );
}

#[test]
fn the_brokers_are_named_in_one_place() {
    let alone =
        Config::from_env(&env(&[("LULL_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")])).unwrap();
    assert_eq!(alone.brokers, "k1:9092,k2:9092", "what the summary shows");
    let same = Config::from_env(&env(&[
        ("KAFKA_BROKERS", "k1:9092"),
        ("LULL_KAFKA_BOOTSTRAP_SERVERS", "k1:9092"),
    ]))
    .unwrap();
    assert_eq!(same.brokers, "k1:9092");
    let both = Config::from_env(&env(&[
        ("KAFKA_BROKERS", "k1:9092"),
        ("LULL_KAFKA_BOOTSTRAP_SERVERS", "other:9092"),
    ]))
    .unwrap_err();
    assert_eq!(both.0.len(), 1);
    assert_eq!(both.0[0].variable, "LULL_KAFKA_BOOTSTRAP_SERVERS");
    assert!(both.0[0].expected.contains("set only one"), "{:?}", both.0);
}

#[test]
fn a_properties_file_sets_every_client_under_the_variables() {
    let dir = std::env::temp_dir().join(format!("lull-props-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client.properties");
    std::fs::write(
        &file,
        "bootstrap.servers=k1:9092,k2:9092\nsecurity.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\n\
         sasl.username=key\nsasl.password=from-the-file\nclient.dns.lookup=use_all_dns_ips\n",
    )
    .unwrap();
    let path = file.to_string_lossy().to_string();
    let c = Config::from_env(&env(&[
        ("LULL_KAFKA_CONFIG_FILE", &path),
        ("LULL_KAFKA_SASL_PASSWORD", "from-the-variable"),
    ]))
    .unwrap();
    assert_eq!(c.brokers, "k1:9092,k2:9092");
    assert!(matches!(&c.kafka["security.protocol"], KafkaProperty::Plain(v) if v == "SASL_SSL"));
    assert!(
        matches!(&c.kafka["sasl.password"], KafkaProperty::Secret(v) if v.expose() == "from-the-variable"),
        "the variable wins"
    );
    assert_eq!(c.kafka_left_out, [format!("{path}:6 client.dns.lookup")]);
    let shown = format!("{:?}", c.summary());
    assert!(!shown.contains("from-the"), "{shown}");
    assert!(shown.contains(&path), "{shown}");

    std::fs::write(&file, "acks=all\nenable.idempotence=perhaps\n").unwrap();
    let e = Config::from_env(&env(&[("LULL_KAFKA_CONFIG_FILE", &path)])).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].variable, format!("{path}:2 enable.idempotence"));
    let missing = Config::from_env(&env(&[(
        "LULL_KAFKA_CONFIG_FILE",
        "/nonexistent/x.properties",
    )]))
    .unwrap_err();
    assert_eq!(missing.0[0].variable, "LULL_KAFKA_CONFIG_FILE");
    let _ = std::fs::remove_dir_all(dir);
}
