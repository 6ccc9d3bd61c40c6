//! Admitting a chunk of fragments: one pipeline of plain commands, no script.
//!
//! Per chunk, one `HMGET` per key whose `flushed:` record the caller still needs (at_least_once
//! only, and only where the record can say something the owner does not know: see
//! [`Candidate::needs_record`]), and one `SET event:<id> <sighting> NX PX <ttl>` per fragment
//! with an event id. The verdicts are drawn here from the replies ([`super::judge`]). Only event
//! ids seen before (a producer retry, or a replay) cost a second round trip: their first sightings
//! are read back with `GET`, and a sighting from another incarnation of the topic is replaced.
//!
//! None of this needs a script or the fencing generation: the records are only read, and an
//! `event:` key's value is a function of the log (the first offset of the partition that carried
//! the id), so a stale owner writing one writes what the new owner would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use redis::Value;
use tracing::debug;

use super::judge::{Judge, Judgement, Record, Sighted};
use super::{Admission, Candidate, Fence, Seed, Stale, Store, StoreError, Verdict};
use crate::ops::metrics::metrics;

/// The `lull_redis_call_seconds` label of the admit pipeline.
pub const ADMIT_LABEL: &str = "admit";

impl Store {
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
        let judge = Judge {
            partition: fence.partition,
            topic_id: &fence.topic_id,
            high,
            tolerance: self.ts_tolerance,
        };
        // Each key's record once per chunk, in the order first asked.
        let mut record_of: HashMap<&str, usize> = HashMap::new();
        let mut pipe = redis::pipe();
        // A key of another type under a record's name (nothing lull writes) answers WRONGTYPE:
        // that record is read as absent, the rest of the chunk judged as usual.
        pipe.ignore_errors();
        for f in fragments.iter().filter(|f| f.needs_record) {
            let next = record_of.len();
            record_of.entry(f.key).or_insert_with(|| {
                pipe.cmd("HMGET").arg(fence.keys.flushed(f.key)).arg(&[
                    "topic_id",
                    "partition",
                    "offset",
                    "last_ts",
                    "batch_id",
                ]);
                next
            });
        }
        let events: Vec<(usize, &str)> = fragments
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((i, f.event_id?)))
            .collect();
        for &(i, id) in &events {
            pipe.cmd("SET")
                .arg(fence.keys.event(id))
                .arg(judge.sighting(fragments[i].offset))
                .arg("NX")
                .arg("PX")
                .arg(self.ttl.event);
        }
        if record_of.is_empty() && events.is_empty() {
            // Nothing to ask (no event ids, no records needed): no round trip.
            return Ok(Admission {
                verdicts: vec![Verdict::New; fragments.len()],
                seeds: Vec::new(),
            });
        }
        let replies: Vec<Value> = self.pipeline(&pipe, fragments.len()).await?;
        if replies.len() != record_of.len() + events.len() {
            return Err(StoreError::Unavailable(format!(
                "admit got {} replies for {} commands",
                replies.len(),
                record_of.len() + events.len()
            )));
        }
        let mut replies = replies.into_iter();
        let records: Vec<Record> = replies
            .by_ref()
            .take(record_of.len())
            .map(|v| Record::from_fields(redis::from_redis_value(v).unwrap_or_default()))
            .collect();
        let event_replies: Vec<Value> = replies.collect();
        if let Some(Value::ServerError(e)) = event_replies
            .iter()
            .find(|v| matches!(v, Value::ServerError(_)))
        {
            // The server refuses writes (out of memory, read-only replica, …): as unavailable.
            let error = StoreError::Unavailable(format!("event sighting refused: {e:?}"));
            self.degrade(&error);
            return Err(error);
        }

        let mut verdicts = Vec::with_capacity(fragments.len());
        let mut seeds = Vec::new();
        let mut seeded = vec![false; records.len()];
        for (i, f) in fragments.iter().enumerate() {
            let Some(&r) = record_of.get(f.key).filter(|_| f.needs_record) else {
                verdicts.push(Verdict::New);
                continue;
            };
            let record = &records[r];
            let verdict = match judge.judge(record, f.offset, f.ts) {
                Judgement::After => Verdict::New,
                Judgement::Covers => Verdict::Emitted,
                Judgement::OtherTopic => Verdict::NewPastStale(Stale::TopicId),
                Judgement::BeyondHigh => Verdict::NewPastStale(Stale::BeyondHighWatermark),
                Judgement::Newer => Verdict::NewPastStale(Stale::LogTime),
            };
            if verdict == Verdict::New && record.offset.is_some() && !seeded[r] {
                seeded[r] = true;
                if let (Some(batch_id), Some(last_ts)) = (&record.batch_id, record.last_ts) {
                    if !judge.other_topic(record.topic_id.as_deref()) {
                        seeds.push(Seed {
                            index: i,
                            batch_id: batch_id.clone(),
                            last_ts,
                        });
                    }
                }
            }
            verdicts.push(verdict);
        }

        // Event ids seen before: read their first sightings.
        let seen_before: Vec<(usize, &str)> = events
            .iter()
            .zip(&event_replies)
            .filter(|(_, reply)| matches!(reply, Value::Nil))
            .map(|(&e, _)| e)
            .collect();
        if !seen_before.is_empty() {
            self.read_sightings(fence, &judge, fragments, &seen_before, &mut verdicts)
                .await?;
        }
        Ok(Admission { verdicts, seeds })
    }

    /// The second round trip of [`Store::admit`], for event ids whose key existed: each first
    /// sighting read back and judged; a stale one replaced by this fragment's, a replayed one's
    /// TTL refreshed.
    async fn read_sightings(
        self: &Arc<Self>,
        fence: &Fence,
        judge: &Judge<'_>,
        fragments: &[Candidate<'_>],
        seen_before: &[(usize, &str)],
        verdicts: &mut [Verdict],
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for &(_, id) in seen_before {
            pipe.cmd("GET").arg(fence.keys.event(id));
        }
        let sightings: Vec<Option<String>> = self.pipeline(&pipe, seen_before.len()).await?;
        let mut amend = redis::pipe();
        for (&(i, id), seen) in seen_before.iter().zip(sightings) {
            let offset = fragments[i].offset;
            let key = fence.keys.event(id);
            // Gone meanwhile (its TTL ended): this fragment is the first sighting now.
            let sighted = seen.map_or(Sighted::Stale, |s| judge.sighted(&s, offset));
            match sighted {
                Sighted::Stale => {
                    amend
                        .cmd("SET")
                        .arg(key)
                        .arg(judge.sighting(offset))
                        .arg("PX")
                        .arg(self.ttl.event)
                        .ignore();
                }
                Sighted::Here => {
                    amend.cmd("PEXPIRE").arg(key).arg(self.ttl.event).ignore();
                }
                Sighted::Elsewhere => {
                    if matches!(verdicts[i], Verdict::New | Verdict::NewPastStale(_)) {
                        verdicts[i] = Verdict::Duplicate;
                    }
                }
            }
        }
        if !amend.is_empty() {
            let _: () = self.pipeline(&amend, seen_before.len()).await?;
        }
        Ok(())
    }

    /// Runs a pipeline of plain commands on the shared connection, timed under
    /// [`ADMIT_LABEL`]; an outage degrades the store.
    async fn pipeline<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        pipe: &redis::Pipeline,
        items: usize,
    ) -> Result<T, StoreError> {
        let mut conn = self.usable_connection().await?;
        let started = Instant::now();
        let result = pipe.query_async::<T>(&mut conn).await;
        let elapsed = started.elapsed();
        metrics()
            .redis_call_seconds
            .with_label_values(&[ADMIT_LABEL])
            .observe(elapsed.as_secs_f64());
        debug!(
            call = ADMIT_LABEL,
            items,
            micros = elapsed.as_micros() as u64,
            "redis pipeline"
        );
        result.map_err(|e| self.failed(&e))
    }
}
