//! The gate between intake and the window engine: which fragments are new.
//!
//! Without Redis ([`Gate::AllowAll`]) every fragment is. With Redis ([`Gate::Redis`]) the worker
//! first claims the partition (a fencing generation, the input topic's identity, and the
//! partition's high watermark at that moment: its [`Horizon`]); each chunk is then admitted in one
//! round trip — duplicate event ids dropped and, in at_least_once, fragments already delivered
//! before a crash or handoff skipped — and the ledger's writes go through here too. If Redis
//! refuses the generation, another instance owns the partition: [`Fenced`], and the worker stops.
//! If Redis is down, the gate lets everything through (degraded) and re-claims once Redis is back.
//!
//! Only what an earlier owner may have left is read from Redis: a `flushed:` record can cover
//! input below the horizon's high watermark, and its last batch can matter to `follows` only for a
//! key the engine does not remember and for input within the follow-up reach of the horizon's
//! time. Past both, the owner knows everything Redis could tell it (a stale owner's records are
//! refused by the fencing), and admission is about event ids alone.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::io::producer::Sink;
use crate::io::store::{Admission, Candidate, Fence, Stale, Store, StoreError};
use crate::model::window::{WindowConfig, FUTURE_TOLERANCE_MS};
use crate::ops::metrics::metrics;

use super::ledger::SyncBatch;

/// At most one WARN per partition this often about ignored (stale) records in Redis.
const STALE_WARN_EVERY: Duration = Duration::from_secs(30);

/// How long the input topic's identity, and the partition's high watermark, may take to learn at
/// claim time.
const TOPIC_ID_TIMEOUT: Duration = Duration::from_secs(5);

/// What an earlier owner may have left in Redis, as of this owner's first claim: records of input
/// below `high` (the partition's high watermark taken after the claim), of batches whose last
/// fragment is no later than `ts`.
#[derive(Debug, Clone, Copy)]
struct Horizon {
    high: i64,
    ts: i64,
}

/// Another instance owns the partition now (Redis fencing): the worker must stop touching it.
#[derive(Debug)]
pub struct Fenced(pub String);

/// Which fragments are new.
pub enum Gate {
    /// No shared state: every fragment is new.
    AllowAll,
    /// Shared state in Redis.
    Redis(Box<RedisGate>),
}

/// The Redis side of the gate for one partition.
pub struct RedisGate {
    store: Arc<Store>,
    sink: Sink,
    topic: Arc<str>,
    partition: i32,
    /// The claim, and the store epoch it was made in (a Redis recovery needs a new one).
    fence: Option<(Fence, u64)>,
    /// The input topic's identity, once learnt.
    topic_id: Option<String>,
    /// Whether `flushed:` records are kept in Redis (at_least_once).
    records: bool,
    /// How long after a key's last batch a new one may still follow it (follow-up + grace, ms;
    /// 0 when `follows` is off).
    reach_ms: i64,
    /// Learnt at the first claim; unknown (every record read) if the cluster did not say.
    horizon: Option<Horizon>,
    stale_warned_at: Option<Instant>,
    stale_unreported: u64,
}

/// How long after a key's last batch a new batch may still follow it, in log time (0 when
/// `follows` is off): the follow-up window and the grace.
pub fn follow_reach(cfg: &WindowConfig) -> i64 {
    if cfg.followup_ms > 0 {
        cfg.followup_ms.saturating_add(cfg.grace_ms)
    } else {
        0
    }
}

/// What a partition's gate is built from.
pub struct GateParts {
    /// The store, when Redis is configured.
    pub store: Option<Arc<Store>>,
    /// The producer (asked for the topic's identity and the partition's high watermark).
    pub sink: Sink,
    /// The input topic.
    pub topic: Arc<str>,
    /// The input partition.
    pub partition: i32,
    /// Whether `flushed:` records are kept in Redis (at_least_once).
    pub records: bool,
    /// Follow-up + grace, ms (0 when `follows` is off).
    pub reach_ms: i64,
}

impl Gate {
    /// The gate for a partition: Redis when a store is configured.
    pub fn new(parts: GateParts) -> Self {
        let GateParts {
            store,
            sink,
            topic,
            partition,
            records,
            reach_ms,
        } = parts;
        match store {
            None => Gate::AllowAll,
            Some(store) => Gate::Redis(Box::new(RedisGate {
                store,
                sink,
                topic,
                partition,
                fence: None,
                topic_id: None,
                records,
                reach_ms,
                horizon: None,
                stale_warned_at: None,
                stale_unreported: 0,
            })),
        }
    }

    /// Whether the gate writes to Redis (the ledger has work).
    pub fn is_redis(&self) -> bool {
        matches!(self, Gate::Redis(_))
    }

    /// Claims the partition, when there is no valid claim: at start, and after Redis recovered.
    pub async fn claim(&mut self) -> Result<(), Fenced> {
        match self {
            Gate::AllowAll => Ok(()),
            Gate::Redis(g) => g.ensure_fence().await,
        }
    }

    /// Whether admitting a fragment at `offset` with timestamp `ts` must read its key's
    /// `flushed:` record (see the module's doc); `remembered`: whether the engine knows the key,
    /// asked only when the answer matters (not per fragment in exactly_once or without Redis).
    pub fn needs_record(
        &mut self,
        offset: i64,
        ts: i64,
        remembered: impl FnOnce() -> bool,
    ) -> bool {
        let Gate::Redis(g) = self else {
            return false;
        };
        if !g.records {
            return false;
        }
        match g.horizon.as_mut() {
            None => true,
            Some(h) if offset < h.high => {
                h.ts = h.ts.max(ts);
                true
            }
            Some(h) => g.reach_ms > 0 && ts <= h.ts.saturating_add(g.reach_ms) && !remembered(),
        }
    }

    /// The offset below which input may have been handled by an earlier owner (whose `pending:`
    /// summaries this owner must delete when it sends those windows out); everything while
    /// unknown.
    pub fn inherited_below(&self) -> i64 {
        match self {
            Gate::Redis(g) => g.horizon.map_or(i64::MAX, |h| h.high),
            Gate::AllowAll => 0,
        }
    }

    /// The verdict on each fragment of a chunk (one call); `None` lets all through (no Redis,
    /// or Redis unreachable). `high` is the partition's high watermark.
    pub async fn admit(
        &mut self,
        fragments: &[Candidate<'_>],
        high: i64,
    ) -> Result<Option<Admission>, Fenced> {
        let Gate::Redis(g) = self else {
            return Ok(None);
        };
        if fragments.is_empty() {
            return Ok(None);
        }
        g.ensure_fence().await?;
        let Some((store, fence)) = g.usable() else {
            return Ok(None);
        };
        match store.admit(fence, high, fragments).await {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Stale(why)) => Err(Fenced(why)),
            Err(StoreError::Unavailable(_)) => Ok(None),
        }
    }

    /// Writes window summaries and acknowledged batches; hands them back if Redis could not take
    /// them now (they go with the next write).
    pub async fn sync(&mut self, batch: SyncBatch, high: i64) -> Result<Option<SyncBatch>, Fenced> {
        let Gate::Redis(g) = self else {
            return Ok(None);
        };
        if batch.is_empty() {
            return Ok(None);
        }
        g.ensure_fence().await?;
        let Some((store, fence)) = g.usable() else {
            return Ok(Some(batch));
        };
        match store
            .sync(fence, high, &batch.windows, &batch.gone, &batch.batches)
            .await
        {
            Ok(()) => Ok(None),
            Err(StoreError::Stale(why)) => Err(Fenced(why)),
            Err(StoreError::Unavailable(_)) => Ok(Some(batch)),
        }
    }

    /// Counts a flushed record in Redis that was ignored because it cannot describe this log,
    /// and says so at WARN at most every [`STALE_WARN_EVERY`].
    pub fn stale(&mut self, why: Stale, offset: i64) {
        let Gate::Redis(g) = self else {
            return;
        };
        metrics()
            .redis_stale_records
            .with_label_values(&[why.label()])
            .inc();
        g.stale_unreported += 1;
        debug!(
            partition = g.partition,
            offset,
            reason = why.label(),
            "flushed record in redis ignored"
        );
        if g.stale_warned_at
            .is_none_or(|at| at.elapsed() >= STALE_WARN_EVERY)
        {
            warn!(
                partition = g.partition,
                reason = why.label(),
                records = g.stale_unreported,
                topic_id = g.topic_id.as_deref().unwrap_or(""),
                "flushed records in redis do not describe this topic (recreated topic, replaced \
                 cluster, or a reset of offsets past them): ignored, the fragments are batched"
            );
            g.stale_warned_at = Some(Instant::now());
            g.stale_unreported = 0;
        }
    }
}

impl RedisGate {
    /// The store and fence to write with, when Redis is usable right now.
    fn usable(&self) -> Option<(&Arc<Store>, &Fence)> {
        let (fence, epoch) = self.fence.as_ref()?;
        (!self.store.is_degraded() && *epoch == self.store.epoch()).then_some((&self.store, fence))
    }

    async fn ensure_fence(&mut self) -> Result<(), Fenced> {
        let epoch = self.store.epoch();
        if self.store.is_degraded() || self.fence.as_ref().is_some_and(|(_, e)| *e == epoch) {
            return Ok(());
        }
        let resume = self.fence.is_some();
        if self.topic_id.is_none() {
            self.topic_id = self.learn_topic_id().await;
        }
        let claimed_at = crate::ops::clock::now_ms();
        let topic_id = self.topic_id.as_deref().unwrap_or("");
        match self
            .store
            .claim(&self.topic, self.partition, topic_id, resume)
            .await
        {
            Ok(fence) => {
                info!(
                    partition = self.partition,
                    generation = fence.generation,
                    resume,
                    "partition claimed in redis"
                );
                self.fence = Some((fence, epoch));
                if !resume {
                    self.horizon = self.learn_horizon(claimed_at).await;
                }
                Ok(())
            }
            Err(StoreError::Stale(why)) => Err(Fenced(why)),
            Err(StoreError::Unavailable(_)) => Ok(()),
        }
    }

    /// Asks the cluster for the partition's high watermark, right after the claim: input at or
    /// above it came after the claim, so only this owner can have recorded it (a stale owner's
    /// writes are refused). Unknown if the cluster does not answer: then every record is read,
    /// and every summary of a window sent out deleted.
    async fn learn_horizon(&self, claimed_at: i64) -> Option<Horizon> {
        let sink = self.sink.clone();
        let topic = self.topic.to_string();
        let partition = self.partition;
        let asked = tokio::task::spawn_blocking(move || {
            sink.high_watermark(&topic, partition, TOPIC_ID_TIMEOUT)
        })
        .await;
        match asked {
            Ok(Ok(high)) => Some(Horizon {
                high,
                ts: claimed_at.saturating_add(FUTURE_TOLERANCE_MS),
            }),
            Ok(Err(e)) => {
                warn!(partition = self.partition, error = %e, "cannot learn the high watermark at the claim: every record in redis is read as if an earlier owner wrote it");
                None
            }
            Err(e) => {
                warn!(partition = self.partition, error = %e, "high watermark lookup failed");
                None
            }
        }
    }

    /// Asks the cluster for the input topic's identity (its topic id, else the cluster's id).
    /// Without one only the high-watermark and timestamp checks guard against stale records.
    async fn learn_topic_id(&self) -> Option<String> {
        let sink = self.sink.clone();
        let topic = self.topic.to_string();
        let asked =
            tokio::task::spawn_blocking(move || sink.topic_identity(&topic, TOPIC_ID_TIMEOUT))
                .await;
        match asked {
            Ok(Ok(Some(id))) => {
                debug!(partition = self.partition, topic_id = %id, "input topic identity");
                Some(id)
            }
            Ok(Ok(None)) => {
                info!(partition = self.partition, "the cluster gives neither a topic id nor a cluster id: stale redis records are recognised by the high watermark and timestamps only");
                None
            }
            Ok(Err(e)) => {
                warn!(partition = self.partition, error = %e, "cannot learn the input topic id: stale redis records are recognised by the high watermark and timestamps only");
                None
            }
            Err(e) => {
                warn!(partition = self.partition, error = %e, "topic id lookup failed");
                None
            }
        }
    }
}
