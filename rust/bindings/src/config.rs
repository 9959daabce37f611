//! `RetryMode` and `TaskConfig`: frozen value objects whose maths lives in `cano_core`.

use crate::circuit::CircuitBreaker;
use crate::errors;
use crate::rate_limit::{MultiRateLimiter, RateLimiter, WindowedRateLimiter};
use crate::values;
use cano_core::RetryMode as CoreRetry;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::time::Duration;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// How a failing task is retried.
#[pyclass(frozen, skip_from_py_object, module = "cano._core", name = "RetryMode")]
#[derive(Clone)]
pub struct RetryMode {
    pub mode: CoreRetry,
}

#[pymethods]
impl RetryMode {
    /// One attempt, no retries.
    #[staticmethod]
    fn none() -> Self {
        RetryMode { mode: CoreRetry::None }
    }

    /// `retries` retries after the first attempt, each after `delay` seconds.
    #[staticmethod]
    fn fixed(retries: &Bound<'_, PyAny>, delay: &Bound<'_, PyAny>) -> PyResult<Self> {
        let retries = values::count::<u32>(retries, "RetryMode.fixed(retries)", 0)?;
        let delay = values::duration(delay, "RetryMode.fixed(delay)")?;
        Ok(RetryMode { mode: CoreRetry::Fixed { retries, delay } })
    }

    /// Exponential backoff: `base_delay * multiplier**k`, capped at `max_delay`, ± `jitter`.
    #[staticmethod]
    #[pyo3(
        signature = (max_retries, *, base_delay=None, multiplier=None, max_delay=None, jitter=None),
        text_signature = "(max_retries, *, base_delay=0.1, multiplier=2.0, max_delay=30.0, jitter=0.1)"
    )]
    fn exponential(
        max_retries: &Bound<'_, PyAny>,
        base_delay: Option<&Bound<'_, PyAny>>,
        multiplier: Option<&Bound<'_, PyAny>>,
        max_delay: Option<&Bound<'_, PyAny>>,
        jitter: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        const WHAT: &str = "RetryMode.exponential";
        let max_retries =
            values::count::<u32>(max_retries, "RetryMode.exponential(max_retries)", 0)?;
        let base = match base_delay {
            Some(v) => values::duration(v, "RetryMode.exponential(base_delay)")?,
            None => Duration::from_millis(100),
        };
        let cap = match max_delay {
            Some(v) => values::duration(v, "RetryMode.exponential(max_delay)")?,
            None => Duration::from_secs(30),
        };
        let multiplier = multiplier
            .map(|v| values::number(v, &format!("{WHAT}(multiplier)"), 1.0, f64::MAX))
            .transpose()?
            .unwrap_or(2.0);
        let jitter = jitter
            .map(|v| values::number(v, &format!("{WHAT}(jitter)"), 0.0, 1.0))
            .transpose()?
            .unwrap_or(0.1);
        Ok(RetryMode {
            mode: CoreRetry::exponential_custom(max_retries, base, multiplier, cap, jitter),
        })
    }

    /// Total attempts allowed (retries + 1).
    #[getter]
    fn max_attempts(&self) -> u32 {
        self.mode.max_attempts()
    }

    /// Seconds to wait after the failed attempt with 0-based index `attempt`, or `None`
    /// when no retry is left.
    fn delay_for_attempt(&self, attempt: i64) -> Option<f64> {
        let k = u32::try_from(attempt).ok()?;
        self.mode.delay_for_attempt(k).map(secs)
    }

    /// The delay before retrying an item whose attempt number `attempt` (1-based) failed,
    /// or `None` to give up: `cano_core`'s retry decision, for a batch's per-item retries.
    fn _retry_delay(&self, attempt: i64) -> Option<f64> {
        let attempt = u32::try_from(attempt).ok()?;
        let failure = cano_core::Failure::Raised { listed: None, programming: false };
        match self.mode.decide(attempt, failure) {
            cano_core::Decision::RetryAfter(d) => Some(secs(d)),
            _ => None,
        }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<RetryMode>().is_ok_and(|o| o.get().mode == self.mode)
    }

    fn __hash__(&self) -> u64 {
        u64::from(self.mode.max_attempts())
    }

    fn __repr__(&self) -> String {
        match self.mode {
            CoreRetry::None => "RetryMode.none()".to_owned(),
            CoreRetry::Fixed { retries, delay } => {
                format!("RetryMode.fixed({retries}, {})", secs(delay))
            }
            CoreRetry::Exponential { max_retries, base_delay, multiplier, max_delay, jitter } => {
                format!(
                    "RetryMode.exponential({max_retries}, base_delay={}, multiplier={multiplier}, \
                     max_delay={}, jitter={jitter})",
                    secs(base_delay),
                    secs(max_delay)
                )
            }
        }
    }
}

/// Per-task policy: retries, attempt timeout, which exceptions are retried, and the
/// circuit breaker and rate limiter guarding each attempt.
#[pyclass(frozen, module = "cano._core", name = "TaskConfig")]
pub struct TaskConfig {
    pub retry: CoreRetry,
    pub attempt_timeout: Option<f64>,
    pub retry_on: Option<Py<PyTuple>>,
    pub breaker: Option<Py<CircuitBreaker>>,
    /// `(limiter, cost)`: acquired before every attempt.
    pub rate_limiter: Option<(Py<PyAny>, u64)>,
}

impl TaskConfig {
    fn with(&self, py: Python<'_>) -> Self {
        TaskConfig {
            retry: self.retry,
            attempt_timeout: self.attempt_timeout,
            retry_on: self.retry_on.as_ref().map(|t| t.clone_ref(py)),
            breaker: self.breaker.as_ref().map(|b| b.clone_ref(py)),
            rate_limiter: self.rate_limiter.as_ref().map(|(l, c)| (l.clone_ref(py), *c)),
        }
    }

    fn plain(retry: CoreRetry) -> Self {
        TaskConfig {
            retry,
            attempt_timeout: None,
            retry_on: None,
            breaker: None,
            rate_limiter: None,
        }
    }
}

#[pymethods]
impl TaskConfig {
    /// The default: exponential backoff with 3 retries (4 attempts), no timeout.
    #[new]
    fn new() -> Self {
        TaskConfig::plain(CoreRetry::default())
    }

    /// No retries, no timeout.
    #[staticmethod]
    fn minimal() -> Self {
        TaskConfig::plain(CoreRetry::None)
    }

    /// A copy checking `breaker` before every attempt: an open breaker fails the task at
    /// once with `CircuitOpenError` (no retry consumed); each attempt's outcome is recorded.
    fn with_circuit_breaker(&self, breaker: &Bound<'_, PyAny>) -> PyResult<Self> {
        let what = "TaskConfig.with_circuit_breaker(breaker)";
        let breaker = values::instance::<CircuitBreaker>(breaker, what, "CircuitBreaker")?;
        let copy = self.with(breaker.py());
        Ok(TaskConfig { breaker: Some(breaker.unbind()), ..copy })
    }

    /// A copy acquiring `cost` units of `limiter` (`RateLimiter`, `WindowedRateLimiter` or
    /// `MultiRateLimiter`) before every attempt, waiting as long as needed.
    #[pyo3(signature = (limiter, cost=None), text_signature = "(self, limiter, cost=1)")]
    fn with_rate_limiter(
        &self,
        py: Python<'_>,
        limiter: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let known = limiter.is_instance_of::<RateLimiter>()
            || limiter.is_instance_of::<WindowedRateLimiter>()
            || limiter.is_instance_of::<MultiRateLimiter>();
        let shown = values::shown(limiter);
        if !known {
            return Err(errors::configuration(
                py,
                format!(
                    "TaskConfig.with_rate_limiter(limiter): expected a RateLimiter, \
                     WindowedRateLimiter or MultiRateLimiter, got {shown}"
                ),
            ));
        }
        let cost = values::optional_count::<u64>(cost, "TaskConfig.with_rate_limiter(cost)", 0)?
            .unwrap_or(1);
        let wait: f64 =
            limiter.call_method1(pyo3::intern!(py, "time_until"), (cost,))?.extract()?;
        if wait.is_infinite() {
            return Err(errors::configuration(
                py,
                format!(
                    "TaskConfig.with_rate_limiter: a cost of {cost} can never be granted by \
                     {shown} (it exceeds the limiter's capacity)"
                ),
            ));
        }
        Ok(TaskConfig { rate_limiter: Some((limiter.clone().unbind(), cost)), ..self.with(py) })
    }

    /// A copy with another retry mode.
    fn with_retry(&self, mode: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mode = values::instance::<RetryMode>(mode, "TaskConfig.with_retry(mode)", "RetryMode")?;
        let copy = self.with(mode.py());
        Ok(TaskConfig { retry: mode.get().mode, ..copy })
    }

    /// A copy retrying `retries` times after `delay` seconds.
    fn with_fixed_retry(
        &self,
        py: Python<'_>,
        retries: &Bound<'_, PyAny>,
        delay: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let retries = values::count::<u32>(retries, "TaskConfig.with_fixed_retry(retries)", 0)?;
        let delay = values::duration(delay, "TaskConfig.with_fixed_retry(delay)")?;
        Ok(TaskConfig { retry: CoreRetry::Fixed { retries, delay }, ..self.with(py) })
    }

    /// A copy with default exponential backoff and `max_retries` retries.
    fn with_exponential_retry(
        &self,
        py: Python<'_>,
        max_retries: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let what = "TaskConfig.with_exponential_retry(max_retries)";
        let n = values::count::<u32>(max_retries, what, 0)?;
        Ok(TaskConfig { retry: CoreRetry::exponential(n), ..self.with(py) })
    }

    /// A copy bounding every attempt to `timeout` seconds (`TaskTimeoutError` on expiry).
    fn with_attempt_timeout(&self, py: Python<'_>, timeout: &Bound<'_, PyAny>) -> PyResult<Self> {
        let t = values::seconds(timeout, "TaskConfig.with_attempt_timeout(timeout)")?;
        Ok(TaskConfig { attempt_timeout: Some(t), ..self.with(py) })
    }

    /// A copy retrying only exceptions of these types; any other fails at once.
    #[pyo3(signature = (*exc_types))]
    fn with_retry_on(&self, py: Python<'_>, exc_types: &Bound<'_, PyTuple>) -> PyResult<Self> {
        let base = py.get_type::<pyo3::exceptions::PyBaseException>();
        for t in exc_types.iter() {
            let ok = t.cast::<PyType>().is_ok_and(|t| t.is_subclass(&base).unwrap_or(false));
            if !ok {
                return Err(errors::configuration(
                    py,
                    format!(
                        "TaskConfig.with_retry_on(exc_types): expected exception classes, got {}",
                        values::shown(&t)
                    ),
                ));
            }
        }
        if exc_types.is_empty() {
            return Err(errors::configuration(
                py,
                "TaskConfig.with_retry_on(exc_types): needs at least one exception class"
                    .to_owned(),
            ));
        }
        Ok(TaskConfig { retry_on: Some(exc_types.clone().unbind()), ..self.with(py) })
    }

    /// The retry mode.
    #[getter]
    fn retry_mode(&self) -> RetryMode {
        RetryMode { mode: self.retry }
    }

    /// Seconds allowed per attempt, or `None`.
    #[getter]
    fn attempt_timeout(&self) -> Option<f64> {
        self.attempt_timeout
    }

    /// The exception classes retried, or `None` for all.
    #[getter]
    fn retry_on(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.retry_on.as_ref().map(|t| t.clone_ref(py))
    }

    /// The circuit breaker guarding each attempt, or `None`.
    #[getter]
    fn circuit_breaker(&self, py: Python<'_>) -> Option<Py<CircuitBreaker>> {
        self.breaker.as_ref().map(|b| b.clone_ref(py))
    }

    /// The rate limiter acquired before each attempt, or `None`.
    #[getter]
    fn rate_limiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.rate_limiter.as_ref().map(|(l, _)| l.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let retry = RetryMode { mode: self.retry }.__repr__();
        let mut out = format!("TaskConfig(retry_mode={retry}");
        if let Some(t) = self.attempt_timeout {
            out.push_str(&format!(", attempt_timeout={t}"));
        }
        if let Some(types) = &self.retry_on {
            let shown = types.bind(py).repr().map(|r| r.to_string()).unwrap_or_default();
            out.push_str(&format!(", retry_on={shown}"));
        }
        out.push(')');
        out
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(t) = &self.retry_on {
            visit.call(t)?;
        }
        if let Some(b) = &self.breaker {
            visit.call(b)?;
        }
        if let Some((l, _)) = &self.rate_limiter {
            visit.call(l)?;
        }
        Ok(())
    }
}

/// Consecutive failures of a loop that tolerates some (a poll loop's error policy, a
/// stream's `retry_on_error`): `cano_core::ErrorStreak`, for the Python drivers.
#[pyclass(module = "cano._core", name = "ErrorStreak")]
pub struct ErrorStreak {
    inner: cano_core::ErrorStreak,
}

#[pymethods]
impl ErrorStreak {
    /// Tolerates `tolerated` consecutive failures; the next one gives up (0 = fail fast).
    #[new]
    fn new(tolerated: u32) -> Self {
        ErrorStreak { inner: cano_core::ErrorStreak::new(tolerated) }
    }

    /// Records a failure; True when the loop must give up.
    fn failed(&mut self) -> bool {
        self.inner.failed()
    }

    /// Records a success: the streak starts over.
    fn succeeded(&mut self) {
        self.inner.succeeded();
    }

    /// Consecutive failures so far.
    #[getter]
    fn count(&self) -> u32 {
        self.inner.count()
    }
}
