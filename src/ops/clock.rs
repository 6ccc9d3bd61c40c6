//! The wall clock, read at the edges only: the model (`crate::model`) takes time as a value and
//! never reads a clock, so it stays deterministic and replays cut the same batches.

use std::time::SystemTime;

use crate::model::wire::unix_ms;

/// The current wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}
