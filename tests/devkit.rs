//! The tools' shared pieces keep their promises (these were copies that drifted into bugs):
//! the load writer never spins on an error it cannot retry, and the Redis round-trip count the
//! demo and the benchmark print includes the pipelined sync.

mod common;

use std::time::Duration;

use common::*;
use lull::config::Config;
use lull::devkit::load::Writer;
use lull::io::store::{Flushed, PendingSummary, Store};
use lull::ops::supervisor::Supervisor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_returns_an_error_it_cannot_retry_instead_of_spinning() {
    // The mock is enough: the refusal is librdkafka's own, before anything is sent.
    let cluster = Cluster::mock(1);
    let mut writer = Writer::new(&cluster.config("writer"), &cluster.input).expect("writer");
    writer
        .send("k", r#"{"user_id":"k"}"#, None)
        .await
        .expect("a normal message goes");
    let huge = format!(r#"{{"user_id":"k","text":"{}"}}"#, "x".repeat(2 << 20));
    let sent = tokio::time::timeout(Duration::from_secs(30), writer.send("k", &huge, None)).await;
    let result = sent.expect("the writer gave up instead of retrying forever");
    assert!(
        result.is_err(),
        "a message over message.max.bytes is refused"
    );
    assert_eq!(writer.finish().await.expect("deliveries"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trips_count_the_sync_pipeline() {
    let redis = RedisServer::shared();
    let c = redis.configure(Config::defaults(), &unique_prefix("round-trips"));
    let store = Store::connect(&c, &Supervisor::standalone())
        .await
        .expect("store");
    let fence = store.claim("t", 0, "", false).await.expect("claim");
    let before = lull::io::store::round_trips();
    let window = PendingSummary {
        key: "u".into(),
        first_ts: 1,
        last_ts: 1,
        count: 1,
        flush_at: 1,
        first_offset: 5,
    };
    let batch = Flushed {
        key: "v".into(),
        first_offset: 1,
        last_offset: 2,
        last_ts: 1,
        batch_id: "t/0/0".into(),
    };
    store
        .sync(&fence, 100, &[window], &["w".to_string()], &[batch])
        .await
        .expect("sync");
    assert_eq!(
        lull::io::store::round_trips() - before,
        1,
        "one pipeline is one round trip, and it is counted"
    );
}
