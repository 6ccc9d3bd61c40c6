//! Input into the engine: a chunk of messages admitted in one gate call (Redis: new, already
//! emitted, duplicate), then fed to the window engine in order, with signals and dead letters
//! in their places.

use crate::io::store::{Candidate, Verdict};
use crate::model::window::SignalOutcome;
use crate::ops::clock::now_ms;
use crate::ops::metrics::metrics;

use tracing::debug;

use super::intake::{Chunk, Item};
use super::outbox::Kind;
use super::{Parts, Stop, Worker};

impl Worker {
    /// A chunk of input: admitted in one gate call, then fed to the engine in order.
    pub(super) async fn take(&self, p: &mut Parts, chunk: Chunk) -> Result<(), Stop> {
        let now = now_ms();
        p.high = chunk.high.or(p.high);
        let messages = chunk
            .items
            .iter()
            .filter(|i| !matches!(i, Item::End))
            .count();
        self.health.messages_read_by(messages as u64);
        let candidates: Vec<Candidate<'_>> = chunk
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Fragment(f) => Some(Candidate {
                    key: &f.key,
                    offset: f.offset,
                    event_id: f.event_id(),
                    ts: f.ts,
                    needs_record: p
                        .gate
                        .needs_record(f.offset, f.ts, || p.engine.remembers(&f.key)),
                }),
                _ => None,
            })
            .collect();
        let floor = candidates.iter().map(|c| c.offset + 1).max().unwrap_or(0);
        let high = p.high.unwrap_or(0).max(floor);
        let admission = p.gate.admit(&candidates, high).await?.unwrap_or_default();
        // Keys' last batches as Redis remembers them (after a restart or a handoff), so `follows`
        // survives: seeded before the fragments go in.
        for seed in &admission.seeds {
            if let Some(c) = candidates.get(seed.index) {
                p.engine.seed_follows(c.key, &seed.batch_id, seed.last_ts);
            }
        }
        drop(candidates);
        let mut verdicts = admission.verdicts.into_iter();
        for item in chunk.items {
            match item {
                Item::End => {
                    p.caught_up = true;
                    p.engine.advance(now_ms(), &mut p.emitted);
                }
                Item::Signal(signal) => {
                    p.caught_up = false;
                    p.read(signal.offset);
                    let outcome =
                        p.engine
                            .signal(&signal.key, signal.kind, signal.ts, now, &mut p.emitted);
                    metrics()
                        .signals
                        .with_label_values(&[signal.kind.as_str(), outcome.as_str()])
                        .inc();
                    if outcome == SignalOutcome::Applied && p.gate.is_redis() {
                        p.ledger.touched(&signal.key);
                    }
                }
                Item::Amend(amend) => {
                    p.caught_up = false;
                    let (offset, ts) = (amend.message.offset, amend.message.ts);
                    let name = amend.change.as_str();
                    p.read(offset);
                    let key = amend.message.key.clone();
                    if p.eos
                        .as_ref()
                        .is_some_and(|s| s.settled(offset) || s.keys.skips(&key, offset))
                    {
                        // A replay: its batch of one was committed already.
                        p.engine.skip(ts, now, &mut p.emitted);
                        continue;
                    }
                    let outcome = p.engine.amend(amend, now, &mut p.emitted);
                    metrics()
                        .signals
                        .with_label_values(&[name, outcome.as_str()])
                        .inc();
                    if p.gate.is_redis() {
                        p.ledger.touched(&key);
                    }
                }
                Item::DeadLetter(record) => {
                    p.caught_up = false;
                    p.read(record.first_offset);
                    if p.eos
                        .as_ref()
                        .is_some_and(|s| s.committed_before(record.first_offset))
                    {
                        // A replay: this dead letter is in a committed transaction already.
                        continue;
                    }
                    p.progress.hold(record.first_offset);
                    p.output.push(record, Kind::DeadLetter);
                }
                Item::Fragment(f) => {
                    p.caught_up = false;
                    p.read(f.offset);
                    let mut verdict = verdicts.next().unwrap_or(Verdict::New);
                    if p.eos
                        .as_ref()
                        .is_some_and(|s| s.settled(f.offset) || s.keys.skips(&f.key, f.offset))
                    {
                        verdict = Verdict::Emitted;
                    }
                    match verdict {
                        verdict @ (Verdict::New | Verdict::NewPastStale(_)) => {
                            if let Verdict::NewPastStale(why) = verdict {
                                p.gate.stale(why, f.offset);
                            }
                            if p.gate.is_redis() {
                                p.ledger.touched(&f.key);
                            }
                            p.engine.push(f, now, &mut p.emitted);
                        }
                        Verdict::Emitted => {
                            metrics().fragments_skipped.inc();
                            debug!(
                                partition = self.partition,
                                offset = f.offset,
                                reason = "already_delivered",
                                "fragment skipped: a delivered batch already holds it"
                            );
                            p.engine.skip(f.ts, now, &mut p.emitted);
                        }
                        Verdict::Duplicate => {
                            metrics().fragments_duplicate.inc();
                            debug!(
                                partition = self.partition,
                                offset = f.offset,
                                reason = "duplicate_event_id",
                                "fragment skipped: its event id was first seen at another offset"
                            );
                            p.engine.skip(f.ts, now, &mut p.emitted);
                        }
                    }
                }
            }
        }
        let stats = p.engine.take_stats();
        metrics().fragments_late.inc_by(stats.late);
        metrics().fragments_clamped.inc_by(stats.clamped);
        Ok(())
    }
}
