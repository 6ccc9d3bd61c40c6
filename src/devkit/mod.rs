//! What the operator tools and the tests share: the embedded mock cluster, the one load
//! generator, the reader and tally of output batches, and the delivery audit.
//! Nothing in the worker ([`crate::flow`], [`crate::model`], [`crate::io`], [`crate::ops`])
//! imports it.

pub mod audit;
pub mod batches;
pub mod load;
pub mod mock;
