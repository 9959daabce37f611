//! Pure-Rust decisions of the cano workflow engine.
//!
//! Nothing here knows about Python: the bindings crate translates Python objects to the
//! small ids and plain values used here, and asks this crate what happens next.
//!
//! - [`fsm`]: the state graph of a workflow, its validation and the run cursor;
//! - [`retry`]: retry modes and the delay before each retry;
//! - [`duration`]: checking user-supplied durations;
//! - [`deadline`]: total-timeout and compensation budgets.

pub mod deadline;
pub mod duration;
pub mod error;
pub mod fsm;
pub mod retry;

pub use error::CoreError;
