//! What an operator sees and controls: per-run health, the memory budget, the HTTP endpoints,
//! the metric families, Kafka's connection log, signal handling, and the supervisor every task runs
//! under (with its test-only faults).

pub mod budget;
pub mod clock;
pub mod fault;
pub mod health;
pub mod http;
pub mod kafka_log;
pub mod metrics;
pub mod partition_metrics;
#[cfg(target_os = "linux")]
pub mod process;
pub mod shutdown;
pub mod supervisor;
