//! Adapters to the outside: Kafka clients and their settings, message headers as bytes, the
//! output producer, the Redis store and its scripts, and the retry backoff. Thin by intent: the
//! decisions are made in [`crate::model`] and [`crate::flow`].

pub mod backoff;
pub mod headers;
pub mod kafka;
pub mod producer;
pub mod state_topic;
pub mod store;
pub mod transactional;
