//! Supervision: a task that fails — a fatal error or a panic — takes the whole process down
//! loudly: the first failure is kept (and returned by [`crate::run`], so the process exits
//! non-zero), readiness turns false at once (`worker_failed`), and everything shuts down. No task
//! may die and leave a partition stalled in silence.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, Instrument};

use crate::io::producer::SinkError;
use crate::ops::health::Health;

use super::FlowError;

/// Where supervised tasks report failures.
#[derive(Clone)]
pub struct Supervisor {
    failure: Arc<Mutex<Option<FlowError>>>,
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

    /// Records a failure and stops the process.
    pub fn fail(&self, error: FlowError) {
        error!(error = %error, "a supervised task failed; stopping the process");
        self.health.set_failed();
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(error);
        self.shutdown.cancel();
    }

    /// Spawns `task` (named `name` in the failure) so that its error or panic fails the process.
    pub fn spawn<F>(&self, name: String, task: F) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), SinkError>> + Send + 'static,
    {
        let supervisor = self.clone();
        tokio::spawn(
            async move {
                match AssertUnwindSafe(task).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => supervisor.fail(FlowError::Worker(e)),
                    Err(panic) => supervisor.fail(FlowError::Panicked {
                        task: name,
                        message: panic_message(&*panic),
                    }),
                }
            }
            .in_current_span(),
        )
    }

    /// Checks a finished blocking task (a commit, a probe) for a panic.
    pub fn check(&self, name: &str, handle: Option<JoinHandle<()>>) {
        if let Some(Some(Err(e))) = handle.map(FutureExt::now_or_never) {
            self.joined(name, e);
        }
    }

    /// Fails the process if a task that was joined panicked.
    pub fn joined(&self, name: &str, e: tokio::task::JoinError) {
        if e.is_panic() {
            self.fail(FlowError::Panicked {
                task: name.to_string(),
                message: panic_message(&*e.into_panic()),
            });
        }
    }

    /// The first failure, if any.
    pub fn take(&self) -> Option<FlowError> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}
