//! Test-only faults: with the `fault-injection` feature (never in a release build), the tests
//! prove that any task that dies takes the process down loudly. Without the feature every
//! function here is an empty inline call.
//!
//! `LULL_FAULT_PANIC_KEY=<key>` arms the faults when a partition worker reads a fragment of that
//! key; `LULL_FAULT_PANIC_TASK` says which kind of task then panics at its next turn: `worker`
//! (the default: the worker that read the fragment, at once), `owner`, `commit`, `probe`,
//! `redis` or `monitor`. `LULL_FAULT_LINGER_MS` keeps a failed run's endpoints up that long
//! before it returns, so a test can read the readiness a failure leaves (the process still exits
//! 1 after it).

/// The kinds of task a fault can panic, as `LULL_FAULT_PANIC_TASK` names them.
pub const TASKS: &[&str] = &["worker", "owner", "commit", "probe", "redis", "monitor"];

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    static ARMED: AtomicBool = AtomicBool::new(false);

    fn armed_key() -> Option<&'static str> {
        static KEY: OnceLock<Option<String>> = OnceLock::new();
        KEY.get_or_init(|| std::env::var("LULL_FAULT_PANIC_KEY").ok())
            .as_deref()
    }

    fn armed_task() -> &'static str {
        static TASK: OnceLock<String> = OnceLock::new();
        TASK.get_or_init(|| {
            std::env::var("LULL_FAULT_PANIC_TASK").unwrap_or_else(|_| "worker".into())
        })
    }

    /// A worker read a fragment of `key`.
    pub fn fragment_read(key: &str) {
        if armed_key() == Some(key) {
            ARMED.store(true, Ordering::Release);
            panic_if_armed("worker");
        }
    }

    /// A task of kind `task` turns: it panics if the faults are armed for its kind.
    pub fn panic_if_armed(task: &str) {
        if armed_task() == task && ARMED.load(Ordering::Acquire) {
            panic!(
                "fault injection: {task} (LULL_FAULT_PANIC_TASK, armed by LULL_FAULT_PANIC_KEY)"
            );
        }
    }
}

/// A partition worker read a fragment of `key` (arms the faults when it is the armed key).
#[inline(always)]
pub fn fragment_read(key: &str) {
    #[cfg(feature = "fault-injection")]
    armed::fragment_read(key);
    #[cfg(not(feature = "fault-injection"))]
    let _ = key;
}

/// A task of kind `task` (one of [`TASKS`]) turns: under an armed fault for its kind, it panics.
#[inline(always)]
pub fn panic_if_armed(task: &str) {
    #[cfg(feature = "fault-injection")]
    armed::panic_if_armed(task);
    #[cfg(not(feature = "fault-injection"))]
    let _ = task;
}

/// After a supervised task failed: waits `LULL_FAULT_LINGER_MS` (test-only; at once otherwise).
pub async fn linger_after_failure() {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var("LULL_FAULT_LINGER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
