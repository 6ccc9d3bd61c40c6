//! The pure layer: no tokio, rdkafka or redis, no I/O, no clocks but the one handed in. What lull
//! means by a fragment, a window and a batch, when a window closes, which offset may be committed,
//! and what goes on the wire all live here, pinned down by unit and property tests.

pub mod batch;
pub mod deadlines;
pub mod fragment;
pub mod offsets;
pub mod state;
pub mod window;
pub mod wire;
