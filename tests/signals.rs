//! Chat-native batching end to end: typing signals hold a burst open, `stopped` and `flush`,
//! `"final": true`, the bypass pattern, `follows`, lifecycle events, pass-through — each live and
//! from a lagged log, on real Apache Kafka (the suite's single node) and, for the core rules, on
//! the mock cluster too; with Redis, `follows` survives a crash between two bursts.

mod common;

use std::time::Duration;

use common::*;
use lull::config::{Batching, Config};
use lull::ops::clock::now_ms;

/// A chat message of `user` at `ts`: a fragment with `text` (and `extra` fields), or a signal.
fn chat(user: &str, seq: usize, text: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut v = serde_json::json!({
        "user_id": user,
        "event_id": format!("{user}-{seq}"),
        "seq": seq,
        "text": text,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v.to_string().into_bytes()
}

/// An `edit` (with `text`) or `delete` (without) of `target`.
fn amend(user: &str, target: &str, text: Option<&str>) -> Vec<u8> {
    let id = format!(
        "{user}-{}-of-{target}",
        if text.is_some() { "edit" } else { "delete" }
    );
    let mut v = serde_json::json!({"user_id": user, "target": target, "event_id": id});
    match text {
        Some(t) => {
            v["signal"] = "edit".into();
            v["text"] = t.into();
        }
        None => v["signal"] = "delete".into(),
    }
    v.to_string().into_bytes()
}

fn signal(user: &str, kind: &str) -> Vec<u8> {
    serde_json::json!({"user_id": user, "signal": kind})
        .to_string()
        .into_bytes()
}

fn chat_config(cluster: &Cluster, group: &str) -> Config {
    let mut c = cluster.config(group);
    c.quiet = Duration::from_millis(300);
    c.grace = Duration::from_millis(200);
    c.max_wait = Duration::from_secs(10);
    c.typing = Duration::from_secs(3);
    c.followup = Duration::from_secs(5);
    c.bypass_pattern = Some(regex::Regex::new("^/").unwrap());
    // Two channels with overrides: a slower quiet period, and a bypass pattern of its own.
    c.channels = vec![
        lull::config::channels::Channel {
            name: "CMD".into(),
            bypass_pattern: Some(regex::Regex::new("^!").unwrap()),
            ..Default::default()
        },
        lull::config::channels::Channel {
            name: "SLOW_LINE".into(),
            quiet: Some(Duration::from_millis(1_500)),
            ..Default::default()
        },
    ];
    c
}

/// Writes `messages` (key, value, timestamp offset from `t0`) to the input topic, all at once
/// (in order; acknowledgements are awaited together), so they land within milliseconds.
async fn write(cluster: &Cluster, t0: i64, messages: &[Message]) {
    let producer = cluster.producer();
    let sends = messages.iter().map(|(key, value, dt)| {
        let record = rdkafka::producer::FutureRecord::to(&cluster.input)
            .key(*key)
            .payload(value.as_slice())
            .timestamp(t0 + dt);
        producer.send_result(record).expect("queued")
    });
    let deliveries: Vec<_> = sends.collect();
    for d in deliveries {
        d.await.expect("delivered").expect("acknowledged");
    }
}

/// A base time a second ahead, so every window of a script closes after all of it was written.
fn base_time() -> i64 {
    now_ms() + 1_000
}

/// The batches of `key` read back, in output order: (reason, texts, follows).
fn of(seen: &[OutMsg], key: &str) -> Vec<(String, Vec<String>, Option<String>)> {
    seen.iter()
        .filter(|b| b.json()["key"] == key)
        .map(|b| {
            let v = b.json();
            (
                v["reason"].as_str().unwrap_or_default().to_string(),
                v["fragments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["text"].as_str().unwrap_or_default().to_string())
                    .collect(),
                v["follows"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The scenario every rule is checked with: one user per rule, all in one log.
/// A message of the log: key, value, milliseconds after the script's base time.
type Message = (&'static str, Vec<u8>, i64);

fn script() -> (Vec<Message>, usize) {
    let msgs = vec![
        // typing holds the burst open across a pause of 800 ms (quiet is 300).
        ("typist", chat("typist", 0, "hi", serde_json::json!({})), 0),
        ("typist", signal("typist", "typing"), 100),
        (
            "typist",
            chat("typist", 1, "still typing this", serde_json::json!({})),
            900,
        ),
        // The same pause without typing: two batches.
        ("pauser", chat("pauser", 0, "hi", serde_json::json!({})), 0),
        (
            "pauser",
            chat("pauser", 1, "again", serde_json::json!({})),
            900,
        ),
        // stopped ends the hold: the pause after it splits.
        ("stopper", chat("stopper", 0, "a", serde_json::json!({})), 0),
        ("stopper", signal("stopper", "typing"), 50),
        ("stopper", signal("stopper", "stopped"), 100),
        (
            "stopper",
            chat("stopper", 1, "b", serde_json::json!({})),
            900,
        ),
        // final closes the batch at once.
        (
            "finisher",
            chat("finisher", 0, "one", serde_json::json!({})),
            0,
        ),
        (
            "finisher",
            chat("finisher", 1, "two", serde_json::json!({"final": true})),
            50,
        ),
        (
            "finisher",
            chat("finisher", 2, "three", serde_json::json!({})),
            100,
        ),
        // flush signal.
        ("flusher", chat("flusher", 0, "x", serde_json::json!({})), 0),
        ("flusher", signal("flusher", "flush"), 50),
        // bypass: the open window is interrupted, then the command alone, in that order.
        (
            "commander",
            chat("commander", 0, "hello", serde_json::json!({})),
            0,
        ),
        (
            "commander",
            chat("commander", 1, "/help", serde_json::json!({})),
            50,
        ),
        // A signal with no open window changes nothing.
        ("ghost", signal("ghost", "typing"), 0),
        // follows: a second burst 2 s after the first (follow-up is 5 s).
        (
            "returner",
            chat("returner", 0, "first", serde_json::json!({})),
            0,
        ),
        (
            "returner",
            chat("returner", 1, "second", serde_json::json!({})),
            2_000,
        ),
        // An unknown signal goes to the DLQ.
        ("dancer", signal("dancer", "dancing"), 0),
        // Channels: the window keeps its first fragment's channel (quiet 1.5 s), so the pause
        // that splits the pauser's burst does not split this one.
        (
            "slowpoke",
            chat(
                "slowpoke",
                0,
                "hi",
                serde_json::json!({"channel": "slow-line"}),
            ),
            0,
        ),
        (
            "slowpoke",
            chat("slowpoke", 1, "more", serde_json::json!({})),
            900,
        ),
        // Edits and deletes of open fragments change them in place.
        (
            "editor",
            chat("editor", 0, "helo", serde_json::json!({})),
            0,
        ),
        (
            "editor",
            chat("editor", 1, "oops", serde_json::json!({})),
            50,
        ),
        ("editor", amend("editor", "editor-0", Some("hello")), 80),
        ("editor", amend("editor", "editor-1", None), 90),
        (
            "editor",
            chat("editor", 2, "world", serde_json::json!({})),
            100,
        ),
        // An edit of a fragment already out: a batch of one that names the batch it amends.
        (
            "amender",
            chat("amender", 0, "frist", serde_json::json!({})),
            0,
        ),
        (
            "amender",
            amend("amender", "amender-0", Some("first")),
            1_500,
        ),
        // A channel's own bypass pattern replaces the global one.
        (
            "banger",
            chat(
                "banger",
                0,
                "!status",
                serde_json::json!({"channel": "cmd"}),
            ),
            0,
        ),
        (
            "banger",
            chat("banger", 1, "/help", serde_json::json!({"channel": "cmd"})),
            50,
        ),
    ];
    // The log in time order (one partition: partition time is the newest timestamp read).
    let mut msgs = msgs;
    msgs.sort_by_key(|(_, _, dt)| *dt);
    // Every fragment's event id comes out once; so does the amender's edit, as a batch of one.
    let fragments = msgs
        .iter()
        .filter(|(_, v, _)| !String::from_utf8_lossy(v).contains("\"signal\""))
        .count()
        + 1;
    (msgs, fragments)
}

/// What the script must give, whether read live or after the fact.
fn check(seen: &[OutMsg]) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let typist = of(seen, "typist");
    assert_eq!(typist.len(), 1, "typing held the burst: {typist:?}");
    assert_eq!(typist[0].0, "quiet");
    assert_eq!(typist[0].1, s(&["hi", "still typing this"]));
    assert_eq!(
        of(seen, "pauser").len(),
        2,
        "without typing the pause splits"
    );
    assert_eq!(of(seen, "stopper").len(), 2, "stopped ended the hold");
    let finisher = of(seen, "finisher");
    assert_eq!(finisher[0].0, "final");
    assert_eq!(finisher[0].1, s(&["one", "two"]));
    assert_eq!(finisher[1].1, s(&["three"]));
    let flusher = of(seen, "flusher");
    assert_eq!((flusher[0].0.as_str(), flusher.len()), ("signal", 1));
    let commander = of(seen, "commander");
    assert_eq!(commander.len(), 2);
    assert_eq!(
        (commander[0].0.as_str(), commander[0].1.clone()),
        ("interrupted", s(&["hello"]))
    );
    assert_eq!(
        (commander[1].0.as_str(), commander[1].1.clone()),
        ("bypass", s(&["/help"]))
    );
    assert!(of(seen, "ghost").is_empty());
    let editor: Vec<&serde_json::Value> = seen
        .iter()
        .map(OutMsg::json)
        .filter(|b| b["key"] == "editor")
        .collect();
    assert_eq!(editor.len(), 1, "{editor:?}");
    assert_eq!(
        editor[0]["text"], "hello\nworld",
        "the edit used, the deleted left out"
    );
    assert_eq!(editor[0]["fragments"][0]["edited"], "hello");
    assert_eq!(
        editor[0]["fragments"][0]["text"], "helo",
        "the original kept beside it"
    );
    assert_eq!(editor[0]["fragments"][1]["deleted"], true);
    let amender: Vec<&serde_json::Value> = seen
        .iter()
        .map(OutMsg::json)
        .filter(|b| b["key"] == "amender")
        .collect();
    assert_eq!(amender.len(), 2, "{amender:?}");
    assert_eq!(
        (amender[1]["reason"].as_str(), amender[1]["text"].as_str()),
        (Some("edit"), Some("first"))
    );
    assert_eq!(amender[1]["amends"], amender[0]["batch_id"]);
    let slowpoke = of(seen, "slowpoke");
    assert_eq!(
        slowpoke.len(),
        1,
        "its channel's quiet period: {slowpoke:?}"
    );
    assert_eq!(slowpoke[0].1, s(&["hi", "more"]));
    let banger = of(seen, "banger");
    assert_eq!(
        banger
            .iter()
            .map(|b| (b.0.as_str(), b.1.clone()))
            .collect::<Vec<_>>(),
        vec![("bypass", s(&["!status"])), ("quiet", s(&["/help"]))],
        "the channel's pattern, not the global one"
    );
    let returner = of(seen, "returner");
    assert_eq!(returner.len(), 2);
    assert_eq!(returner[0].2, None);
    let first_id = seen
        .iter()
        .find(|b| b.json()["key"] == "returner")
        .map(|b| b.json()["batch_id"].as_str().unwrap().to_string());
    assert_eq!(
        returner[1].2, first_id,
        "the second burst follows the first"
    );
    // Signals are never part of a batch, except an edit or delete that goes out alone.
    let no_signal_in_a_batch = seen.iter().all(|b| {
        b.json()["reason"] == "edit"
            || b.json()["reason"] == "delete"
            || b.json()["fragments"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f.get("signal").is_none())
    });
    assert!(no_signal_in_a_batch);
}

/// Runs the script live, then from the lagged log in a fresh group; with `redis`, both runs
/// keep their facts there (each its own prefix), as a deployment with Redis would.
async fn live_and_lagged(cluster: Cluster, redis: Option<&RedisServer>) {
    let (msgs, fragments) = script();
    let with_redis = |cfg: Config, name: &str| match redis {
        Some(r) => r.configure(cfg, &unique_prefix(name)),
        None => cfg,
    };
    // Live: lull runs first; the log is written as it happens.
    let cfg = with_redis(chat_config(&cluster, "signals-live"), "signals-live");
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    let t0 = base_time();
    write(&cluster, t0, &msgs).await;
    let mut out = cluster.collector(&cluster.output);
    out.until("every fragment batched", |s| {
        event_counts(s).len() == fragments
    })
    .await;
    out.settle(Duration::from_millis(500)).await;
    lull.stop().await;
    check(&out.seen);
    // `lull verify` agrees: edited fragments are the input plus their change, an edit alone is
    // its signal, a channel's window is checked with the channel's settings.
    verify_clean(&cfg).await;
    let mut dlq = cluster.collector(&cluster.dlq);
    let dead = dlq.until("the unknown signal", |s| !s.is_empty()).await[0].clone();
    assert!(dead.headers["x-error-message"].contains("unknown signal"));

    // Lagged: a fresh group reads the same log after the fact, into the replay topic.
    let mut cfg = with_redis(chat_config(&cluster, "signals-lagged"), "signals-lagged");
    cfg.output_topic = cluster.replay.clone();
    let lagged = Running::start(cfg.clone());
    let mut replay = cluster.collector(&cluster.replay);
    replay
        .until("every fragment batched again", |s| {
            event_counts(s).len() == fragments
        })
        .await;
    lagged.stop().await;
    check(&replay.seen);
    let ids = |s: &[OutMsg]| {
        let mut v: Vec<(String, String)> = s
            .iter()
            .map(|b| {
                let j = b.json();
                (
                    j["batch_id"].as_str().unwrap().to_string(),
                    format!("{} {:?}", j["reason"], j["follows"]),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&out.seen), ids(&replay.seen), "live and lagged agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_rule_live_and_from_a_lagged_log_on_real_kafka() {
    live_and_lagged(Cluster::start(1).await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_rule_live_and_from_a_lagged_log_on_the_mock() {
    live_and_lagged(Cluster::mock(1), None).await;
}

/// The same rules with Redis: its duplicate protection and `follows` records must not change
/// a batch (signals have no event id; an edit alone is a batch of a signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_rule_live_and_from_a_lagged_log_on_real_kafka_with_redis() {
    let redis = RedisServer::shared();
    live_and_lagged(Cluster::start(1).await, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_say_opened_and_flushed() {
    let cluster = Cluster::start(1).await;
    let events_topic = format!("{}.events", cluster.input);
    create_topics(cluster.bootstrap(), &[(events_topic.clone(), 1)], 1).await;
    let mut cfg = chat_config(&cluster, "events");
    cfg.events_topic = Some(events_topic.clone());
    let lull = Running::start(cfg);
    lull.assigned(1).await;
    let t0 = base_time();
    // Two bursts; the second starts 2 s after the first (follow-up is 5 s).
    write(
        &cluster,
        t0,
        &[
            ("ev", chat("ev", 0, "a", serde_json::json!({})), 0),
            ("ev", chat("ev", 1, "b", serde_json::json!({})), 50),
            ("ev", chat("ev", 2, "c", serde_json::json!({})), 2_050),
        ],
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    let batches = out.until("both batches", |s| s.len() >= 2).await.to_vec();
    let id = batches[0].json()["batch_id"].as_str().unwrap().to_string();
    let second = batches[1].json()["batch_id"].as_str().unwrap().to_string();
    let mut events = Collector::on(cluster.bootstrap(), &events_topic, 1);
    let seen = events
        .until("opened and flushed of both", |s| s.len() >= 4)
        .await
        .to_vec();
    lull.stop().await;
    let find = |kind: &str, batch: &str| {
        seen.iter()
            .map(|m| m.json())
            .find(|e| e["event"] == kind && e["batch_id"] == batch)
            .unwrap_or_else(|| panic!("no {kind} event of {batch}: {seen:#?}"))
    };
    let opened = find("opened", &id);
    assert_eq!(opened["key"].as_str(), Some("ev"));
    assert!(
        opened["close_at"].as_i64().unwrap() >= t0 + 300,
        "expected close: quiet after the first"
    );
    assert!(opened.get("follows").is_none(), "the first follows nothing");
    let flushed = find("flushed", &id);
    assert_eq!(
        (flushed["reason"].as_str(), flushed["count"].as_u64()),
        (Some("quiet"), Some(2))
    );
    // The second window's `opened` already says what it follows: the bot's earliest cue to hold
    // or cancel the answer to the first batch.
    let reopened = find("opened", &second);
    assert_eq!(
        reopened["follows"].as_str(),
        Some(id.as_str()),
        "{reopened}"
    );
    assert_eq!(
        batches[1].json()["follows"].as_str(),
        Some(id.as_str()),
        "the batch says the same"
    );
    assert!(
        seen.iter().all(|m| m.key.as_deref() == Some(&b"ev"[..])),
        "keyed by user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_drops_signals_ignores_final_and_bypass_and_keeps_follows() {
    let cluster = Cluster::start(1).await;
    let mut cfg = chat_config(&cluster, "passthrough");
    cfg.batching = Batching::Off;
    let lull = Running::start(cfg);
    lull.assigned(1).await;
    let t0 = base_time();
    write(
        &cluster,
        t0,
        &[
            ("p", chat("p", 0, "a", serde_json::json!({})), 0),
            ("p", signal("p", "typing"), 10),
            (
                "p",
                chat("p", 1, "/cmd", serde_json::json!({"final": true})),
                20,
            ),
        ],
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("both fragments", |s| event_counts(s).len() == 2)
        .await;
    out.settle(Duration::from_millis(300)).await;
    lull.stop().await;
    let p = of(&out.seen, "p");
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|(reason, _, _)| reason == "passthrough"));
    let first_id = out.seen[0].json()["batch_id"].as_str().map(str::to_string);
    assert_eq!(p[1].2, first_id, "follows still applies");
}

/// at_least_once: with Redis, `follows` survives a crash between two bursts (the key's flushed
/// record names its last batch); without, it may not. (exactly_once: the state topic's records
/// carry it, with or without Redis.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_survives_a_crash_between_two_bursts_with_redis() {
    let cluster = Cluster::start(1).await;
    let redis = RedisServer::shared();
    let prefix = unique_prefix("follows");
    let mut cfg = redis.configure(chat_config(&cluster, "follows-crash"), &prefix);
    cfg.delivery = lull::config::Delivery::AtLeastOnce;
    let first = Running::start(cfg.clone());
    first.assigned(1).await;
    let t0 = base_time();
    write(
        &cluster,
        t0,
        &[("f", chat("f", 0, "first burst", serde_json::json!({})), 0)],
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    let first_id = out.until("the first batch", |s| !s.is_empty()).await[0].json()["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Recorded in Redis, then the process dies without a word.
    let mut conn = redis.conn().await;
    let key = lull::io::store::Keys::new(&prefix, &cfg.group_id)
        .partition(&cfg.input_topic, 0)
        .flushed("f");
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let id: Option<String> = redis::AsyncCommands::hget(&mut conn, &key, "batch_id")
            .await
            .unwrap();
        if id.as_deref() == Some(first_id.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the flushed record never showed up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.handle.abort();
    let _ = first.handle.await;

    let second = Running::start(cfg);
    second.assigned(1).await;
    write(
        &cluster,
        t0,
        &[(
            "f",
            chat("f", 1, "second burst", serde_json::json!({})),
            2_000,
        )],
    )
    .await;
    out.until("the second batch", |s| s.len() >= 2).await;
    second.stop().await;
    let f = of(&out.seen, "f");
    assert_eq!(f.last().unwrap().1, vec!["second burst".to_string()]);
    assert_eq!(f.last().unwrap().2.as_deref(), Some(first_id.as_str()));
}

/// exactly_once, real Kafka: lull stops while the target of an edit is in an open window (its
/// offset uncommitted), the edit arrives meanwhile, and the next run rebuilds the window from the
/// log and applies the edit in place, as a run that never stopped would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_after_a_restart_still_changes_its_open_target() {
    let cluster = Cluster::start(1).await;
    let mut cfg = chat_config(&cluster, "edit-restart");
    // The window stays open across the restart.
    cfg.quiet = Duration::from_secs(30);
    cfg.max_wait = Duration::from_secs(60);
    let first = Running::start(cfg.clone());
    first.assigned(1).await;
    let t0 = base_time();
    write(
        &cluster,
        t0,
        &[(
            "restarter",
            chat("restarter", 0, "helo", serde_json::json!({})),
            0,
        )],
    )
    .await;
    wait_for("the target read", || first.health.messages_read() >= 1).await;
    first.stop().await;
    write(
        &cluster,
        t0,
        &[
            (
                "restarter",
                amend("restarter", "restarter-0", Some("hello")),
                100,
            ),
            ("restarter", signal("restarter", "flush"), 200),
        ],
    )
    .await;
    let second = Running::start(cfg);
    let mut out = cluster.collector(&cluster.output);
    let batch = out.until("the batch", |s| !s.is_empty()).await[0]
        .json()
        .clone();
    out.settle(Duration::from_millis(500)).await;
    second.stop().await;
    assert_eq!(out.seen.len(), 1, "one batch: {:?}", out.seen);
    assert_eq!(batch["reason"], "signal");
    assert_eq!(batch["fragments"][0]["edited"], "hello");
    assert_eq!(batch["text"], "hello");
}
