//! How a worker ends early: a fenced-off worker writes nothing more and waits (bounded) for the
//! group to take its partition away, else it fails the process; other stops end it quietly or
//! fail it, never leaving the partition silently idle.

use std::time::Duration;

use tracing::error;

use crate::io::producer::SinkError;
use crate::ops::metrics::metrics;

use super::progress::Phase;
use super::{Stop, Worker, FENCED_PATIENCE};

impl Worker {
    /// Ends the worker on a stop: a fenced-off worker waits for its partition to be taken away.
    pub(super) async fn stopped(&self, stop: Stop) -> Result<(), SinkError> {
        match stop {
            Stop::Fenced(why) | Stop::FencedByRedis(why) => {
                if self.parked(&why, FENCED_PATIENCE).await {
                    Ok(())
                } else {
                    Err(SinkError::Fatal(format!(
                        "partition {} was fenced off ({why}) and the consumer group did not take \
                         it away within {} s",
                        self.partition,
                        FENCED_PATIENCE.as_secs()
                    )))
                }
            }
            Stop::Fatal(e) => Err(e),
            Stop::Rewind | Stop::Abort(_) | Stop::Reinit(_) => Ok(()),
        }
    }

    /// Fenced off: nothing more is written for the partition while the worker waits (at most
    /// `patience`) for the group to take it away — a paused process that woke up learns so
    /// within a heartbeat. Meanwhile the process is not ready. Whether it was taken away (or the
    /// process stops).
    pub(super) async fn parked(&self, why: &str, patience: Duration) -> bool {
        metrics().fenced_off.inc();
        error!(
            partition = self.partition,
            reason = %why,
            wait_s = patience.as_secs(),
            "fenced off: nothing more is written for this partition until the consumer group \
             takes it away (a newer owner fenced this one) or keeps it here past the wait"
        );
        self.status.phase(Phase::Fenced);
        let gone = tokio::select! {
            _ = self.revoked.cancelled() => true,
            _ = self.shutdown.cancelled() => true,
            _ = tokio::time::sleep(patience) => false,
        };
        self.status.phase(Phase::Claiming);
        gone
    }
}
