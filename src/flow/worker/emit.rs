//! The engine's output into records: opened windows as `opened` events, batches as output
//! records (exactly_once: each with its state record and `flushed` event, in one transaction),
//! and what became visible counted and told to the ledger.

use std::sync::Arc;

use tracing::debug;

use crate::model::window::FlushReason;
use crate::model::wire;
use crate::ops::clock::now_ms;
use crate::ops::metrics::metrics;

use super::outbox::{Acked, Kind};
use super::{Output, Parts, Worker};

impl Worker {
    /// Turns the windows that opened into `opened` events, and the batches the engine emitted
    /// into output records, in emission order (exactly_once: each batch with its state record,
    /// and its `flushed` event, in the same transaction).
    pub(super) fn route(&self, p: &mut Parts) {
        for opened in p.engine.take_opened() {
            if p.eos
                .as_ref()
                .is_some_and(|s| s.committed_before(opened.first_offset))
            {
                // A replay of a window whose opening was committed already.
                continue;
            }
            let record = wire::encode_opened(&opened, &self.topic, self.partition, now_ms());
            // Held until delivered, like the window's batch.
            p.progress.hold(record.first_offset);
            p.output.push(record, Kind::Event);
        }
        if p.emitted.is_empty() {
            return;
        }
        let now = now_ms();
        let grace = self.config.grace.as_millis() as i64;
        // Drained, not taken: the vector keeps its capacity for the next turn.
        for batch in p.emitted.drain(..) {
            let m = metrics();
            if batch.reason != FlushReason::Passthrough {
                m.flush_lateness
                    .observe((now - batch.close_time - grace).max(0) as f64 / 1000.0);
            }
            m.end_to_end
                .observe((now - batch.last_ts).max(0) as f64 / 1000.0);
            let record = wire::encode_batch(&batch, &self.topic, self.partition, now);
            let id: Arc<str> = Arc::from(wire::batch_id(
                &self.topic,
                self.partition,
                batch.first_offset(),
            ));
            debug!(
                batch_id = %id,
                count = batch.fragments.len(),
                reason = batch.reason.as_str(),
                correlation_id = batch.fragments[0].correlation_id().unwrap_or(""),
                "batch flushed"
            );
            p.progress.hold(record.first_offset);
            if p.gate.is_redis() {
                p.ledger.emitted(
                    &batch.key,
                    id.clone(),
                    batch.first_offset(),
                    batch.last_offset(),
                    batch.last_ts,
                );
            }
            let kind = Kind::Batch {
                key: batch.key.clone(),
                reason: batch.reason.as_str(),
                fragments: batch.fragments.len(),
                bytes: batch.bytes(),
                channel: batch.fragments[0].channel,
            };
            p.output.push(record, kind);
            if let Some(state) = p.eos.as_mut() {
                let delivered = match &p.output {
                    Output::Txn(t) => t.state_end(),
                    Output::Acked(_) => None,
                };
                let record = state.flushed(&batch, id.clone(), delivered);
                p.progress.hold(record.first_offset);
                p.output.push(record, Kind::State);
                if self.config.events_topic.is_some() {
                    let record = wire::encode_flushed(
                        &batch.key,
                        &id,
                        batch.first_offset(),
                        now,
                        batch.reason.as_str(),
                        batch.fragments.len(),
                    );
                    p.progress.hold(record.first_offset);
                    p.output.push(record, Kind::Event);
                }
            }
        }
    }

    /// Counts what became visible (a delivery acknowledged, or a transaction committed) and
    /// tells the ledger of delivered batches.
    pub(super) fn delivered(&self, p: &mut Parts, kind: &Kind, first_offset: i64) {
        let m = metrics();
        match kind {
            Kind::Batch {
                key,
                reason,
                fragments,
                bytes,
                channel,
            } => {
                m.batches_flushed.with_label_values(&[reason]).inc();
                self.counters.batches.inc();
                // Bounded: the configured channels, all others as `other`.
                let name = usize::from(*channel)
                    .checked_sub(1)
                    .and_then(|i| self.config.channels.get(i))
                    .map_or("other", |c| c.name.as_str());
                m.channel_batches.with_label_values(&[name]).inc();
                m.batch_fragments.observe(*fragments as f64);
                m.batch_bytes.observe(*bytes as f64);
                if p.gate.is_redis() {
                    p.ledger.acknowledged(key, first_offset);
                }
            }
            Kind::DeadLetter => m.dlq_messages.inc(),
            Kind::Event => m.events.inc(),
            Kind::State => {}
        }
    }

    /// at_least_once: a settled delivery. An acknowledgement moves the commit point and the
    /// ledger (and makes the batch's `flushed` event); a failure (already queued again by the
    /// outbox) marks the producer unhealthy.
    pub(super) fn acknowledged(&self, p: &mut Parts, settled: Option<Acked>) {
        let Some(acked) = settled else {
            self.status.output_ok(false);
            return;
        };
        self.status.output_ok(true);
        p.progress.release(acked.first_offset);
        self.delivered(p, &acked.kind, acked.first_offset);
        if let Kind::Batch {
            key,
            reason,
            fragments,
            ..
        } = &acked.kind
        {
            if self.config.events_topic.is_some() {
                let id = wire::batch_id(&self.topic, self.partition, acked.first_offset);
                let record = wire::encode_flushed(
                    key,
                    &id,
                    acked.first_offset,
                    now_ms(),
                    reason,
                    *fragments,
                );
                // The batch's offsets stay held until its event is acknowledged too.
                p.progress.hold(record.first_offset);
                p.output.push(record, Kind::Event);
            }
        }
    }
}
