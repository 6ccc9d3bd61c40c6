//! The live phase of `lull bench`: users type in real time while a `read_committed` reader times
//! each batch from its due time to its receipt.

use super::*;

/// Users type in real time; lateness and latency run from the batches' due times to the moment
/// a `read_committed` reader received them (in exactly_once, when their transaction committed).
pub(super) async fn live(args: &BenchArgs, config: &Config) -> Result<PhaseReport, BenchError> {
    let mut writer = Writer::new(config, &config.input_topic)?;
    let (token, handle) = start_worker(config, args.partitions, false).await?;
    let consumer = reader(
        config,
        &config.output_topic,
        &format!("{}-read", config.group_id),
    )?;
    let received: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
    let reading = CancellationToken::new();
    let read_task = {
        let (received, reading) = (received.clone(), reading.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = reading.cancelled() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            let at = lull::ops::clock::now_ms();
                            if let Some(payload) = m.payload() {
                                if let Ok(mut r) = received.lock() {
                                    r.push((payload.to_vec(), at));
                                }
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                }
            }
        })
    };
    let users = args.live_users.max(1);
    let burst = args.burst.max(1);
    // Each user repeats: a burst of `burst` fragments `gap_ms` apart, then a pause of 2-3x quiet.
    let cycle_ms = burst as u64 * args.gap_ms + config.quiet.as_millis() as u64 * 5 / 2;
    let rate = users as f64 * burst as f64 / (cycle_ms as f64 / 1000.0);
    let commits_before = buckets(&metrics().transaction_seconds);
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let end = start + Duration::from_secs(args.live_seconds);
    let redis_before = lull::io::store::round_trips();
    let mut sent = 0usize;
    let mut seqs = vec![0usize; users];
    let mut peak_windows = 0;
    let mut peak_held = 0;
    let typing = super::super::progress::bar(args.live_seconds, "live: seconds of typing");
    // Users are spread evenly over the cycle; user u types fragment i of a burst at
    // offset(u) + i * gap within each cycle.
    while Instant::now() < end {
        let elapsed = start.elapsed().as_millis() as u64;
        typing.set_position(elapsed / 1000);
        let due = ((elapsed as f64 / 1000.0) * rate) as usize;
        while sent < due {
            let slot = sent % (users * burst);
            let (u, _i) = (slot / burst, slot % burst);
            let seq = seqs[u];
            seqs[u] += 1;
            let v = value(u, seq, args.payload);
            writer.send(&format!("u{u}"), &v, None).await?;
            sent += 1;
        }
        let w = metrics().open_windows.get();
        if w > peak_windows {
            peak_windows = w;
            peak_held = metrics().held_bytes.get();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    typing.finish_and_clear();
    writer.finish().await?;
    // Let every window close, then stop.
    let quiet_end = Instant::now() + config.max_wait + config.grace + Duration::from_secs(2);
    while Instant::now() < quiet_end && metrics().open_windows.get() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let redis = lull::io::store::round_trips() - redis_before;
    stop_worker(token, handle).await?;

    // Every batch received (or nothing new for 10 s), then the tally at the times they came.
    let mut tally = Tally::new(config.quiet, config.max_wait, config.grace);
    let mut taken = 0;
    let mut idle_since = Instant::now();
    while tally.distinct() < sent && idle_since.elapsed() < Duration::from_secs(10) {
        let fresh: Vec<Received> = match received.lock() {
            Ok(r) => r[taken..].to_vec(),
            Err(_) => Vec::new(),
        };
        if fresh.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        taken += fresh.len();
        idle_since = Instant::now();
        for (payload, at) in &fresh {
            tally.add_seen(payload, Some(*at));
        }
    }
    reading.cancel();
    let _ = read_task.await;
    let audit = audit(config).await?;
    Ok(PhaseReport {
        phase: "live".into(),
        batching: true,
        delivery: config.delivery.as_str().into(),
        fragments: sent,
        batches: tally.batches,
        seconds,
        fragments_per_sec: sent as f64 / args.live_seconds as f64,
        batches_per_sec: tally.batches as f64 / seconds,
        cpu_seconds: cpu,
        flush_lateness_ms: Some(tally.lateness_ms()),
        end_to_end_ms: Some(tally.end_to_end_ms()),
        peak_open_windows: peak_windows,
        held_bytes_per_open_window: (peak_windows > 0)
            .then(|| peak_held as f64 / peak_windows as f64),
        redis_round_trips_per_fragment: config
            .redis_url
            .is_some()
            .then(|| redis as f64 / sent.max(1) as f64),
        partition_start_ms: None,
        transaction_commit_ms: config.exactly_once().then(|| {
            let after = buckets(&metrics().transaction_seconds);
            let n =
                after.last().map_or(0, |(_, n)| *n) - commits_before.last().map_or(0, |(_, n)| *n);
            (
                quantile_ms(&commits_before, &after, 0.5),
                quantile_ms(&commits_before, &after, 0.99),
                n,
            )
        }),
        lost: audit.lost,
        duplicated: audit.duplicated,
    })
}
