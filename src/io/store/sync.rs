//! The ledger's writes: open-window summaries published (and deleted once their window went
//! out), and, in at_least_once, acknowledged batches recorded. Each is one fenced script call for
//! many keys; when both are due they go out as one pipeline.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::{scripts, Fence, Flushed, PendingSummary, Script, Store, StoreError, SYNC_LABEL};
use crate::ops::metrics::metrics;

impl Store {
    /// Publishes the summaries of open windows (TTL refreshed on every write).
    pub async fn publish_pending(
        self: &Arc<Self>,
        fence: &Fence,
        windows: &[PendingSummary],
    ) -> Result<(), StoreError> {
        self.sync(fence, 0, windows, &[], &[]).await
    }

    /// Records acknowledged batches: moves flushed watermarks forward (at_least_once). `high` is
    /// the partition's high watermark (see [`Store::admit`]).
    pub async fn record_flushed(
        self: &Arc<Self>,
        fence: &Fence,
        high: i64,
        batches: &[Flushed],
    ) -> Result<(), StoreError> {
        self.sync(fence, high, &[], &[], batches).await
    }

    /// Publishes open-window summaries, deletes the summaries of keys in `gone` (their window
    /// went out and none is open now), and records acknowledged batches, in one round trip: when
    /// both scripts are due they go out as one pipeline. Scripts in a pipeline are not re-loaded
    /// by redis-rs on NOSCRIPT (after a Redis restart or SCRIPT FLUSH), so this loads them and
    /// retries once.
    pub async fn sync(
        self: &Arc<Self>,
        fence: &Fence,
        high: i64,
        windows: &[PendingSummary],
        gone: &[String],
        batches: &[Flushed],
    ) -> Result<(), StoreError> {
        let pending = (!windows.is_empty() || !gone.is_empty())
            .then(|| self.pending_call(fence, windows, gone));
        let flush = (!batches.is_empty()).then(|| self.flush_call(fence, high, batches));
        let (pending, flush) = match (pending, flush) {
            (None, None) => return Ok(()),
            (Some(call), None) => {
                let items = windows.len() + gone.len();
                return self
                    .run::<i64>(Script::Pending, call, items)
                    .await
                    .map(drop);
            }
            (None, Some(call)) => {
                return self
                    .run::<i64>(Script::Flush, call, batches.len())
                    .await
                    .map(drop)
            }
            (Some(p), Some(f)) => (p, f),
        };
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
            gone = gone.len(),
            batches = batches.len(),
            instance = %self.instance,
            pid = std::process::id(),
            "redis pipeline pending+flush"
        );
        result.map(drop).map_err(|e| self.failed(&e))
    }

    fn pending_call(
        &self,
        fence: &Fence,
        windows: &[PendingSummary],
        gone: &[String],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = Script::Pending.get().prepare_invoke();
        inv.key(fence.keys.owner())
            .arg(fence.generation)
            .arg(&self.instance)
            .arg(fence.partition)
            .arg(self.ttl.pending)
            .arg(self.ttl.owner)
            .arg(windows.len());
        for w in windows {
            inv.key(fence.keys.pending(&w.key))
                .arg(w.first_ts)
                .arg(w.last_ts)
                .arg(w.count)
                .arg(w.flush_at)
                .arg(w.first_offset);
        }
        for key in gone {
            inv.key(fence.keys.pending(key));
        }
        inv
    }

    fn flush_call(
        &self,
        fence: &Fence,
        high: i64,
        batches: &[Flushed],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = Script::Flush.get().prepare_invoke();
        inv.key(fence.keys.owner())
            .arg(fence.generation)
            .arg(fence.partition)
            .arg(self.ttl.flushed)
            .arg(self.ttl.owner)
            .arg(&fence.topic_id)
            .arg(high)
            .arg(self.ts_tolerance);
        for b in batches {
            inv.key(fence.keys.flushed(&b.key))
                .arg(b.last_offset)
                .arg(b.first_offset)
                .arg(b.last_ts)
                .arg(&b.batch_id);
        }
        inv
    }
}
