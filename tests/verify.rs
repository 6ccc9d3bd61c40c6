//! `lull verify` catches what it exists to catch: a duplicated batch, an altered fragment, a lost
//! fragment — and reports a clean run as clean.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_duplicates_alterations_and_losses() {
    let cluster = Cluster::start(1).await;
    let cfg = cluster.config("verify");
    let lull = Running::start(cfg.clone());
    lull.assigned(1).await;
    let producer = cluster.producer();
    for seq in 0..3 {
        send(
            &producer,
            &cluster.input,
            Some("v"),
            &fragment("v", seq),
            None,
            None,
        )
        .await;
    }
    let mut out = cluster.collector(&cluster.output);
    let batch = out.until("the batch", |s| !s.is_empty()).await[0].clone();
    lull.stop().await;
    let clean = verify_clean(&cfg).await;
    assert_eq!(
        (clean.fragments_in, clean.in_batches, clean.batches),
        (3, 3, 1)
    );

    // The same batch produced twice (as a consumer of the output would see after a replay).
    let raw = batch.value.clone().unwrap();
    send(&producer, &cluster.output, Some("v"), &raw, None, None).await;
    // A batch whose fragment was changed on the way.
    let altered = String::from_utf8(raw.clone())
        .unwrap()
        .replace("v says 1", "v says 9");
    let id = format!("{}/0/0", cluster.input);
    let altered = altered.replace(&id, &format!("{id}x"));
    send(
        &producer,
        &cluster.output,
        Some("v"),
        altered.as_bytes(),
        None,
        None,
    )
    .await;
    // A fragment nobody batched, old enough that it cannot be still open.
    let old = lull::ops::clock::now_ms() - 600_000;
    send(
        &producer,
        &cluster.input,
        Some("gone"),
        &fragment("gone", 0),
        None,
        Some(old),
    )
    .await;

    let cfg2 = cfg.clone();
    let report = tokio::task::spawn_blocking(move || {
        lull::devkit::audit::run(&cfg2, &lull::devkit::audit::VerifyOptions::default())
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!report.ok());
    assert_eq!(report.repeated_batch_ids, 1, "{report:#?}");
    assert_eq!(
        report.duplicated, 3,
        "every fragment of the repeated batch: {report:#?}"
    );
    assert_eq!(report.altered, 1, "{report:#?}");
    assert_eq!(report.lost, 1, "{report:#?}");
    assert_eq!(
        report.in_batches, 0,
        "a fragment in two batches is not in exactly one: {report:#?}"
    );
    assert_eq!(
        report.in_batches
            + report.lost
            + report.duplicated
            + report.still_open
            + report.dropped_duplicates,
        report.fragments_in,
        "every fragment is counted once: {report:#?}"
    );

    // The CLI says so with its exit code.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lull"))
        .arg("verify")
        .env_clear()
        .envs(cluster.process_env("verify-cli"))
        .env("LULL_QUIET_MS", "300")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("lost                  1"), "{text}");
    assert!(text.contains("in exactly one batch  0"), "{text}");
    assert!(text.trim_end().ends_with("FAILED"), "{text}");
}

/// `--from`/`--to` read only that part of the input (found by the broker's time index), and a
/// batch whose input lies partly outside the window is neither lost nor altered.
///
/// The whole log is written before lull starts, so lull reads it as catch-up and the batch
/// boundaries follow from the timestamps alone. (Written to a live lull instead, each
/// 20-minute-old fragment that arrived in a fetch of its own would rightly be flushed at once —
/// partition time is the wall clock there — and the batch count would depend on the producer's
/// request boundaries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_window_reads_only_its_part_of_the_topics() {
    let cluster = Cluster::start(1).await;
    let cfg = cluster.config("verify-window");
    let producer = cluster.producer();
    let now = lull::ops::clock::now_ms();
    let long_ago = now - 20 * 60_000;
    for seq in 0..3 {
        let ts = Some(long_ago + seq as i64 * 100);
        send(
            &producer,
            &cluster.input,
            Some("old"),
            &fragment("old", seq),
            None,
            ts,
        )
        .await;
    }
    for seq in 0..2 {
        send(
            &producer,
            &cluster.input,
            Some("new"),
            &fragment("new", seq),
            None,
            None,
        )
        .await;
    }
    let lull = Running::start(cfg.clone());
    let mut out = cluster.collector(&cluster.output);
    out.until("both batches", |s| s.len() == 2).await;
    lull.stop().await;

    let audit = |from: Option<i64>, to: Option<i64>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let opts = lull::devkit::audit::VerifyOptions {
                from_ms: from,
                to_ms: to,
                ..Default::default()
            };
            lull::devkit::audit::run(&cfg, &opts)
        })
    };
    let recent = audit(Some(now - 5 * 60_000), None).await.unwrap().unwrap();
    assert!(recent.ok(), "{recent:#?}");
    assert_eq!(
        (recent.fragments_in, recent.in_batches),
        (2, 2),
        "{recent:#?}"
    );
    let earlier = audit(None, Some(now - 10 * 60_000)).await.unwrap().unwrap();
    assert!(earlier.ok(), "{earlier:#?}");
    assert_eq!(
        (earlier.fragments_in, earlier.in_batches),
        (3, 3),
        "{earlier:#?}"
    );
    let all = audit(None, None).await.unwrap().unwrap();
    assert_eq!((all.fragments_in, all.batches), (5, 2), "{all:#?}");

    // How far each topic was read, for `lull verify`'s bars: the input's five messages, the
    // output's two batches (their transactions' commit markers count in the span, not as read),
    // and the DLQ, empty.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = lull::devkit::audit::VerifyOptions {
        progress: Some(tx),
        ..Default::default()
    };
    let run = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || lull::devkit::audit::run(&cfg, &opts))
    };
    run.await.unwrap().unwrap();
    let mut last: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    while let Ok(p) = rx.try_recv() {
        assert!(p.read <= p.total, "{p:?}");
        last.insert(p.topic, (p.read, p.total));
    }
    assert_eq!(last[&cluster.input], (5, 5), "{last:?}");
    assert_eq!(last[&cluster.output].0, 2, "{last:?}");
    assert!(last[&cluster.output].1 >= 2, "{last:?}");
    assert_eq!(last[&cluster.dlq], (0, 0), "{last:?}");
}
