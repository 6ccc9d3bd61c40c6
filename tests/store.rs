//! The Redis store's contracts, against a real Redis server and a real Redis Cluster (the one
//! `scripts/test.sh` starts): fencing, forward-only watermarks, duplicate detection, pending
//! summaries and their TTLs; on the single server also MONITOR tracing, TLS and restricted users.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lull::config::{Config, Secret};
use lull::io::store::{Candidate, Flushed, PendingSummary, Stale, Store, StoreError, Verdict};
use lull::ops::supervisor::Supervisor;
use redis::AsyncCommands;

async fn store(redis: &RedisServer, prefix: &str, instance: &str) -> Arc<Store> {
    let mut c = redis.configure(Config::defaults(), prefix);
    c.instance_id = instance.to_string();
    let s = Store::connect(&c, &Supervisor::standalone())
        .await
        .expect("store");
    assert!(!s.is_degraded(), "redis reachable");
    s
}

/// The topic id the tests' claims carry.
const TID: &str = "Vgz4yQp5QnqVv1GtYm9s2g";

/// The timestamp of every fragment and batch in these tests, unless a test says otherwise.
const T0: i64 = 1_764_000_000_000;

/// A high watermark above every offset the tests use.
const HIGH: i64 = 1_000_000;

/// The keys of partition `partition` of topic `t`, in group `lull` under `prefix`.
fn pk(prefix: &str, partition: i32) -> lull::io::store::PartitionKeys {
    lull::io::store::Keys::new(prefix, "lull").partition("t", partition)
}

/// `flushed:{key}` of partition `partition` as (topic id, partition, offset).
async fn flushed(
    redis: &RedisServer,
    prefix: &str,
    partition: i32,
    key: &str,
) -> (String, String, String) {
    let mut c = redis.conn().await;
    let v: Vec<String> = redis::cmd("HMGET")
        .arg(pk(prefix, partition).flushed(key))
        .arg("topic_id")
        .arg("partition")
        .arg("offset")
        .query_async(&mut c)
        .await
        .unwrap();
    (v[0].clone(), v[1].clone(), v[2].clone())
}

fn cand<'a>(key: &'a str, offset: i64, event: Option<&'a str>) -> Candidate<'a> {
    Candidate {
        key,
        offset,
        event_id: event,
        ts: T0,
        needs_record: true,
    }
}

async fn a_stale_owner_can_neither_write_nor_delete_the_new_owners_state(redis: &RedisServer) {
    let prefix = unique_prefix("fence");
    let zombie = store(redis, &prefix, "zombie").await;
    let owner = store(redis, &prefix, "owner").await;
    let old = zombie.claim("t", 0, TID, false).await.unwrap();
    let new = owner.claim("t", 0, TID, false).await.unwrap();
    assert!(new.generation > old.generation, "generations only grow");

    let batch = |last| Flushed {
        key: "u".into(),
        first_offset: 1,
        last_offset: last,
        last_ts: T0,
        batch_id: "t/0/0".into(),
    };
    owner
        .record_flushed(&new, HIGH, &[batch(10)])
        .await
        .unwrap();
    let pending = PendingSummary {
        key: "u".into(),
        first_ts: 1,
        last_ts: 2,
        count: 1,
        flush_at: 3,
        first_offset: 12,
    };
    owner
        .publish_pending(&new, std::slice::from_ref(&pending))
        .await
        .unwrap();

    // Every write of the zombie is refused and changes nothing.
    assert!(matches!(
        zombie.record_flushed(&old, HIGH, &[batch(99)]).await,
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        zombie.publish_pending(&old, &[pending]).await,
        Err(StoreError::Stale(_))
    ));
    // Admission only reads records and notes first sightings, which are facts of the log: the
    // zombie's sighting is the one the owner would have noted.
    zombie
        .admit(&old, HIGH, &[cand("u", 50, Some("e"))])
        .await
        .expect("admission needs no fence");
    // Nor can it take the partition back quietly after an outage.
    assert!(matches!(
        zombie.claim("t", 0, TID, true).await,
        Err(StoreError::Stale(_))
    ));
    let mut c = redis.conn().await;
    assert_eq!(
        flushed(redis, &prefix, 0, "u").await,
        (TID.into(), "0".into(), "10".into())
    );
    assert!(
        owner.read_pending("u").await.unwrap().is_some(),
        "pending not deleted by the zombie"
    );
    let v = owner
        .admit(
            &new,
            HIGH,
            &[cand("u", 50, Some("e")), cand("u", 51, Some("e"))],
        )
        .await
        .unwrap();
    assert_eq!(
        v.verdicts,
        vec![Verdict::New, Verdict::Duplicate],
        "the same offset is a replay, another one a retry"
    );

    // The rightful owner may resume after an outage; the generation still grows even if the
    // owner record is lost (Redis restarted without persistence).
    let resumed = owner.claim("t", 0, TID, true).await.unwrap();
    assert!(resumed.generation > new.generation);
    let _: () = c.del(pk(&prefix, 0).owner()).await.unwrap();
    let again = owner.claim("t", 0, TID, false).await.unwrap();
    assert!(again.generation > resumed.generation);
}

async fn the_flushed_watermark_only_moves_forward_and_its_ttl_is_refreshed(redis: &RedisServer) {
    let prefix = unique_prefix("flushed");
    let s = store(redis, &prefix, "a").await;
    let f = s.claim("t", 3, TID, false).await.unwrap();
    let batch = |key: &str, first, last| Flushed {
        key: key.into(),
        first_offset: first,
        last_offset: last,
        last_ts: T0,
        batch_id: "t/0/0".into(),
    };
    s.record_flushed(&f, HIGH, &[batch("u", 10, 15)])
        .await
        .unwrap();
    let mut c = redis.conn().await;
    let key = pk(&prefix, 3).flushed("u");
    let _: () = c.pexpire(&key, 5_000).await.unwrap();
    s.record_flushed(&f, HIGH, &[batch("u", 8, 12)])
        .await
        .unwrap();
    assert_eq!(
        flushed(redis, &prefix, 3, "u").await.2,
        "15",
        "never moves back"
    );
    let ttl: i64 = c.pttl(&key).await.unwrap();
    assert!(ttl > 600_000_000, "TTL refreshed to retention, got {ttl}");
    s.record_flushed(&f, HIGH, &[batch("u", 16, 20)])
        .await
        .unwrap();
    assert_eq!(
        flushed(redis, &prefix, 3, "u").await,
        (TID.into(), "3".into(), "20".into())
    );
}

async fn admit_skips_emitted_fragments_and_drops_duplicate_events_but_not_replays(
    redis: &RedisServer,
) {
    let prefix = unique_prefix("admit");
    let s = store(redis, &prefix, "a").await;
    let f = s.claim("t", 0, TID, false).await.unwrap();
    s.record_flushed(
        &f,
        HIGH,
        &[Flushed {
            key: "u".into(),
            first_offset: 3,
            last_offset: 5,
            last_ts: T0,
            batch_id: "t/0/0".into(),
        }],
    )
    .await
    .unwrap();
    let v = s
        .admit(
            &f,
            HIGH,
            &[
                cand("u", 3, Some("e3")),
                cand("u", 5, None),
                cand("u", 6, Some("e6")),
                cand("v", 7, Some("e6")),
                cand("v", 8, None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        v.verdicts,
        vec![
            Verdict::Emitted,
            Verdict::Emitted,
            Verdict::New,
            Verdict::Duplicate,
            Verdict::New
        ]
    );
    // Where no record is needed (exactly_once, or input only this owner can have handled), none
    // is read: the verdict is about the event id alone, and without one there is nothing to ask.
    let unread = |offset, event| Candidate {
        needs_record: false,
        ..cand("u", offset, event)
    };
    let v = s
        .admit(&f, HIGH, &[unread(4, None), unread(5, Some("e3"))])
        .await
        .unwrap();
    assert_eq!(v.verdicts, vec![Verdict::New, Verdict::Duplicate]);
    let v = tokio::time::timeout(DEADLINE, s.admit(&f, HIGH, &[unread(7, None)]))
        .await
        .expect("an admission with nothing to ask returns at once")
        .unwrap();
    assert_eq!(v.verdicts, vec![Verdict::New]);
    // Replaying offset 6 (same partition, same offset) is not a duplicate.
    let v = s
        .admit(&f, HIGH, &[cand("u", 6, Some("e6"))])
        .await
        .unwrap();
    assert_eq!(v.verdicts, vec![Verdict::New]);
    let mut c = redis.conn().await;
    let ttl: i64 = c.pttl(pk(&prefix, 0).event("e6")).await.unwrap();
    assert!(ttl > 3_000_000, "event TTL set: {ttl}");
}

async fn records_of_another_topic_id_or_beyond_the_high_watermark_are_ignored_never_used_to_skip(
    redis: &RedisServer,
) {
    let prefix = unique_prefix("stale");
    let old = store(redis, &prefix, "a").await;
    let f = old.claim("t", 0, TID, false).await.unwrap();
    let batch = |key: &str, last| Flushed {
        key: key.into(),
        first_offset: 0,
        last_offset: last,
        last_ts: T0,
        batch_id: "t/0/0".into(),
    };
    old.record_flushed(&f, HIGH, &[batch("u", 100), batch("w", 5)])
        .await
        .unwrap();
    old.admit(&f, HIGH, &[cand("u", 40, Some("ev-40"))])
        .await
        .unwrap();

    // The topic was deleted and created again: another topic id, offsets from 0.
    let new_tid = "AAAAAAAAAAAAAAAAAAAAAQ";
    let f = old.claim("t", 0, new_tid, false).await.unwrap();
    let v = old
        .admit(
            &f,
            3,
            &[
                cand("u", 0, None),
                cand("u", 1, Some("ev-40")),
                cand("w", 2, None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        v.verdicts,
        vec![
            Verdict::NewPastStale(Stale::TopicId),
            Verdict::NewPastStale(Stale::TopicId),
            Verdict::NewPastStale(Stale::TopicId)
        ],
        "an event id first seen in the old topic is no duplicate in the new one"
    );
    // The new incarnation's flush replaces the record although its offset is lower.
    old.record_flushed(&f, 3, &[batch("u", 1)]).await.unwrap();
    assert_eq!(
        flushed(redis, &prefix, 0, "u").await,
        (new_tid.into(), "0".into(), "1".into())
    );
    assert_eq!(
        old.admit(&f, 3, &[cand("u", 1, None)])
            .await
            .unwrap()
            .verdicts,
        vec![Verdict::Emitted],
        "records of this incarnation skip as before"
    );

    // Without topic ids (a cluster that gives none): a record at or above the high watermark
    // cannot describe this log.
    let f = old.claim("t", 0, "", false).await.unwrap();
    let v = old
        .admit(&f, 4, &[cand("w", 3, None)])
        .await
        .unwrap()
        .verdicts;
    assert_eq!(v, vec![Verdict::NewPastStale(Stale::BeyondHighWatermark)]);
    old.record_flushed(&f, 4, &[batch("w", 3)]).await.unwrap();
    assert_eq!(flushed(redis, &prefix, 0, "w").await.2, "3");

    // A cluster without topic ids replaced under the same name (a dev cluster): the record
    // would skip a fragment that is far newer than the record's own last fragment.
    let f = old.claim("t", 0, "", false).await.unwrap();
    old.record_flushed(&f, HIGH, &[batch("z", 50)])
        .await
        .unwrap();
    let newer = |offset, ts| Candidate {
        ts,
        ..cand("z", offset, None)
    };
    let v = old
        .admit(
            &f,
            HIGH,
            &[
                newer(10, T0 + 59_000),
                newer(11, T0 + 61_000),
                newer(51, T0 + 61_000),
            ],
        )
        .await
        .unwrap()
        .verdicts;
    assert_eq!(
        v,
        vec![
            Verdict::Emitted,
            Verdict::NewPastStale(Stale::LogTime),
            Verdict::New
        ],
        "within the tolerance a replay is a replay; beyond it, another log"
    );
    let newer_batch = Flushed {
        last_ts: T0 + 61_000,
        ..batch("z", 11)
    };
    old.record_flushed(&f, HIGH, &[newer_batch]).await.unwrap();
    assert_eq!(
        flushed(redis, &prefix, 0, "z").await.2,
        "11",
        "the other log's record is replaced"
    );

    // A value of another type under a record's name (lull never writes one) is no record: it
    // skips nothing, troubles no other fragment of the chunk, and the next flush replaces it.
    let mut c = redis.conn().await;
    let _: () = c
        .set(pk(&prefix, 0).flushed("legacy"), "0:7")
        .await
        .unwrap();
    let f = old.claim("t", 0, TID, false).await.unwrap();
    let v = old
        .admit(&f, HIGH, &[cand("legacy", 7, None), cand("z", 8, None)])
        .await
        .unwrap()
        .verdicts;
    assert_eq!(v, vec![Verdict::New, Verdict::Emitted]);
    old.record_flushed(&f, HIGH, &[batch("legacy", 9)])
        .await
        .unwrap();
    assert_eq!(
        flushed(redis, &prefix, 0, "legacy").await,
        (TID.into(), "0".into(), "9".into())
    );
}

async fn pending_summaries_are_refreshed_and_deleted_once_their_window_went_out(
    redis: &RedisServer,
) {
    let prefix = unique_prefix("pending");
    let s = store(redis, &prefix, "host-1").await;
    let f = s.claim("t", 1, TID, false).await.unwrap();
    let w = |first_offset, count| PendingSummary {
        key: "u".into(),
        first_ts: 1_000,
        last_ts: 2_000,
        count,
        flush_at: 4_200,
        first_offset,
    };
    s.publish_pending(&f, &[w(5, 1)]).await.unwrap();
    let mut c = redis.conn().await;
    let key = pk(&prefix, 1).pending("u");
    let _: () = c.pexpire(&key, 50).await.unwrap();
    s.publish_pending(&f, &[w(5, 2)]).await.unwrap();
    let view = s.read_pending("u").await.unwrap().expect("pending");
    assert_eq!(view.count, 2);
    assert_eq!(view.owner, "host-1");
    assert_eq!(view.partition, 1);
    assert_eq!(view.flush_at, 4_200);
    assert!(
        view.ttl_ms > 15_000,
        "TTL refreshed on every write: {}",
        view.ttl_ms
    );

    // Recording a batch leaves summaries alone (the owner knows whether the key has a newer
    // window open); it deletes the summaries of keys whose window went out.
    let batch = Flushed {
        key: "u".into(),
        first_offset: 5,
        last_offset: 7,
        last_ts: T0,
        batch_id: "t/1/5".into(),
    };
    s.record_flushed(&f, HIGH, std::slice::from_ref(&batch))
        .await
        .unwrap();
    assert!(s.read_pending("u").await.unwrap().is_some(), "kept");
    s.sync(&f, HIGH, &[], &["u".to_string()], &[batch])
        .await
        .unwrap();
    assert!(
        s.read_pending("u").await.unwrap().is_none(),
        "deleted once its window went out"
    );
}

/// Each contract holds on a single Redis and on a Redis Cluster alike (where every call of a
/// partition must stay in its slot).
macro_rules! on_single_and_cluster {
    ($($body:ident),* $(,)?) => {
        mod single {
            use super::*;
            $(#[tokio::test]
            async fn $body() {
                super::$body(&RedisServer::shared()).await
            })*
        }
        mod cluster {
            use super::*;
            $(#[tokio::test]
            async fn $body() {
                super::$body(&RedisServer::cluster()).await
            })*
        }
    };
}

on_single_and_cluster!(
    a_stale_owner_can_neither_write_nor_delete_the_new_owners_state,
    the_flushed_watermark_only_moves_forward_and_its_ttl_is_refreshed,
    admit_skips_emitted_fragments_and_drops_duplicate_events_but_not_replays,
    records_of_another_topic_id_or_beyond_the_high_watermark_are_ignored_never_used_to_skip,
    pending_summaries_are_refreshed_and_deleted_once_their_window_went_out,
);

#[tokio::test]
async fn monitor_sees_commands_of_other_clients_on_lull_keys() {
    let redis = RedisServer::shared();
    let prefix = unique_prefix("monitor");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let url = redis.url.clone();
    let p = prefix.clone();
    let follower = tokio::spawn(async move {
        let _ = lull::io::store::monitor::follow(&url, &p, |e| {
            let _ = tx.send(e);
        })
        .await;
    });
    let mut c = redis.conn().await;
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("someone-else")
        .query_async(&mut c)
        .await
        .unwrap();
    // MONITOR starts asynchronously: keep writing until it shows up.
    let key = pk(&prefix, 0).pending("probe");
    let seen = tokio::time::timeout(DEADLINE, async {
        loop {
            let _: () = c.set(&key, "1").await.unwrap();
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                return e;
            }
        }
    })
    .await
    .expect("a traced command");
    assert_eq!(seen.args[0].to_ascii_uppercase(), "SET");
    assert_eq!(seen.args[1], key);
    assert_eq!(seen.client_name.as_deref(), Some("someone-else"));
    // A script call from a lull store is attributed to its script and its named client.
    let s = store(&redis, &prefix, "traced").await;
    let f = s.claim("t", 0, TID, false).await.unwrap();
    s.publish_pending(
        &f,
        &[PendingSummary {
            key: "probe2".into(),
            first_ts: 1,
            last_ts: 1,
            count: 1,
            flush_at: 1,
            first_offset: 1,
        }],
    )
    .await
    .unwrap();
    let e = tokio::time::timeout(DEADLINE, async {
        loop {
            let e = rx.recv().await.expect("monitor alive");
            if e.args.iter().any(|a| a.ends_with(":pending:probe2")) && e.script.is_some() {
                return e;
            }
        }
    })
    .await
    .expect("script command traced");
    assert_eq!(e.script, Some("pending"));
    assert!(
        e.client_name
            .as_deref()
            .is_some_and(|n| n.starts_with("lull:traced:")),
        "{e:?}"
    );
    follower.abort();
}

#[tokio::test]
async fn a_rediss_url_reaches_redis_over_tls() {
    let dir = std::env::temp_dir().join(format!("lull-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(made.success());
    let port = free_port();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let tls_port = port.to_string();
    let mut server = spawn_redis(
        &[
            "--port",
            "0",
            "--tls-auth-clients",
            "no",
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
        ],
        port,
    );
    let mut c = Config::defaults();
    // A self-signed test certificate: `#insecure` skips verification (never do that in production).
    c.redis_url = Some(Secret::new(format!("rediss://127.0.0.1:{port}/#insecure")));
    c.redis_prefix = unique_prefix("tls");
    let s = Store::connect(&c, &Supervisor::standalone())
        .await
        .expect("store");
    assert!(!s.is_degraded(), "connected over TLS");
    let fence = s
        .claim("t", 0, TID, false)
        .await
        .expect("a script call over TLS");
    assert!(fence.generation > 0);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_password_in_the_url_authenticates_and_never_shows() {
    let port = free_port();
    let port_arg = port.to_string();
    let mut server = spawn_redis(&["--port", &port_arg, "--requirepass", "s3cret-pw"], port);
    let mut c = Config::defaults();
    c.redis_prefix = unique_prefix("auth");
    c.redis_url = Some(Secret::new(format!(
        "redis://:s3cret-pw@127.0.0.1:{port}/0"
    )));
    let s = Store::connect(&c, &Supervisor::standalone())
        .await
        .expect("store");
    assert!(!s.is_degraded(), "authenticated");
    assert!(s.claim("t", 0, TID, false).await.is_ok());
    assert!(!format!("{c:?} {:?}", c.summary()).contains("s3cret-pw"));

    // A wrong password degrades (lull keeps batching) and the error does not echo the secret.
    c.redis_url = Some(Secret::new(format!("redis://:wrong-pw@127.0.0.1:{port}/0")));
    let s = Store::connect(&c, &Supervisor::standalone())
        .await
        .expect("store");
    assert!(s.is_degraded());
    let err = s.claim("t", 0, TID, false).await.unwrap_err().to_string();
    assert!(!err.contains("wrong-pw"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
}

/// An ACL user without INFO (which lull uses only to tell a cluster from a single server) still
/// gets a working store, as before lull asked.
#[tokio::test]
async fn a_user_without_info_still_gets_a_working_store() {
    let port = free_port();
    let port_arg = port.to_string();
    let mut server = spawn_redis(
        &[
            "--port", &port_arg, "--user", "lull", "on", ">pw", "~*", "&*", "+@all", "-info",
        ],
        port,
    );
    let mut c = Config::defaults();
    c.redis_prefix = unique_prefix("noinfo");
    c.redis_url = Some(Secret::new(format!("redis://lull:pw@127.0.0.1:{port}/0")));
    let s = Store::connect(&c, &Supervisor::standalone())
        .await
        .expect("store");
    assert!(!s.is_degraded(), "INFO refused is not an outage");
    assert!(s.claim("t", 0, TID, false).await.is_ok());
    let _ = server.kill();
    let _ = server.wait();
}
