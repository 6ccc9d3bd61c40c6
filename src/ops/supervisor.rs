//! Supervision: every task lull runs — the partition owner, the partition workers, offset
//! commits, the Kafka probe, the Redis connection task, the Redis MONITOR trace — is started
//! through a [`Supervisor`], and a task that fails (an error or a panic) takes the whole process
//! down loudly: the first failure is kept (and returned by [`crate::run`], so the process exits 1
//! naming the task), readiness turns false at once, and everything shuts down. No task may die
//! and leave a partition stalled in silence.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, Instrument};

use crate::ops::health::Health;

/// A supervised task that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} {}: {cause}", if *.panicked { "panicked" } else { "failed" })]
pub struct TaskFailed {
    /// Which task (e.g. `partition 3 worker`, `partition owner`).
    pub task: String,
    /// Its error, or its panic's message.
    pub cause: String,
    /// Whether it panicked (a bug) rather than returned an error.
    pub panicked: bool,
}

/// Where supervised tasks report failures; cheap to clone, one per run.
#[derive(Clone)]
pub struct Supervisor {
    failure: Arc<Mutex<Option<TaskFailed>>>,
    health: Arc<Health>,
    shutdown: CancellationToken,
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

impl Supervisor {
    /// A supervisor that stops the process through `shutdown`.
    pub fn new(health: Arc<Health>, shutdown: CancellationToken) -> Self {
        Self {
            failure: Arc::new(Mutex::new(None)),
            health,
            shutdown,
        }
    }

    /// A supervisor of its own, for a tool or a test that uses a piece of lull (the Redis store)
    /// outside a run: its failures stop only what it started.
    pub fn standalone() -> Self {
        Self::new(Arc::new(Health::new()), CancellationToken::new())
    }

    /// The run's health, which its tasks report into.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Cancelled when the run stops (a shutdown, or a failure): long-running tasks end on it.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Records a failure and stops the process: readiness false at once, the first failure kept.
    pub fn fail(&self, failure: TaskFailed) {
        error!(
            task = %failure.task,
            error = %failure,
            "a supervised task failed; stopping the process"
        );
        self.health.set_failed();
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(failure);
        self.shutdown.cancel();
    }

    /// Spawns `task` (named `name` in the failure) so that its error or panic fails the process.
    pub fn spawn<F, E>(&self, name: impl Into<String>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let supervisor = self.clone();
        let task_name = name.into();
        tokio::spawn(
            async move {
                match AssertUnwindSafe(task).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => supervisor.fail(TaskFailed {
                        task: task_name,
                        cause: e.to_string(),
                        panicked: false,
                    }),
                    Err(panic) => supervisor.fail(TaskFailed {
                        task: task_name,
                        cause: panic_message(&*panic),
                        panicked: true,
                    }),
                }
            }
            .in_current_span(),
        )
    }

    /// Runs blocking `work` (a commit, a metadata probe) on tokio's blocking threads; a panic
    /// fails the process at once and yields `None`.
    pub fn spawn_blocking<F, T>(&self, name: impl Into<String>, work: F) -> JoinHandle<Option<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let supervisor = self.clone();
        let task_name = name.into();
        tokio::task::spawn_blocking(move || {
            match std::panic::catch_unwind(AssertUnwindSafe(work)) {
                Ok(value) => Some(value),
                Err(panic) => {
                    supervisor.fail(TaskFailed {
                        task: task_name,
                        cause: panic_message(&*panic),
                        panicked: true,
                    });
                    None
                }
            }
        })
    }

    /// The first failure, if any.
    pub fn take(&self) -> Option<TaskFailed> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_fails_stops_the_process_naming_the_task() {
        let health = Arc::new(Health::new());
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(health.clone(), shutdown.clone());
        supervisor
            .spawn("the owner", async { Err::<(), _>("no more partitions") })
            .await
            .unwrap();
        assert!(shutdown.is_cancelled() && health.failed());
        supervisor
            .spawn("a worker", async { Ok::<(), String>(()) })
            .await
            .unwrap();
        let first = supervisor.take().expect("a failure");
        assert_eq!(first.to_string(), "the owner failed: no more partitions");

        let panicking = supervisor.spawn_blocking("a commit", || -> u8 { panic!("boom") });
        assert_eq!(panicking.await.unwrap(), None);
        assert_eq!(
            supervisor.take().map(|f| f.to_string()),
            Some("a commit panicked: boom".to_string())
        );
    }
}
