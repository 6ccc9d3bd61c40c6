//! What an operator sees and controls: per-run health, the memory budget, the HTTP endpoints,
//! the metric families, and signal handling.

pub mod budget;
pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;
