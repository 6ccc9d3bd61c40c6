//! Two phases of `lull bench` beside throughput and live: the reference (librdkafka alone copies
//! the backlog, lull's floor) and takeovers (how long a partition takes to start reading).

use super::*;

/// The reference: librdkafka alone copies the backlog from the input topic to the output topic
/// (consume, produce with lull's producer settings, wait for every acknowledgement), timed like
/// the throughput phase. lull's rate divided by this one is how close lull comes to the machine.
pub(super) async fn copy(args: &BenchArgs, config: &Config) -> Result<PhaseReport, BenchError> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    write_backlog(args, config).await?;
    let consumer: StreamConsumer = lull::io::kafka::consumer_config(config).create()?;
    consumer.subscribe(&[config.input_topic.as_str()])?;
    let producer: FutureProducer = lull::io::kafka::producer_config(config).create()?;
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let (mut read, mut acked) = (0usize, 0usize);
    let deadline = start + Duration::from_secs(600);
    while acked < args.fragments {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout("copy".into()));
        }
        tokio::select! {
            m = consumer.recv(), if read < args.fragments => match m {
                Ok(m) => {
                    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&config.output_topic);
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    if let Some(v) = m.payload() {
                        record = record.payload(v);
                    }
                    loop {
                        match producer.send_result(record) {
                            Ok(d) => {
                                pending.push(d);
                                break;
                            }
                            Err((_, back)) => {
                                record = back;
                                use futures_util::StreamExt;
                                if pending.next().await.is_some() {
                                    acked += 1;
                                }
                            }
                        }
                    }
                    read += 1;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
                Err(e) => return Err(BenchError::Kafka(e)),
            },
            Some(_) = futures_util::StreamExt::next(&mut pending), if !pending.is_empty() => acked += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(PhaseReport {
        phase: "copy".into(),
        batching: false,
        delivery: "at_least_once".into(),
        fragments: args.fragments,
        batches: args.fragments,
        seconds,
        fragments_per_sec: args.fragments as f64 / seconds,
        batches_per_sec: args.fragments as f64 / seconds,
        cpu_seconds: cpu_seconds() - cpu0,
        ..PhaseReport::default()
    })
}

/// A worker goes through the throughput backlog (its state records written), then new workers
/// replace it `--takeovers` times; each start of each partition is timed, assignment to reading.
pub(super) async fn takeover(args: &BenchArgs, config: &Config) -> Result<PhaseReport, BenchError> {
    write_backlog(args, config).await?;
    let read_before = metrics().fragments_received.get();
    let (token, handle) = start_worker(config, args.partitions, false).await?;
    let end = Instant::now() + Duration::from_secs(600);
    while (metrics().fragments_received.get() - read_before) < args.fragments as u64
        || metrics().open_windows.get() > 0
    {
        if Instant::now() > end {
            return Err(BenchError::Worker("the backlog was never read".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_worker(token, handle).await?;
    let before = buckets(&metrics().partition_start_seconds);
    let start = Instant::now();
    for _ in 0..args.takeovers {
        let (token, handle) = start_worker(config, args.partitions, true).await?;
        stop_worker(token, handle).await?;
    }
    let after = buckets(&metrics().partition_start_seconds);
    let starts = after.last().map_or(0, |(_, n)| *n) - before.last().map_or(0, |(_, n)| *n);
    let audit = audit(config).await?;
    Ok(PhaseReport {
        phase: "takeover".into(),
        batching: true,
        delivery: config.delivery.as_str().into(),
        fragments: args.fragments,
        seconds: start.elapsed().as_secs_f64(),
        partition_start_ms: Some((
            quantile_ms(&before, &after, 0.5),
            quantile_ms(&before, &after, 0.99),
            starts,
        )),
        lost: audit.lost,
        duplicated: audit.duplicated,
        ..PhaseReport::default()
    })
}
