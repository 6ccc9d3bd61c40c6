//! Where one partition's output goes until it is delivered: at_least_once's outbox (sent,
//! acknowledged one by one, retried) or exactly_once's transaction (visible at its commit), behind
//! one face the event loop uses.

use tokio::time::Instant;

use crate::io::producer::{Sink, SinkError};
use crate::model::wire;

use super::outbox::{Acked, Kind, Outbox, MAX_HELD};
use super::transaction::{Committed, Transaction};

/// Where one partition's output goes until it is delivered.
pub(super) enum Output {
    /// at_least_once: sent, acknowledged one by one, retried.
    Acked(Outbox<Sink>),
    /// exactly_once: into the partition's Kafka transaction, visible at its commit.
    Txn(Transaction),
}

/// What the output has to say next.
pub(super) enum OutputEvent {
    /// at_least_once: a delivery settled (`None`: it failed and will be sent again).
    Settled(Option<Acked>),
    /// exactly_once: a commit ended.
    Committed(Result<Committed, crate::io::transactional::TxnError>),
}

impl Output {
    pub(super) fn push(&mut self, record: wire::Record, kind: Kind) {
        match self {
            Output::Acked(o) => o.push(record, kind),
            Output::Txn(t) => t.push(record, kind),
        }
    }

    pub(super) fn held(&self) -> usize {
        match self {
            Output::Acked(o) => o.held(),
            Output::Txn(t) => t.held(),
        }
    }

    pub(super) fn has_room(&self) -> bool {
        self.held() < MAX_HELD
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Output::Acked(o) => o.bytes(),
            Output::Txn(t) => t.bytes(),
        }
    }

    pub(super) fn hold_until(&self) -> Option<Instant> {
        match self {
            Output::Acked(o) => o.hold_until(),
            Output::Txn(t) => t.hold_until(),
        }
    }

    pub(super) fn release_hold(&mut self) {
        match self {
            Output::Acked(o) => o.release_hold(),
            Output::Txn(t) => t.release_hold(),
        }
    }

    pub(super) async fn next(&mut self) -> Result<OutputEvent, SinkError> {
        match self {
            Output::Acked(o) => Ok(OutputEvent::Settled(o.settled().await?)),
            Output::Txn(t) => Ok(OutputEvent::Committed(t.committed().await)),
        }
    }
}
