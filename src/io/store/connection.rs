//! The redis connection task: the one writer of "is Redis reachable?".
//!
//! Calls that fail on an outage tell it (an unbounded channel of errors); it marks the store
//! degraded once (a warning, the `lull_redis_degraded` gauge, the run's health), reconnects with
//! backoff until a PING answers, then bumps the epoch (partition workers re-claim their
//! partitions) and marks it reachable again. While nothing fails it PINGs every
//! [`super::CHECK_INTERVAL`], so an outage shows even while no partition calls Redis.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::io::backoff::Backoff;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;

use super::{Reachability, Store, StoreError, CHECK_INTERVAL};

/// The task's state; it alone publishes [`Reachability`].
pub(super) struct Connection {
    /// The store (the task ends when it is gone).
    pub(super) store: Weak<Store>,
    pub(super) publish: watch::Sender<Reachability>,
    pub(super) outages: mpsc::UnboundedReceiver<StoreError>,
    pub(super) health: Arc<Health>,
    pub(super) stop: CancellationToken,
}

impl Connection {
    /// Runs until the run stops or the store is dropped; `degraded`: the first connection failed.
    pub(super) async fn run(mut self, degraded: bool) -> Result<(), StoreError> {
        self.health.set_redis(Some(!degraded));
        if degraded {
            self.degraded();
            if !self.reconnect().await {
                return Ok(());
            }
        }
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            let outage = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                outage = self.outages.recv() => match outage {
                    Some(e) => e,
                    None => return Ok(()),
                },
                _ = check.tick() => {
                    crate::ops::fault::panic_if_armed("redis");
                    let Some(store) = self.store.upgrade() else {
                        return Ok(());
                    };
                    if store.ping(false).await {
                        continue;
                    }
                    StoreError::Unavailable("PING failed".into())
                }
            };
            if outage.is_authentication() {
                warn!(error = %outage, url = %self.url(), "redis refused lull's credentials: check the user and password in REDIS_URL; batching continues in memory, duplicate protection is off until it connects");
            } else {
                warn!(error = %outage, url = %self.url(), "redis unreachable: batching continues in memory; duplicate protection is off until it recovers");
            }
            self.degraded();
            if !self.reconnect().await {
                return Ok(());
            }
        }
    }

    fn url(&self) -> String {
        self.store
            .upgrade()
            .map(|s| s.url_shown.clone())
            .unwrap_or_default()
    }

    fn degraded(&mut self) {
        metrics().redis_degraded.set(1);
        self.health.set_redis(Some(false));
        self.publish.send_modify(|r| r.degraded = true);
    }

    /// Reconnects with backoff; `false` when the run stopped (or the store went) first.
    async fn reconnect(&mut self) -> bool {
        let backoff = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep(backoff.delay(attempt)) => {}
            }
            let Some(store) = self.store.upgrade() else {
                return false;
            };
            if store.ping(true).await {
                break;
            }
            debug!(attempt, "redis still unreachable");
        }
        // Failures told before the recovery are about the outage just ended.
        while self.outages.try_recv().is_ok() {}
        self.publish.send_modify(|r| {
            r.degraded = false;
            r.epoch += 1;
        });
        metrics().redis_degraded.set(0);
        self.health.set_redis(Some(true));
        info!(
            attempts = attempt,
            "redis recovered: shared state and duplicate protection are back"
        );
        true
    }
}
