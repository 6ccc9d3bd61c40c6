//! Shared state in Redis: only the facts that must cross or outlive a process.
//!
//! * `owner:{topic}:{partition}` — who owns a partition, with a fencing generation
//!   ([`Store::claim`]); every write below carries it and a stale one is refused ([`StoreError::Stale`]).
//! * `flushed:{key}` — the last offset of a key already emitted, with the partition and the Kafka
//!   topic id it was read from, so a new owner replaying from the committed offset skips what was
//!   delivered ([`Store::admit`], [`Store::record_flushed`]). A record of another topic id (the
//!   topic was recreated) or at or above the high watermark is ignored, never used to skip
//!   ([`Stale`]).
//! * `event:{event_id}` — first sighting of an event id, to drop producer retries ([`Store::admit`]).
//! * `pending:{key}` — the open window's summary, for "is this user mid-burst?"
//!   ([`Store::publish_pending`], [`Store::read_pending`]).
//!
//! Every write goes through one of the scripts in `lua/` (atomic, loaded once, called by SHA,
//! every key passed in `KEYS`), and one call covers a whole chunk of fragments or batches.
//!
//! Redis is an optimisation, never a dependency of correctness: when it is unreachable the store
//! turns *degraded* — calls fail fast, lull keeps batching in memory with the duplicate protections
//! off, readiness says `redis_degraded` — and a single background task reconnects with backoff.
//! Each recovery bumps [`Store::epoch`], telling partition workers to re-claim their partitions.

pub mod monitor;
mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tracing::{debug, info, warn};

use crate::config::{mask_url_password, Config};
use crate::model::window::FUTURE_TOLERANCE_MS;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

pub use scripts::Script;

/// The `lull_redis_call_seconds` label of the pending+flush pipeline (scripts are labelled by
/// their name).
pub const SYNC_LABEL: &str = "sync";

/// Redis round trips made by this process so far: every sample of `lull_redis_call_seconds`,
/// under every label it is recorded with (each script, and the pipeline). The one count the
/// demo and the benchmark report.
pub fn round_trips() -> u64 {
    let m = metrics();
    Script::ALL
        .iter()
        .map(|s| s.name())
        .chain([SYNC_LABEL])
        .map(|label| {
            m.redis_call_seconds
                .with_label_values(&[label])
                .get_sample_count()
        })
        .sum()
}

/// Timeout for connecting, and for any one Redis reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Extra life of a pending key past max wait + grace (+ the future-timestamp tolerance).
const PENDING_MARGIN_MS: u64 = 10_000;

/// Why a store call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or failed; the caller carries on without it (degraded).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Another instance owns the partition now; the caller must stop touching it.
    #[error("fenced off: partition owned by a newer generation ({0})")]
    Stale(String),
}

/// What [`Store::admit`] says about one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: batch it.
    New,
    /// Already emitted in an acknowledged batch (a replay after a crash or handoff): skip it.
    Emitted,
    /// Its event id was first seen at another offset (a producer retry): drop it.
    Duplicate,
    /// New; its key's flushed record could not describe this log and was ignored.
    NewPastStale(Stale),
}

/// Why a flushed record in Redis was ignored rather than used to skip fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// It was written for another incarnation of the topic (another Kafka topic id): the topic
    /// was deleted and created again, or the cluster replaced, while Redis kept its keys.
    TopicId,
    /// It names an offset at or above the partition's high watermark: no such message exists.
    BeyondHighWatermark,
    /// It would skip a fragment more than [`LOG_TIME_TOLERANCE_MS`] newer than the record's own
    /// last fragment: it describes another log under the same name (a cluster without topic
    /// ids, such as the mock behind `lull dev-broker`, replaced while Redis kept its keys).
    LogTime,
}

/// How far a fragment's timestamp may lie past a flushed record's last fragment for the record
/// to still describe it. A fragment at or below the record's offset is older in the log, so it is
/// normally older in time too; only producer clocks running backwards by more than this (or a
/// replaced log) break that. Not used with `LULL_TIMESTAMP=arrival`, where a replay carries new
/// timestamps.
pub const LOG_TIME_TOLERANCE_MS: i64 = 60_000;

impl Stale {
    /// A short, fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Stale::TopicId => "topic_id",
            Stale::BeyondHighWatermark => "beyond_high_watermark",
            Stale::LogTime => "log_time",
        }
    }
}

/// Proof of partition ownership, carried by every fenced write.
#[derive(Debug, Clone)]
pub struct Fence {
    owner_key: String,
    /// The generation taken by [`Store::claim`].
    pub generation: u64,
    /// The partition it covers.
    pub partition: i32,
    /// The Kafka topic id of the input topic as the owner saw it ("" when unknown): records
    /// written under it are recognised as this incarnation's.
    pub topic_id: String,
}

/// One fragment as [`Store::admit`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Grouping key.
    pub key: &'a str,
    /// Input offset.
    pub offset: i64,
    /// Event id, if any.
    pub event_id: Option<&'a str>,
    /// Timestamp, Unix ms.
    pub ts: i64,
}

/// An open window's summary, as published to `pending:{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    /// Grouping key.
    pub key: String,
    /// Earliest fragment timestamp.
    pub first_ts: i64,
    /// Latest fragment timestamp.
    pub last_ts: i64,
    /// Fragments so far.
    pub count: usize,
    /// When the batch is expected to go out (close time + grace), Unix ms.
    pub flush_at: i64,
    /// Offset of the window's first fragment.
    pub first_offset: i64,
}

/// A batch the output topic acknowledged, as [`Store::record_flushed`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Grouping key.
    pub key: String,
    /// The batch's first offset.
    pub first_offset: i64,
    /// The batch's last offset.
    pub last_offset: i64,
    /// The batch's last fragment timestamp, Unix ms.
    pub last_ts: i64,
    /// The batch's id.
    pub batch_id: String,
}

/// A key's last batch as Redis remembers it, for `follows` after a restart or handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Index of the fragment (in the admitted chunk) whose key it is.
    pub index: usize,
    /// The batch's id.
    pub batch_id: String,
    /// Its last fragment's timestamp.
    pub last_ts: i64,
}

/// What [`Store::admit`] says about a chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// One verdict per fragment.
    pub verdicts: Vec<Verdict>,
    /// Last batches of keys in the chunk, as recorded.
    pub seeds: Vec<Seed>,
}

/// `pending:{key}` as read back by [`Store::read_pending`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingView {
    /// Grouping key.
    pub key: String,
    /// Input partition of the window.
    pub partition: i32,
    /// Instance that holds the window.
    pub owner: String,
    /// Fragments so far.
    pub count: u64,
    /// Earliest fragment timestamp, Unix ms.
    pub first_ts: i64,
    /// Latest fragment timestamp, Unix ms.
    pub last_ts: i64,
    /// Expected flush time, Unix ms.
    pub flush_at: i64,
    /// Offset of the window's first fragment.
    pub first_offset: i64,
    /// Milliseconds until Redis drops the summary (if its owner died).
    pub ttl_ms: i64,
}

/// Key names, all under the configured prefix and the consumer group: two groups reading the
/// same topic (staging beside production, a blue/green deploy, a debugging run) keep apart, so
/// one group's records never fence, skip or de-duplicate the other's fragments.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{prefix}:{group}`.
    namespace: String,
}

impl Keys {
    /// Keys of consumer group `group` under `prefix`.
    pub fn new(prefix: &str, group: &str) -> Self {
        Self {
            namespace: format!("{prefix}:{group}"),
        }
    }

    /// `{prefix}:{group}`, what every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `{prefix}:{group}:owner:{topic}:{partition}`
    pub fn owner(&self, topic: &str, partition: i32) -> String {
        format!("{}:owner:{topic}:{partition}", self.namespace)
    }

    /// `{prefix}:{group}:pending:{key}`
    pub fn pending(&self, key: &str) -> String {
        format!("{}:pending:{key}", self.namespace)
    }

    /// `{prefix}:{group}:flushed:{key}`
    pub fn flushed(&self, key: &str) -> String {
        format!("{}:flushed:{key}", self.namespace)
    }

    /// `{prefix}:{group}:event:{event_id}`
    pub fn event(&self, event_id: &str) -> String {
        format!("{}:event:{event_id}", self.namespace)
    }
}

/// TTLs of the keys lull writes, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    owner: u64,
    flushed: u64,
    event: u64,
    pending: u64,
}

/// The Redis connection, scripts and degraded-mode state of one process.
pub struct Store {
    url_shown: String,
    pool: Pool,
    /// One multiplexed connection, cloned for concurrent calls (checking out of the pool per call
    /// would cost a PING each time); replaced through the pool after a failure.
    conn: std::sync::Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    instance: String,
    ttl: Ttls,
    /// [`LOG_TIME_TOLERANCE_MS`], or -1 when timestamps are arrival times.
    ts_tolerance: i64,
    degraded: AtomicBool,
    reconnecting: AtomicBool,
    epoch: AtomicU64,
    health: Arc<Health>,
}

fn redis_error(e: &RedisError) -> StoreError {
    match e.code() {
        Some("STALE") => StoreError::Stale(e.detail().unwrap_or_default().to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Store {
    /// Sets up the pool for `REDIS_URL`. Never fails on an unreachable server: the store starts
    /// degraded and reconnects in the background. Fails only on a malformed URL.
    pub async fn connect(config: &Config, health: Arc<Health>) -> Result<Arc<Self>, StoreError> {
        let Some(url) = &config.redis_url else {
            return Err(StoreError::Unavailable("REDIS_URL is not set".into()));
        };
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let manager = Manager::new_with_config(url.expose(), connection)
            .map_err(|e| StoreError::Unavailable(format!("bad REDIS_URL: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("redis pool: {e}")))?;
        let max_wait = config.max_wait.as_millis() as u64;
        let grace = config.grace.as_millis() as u64;
        let store = Arc::new(Self {
            url_shown: mask_url_password(url.expose()),
            pool,
            conn: std::sync::Mutex::new(None),
            keys: Keys::new(&config.redis_prefix, &config.group_id),
            instance: config.instance_id.clone(),
            ttl: Ttls {
                owner: config.flushed_ttl.as_millis() as u64,
                flushed: config.flushed_ttl.as_millis() as u64,
                event: config.event_ttl.as_millis() as u64,
                pending: max_wait + grace + FUTURE_TOLERANCE_MS as u64 + PENDING_MARGIN_MS,
            },
            ts_tolerance: match config.timestamp {
                crate::config::TimestampSource::Kafka => LOG_TIME_TOLERANCE_MS,
                crate::config::TimestampSource::Arrival => -1,
            },
            degraded: AtomicBool::new(false),
            reconnecting: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            health,
        });
        store.health.set_redis(Some(true));
        match store.connection().await {
            Ok(_) => info!(url = %store.url_shown, "redis connected"),
            Err(e) => store.degrade(&e),
        }
        Ok(store)
    }

    /// Key names of this store.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether Redis is currently unreachable.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Bumped on every recovery from degraded mode: workers re-claim their partitions.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A connection: the shared multiplexed one, or a fresh one from the pool.
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.lock_conn().as_ref() {
            return Ok(c.clone());
        }
        let pooled = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut conn = deadpool_redis::Connection::take(pooled);
        let name = format!(
            "lull:{}:{}",
            self.instance.replace(|c: char| c.is_whitespace(), "_"),
            std::process::id()
        );
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        scripts::load_all(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        *self.lock_conn() = Some(conn.clone());
        Ok(conn)
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters degraded mode (once) and starts the reconnect task.
    fn degrade(self: &Arc<Self>, error: &StoreError) {
        *self.lock_conn() = None;
        metrics().redis_errors.inc();
        if !self.degraded.swap(true, Ordering::AcqRel) {
            warn!(error = %error, url = %self.url_shown, "redis unreachable: batching continues in memory; duplicate protection is off until it recovers");
            metrics().redis_degraded.set(1);
            self.health.set_redis(Some(false));
        }
        if !self.reconnecting.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::spawn(async move { store.reconnect().await });
        }
    }

    async fn reconnect(self: Arc<Self>) {
        let backoff = crate::io::backoff::Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            tokio::time::sleep(backoff.delay(attempt)).await;
            *self.lock_conn() = None;
            let ok = match self.connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if ok {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.degraded.store(false, Ordering::Release);
                self.reconnecting.store(false, Ordering::Release);
                metrics().redis_degraded.set(0);
                self.health.set_redis(Some(true));
                info!(
                    attempts = attempt,
                    "redis recovered: shared state and duplicate protection are back"
                );
                return;
            }
            debug!(attempt, "redis still unreachable");
        }
    }

    /// Runs one script, with timing, tracing and degraded-mode handling.
    async fn run<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        script: Script,
        invocation: redis::ScriptInvocation<'_>,
        items: usize,
    ) -> Result<T, StoreError> {
        let mut conn = self.usable_connection().await?;
        let started = Instant::now();
        let result = invocation.invoke_async::<T>(&mut conn).await;
        let elapsed = started.elapsed();
        metrics()
            .redis_call_seconds
            .with_label_values(&[script.name()])
            .observe(elapsed.as_secs_f64());
        debug!(
            script = script.name(),
            items,
            instance = %self.instance,
            pid = std::process::id(),
            micros = elapsed.as_micros() as u64,
            "redis call"
        );
        result.map_err(|e| self.failed(&e))
    }

    /// A connection for a call, failing fast while degraded; a failure to connect degrades.
    async fn usable_connection(self: &Arc<Self>) -> Result<MultiplexedConnection, StoreError> {
        if self.is_degraded() {
            return Err(StoreError::Unavailable("degraded".into()));
        }
        self.connection().await.inspect_err(|e| self.degrade(e))
    }

    /// Classifies a failed call; an outage (not a fencing refusal) degrades the store.
    fn failed(self: &Arc<Self>, e: &RedisError) -> StoreError {
        let error = redis_error(e);
        if matches!(error, StoreError::Unavailable(_)) {
            self.degrade(&error);
        }
        error
    }

    /// Takes ownership of a partition (`resume = false` right after a Kafka assignment; `true`
    /// after a Redis outage, which succeeds only if nobody else took it meanwhile).
    ///
    /// `topic_id` is the input topic's Kafka topic id ("" if the cluster did not say): every
    /// record written under this claim carries it.
    pub async fn claim(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        topic_id: &str,
        resume: bool,
    ) -> Result<Fence, StoreError> {
        let owner_key = self.keys.owner(topic, partition);
        let script = Script::Claim;
        let mut inv = script.get().prepare_invoke();
        inv.key(&owner_key)
            .arg(&self.instance)
            .arg(self.ttl.owner)
            .arg(if resume { "resume" } else { "assign" })
            .arg(topic_id);
        let generation: u64 = self.run(script, inv, 1).await?;
        if generation == 0 {
            return Err(StoreError::Stale("another instance claimed it".into()));
        }
        Ok(Fence {
            owner_key,
            generation,
            partition,
            topic_id: topic_id.to_string(),
        })
    }

    /// Decides, for a chunk of fragments, which are new, already emitted, or duplicates.
    /// `high` is the partition's high watermark: a record at or above it cannot describe this
    /// log and is ignored.
    pub async fn admit(
        self: &Arc<Self>,
        fence: &Fence,
        high: i64,
        fragments: &[Candidate<'_>],
    ) -> Result<Admission, StoreError> {
        if fragments.is_empty() {
            return Ok(Admission::default());
        }
        let script = Script::Admit;
        let mut inv = script.get().prepare_invoke();
        inv.key(&fence.owner_key)
            .arg(fence.generation)
            .arg(fence.partition)
            .arg(self.ttl.event)
            .arg(self.ttl.owner)
            .arg(&fence.topic_id)
            .arg(high)
            .arg(self.ts_tolerance);
        for f in fragments {
            let flushed = self.keys.flushed(f.key);
            match f.event_id {
                Some(id) => inv.key(&flushed).key(self.keys.event(id)),
                None => inv.key(&flushed).key(&flushed),
            };
            inv.arg(f.offset)
                .arg(if f.event_id.is_some() { "1" } else { "0" })
                .arg(f.ts);
        }
        let (codes, seeds): (Vec<u8>, Vec<String>) = self.run(script, inv, fragments.len()).await?;
        let verdicts: Vec<Verdict> = codes
            .into_iter()
            .map(|c| match c {
                1 => Verdict::Emitted,
                2 => Verdict::Duplicate,
                3 => Verdict::NewPastStale(Stale::TopicId),
                4 => Verdict::NewPastStale(Stale::BeyondHighWatermark),
                5 => Verdict::NewPastStale(Stale::LogTime),
                _ => Verdict::New,
            })
            .collect();
        if verdicts.len() != fragments.len() {
            return Err(StoreError::Unavailable(format!(
                "admit returned {} verdicts for {} fragments",
                verdicts.len(),
                fragments.len()
            )));
        }
        let seeds = seeds
            .chunks_exact(3)
            .filter_map(|s| {
                Some(Seed {
                    // Lua counts from 1.
                    index: s[0].parse::<usize>().ok()?.checked_sub(1)?,
                    batch_id: s[1].clone(),
                    last_ts: s[2].parse().ok()?,
                })
            })
            .collect();
        Ok(Admission { verdicts, seeds })
    }

    /// Publishes the summaries of open windows (TTL refreshed on every write).
    pub async fn publish_pending(
        self: &Arc<Self>,
        fence: &Fence,
        windows: &[PendingSummary],
    ) -> Result<(), StoreError> {
        if windows.is_empty() {
            return Ok(());
        }
        let script = Script::Pending;
        let inv = self.pending_invocation(fence, windows);
        let _: i64 = self.run(script, inv, windows.len()).await?;
        Ok(())
    }

    /// Records acknowledged batches: moves flushed watermarks forward, drops their pending keys.
    /// `high` is the partition's high watermark (see [`Store::admit`]).
    pub async fn record_flushed(
        self: &Arc<Self>,
        fence: &Fence,
        high: i64,
        batches: &[Flushed],
    ) -> Result<(), StoreError> {
        if batches.is_empty() {
            return Ok(());
        }
        let script = Script::Flush;
        let inv = self.flush_invocation(fence, high, batches);
        let _: i64 = self.run(script, inv, batches.len()).await?;
        Ok(())
    }

    /// Publishes open-window summaries and records acknowledged batches in one round trip: the
    /// two scripts go out as one pipeline. Scripts in a pipeline are not re-loaded by redis-rs on
    /// NOSCRIPT (after a Redis restart or SCRIPT FLUSH), so this loads them and retries once.
    pub async fn sync(
        self: &Arc<Self>,
        fence: &Fence,
        high: i64,
        windows: &[PendingSummary],
        batches: &[Flushed],
    ) -> Result<(), StoreError> {
        match (windows.is_empty(), batches.is_empty()) {
            (true, true) => return Ok(()),
            (false, true) => return self.publish_pending(fence, windows).await,
            (true, false) => return self.record_flushed(fence, high, batches).await,
            (false, false) => {}
        }
        let pending = self.pending_invocation(fence, windows);
        let flush = self.flush_invocation(fence, high, batches);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&pending).invoke_script(&flush);
        let mut conn = self.usable_connection().await?;
        let started = Instant::now();
        let mut result = pipe.query_async::<(i64, i64)>(&mut conn).await;
        if matches!(&result, Err(e) if e.code() == Some("NOSCRIPT")) {
            debug!("scripts missing on the server (restart or SCRIPT FLUSH): loading them again");
            result = match scripts::load_all(&mut conn).await {
                Ok(()) => pipe.query_async::<(i64, i64)>(&mut conn).await,
                Err(e) => Err(e),
            };
        }
        metrics()
            .redis_call_seconds
            .with_label_values(&[SYNC_LABEL])
            .observe(started.elapsed().as_secs_f64());
        debug!(
            windows = windows.len(),
            batches = batches.len(),
            instance = %self.instance,
            pid = std::process::id(),
            "redis pipeline pending+flush"
        );
        result.map(|_| ()).map_err(|e| self.failed(&e))
    }

    fn pending_invocation(
        &self,
        fence: &Fence,
        windows: &[PendingSummary],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = Script::Pending.get().prepare_invoke();
        inv.key(&fence.owner_key)
            .arg(fence.generation)
            .arg(&self.instance)
            .arg(fence.partition)
            .arg(self.ttl.pending)
            .arg(self.ttl.owner);
        for w in windows {
            inv.key(self.keys.pending(&w.key))
                .arg(w.first_ts)
                .arg(w.last_ts)
                .arg(w.count)
                .arg(w.flush_at)
                .arg(w.first_offset);
        }
        inv
    }

    fn flush_invocation(
        &self,
        fence: &Fence,
        high: i64,
        batches: &[Flushed],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = Script::Flush.get().prepare_invoke();
        inv.key(&fence.owner_key)
            .arg(fence.generation)
            .arg(fence.partition)
            .arg(self.ttl.flushed)
            .arg(self.ttl.owner)
            .arg(&fence.topic_id)
            .arg(high)
            .arg(self.ts_tolerance);
        for b in batches {
            inv.key(self.keys.flushed(&b.key))
                .key(self.keys.pending(&b.key))
                .arg(b.last_offset)
                .arg(b.first_offset)
                .arg(b.last_ts)
                .arg(&b.batch_id);
        }
        inv
    }

    /// Reads a user's open-window summary, if any.
    pub async fn read_pending(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Option<PendingView>, StoreError> {
        let mut conn = self.connection().await?;
        let name = self.keys.pending(key);
        let (fields, ttl): (std::collections::HashMap<String, String>, i64) = redis::pipe()
            .cmd("HGETALL")
            .arg(&name)
            .cmd("PTTL")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| {
            fields
                .get(f)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1)
        };
        Ok(Some(PendingView {
            key: key.to_string(),
            partition: num("partition") as i32,
            owner: fields.get("owner").cloned().unwrap_or_default(),
            count: num("count").max(0) as u64,
            first_ts: num("first_ts"),
            last_ts: num("last_ts"),
            flush_at: num("flush_at"),
            first_offset: num("first_offset"),
            ttl_ms: ttl,
        }))
    }
}
