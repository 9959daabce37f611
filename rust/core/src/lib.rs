//! Pure-Rust decisions of the cano workflow engine.
//!
//! Nothing here knows about Python: the bindings crate translates Python objects to the
//! small ids and plain values used here, and asks this crate what happens next. Each
//! decision has one home, with its tests beside it:
//!
//! - the next state: [`Graph`] and the run's [`Cursor`] (module `fsm`);
//! - whether to retry and after how long: [`RetryMode::decide`] (module `retry`), and the
//!   consecutive-error budget of poll and stream loops, [`ErrorStreak`];
//! - whether a split's join is decided: [`JoinStrategy::decide`] over a [`Tally`] (module
//!   `join`);
//! - where a crashed run resumes: [`resume_point`] (module `checkpoint::resume`);
//! - the breaker's verdict, the limiters' grants, cron firings, the scheduler's backoff and
//!   the rollback budget (modules `circuit`, `rate_limit`, `cron`, `backoff`, `budget`);
//! - the checkpoint log's rows, codec and the embedded redb store ([`checkpoint`]).
//!
//! Errors are one enum per concern ([`GraphError`], [`JoinError`], [`ResumeError`],
//! [`DurationError`], [`CronError`], [`BackoffError`], [`PolicyError`], [`LimiterError`],
//! [`checkpoint::StoreError`]).

mod backoff;
mod budget;
pub mod checkpoint;
mod circuit;
mod cron;
mod duration;
mod fsm;
mod join;
mod rate_limit;
mod retry;

pub use backoff::{BackoffError, BackoffPolicy};
pub use budget::{compensation_budget, MAX_DEFAULT_COMPENSATION_BUDGET};
pub use checkpoint::{resume_point, ResumeError, ResumePoint, Row, RowKind};
pub use circuit::{
    CircuitBreaker, CircuitPolicy, CircuitState, Clock, Permit, PolicyError, Rejection,
    SystemClock, HALF_OPEN_MAX_CALLS_LIMIT,
};
pub use cron::{from_unix, to_unix, CronError, CronSchedule};
pub use duration::{check_secs, from_secs as duration_from_secs, DurationError, MAX_SECONDS};
pub use fsm::{Cursor, Entry, Graph, GraphError, HandlerKind, StateId, PATH_KEPT};
pub use join::{
    BranchEnd, Counted, JoinError, Strategy as JoinStrategy, Tally, Verdict as JoinVerdict,
};
pub use rate_limit::{
    Debit, LimiterError, Meter, MultiRateLimiter, RateLimited, RateLimiter, Tier,
    WindowedRateLimiter, MIN_RETRY_AFTER,
};
pub use retry::{Decision, ErrorStreak, Failure, Report, RetryMode};
