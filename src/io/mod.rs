//! Adapters to the outside: Kafka clients and their settings, message headers as bytes, the
//! output producer, the Redis store and its scripts, and the retry backoff. Thin by intent: the
//! decisions are made in [`crate::model`] and the data path.
//!
//! The library's face here is what the operator tools and the tests need: [`kafka`] (every
//! client's settings, built one way), [`store`] (the Redis store, its keys and its MONITOR
//! trace), [`headers`] (headers as bytes) and the state topic's settings. The rest — the
//! producer, the transactional producer, the state topic's reader, the backoff — is the worker's
//! own.

pub(crate) mod backoff;
pub mod headers;
pub mod kafka;
pub(crate) mod producer;
pub(crate) mod state_topic;
pub mod store;
pub(crate) mod transactional;

pub use state_topic::TOPIC_CONFIG as STATE_TOPIC_CONFIG;
