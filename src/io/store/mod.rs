//! Shared state in Redis: only the facts that must cross or outlive a process.
//!
//! Every key of a partition carries the partition's hash tag ([`keys`]), so each call stays in one
//! slot of a Redis Cluster; `REDIS_URL` may name a single server or any nodes of a cluster
//! (comma-separated), which is detected by itself ([`client`]).
//!
//! * `owner` — who owns a partition, with a fencing generation
//!   ([`Store::claim`]); every write below carries it and a stale one is refused ([`StoreError::Stale`]).
//! * `flushed:{key}` — (at_least_once) the last offset of a key already emitted, with the
//!   partition and the Kafka topic id it was read from, so a new owner replaying from the
//!   committed offset skips what was delivered ([`Store::admit`], [`Store::record_flushed`]). A
//!   record of another topic id (the topic was recreated) or at or above the high watermark is
//!   ignored, never used to skip ([`Stale`], [`judge`]). In exactly_once the state topic keeps
//!   these records, in the batches' transactions, and Redis has none.
//! * `event:{event_id}` — first sighting of an event id, to drop producer retries ([`Store::admit`]).
//! * `pending:{key}` — the open window's summary, for "is this user mid-burst?"
//!   ([`Store::sync`], [`Store::read_pending`]).
//!
//! Writes that depend on ownership go through the scripts in `lua/` (atomic, loaded once, called
//! by SHA, every key passed in `KEYS`); admission is a pipeline of plain commands ([`admit`]).
//! One call covers a whole chunk of fragments or batches.
//!
//! Redis is an optimisation, never a dependency of correctness: when it is unreachable the store
//! turns *degraded* — calls fail fast, lull keeps batching in memory with the duplicate protections
//! off, readiness says `redis_degraded`. Whether Redis is reachable is one fact with one writer:
//! the supervised *redis connection* task ([`Store::connect`] starts it). Calls that fail tell it
//! so; it publishes the state over a `watch` channel (and into the run's health), reconnects with
//! backoff, and checks an idle connection every [`CHECK_INTERVAL`]. Each recovery bumps
//! [`Store::epoch`], telling partition workers to re-claim their partitions.

mod admit;
pub mod client;
mod connection;
mod facts;
pub mod judge;
mod keys;
mod lookup;
pub mod monitor;
mod scripts;
mod sync;

pub use client::Conn;
pub use facts::*;
pub use keys::{Keys, PartitionKeys};

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, Runtime};
use redis::RedisError;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{mask_url_password, Config};
use crate::model::window::FUTURE_TOLERANCE_MS;
use crate::ops::metrics::metrics;
use crate::ops::supervisor::Supervisor;

pub use scripts::Script;

pub use admit::ADMIT_LABEL;

/// The `lull_redis_call_seconds` label of the pending+flush pipeline (scripts are labelled by
/// their name, the admit pipeline by [`ADMIT_LABEL`]).
pub const SYNC_LABEL: &str = "sync";

/// Redis round trips made by this process so far: every sample of `lull_redis_call_seconds`,
/// under every label it is recorded with (each script, and the pipeline). The one count the
/// demo and the benchmark report.
pub fn round_trips() -> u64 {
    let m = metrics();
    Script::ALL
        .iter()
        .map(|s| s.name())
        .chain([ADMIT_LABEL, SYNC_LABEL])
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

/// TTLs of the keys lull writes, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    owner: u64,
    flushed: u64,
    event: u64,
    pending: u64,
}

/// How often the redis connection task checks a connection nothing has failed on (a PING), so
/// an outage shows in readiness even while no partition calls Redis.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Whether Redis can be used now, as the redis connection task publishes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Redis is unreachable: calls fail fast until it recovers.
    pub degraded: bool,
    /// Bumped on every recovery.
    pub epoch: u64,
}

/// The Redis connection, scripts and degraded-mode state of one process.
pub struct Store {
    url_shown: String,
    /// Every seed URL of `REDIS_URL` (several only for a cluster).
    seeds: Vec<String>,
    /// Whether a seed said it runs in cluster mode: from then on every connection is a cluster
    /// connection (whichever seeds are up).
    clustered: std::sync::atomic::AtomicBool,
    /// Connections to the first seed URL.
    pool: Pool,
    /// One multiplexed connection (to the server, or to the whole cluster), cloned for
    /// concurrent calls (checking out of the pool per call would cost a PING each time); replaced
    /// after a failure.
    conn: std::sync::Mutex<Option<Conn>>,
    keys: Keys,
    instance: String,
    ttl: Ttls,
    /// [`LOG_TIME_TOLERANCE_MS`], or -1 when timestamps are arrival times.
    ts_tolerance: i64,
    /// Published by the redis connection task alone.
    reachability: watch::Receiver<Reachability>,
    /// Failed calls, told to the redis connection task.
    outages: mpsc::UnboundedSender<StoreError>,
}

fn redis_error(e: &RedisError) -> StoreError {
    match e.code() {
        Some("STALE") => StoreError::Stale(e.detail().unwrap_or_default().to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Store {
    /// Sets up the pool for `REDIS_URL` and starts the redis connection task under `supervisor`
    /// (it stops when `supervisor`'s run shuts down). Never fails on an unreachable server: the
    /// store starts degraded and reconnects in the background. Fails only on a malformed URL.
    pub async fn connect(
        config: &Config,
        supervisor: &Supervisor,
    ) -> Result<Arc<Self>, StoreError> {
        let Some(url) = &config.redis_url else {
            return Err(StoreError::Unavailable("REDIS_URL is not set".into()));
        };
        let connection = client::connection_config();
        let seeds: Vec<String> = client::seed_urls(url.expose())
            .into_iter()
            .map(str::to_string)
            .collect();
        let first_seed = seeds.first().map(String::as_str).unwrap_or_default();
        let manager = Manager::new_with_config(first_seed, connection)
            .map_err(|e| StoreError::Unavailable(format!("bad REDIS_URL: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("redis pool: {e}")))?;
        let (outages, outage_rx) = mpsc::unbounded_channel();
        let (publish, reachability) = watch::channel(Reachability::default());
        let max_wait = config.max_wait.as_millis() as u64;
        let grace = config.grace.as_millis() as u64;
        let store = Arc::new(Self {
            url_shown: mask_url_password(url.expose()),
            seeds,
            clustered: std::sync::atomic::AtomicBool::new(false),
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
            reachability,
            outages,
        });
        let first = store.connection().await;
        match &first {
            Ok(_) => info!(url = %store.url_shown, "redis connected"),
            Err(e) => {
                *store.lock_conn() = None;
                if e.is_authentication() {
                    warn!(error = %e, url = %store.url_shown, "redis refused lull's credentials: check the user and password in REDIS_URL; batching continues in memory, duplicate protection is off until it connects");
                } else {
                    warn!(error = %e, url = %store.url_shown, "redis unreachable: batching continues in memory; duplicate protection is off until it recovers");
                }
                metrics().redis_errors.inc();
            }
        }
        // The task's starting point, published before any call can ask.
        publish.send_modify(|r| r.degraded = first.is_err());
        let task = connection::Connection {
            store: Arc::downgrade(&store),
            publish,
            outages: outage_rx,
            health: supervisor.health(),
            stop: supervisor.stopping(),
        };
        supervisor.spawn("redis connection", task.run(first.is_err()));
        Ok(store)
    }

    /// Key names of this store.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether Redis is currently unreachable.
    pub fn is_degraded(&self) -> bool {
        self.reachability.borrow().degraded
    }

    /// Bumped on every recovery from degraded mode: workers re-claim their partitions.
    pub fn epoch(&self) -> u64 {
        self.reachability.borrow().epoch
    }

    /// A connection: the shared multiplexed one, or a fresh one ([`Store::open`]), named and
    /// with the scripts loaded.
    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.lock_conn().as_ref() {
            return Ok(c.clone());
        }
        let mut conn = self.open().await?;
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

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A call failed on an outage: the cached connection is dropped (the next call takes a fresh
    /// one) and the redis connection task is told.
    fn degrade(&self, error: &StoreError) {
        *self.lock_conn() = None;
        metrics().redis_errors.inc();
        let _ = self.outages.send(error.clone());
    }

    /// Whether Redis answers a PING: on a fresh connection (`fresh`, after an outage), else on
    /// the one in use.
    async fn ping(&self, fresh: bool) -> bool {
        if fresh {
            *self.lock_conn() = None;
        }
        match self.connection().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
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
    async fn usable_connection(&self) -> Result<Conn, StoreError> {
        if self.is_degraded() {
            return Err(StoreError::Unavailable("degraded".into()));
        }
        self.connection().await.inspect_err(|e| self.degrade(e))
    }

    /// Classifies a failed call; an outage (not a fencing refusal) degrades the store.
    fn failed(&self, e: &RedisError) -> StoreError {
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
        let keys = self.keys.partition(topic, partition);
        let script = Script::Claim;
        let mut inv = script.get().prepare_invoke();
        inv.key(keys.owner())
            .arg(&self.instance)
            .arg(self.ttl.owner)
            .arg(if resume { "resume" } else { "assign" })
            .arg(topic_id);
        let generation: u64 = self.run(script, inv, 1).await?;
        if generation == 0 {
            return Err(StoreError::Stale("another instance claimed it".into()));
        }
        // Listed for lookups by user (`lull pending`), outside the script: another slot.
        let mut conn = self.usable_connection().await?;
        let registry = self.keys.partitions();
        let listed: Result<(), RedisError> = redis::pipe()
            .cmd("SADD")
            .arg(&registry)
            .arg(keys.member())
            .ignore()
            .cmd("PEXPIRE")
            .arg(&registry)
            .arg(self.ttl.owner)
            .ignore()
            .query_async(&mut conn)
            .await;
        listed.map_err(|e| self.failed(&e))?;
        Ok(Fence {
            keys,
            generation,
            partition,
            topic_id: topic_id.to_string(),
        })
    }
}
