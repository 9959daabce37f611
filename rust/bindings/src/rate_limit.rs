//! `RateLimiter`, `WindowedRateLimiter` and `MultiRateLimiter`: the Python faces of
//! `cano_core`'s rate limiters.
//!
//! `try_acquire` and `time_until` are Rust. `acquire` returns the coroutine of a small
//! Python loop (`cano.resilience._acquire` / `_acquire_multi`) that sleeps with
//! `asyncio.sleep` for exactly the time the limiter says, so waiting never blocks the event
//! loop and never busy-waits. A cost that can never be granted is refused when `acquire` is
//! called, before any waiting.

use crate::circuit::float_repr;
use crate::errors;
use crate::values;
use cano_core::{
    LimiterError, Meter, MultiRateLimiter as CoreMulti, RateLimiter as CoreBucket,
    WindowedRateLimiter as CoreWindow,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyString};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::Arc;
use std::time::{Duration, Instant};

static ACQUIRE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ACQUIRE_MULTI: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn limiter_error(py: Python<'_>, err: LimiterError) -> PyErr {
    errors::configuration(py, err.to_string())
}

/// A cost passed to `try_acquire` / `acquire` / `time_until`.
fn cost_arg(cost: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<u64> {
    Ok(values::optional_count::<u64>(cost, &format!("{what}(cost)"), 0)?.unwrap_or(1))
}

fn secs_or_inf(wait: Option<Duration>) -> f64 {
    wait.map_or(f64::INFINITY, |d| d.as_secs_f64())
}

fn period_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    values::duration(value, what)
}

/// The coroutine of `cano.resilience.<helper>(limiter, cost)`, after refusing a cost that
/// can never be granted.
fn acquire_coroutine<'py>(
    limiter: &Bound<'py, PyAny>,
    helper: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
    cost: u64,
    check: Result<(), LimiterError>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = limiter.py();
    if let Err(e) = check {
        let class = limiter.get_type().name()?;
        return Err(errors::configuration(py, format!("{class}.acquire({cost}): {e}")));
    }
    helper.import(py, "cano.resilience", name)?.call1((limiter, cost))
}

/// A token bucket: ``tokens`` per ``period`` seconds, holding up to ``tokens + burst``.
///
/// The bucket starts full, so a fresh limiter admits ``tokens + burst`` calls at once; it
/// then refills continuously (fractional tokens). Thread-safe; share one limiter among all
/// callers of the same quota::
///
///     limiter = RateLimiter(10, 1.0, burst=5)     # 10/s, bursts of up to 15
///     if limiter.try_acquire():                   # shed load
///         ...
///     await limiter.acquire()                     # or wait for a token
#[pyclass(frozen, module = "cano._core", name = "RateLimiter")]
pub struct RateLimiter {
    pub inner: Arc<CoreBucket>,
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (tokens, period, *, burst=None), text_signature = "(tokens, period, *, burst=0)")]
    fn new(
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        period: &Bound<'_, PyAny>,
        burst: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let tokens = values::count::<u64>(tokens, "RateLimiter(tokens)", 0)?;
        let period = period_arg(period, "RateLimiter(period)")?;
        let burst = values::optional_count::<u64>(burst, "RateLimiter(burst)", 0)?.unwrap_or(0);
        CoreBucket::new(tokens, period, burst, Instant::now())
            .map(|b| RateLimiter { inner: Arc::new(b) })
            .map_err(|e| limiter_error(py, e))
    }

    /// ``n`` tokens per second, no burst.
    #[staticmethod]
    fn per_second(py: Python<'_>, n: &Bound<'_, PyAny>) -> PyResult<Self> {
        let n = values::count::<u64>(n, "RateLimiter.per_second(n)", 0)?;
        CoreBucket::per_second(n, Instant::now())
            .map(|b| RateLimiter { inner: Arc::new(b) })
            .map_err(|e| limiter_error(py, e))
    }

    /// Takes ``cost`` tokens if they are available now; never waits. A cost above the
    /// capacity is never granted.
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn try_acquire(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let cost = cost_arg(cost, "RateLimiter.try_acquire")?;
        Ok(self.inner.try_acquire(cost, Instant::now()))
    }

    /// Seconds until ``cost`` tokens are available (0.0 if now, ``math.inf`` if never).
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn time_until(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let cost = cost_arg(cost, "RateLimiter.time_until")?;
        Ok(secs_or_inf(self.inner.time_until(cost, Instant::now())))
    }

    /// Waits (``await``) until ``cost`` tokens are available and takes them. A cost above
    /// the capacity raises ``ConfigurationError`` at once.
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn acquire<'py>(
        slf: &Bound<'py, Self>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cost = cost_arg(cost, "RateLimiter.acquire")?;
        let check = slf.get().inner.check_cost(cost);
        acquire_coroutine(slf.as_any(), &ACQUIRE, "_acquire", cost, check)
    }

    /// Tokens added per ``period``.
    #[getter]
    fn tokens(&self) -> u64 {
        self.inner.tokens()
    }

    /// Seconds to refill ``tokens``.
    #[getter]
    fn period(&self) -> f64 {
        self.inner.period().as_secs_f64()
    }

    /// Extra capacity above ``tokens``.
    #[getter]
    fn burst(&self) -> u64 {
        self.inner.burst()
    }

    /// The most tokens the bucket holds (``tokens + burst``): the largest grantable cost.
    #[getter]
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    /// Tokens in the bucket now (fractional).
    #[getter]
    fn available(&self) -> f64 {
        self.inner.available(Instant::now())
    }

    fn __repr__(&self) -> String {
        format!(
            "RateLimiter({}, {}, burst={})",
            self.inner.tokens(),
            float_repr(self.inner.period().as_secs_f64()),
            self.inner.burst()
        )
    }
}

/// At most ``limit`` units per ``window`` seconds (a fixed window).
///
/// The first window opens when the limiter is built; once a window has passed, the next
/// call opens a new one at that moment. Thread-safe::
///
///     per_minute = WindowedRateLimiter(100, 60.0)
///     per_minute.try_acquire()        # True while fewer than 100 were taken this window
#[pyclass(frozen, module = "cano._core", name = "WindowedRateLimiter")]
pub struct WindowedRateLimiter {
    pub inner: Arc<CoreWindow>,
}

#[pymethods]
impl WindowedRateLimiter {
    #[new]
    fn new(py: Python<'_>, limit: &Bound<'_, PyAny>, window: &Bound<'_, PyAny>) -> PyResult<Self> {
        let limit = values::count::<u64>(limit, "WindowedRateLimiter(limit)", 0)?;
        let window = period_arg(window, "WindowedRateLimiter(window)")?;
        CoreWindow::new(limit, window, Instant::now())
            .map(|w| WindowedRateLimiter { inner: Arc::new(w) })
            .map_err(|e| limiter_error(py, e))
    }

    /// Takes ``cost`` units of the current window if they fit; never waits.
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn try_acquire(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let cost = cost_arg(cost, "WindowedRateLimiter.try_acquire")?;
        Ok(self.inner.try_acquire(cost, Instant::now()))
    }

    /// Seconds until ``cost`` units fit (0.0 if now, ``math.inf`` if ``cost > limit``).
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn time_until(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let cost = cost_arg(cost, "WindowedRateLimiter.time_until")?;
        Ok(secs_or_inf(self.inner.time_until(cost, Instant::now())))
    }

    /// Waits (``await``) until ``cost`` units fit and takes them. ``cost > limit`` raises
    /// ``ConfigurationError`` at once.
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn acquire<'py>(
        slf: &Bound<'py, Self>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cost = cost_arg(cost, "WindowedRateLimiter.acquire")?;
        let check = slf.get().inner.check_cost(cost);
        acquire_coroutine(slf.as_any(), &ACQUIRE, "_acquire", cost, check)
    }

    /// Units allowed per window.
    #[getter]
    fn limit(&self) -> u64 {
        self.inner.limit()
    }

    /// Window length in seconds.
    #[getter]
    fn window(&self) -> f64 {
        self.inner.window().as_secs_f64()
    }

    /// Units taken in the current window.
    #[getter]
    fn used(&self) -> u64 {
        self.inner.used(Instant::now())
    }

    /// Units left in the current window.
    #[getter]
    fn remaining(&self) -> u64 {
        self.inner.remaining(Instant::now())
    }

    fn __repr__(&self) -> String {
        format!(
            "WindowedRateLimiter({}, {})",
            self.inner.limit(),
            float_repr(self.inner.window().as_secs_f64())
        )
    }
}

/// Several limiters ("tiers") charged together: a call is admitted only if every tier
/// admits it, and nothing is charged otherwise.
///
/// ``with_tier`` returns a new ``MultiRateLimiter`` with one more tier; the tiers' limiters
/// are shared, not copied, so their budgets are the ones every other user of those limiters
/// draws on. ``try_acquire`` raises ``RateLimitedError`` naming the first tier that
/// refused, with ``retry_after`` seconds (at least 1 ms)::
///
///     api = (
///         MultiRateLimiter()
///         .with_tier("per_second", RateLimiter.per_second(10), 1)
///         .with_tier("per_day", WindowedRateLimiter(10_000, 86_400), 1)
///     )
///     await api.acquire()
#[pyclass(frozen, module = "cano._core", name = "MultiRateLimiter")]
pub struct MultiRateLimiter {
    pub inner: CoreMulti,
    /// `(name, limiter object, cost)` per tier, for `tiers` and repr.
    tiers: Vec<(String, Py<PyAny>, u64)>,
}

impl MultiRateLimiter {
    fn rate_limited(&self, py: Python<'_>, err: cano_core::RateLimited) -> PyResult<PyErr> {
        let kind = errors::EngineError::RateLimited {
            tier: err.tier.clone(),
            retry_after: secs_or_inf(err.retry_after),
        };
        Ok(kind.into_py(py, err.to_string(), errors::Context::none(), None))
    }
}

#[pymethods]
impl MultiRateLimiter {
    #[new]
    fn new() -> Self {
        MultiRateLimiter { inner: CoreMulti::new(), tiers: Vec::new() }
    }

    /// A new ``MultiRateLimiter`` with the tiers of this one plus ``name``, charging
    /// ``cost`` units of ``limiter`` (a ``RateLimiter`` or ``WindowedRateLimiter``) per
    /// acquired unit. A tier of cost 0 is inert.
    #[pyo3(signature = (name, limiter, cost=None), text_signature = "(self, name, limiter, cost=1)")]
    fn with_tier(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        limiter: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let name = values::text(name, "MultiRateLimiter.with_tier(name)")?;
        let meter: Arc<dyn Meter> = if let Ok(b) = limiter.cast::<RateLimiter>() {
            b.get().inner.clone()
        } else if let Ok(w) = limiter.cast::<WindowedRateLimiter>() {
            w.get().inner.clone()
        } else {
            let shown = values::shown(limiter);
            return Err(errors::configuration(
                py,
                format!(
                    "MultiRateLimiter.with_tier {name:?} (limiter): expected a RateLimiter or \
                     WindowedRateLimiter, got {shown}"
                ),
            ));
        };
        let what = format!("MultiRateLimiter.with_tier {name:?} (cost)");
        let cost = values::optional_count::<u64>(cost, &what, 0)?.unwrap_or(1);
        let mut tiers: Vec<_> =
            self.tiers.iter().map(|(n, l, c)| (n.clone(), l.clone_ref(py), *c)).collect();
        tiers.push((name.clone(), limiter.clone().unbind(), cost));
        Ok(MultiRateLimiter { inner: self.inner.clone().with_tier(name, meter, cost), tiers })
    }

    /// Charges every tier ``cost`` times its tier cost and returns ``True``, or charges
    /// nothing and raises ``RateLimitedError(tier=..., retry_after=...)``.
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn try_acquire(&self, py: Python<'_>, cost: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let units = cost_arg(cost, "MultiRateLimiter.try_acquire")?;
        match self.inner.try_acquire(units, Instant::now()) {
            Ok(()) => Ok(true),
            Err(e) => Err(self.rate_limited(py, e)?),
        }
    }

    /// Seconds until every tier could grant its share (the longest wait; ``math.inf`` if
    /// some tier never can).
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn time_until(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let units = cost_arg(cost, "MultiRateLimiter.time_until")?;
        Ok(secs_or_inf(self.inner.time_until(units, Instant::now())))
    }

    /// Waits (``await``) until every tier grants its share, sleeping each refusing tier's
    /// ``retry_after``. A cost some tier can never grant raises ``ConfigurationError`` at once.
    #[pyo3(signature = (cost=None), text_signature = "(self, cost=1)")]
    fn acquire<'py>(
        slf: &Bound<'py, Self>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let units = cost_arg(cost, "MultiRateLimiter.acquire")?;
        let check = slf.get().inner.check_cost(units);
        acquire_coroutine(slf.as_any(), &ACQUIRE_MULTI, "_acquire_multi", units, check)
    }

    /// ``(name, limiter, cost)`` of every tier, in the order they are checked.
    #[getter]
    fn tiers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<_> =
            self.tiers.iter().map(|(n, l, c)| (n.as_str(), l.bind(py), *c)).collect();
        PyList::new(py, items)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut out = "MultiRateLimiter()".to_owned();
        for (name, limiter, cost) in &self.tiers {
            let name = PyString::new(py, name).repr()?;
            let shown = limiter.bind(py).repr()?;
            out.push_str(&format!(".with_tier({name}, {shown}, {cost})"));
        }
        Ok(out)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for (_, limiter, _) in &self.tiers {
            visit.call(limiter)?;
        }
        Ok(())
    }
}
