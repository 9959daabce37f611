//! Pure-Rust decisions of the cano workflow engine.
//!
//! Nothing here knows about Python: the bindings crate translates Python objects to the
//! small ids and plain values used here, and asks this crate what happens next.
//!
//! - [`fsm`]: the state graph of a workflow, its validation and the run cursor;
//! - [`retry`]: retry modes and the delay before each retry;
//! - [`duration`]: checking user-supplied durations;
//! - [`deadline`]: total-timeout and compensation budgets;
//! - [`cron`]: cron schedules of the scheduler (seconds first, UTC);
//! - [`backoff`]: the scheduler's backoff after failed runs;
//! - [`circuit`]: the circuit breaker's state machine;
//! - [`rate_limit`]: token bucket, fixed window and multi-tier rate limiters.

pub mod backoff;
pub mod checkpoint;
pub mod circuit;
pub mod cron;
pub mod deadline;
pub mod duration;
pub mod error;
pub mod fsm;
pub mod join;
pub mod rate_limit;
pub mod retry;

pub use error::CoreError;
