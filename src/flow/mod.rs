//! The data path, in travel order: the consumer and its partitions, and the per-partition worker.

pub mod consumer;
pub mod partition;
