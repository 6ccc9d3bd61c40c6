//! Lookups by user, for the operator tools: a user's open-window summary, found in whichever
//! partition holds it (the store's keys are per partition; [`super::keys`]).

use std::sync::Arc;

use super::{redis_error, PartitionKeys, PendingView, Store, StoreError};

impl Store {
    /// Reads a user's open-window summary, if any: looked up in every partition ever claimed
    /// (a user's fragments normally all go to one; after a repartitioning the newest summary
    /// wins).
    pub async fn read_pending(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Option<PendingView>, StoreError> {
        let mut conn = self.connection().await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.partitions())
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let mut found: Option<PendingView> = None;
        for member in members {
            let Some((topic, partition)) = PartitionKeys::parse_member(&member) else {
                continue;
            };
            let name = self.keys.partition(topic, partition).pending(key);
            let (fields, ttl): (std::collections::HashMap<String, String>, i64) = redis::pipe()
                .cmd("HGETALL")
                .arg(&name)
                .cmd("PTTL")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            if fields.is_empty() {
                continue;
            }
            let num = |f: &str| {
                fields
                    .get(f)
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(-1)
            };
            let view = PendingView {
                key: key.to_string(),
                partition: num("partition") as i32,
                owner: fields.get("owner").cloned().unwrap_or_default(),
                count: num("count").max(0) as u64,
                first_ts: num("first_ts"),
                last_ts: num("last_ts"),
                flush_at: num("flush_at"),
                first_offset: num("first_offset"),
                ttl_ms: ttl,
            };
            if found.as_ref().is_none_or(|f| view.last_ts > f.last_ts) {
                found = Some(view);
            }
        }
        Ok(found)
    }
}
