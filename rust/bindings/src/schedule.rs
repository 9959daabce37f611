//! `CronSchedule` and `BackoffPolicy`: the scheduler's frozen value objects, whose maths
//! lives in `cano_core::{cron, backoff}`. The scheduler loop itself is Python
//! (`cano/scheduler.py`); it asks these objects when to fire and how long to back off.

use crate::errors;
use crate::values;
use cano_core::BackoffPolicy as CoreBackoff;
use cano_core::CronSchedule as CoreCron;
use pyo3::prelude::*;

/// A cron expression (six fields with seconds first, or seven with a year), in UTC.
#[pyclass(frozen, module = "cano._core", name = "CronSchedule")]
pub struct CronSchedule {
    schedule: CoreCron,
}

#[pymethods]
impl CronSchedule {
    /// Parses `expr`; an invalid expression raises `ConfigurationError` quoting it.
    #[new]
    fn new(py: Python<'_>, expr: &Bound<'_, PyAny>) -> PyResult<Self> {
        let expr = values::text(expr, "CronSchedule(expr)")?;
        CoreCron::parse(&expr)
            .map(|schedule| CronSchedule { schedule })
            .map_err(|e| errors::configuration(py, e.to_string()))
    }

    /// The expression as given.
    #[getter]
    fn expression(&self) -> &str {
        self.schedule.expression()
    }

    /// The first firing strictly after `ts` (UNIX seconds, UTC), or `None` when the
    /// schedule never fires again.
    fn next_after(&self, py: Python<'_>, ts: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let ts = values::number(ts, "CronSchedule.next_after(ts)", f64::MIN, f64::MAX)?;
        self.schedule.next_after_unix(ts).map_err(|e| {
            errors::configuration(
                py,
                format!(
                    "CronSchedule.next_after(ts={ts}): cron expression {:?}: {e}",
                    self.schedule.expression()
                ),
            )
        })
    }

    fn __repr__(&self) -> String {
        format!("CronSchedule({:?})", self.schedule.expression())
    }
}

/// How long a failing scheduled flow rests before its next run, and when it trips.
#[pyclass(frozen, skip_from_py_object, module = "cano._core", name = "BackoffPolicy")]
#[derive(Clone)]
pub struct BackoffPolicy {
    policy: CoreBackoff,
}

/// A streak given by a user: any int >= 0 (beyond `u32::MAX` it saturates).
fn streak(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u32> {
    let n = values::count::<u64>(value, what, 0)?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn backoff_error(py: Python<'_>, err: cano_core::BackoffError) -> PyErr {
    errors::configuration(py, err.to_string())
}

#[pymethods]
impl BackoffPolicy {
    /// `initial · multiplier^(streak − 1)` seconds after the `streak`-th consecutive
    /// failure, capped at `max_delay`, ± `jitter`, capped again; trips once the streak
    /// reaches `streak_limit` (never when `None`).
    #[new]
    #[pyo3(
        signature = (initial=None, multiplier=None, max_delay=None, jitter=None, streak_limit=None),
        text_signature = "(initial=1.0, multiplier=2.0, max_delay=300.0, jitter=0.1, streak_limit=None)"
    )]
    fn new(
        py: Python<'_>,
        initial: Option<&Bound<'_, PyAny>>,
        multiplier: Option<&Bound<'_, PyAny>>,
        max_delay: Option<&Bound<'_, PyAny>>,
        jitter: Option<&Bound<'_, PyAny>>,
        streak_limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let initial = values::optional_seconds(initial, "BackoffPolicy(initial)")?.unwrap_or(1.0);
        let max_delay =
            values::optional_seconds(max_delay, "BackoffPolicy(max_delay)")?.unwrap_or(300.0);
        let multiplier = multiplier
            .map(|v| values::number(v, "BackoffPolicy(multiplier)", 1.0, f64::MAX))
            .transpose()?
            .unwrap_or(2.0);
        let jitter = jitter
            .map(|v| values::number(v, "BackoffPolicy(jitter)", 0.0, 1.0))
            .transpose()?
            .unwrap_or(0.1);
        let limit = values::optional_count::<u32>(streak_limit, "BackoffPolicy(streak_limit)", 1)?;
        CoreBackoff::new(initial, multiplier, max_delay, jitter, limit)
            .map(|policy| BackoffPolicy { policy })
            .map_err(|e| backoff_error(py, e))
    }

    /// The default policy, tripping after `streak_limit` consecutive failures.
    #[staticmethod]
    fn with_trip(py: Python<'_>, streak_limit: &Bound<'_, PyAny>) -> PyResult<Self> {
        let limit = values::count::<u32>(streak_limit, "BackoffPolicy.with_trip(streak_limit)", 1)?;
        CoreBackoff::with_trip(limit)
            .map(|policy| BackoffPolicy { policy })
            .map_err(|e| backoff_error(py, e))
    }

    /// Seconds of rest after the first failure.
    #[getter]
    fn initial(&self) -> f64 {
        self.policy.initial()
    }

    /// Growth factor per further failure.
    #[getter]
    fn multiplier(&self) -> f64 {
        self.policy.multiplier()
    }

    /// Upper bound in seconds, before and after jitter.
    #[getter]
    fn max_delay(&self) -> f64 {
        self.policy.max_delay()
    }

    /// Jitter, a fraction of the delay.
    #[getter]
    fn jitter(&self) -> f64 {
        self.policy.jitter()
    }

    /// Consecutive failures after which the flow trips, or `None`.
    #[getter]
    fn streak_limit(&self) -> Option<u32> {
        self.policy.streak_limit()
    }

    /// Seconds to rest after `streak` consecutive failures (jittered; 0 counts as 1).
    fn compute_delay(&self, streak: &Bound<'_, PyAny>) -> PyResult<f64> {
        Ok(self.policy.compute_delay(self::streak(streak, "BackoffPolicy.compute_delay(streak)")?))
    }

    /// True when `streak` consecutive failures trip the flow.
    fn is_tripped(&self, streak: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.policy.is_tripped(self::streak(streak, "BackoffPolicy.is_tripped(streak)")?))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<BackoffPolicy>().is_ok_and(|o| o.get().policy == self.policy)
    }

    fn __hash__(&self) -> u64 {
        u64::from(self.policy.streak_limit().unwrap_or(u32::MAX))
    }

    fn __repr__(&self) -> String {
        let p = &self.policy;
        let limit = p.streak_limit().map_or_else(|| "None".to_owned(), |n| n.to_string());
        format!(
            "BackoffPolicy(initial={:?}, multiplier={:?}, max_delay={:?}, jitter={:?}, \
             streak_limit={limit})",
            p.initial(),
            p.multiplier(),
            p.max_delay(),
            p.jitter()
        )
    }
}
