//! `cano._core`: the thin PyO3 layer of cano.
//!
//! - [`run`]: the `Run` coroutine, the dispatcher that drives task coroutines;
//! - [`plan`]: `Plan` and `Handler`, the compiled snapshot a run executes;
//! - [`config`]: `RetryMode` and `TaskConfig`;
//! - [`cancel`]: `CancellationToken` and `CancellationHandle`;
//! - [`schedule`]: `CronSchedule` and `BackoffPolicy`, the scheduler's value objects;
//! - [`circuit`], [`rate_limit`]: circuit breakers and rate limiters;
//! - [`store`]: `RedbCheckpointStore`, the embedded checkpoint store;
//! - [`errors`], [`duration`]: conversions at the Python boundary; [`gc`]: GC traversal.

use pyo3::prelude::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cancel;
mod circuit;
mod config;
mod errors;
mod gc;
mod log;
mod plan;
mod rate_limit;
mod run;
mod schedule;
mod store;
mod values;

#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<config::RetryMode>()?;
    m.add_class::<config::TaskConfig>()?;
    m.add_class::<config::ErrorStreak>()?;
    m.add_class::<cancel::CancellationToken>()?;
    m.add_class::<cancel::CancellationHandle>()?;
    m.add_class::<plan::Handler>()?;
    m.add_class::<plan::Plan>()?;
    m.add_class::<run::Run>()?;
    m.add_function(wrap_pyfunction!(run::start_run, m)?)?;
    m.add_function(wrap_pyfunction!(plan::check_split, m)?)?;
    m.add_function(wrap_pyfunction!(run::resume_run, m)?)?;
    m.add_function(wrap_pyfunction!(values::py_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(values::py_count, m)?)?;
    m.add_function(wrap_pyfunction!(values::py_number, m)?)?;
    m.add_class::<run::Mailbox>()?;
    m.add_class::<run::BranchDone>()?;
    m.add_class::<run::Committer>()?;
    m.add_class::<store::RedbCheckpointStore>()?;
    m.add_class::<schedule::CronSchedule>()?;
    m.add_class::<schedule::BackoffPolicy>()?;
    m.add_class::<circuit::CircuitPolicy>()?;
    m.add_class::<circuit::CircuitBreaker>()?;
    m.add_class::<circuit::CircuitPermit>()?;
    m.add_class::<circuit::GuardedCall>()?;
    m.add_class::<rate_limit::RateLimiter>()?;
    m.add_class::<rate_limit::WindowedRateLimiter>()?;
    m.add_class::<rate_limit::MultiRateLimiter>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
