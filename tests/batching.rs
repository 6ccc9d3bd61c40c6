//! Batching end to end, against real Apache Kafka (the suite's single node; the mock cluster only
//! where a broker must go down on command): the semantics of the README as a user sees them on the
//! output topic.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use lull::config::Batching;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_fire_burst_becomes_one_batch_after_the_quiet_period() {
    let cluster = Cluster::start(2).await;
    let cfg = cluster.config("burst");
    let (quiet, grace) = (cfg.quiet.as_millis() as i64, cfg.grace.as_millis() as i64);
    let lull = Running::start(cfg);
    lull.assigned(2).await;

    let producer = cluster.producer();
    for seq in 0..4 {
        send(
            &producer,
            &cluster.input,
            Some("user-1"),
            &fragment("user-1", seq),
            None,
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut out = cluster.collector(&cluster.output);
    let batches = out.until("one batch", |s| !s.is_empty()).await.to_vec();
    out.settle(Duration::from_millis(quiet as u64 * 3)).await;
    assert_eq!(
        out.seen.len(),
        1,
        "exactly one batch for one burst: {:#?}",
        out.seen.iter().map(OutMsg::json).collect::<Vec<_>>()
    );

    let b = &batches[0];
    let v = b.json();
    assert_eq!(v["key"], "user-1");
    assert_eq!(v["count"], 4);
    assert_eq!(v["reason"], "quiet");
    assert_eq!(
        b.event_ids(),
        vec!["user-1-0", "user-1-1", "user-1-2", "user-1-3"]
    );
    assert_eq!(
        v["text"],
        "user-1 says 0\nuser-1 says 1\nuser-1 says 2\nuser-1 says 3"
    );
    assert_eq!(b.key.as_deref(), Some(&b"user-1"[..]));
    assert_eq!(b.headers["lull-count"], "4");
    assert_eq!(b.headers["lull-batch-id"], v["batch_id"].as_str().unwrap());
    let partition = v["source"]["partition"].as_i64().unwrap();
    let first = v["source"]["first_offset"].as_i64().unwrap();
    assert_eq!(
        v["batch_id"],
        format!("{}/{partition}/{first}", cluster.input)
    );

    let flushed_at = v["flushed_at"].as_i64().unwrap();
    let last_ts = v["last_ts"].as_i64().unwrap();
    let waited = flushed_at - last_ts;
    assert!(
        waited >= quiet + grace,
        "flushed {waited} ms after the last fragment: too early"
    );
    assert!(
        waited <= quiet + grace + 2_000,
        "flushed {waited} ms after the last fragment: too late"
    );
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_caps_a_user_who_never_pauses() {
    let cluster = Cluster::start(1).await;
    let mut cfg = cluster.config("maxwait");
    cfg.quiet = Duration::from_millis(400);
    cfg.max_wait = Duration::from_millis(1_000);

    // 30 fragments, explicitly 100 ms apart (and in the past, so none is clamped as from the
    // future): never quiet for 400 ms, for 3 seconds. Written before lull starts, so the batches
    // follow from the timestamps alone, however slowly a loaded machine sends them.
    let producer = cluster.producer();
    let t0 = lull::ops::clock::now_ms() - 5_000;
    for seq in 0..30 {
        let ts = t0 + seq as i64 * 100;
        send(
            &producer,
            &cluster.input,
            Some("chatty"),
            &fragment("chatty", seq),
            None,
            Some(ts),
        )
        .await;
    }
    let lull = Running::start(cfg);
    let mut out = cluster.collector(&cluster.output);
    let batches = out
        .until("all 30 fragments", |s| event_counts(s).len() == 30)
        .await
        .to_vec();
    for b in &batches {
        let v = b.json();
        let span = v["last_ts"].as_i64().unwrap() - v["first_ts"].as_i64().unwrap();
        assert!(span <= 1_000, "a batch spans {span} ms, over max wait");
    }
    let reasons: Vec<String> = batches
        .iter()
        .map(|b| b.json()["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons[..reasons.len() - 1].iter().all(|r| r == "max_wait"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.len(),
        3,
        "3 s of typing with a 1 s cap: {reasons:?}"
    );
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_byte_caps_flush_at_once() {
    let cluster = Cluster::start(1).await;
    let mut cfg = cluster.config("caps");
    cfg.quiet = Duration::from_secs(30);
    cfg.max_wait = Duration::from_secs(60);
    cfg.max_fragments = 3;
    cfg.max_batch_bytes = 250;
    cfg.max_fragment_bytes = 250;
    let lull = Running::start(cfg);
    lull.assigned(1).await;

    let producer = cluster.producer();
    for seq in 0..6 {
        send(
            &producer,
            &cluster.input,
            Some("a"),
            &fragment("a", seq),
            None,
            None,
        )
        .await;
    }
    // ~100-byte fragments: two fit under 250 bytes, the third would not.
    let big = |seq: usize| {
        serde_json::json!({"event_id": format!("b-{seq}"), "pad": "x".repeat(70)})
            .to_string()
            .into_bytes()
    };
    // The fifth opens a third window that stays open: it proves the second pair was cut by size.
    for seq in 0..5 {
        send(&producer, &cluster.input, Some("b"), &big(seq), None, None).await;
    }
    let mut out = cluster.collector(&cluster.output);
    let batches = out
        .until("cap-flushed batches", |s| {
            let c = event_counts(s);
            (0..6).all(|i| c.contains_key(&format!("a-{i}")))
                && (0..4).all(|i| c.contains_key(&format!("b-{i}")))
        })
        .await
        .to_vec();
    let by_key = |k: &str| -> Vec<(String, usize)> {
        batches
            .iter()
            .filter(|b| b.json()["key"] == k)
            .map(|b| {
                (
                    b.json()["reason"].as_str().unwrap().to_string(),
                    b.json()["count"].as_u64().unwrap() as usize,
                )
            })
            .collect()
    };
    assert_eq!(
        by_key("a"),
        vec![("max_fragments".into(), 3), ("max_fragments".into(), 3)]
    );
    assert_eq!(
        by_key("b"),
        vec![("max_bytes".into(), 2), ("max_bytes".into(), 2)]
    );
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_still_flushes_by_wall_clock() {
    let cluster = Cluster::start(4).await;
    let lull = Running::start(cluster.config("idle"));
    lull.assigned(4).await;
    let producer = cluster.producer();
    // One fragment, then nothing at all on any partition: only the wall clock can close it.
    send(
        &producer,
        &cluster.input,
        Some("lonely"),
        &fragment("lonely", 0),
        Some(2),
        None,
    )
    .await;
    let mut out = cluster.collector(&cluster.output);
    let b = out.until("the lone batch", |s| !s.is_empty()).await[0].clone();
    assert_eq!(b.json()["reason"], "quiet");
    assert_eq!(b.event_ids(), vec!["lonely-0"]);
    lull.stop().await;
}

/// Writes bursts for several users in real time and returns their (user, seq) in order.
async fn type_bursts(cluster: &Cluster, users: usize, bursts: usize, gap_ms: u64, pause_ms: u64) {
    let producer = cluster.producer();
    for burst in 0..bursts {
        for i in 0..3 {
            for u in 0..users {
                let user = format!("u{u}");
                send(
                    &producer,
                    &cluster.input,
                    Some(&user),
                    &fragment(&user, burst * 3 + i),
                    Some(0),
                    None,
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
}

fn batch_shapes(batches: &[OutMsg]) -> BTreeMap<String, (String, Vec<String>)> {
    batches
        .iter()
        .map(|b| {
            let v = b.json();
            (
                v["batch_id"].as_str().unwrap().to_string(),
                (v["reason"].as_str().unwrap().to_string(), b.event_ids()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_log_read_after_the_fact_gives_the_same_batches_as_live() {
    let cluster = Cluster::start(1).await;
    let mut live_cfg = cluster.config("live");
    live_cfg.quiet = Duration::from_millis(400);
    live_cfg.grace = Duration::from_millis(500);
    let replay_cfg = {
        let mut c = live_cfg.clone();
        c.group_id = "replay".into();
        c.output_topic = cluster.replay.clone();
        c
    };
    let live = Running::start(live_cfg);
    live.assigned(1).await;
    type_bursts(&cluster, 5, 3, 40, 1_200).await;
    let mut out = cluster.collector(&cluster.output);
    let live_batches = out
        .until("live batches", |s| event_counts(s).len() == 45)
        .await
        .to_vec();
    live.stop().await;

    // A second group reads the same log long after it was written: pure catch-up.
    let replay = Running::start(replay_cfg);
    let mut out2 = cluster.collector(&cluster.replay);
    let replay_batches = out2
        .until("replayed batches", |s| event_counts(s).len() == 45)
        .await
        .to_vec();
    replay.stop().await;

    assert_eq!(live_batches.len(), 15, "5 users x 3 bursts");
    assert_eq!(batch_shapes(&live_batches), batch_shapes(&replay_batches));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_goes_to_the_dlq_with_headers_while_valid_input_is_batched() {
    let cluster = Cluster::start(1).await;
    let mut cfg = cluster.config("dlq");
    cfg.max_fragment_bytes = 200;
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    let producer = cluster.producer();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300));
    let bad: Vec<(Option<&str>, Vec<u8>, &str)> = vec![
        (Some("k1"), b"not json at all".to_vec(), "not valid JSON"),
        (Some("k2"), b"[1,2,3]".to_vec(), "not an object"),
        (None, br#"{"text":"who am I"}"#.to_vec(), "no key"),
        (Some("k4"), big.into_bytes(), "over LULL_MAX_FRAGMENT_BYTES"),
    ];
    let mut offsets = Vec::new();
    send(
        &producer,
        &cluster.input,
        Some("good"),
        &fragment("good", 0),
        None,
        None,
    )
    .await;
    for (key, value, _) in &bad {
        offsets.push(
            send(&producer, &cluster.input, *key, value, None, None)
                .await
                .1,
        );
    }
    send(
        &producer,
        &cluster.input,
        None,
        &fragment("good", 1),
        None,
        None,
    )
    .await;

    let mut dlq = cluster.collector(&cluster.dlq);
    let dead = dlq.until("4 dead letters", |s| s.len() >= 4).await.to_vec();
    for ((key, value, why), (msg, offset)) in bad.iter().zip(dead.iter().zip(&offsets)) {
        assert_eq!(msg.key.as_deref(), key.map(str::as_bytes), "key unchanged");
        assert_eq!(
            msg.value.as_deref(),
            Some(value.as_slice()),
            "value unchanged"
        );
        assert!(
            msg.headers["x-error-message"].contains(why),
            "{:?}",
            msg.headers
        );
        assert_eq!(msg.headers["x-original-topic"], cluster.input);
        assert_eq!(msg.headers["x-original-partition"], "0");
        assert_eq!(msg.headers["x-original-offset"], offset.to_string());
        let failed_at = &msg.headers["x-failed-at"];
        assert!(
            humantime::parse_rfc3339(failed_at).is_ok(),
            "RFC 3339: {failed_at}"
        );
        assert_eq!(msg.headers["trace"], "t", "original headers kept");
    }
    let mut out = cluster.collector(&cluster.output);
    let batches = out
        .until("the good batch", |s| event_counts(s).len() == 2)
        .await;
    assert_eq!(batches.len(), 1);
    assert_eq!(
        batches[0].event_ids(),
        vec!["good-0", "good-1"],
        "user_id works as the key"
    );
    lull.stop().await;
    let r = verify_clean(&cfg).await;
    assert_eq!(
        (r.fragments_in, r.in_batches, r.invalid_in, r.dead_lettered),
        (2, 2, 4, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_off_passes_every_fragment_through() {
    let cluster = Cluster::start(1).await;
    let mut cfg = cluster.config("off");
    cfg.batching = Batching::Off;
    let lull = Running::start(cfg);
    lull.assigned(1).await;
    let producer = cluster.producer();
    for seq in 0..5 {
        send(
            &producer,
            &cluster.input,
            Some("p"),
            &fragment("p", seq),
            None,
            None,
        )
        .await;
    }
    send(&producer, &cluster.input, Some("p"), b"broken", None, None).await;
    let mut out = cluster.collector(&cluster.output);
    let batches = out
        .until("5 pass-through batches", |s| s.len() >= 5)
        .await
        .to_vec();
    for (seq, b) in batches.iter().enumerate() {
        let v = b.json();
        assert_eq!(v["reason"], "passthrough");
        assert_eq!(v["count"], 1);
        assert_eq!(b.event_ids(), vec![format!("p-{seq}")], "order kept");
    }
    let mut dlq = cluster.collector(&cluster.dlq);
    dlq.until("the broken one in the &cluster.dlq", |s| s.len() == 1)
        .await;
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dropped_mid_burst_loses_nothing() {
    let cluster = Cluster::start(2).await;
    let mut cfg = cluster.config("crash");
    cfg.quiet = Duration::from_millis(1_500);
    let first = Running::start(cfg.clone());
    first.assigned(2).await;
    let producer = cluster.producer();
    let users: Vec<String> = (0..10).map(|u| format!("c{u}")).collect();
    for seq in 0..3 {
        for user in &users {
            send(
                &producer,
                &cluster.input,
                Some(user),
                &fragment(user, seq),
                None,
                None,
            )
            .await;
        }
    }
    wait_for("the first worker to read the burst", || {
        first.health.messages_read() >= 30
    })
    .await;
    // Gone mid-burst: no flush, nothing committed beyond what was delivered.
    first.handle.abort();
    let _ = first.handle.await;

    let second = Running::start(cfg);
    second.assigned(2).await;
    for seq in 3..5 {
        for user in &users {
            send(
                &producer,
                &cluster.input,
                Some(user),
                &fragment(user, seq),
                None,
                None,
            )
            .await;
        }
    }
    let mut out = cluster.collector(&cluster.output);
    out.until("every fragment in a batch", |s| event_counts(s).len() == 50)
        .await;
    out.settle(Duration::from_secs(2)).await;
    let counts = event_counts(&out.seen);
    for user in &users {
        for seq in 0..5 {
            assert_eq!(
                counts.get(&format!("{user}-{seq}")),
                Some(&1),
                "{user}-{seq}"
            );
        }
        // Per user, batches come in order and cover the fragments in order.
        let ids: Vec<String> = out
            .seen
            .iter()
            .filter(|b| b.json()["key"] == user.as_str())
            .flat_map(OutMsg::event_ids)
            .collect();
        let expected: Vec<String> = (0..5).map(|s| format!("{user}-{s}")).collect();
        assert_eq!(ids, expected);
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_partitions_and_batch_each_burst_once() {
    let cluster = Cluster::start(4).await;
    let cfg = cluster.config("pair");
    let a = Running::start(cfg.clone());
    let b = Running::start(cfg);
    wait_for("both workers to own partitions", || {
        let (x, y) = (
            a.health.assigned_partitions(),
            b.health.assigned_partitions(),
        );
        x > 0 && y > 0 && x + y == 4
    })
    .await;
    let producer = cluster.producer();
    let users: Vec<String> = (0..40).map(|u| format!("w{u}")).collect();
    // All 120 handed to the producer at once, in order (its queue keeps a partition's order), so
    // each user's three fragments land within milliseconds of each other however loaded the
    // machine is: awaited one by one, 40 acknowledgements between two fragments of one user
    // could outlast the 300 ms quiet period and cut a burst in two.
    let values: Vec<(&String, Vec<u8>)> = (0..3)
        .flat_map(|seq| users.iter().map(move |u| (u, fragment(u, seq))))
        .collect();
    futures_util::future::join_all(values.iter().map(|(user, value)| {
        send(
            &producer,
            &cluster.input,
            Some(user.as_str()),
            value,
            None,
            None,
        )
    }))
    .await;
    let mut out = cluster.collector(&cluster.output);
    out.until("every burst", |s| event_counts(s).len() == 120)
        .await;
    out.settle(Duration::from_secs(1)).await;
    assert_eq!(out.seen.len(), 40, "one batch per user");
    for m in &out.seen {
        assert_eq!(m.json()["count"], 3);
    }
    assert!(
        a.health.messages_read() > 0 && b.health.messages_read() > 0,
        "both did work"
    );
    assert_eq!(a.health.messages_read() + b.health.messages_read(), 120);
    a.stop().await;
    b.stop().await;
}

/// at_least_once: lull's own retry path (each failed delivery sent again, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_outage_is_retried_without_loss_and_without_committing_past_it() {
    output_outage(lull::config::Delivery::AtLeastOnce).await;
}

/// exactly_once: the transaction that cannot commit is aborted and replayed once the broker is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_outage_aborts_the_transaction_and_replays_it_without_loss() {
    output_outage(lull::config::Delivery::ExactlyOnce).await;
}

async fn output_outage(delivery: lull::config::Delivery) {
    // The mock: the output broker goes down on command (the suite's real broker is shared).
    let cluster = Cluster::mock(1);
    let mut cfg = cluster.config("outage");
    cfg.delivery = delivery;
    // Deliveries give up after 1.5 s, so lull's own retry path is what carries the batches over.
    cfg.kafka.insert(
        "message.timeout.ms".into(),
        lull::config::KafkaProperty::Plain("1500".into()),
    );
    let lull = Running::start(cfg);
    lull.assigned(1).await;
    let producer = cluster.producer();
    for u in 0..5 {
        let user = format!("o{u}");
        send(
            &producer,
            &cluster.input,
            Some(&user),
            &fragment(&user, 0),
            None,
            None,
        )
        .await;
    }
    wait_for("the fragments to be read", || {
        lull.health.messages_read() >= 5
    })
    .await;
    // Every broker goes away before the batches are due (quiet + grace = 550 ms) and stays away
    // well past the delivery timeout.
    cluster
        .mock_broker()
        .with(|c| c.broker_down(1))
        .unwrap()
        .unwrap();
    let retries = || match delivery {
        lull::config::Delivery::AtLeastOnce => lull::ops::metrics::metrics().produce_retries.get(),
        lull::config::Delivery::ExactlyOnce => lull::ops::metrics::metrics()
            .transactions
            .with_label_values(&["aborted"])
            .get(),
    };
    let retries_before = retries();
    // exactly_once: the transaction is aborted, or (a commit stuck until the group dropped this
    // member) left to the partition's next owner to abort.
    wait_for("lull to give up what it had sent", || {
        retries() > retries_before
            || (delivery == lull::config::Delivery::ExactlyOnce
                && lull.health.assigned_partitions() == 0)
    })
    .await;
    cluster
        .mock_broker()
        .with(|c| c.broker_up(1))
        .unwrap()
        .unwrap();

    let mut out = cluster.collector(&cluster.output);
    out.until("every batch after the outage", |s| {
        event_counts(s).len() == 5
    })
    .await;
    out.settle(Duration::from_secs(1)).await;
    let counts = event_counts(&out.seen);
    assert!(
        counts.values().all(|&c| c == 1),
        "no batch lost or duplicated: {counts:?}"
    );
    assert!(
        lull.health.assigned_partitions() == 1,
        "the worker survived the outage"
    );
    lull.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_mode_batches_by_lulls_clock_not_the_producers() {
    let cluster = Cluster::start(1).await;
    let mut cfg = cluster.config("arrival");
    cfg.timestamp = lull::config::TimestampSource::Arrival;
    let lull = Running::start(cfg);
    lull.assigned(1).await;
    let producer = cluster.producer();
    // A producer whose clock is an hour behind, and whose timestamps are a minute apart: by
    // Kafka time these would be three separate, long-late fragments.
    let skewed = lull::ops::clock::now_ms() - 3_600_000;
    let before = lull::ops::clock::now_ms();
    for seq in 0..3 {
        let ts = skewed + seq as i64 * 60_000;
        send(
            &producer,
            &cluster.input,
            Some("clock"),
            &fragment("clock", seq),
            None,
            Some(ts),
        )
        .await;
    }
    let mut out = cluster.collector(&cluster.output);
    out.until("the batch", |s| !s.is_empty()).await;
    out.settle(Duration::from_millis(800)).await;
    assert_eq!(out.seen.len(), 1, "one burst by arrival time");
    let v = out.seen[0].json();
    assert_eq!(v["count"], 3);
    assert!(
        v["first_ts"].as_i64().unwrap() >= before,
        "stamped with lull's clock: {v}"
    );
    lull.stop().await;
}
