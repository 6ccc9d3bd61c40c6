//! What an operator sees and controls: per-run health, the memory budget, the HTTP endpoints,
//! the metric families, Kafka's connection log, and signal handling.

pub mod budget;
pub mod health;
pub mod http;
pub mod kafka_log;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod process;
pub mod shutdown;
