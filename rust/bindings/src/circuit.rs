//! `CircuitPolicy`, `CircuitBreaker`, `CircuitPermit` and `GuardedCall`: the Python faces
//! of `cano_core::circuit`.
//!
//! The breaker is shared (`Arc`) between the Python object, its permits and the functions
//! it guards, so a permit or a decorated function keeps working whatever happens to the
//! breaker object. `CircuitState` is a Python `enum.Enum` (`cano/resilience.py`); its
//! members are imported once and handed out by identity. Decorating an `async def` is done
//! in Python (`cano.resilience._guard`); a sync callable is wrapped in `GuardedCall`, which
//! acquires, calls and records in Rust without creating a permit object.

use crate::errors;
use crate::values;
use cano_core::{
    CircuitBreaker as CoreBreaker, CircuitPolicy as CorePolicy, CircuitState as CoreState, Permit,
    Rejection, SystemClock,
};
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::Arc;

static STATES: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();
static GUARD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The `cano.resilience.CircuitState` member for `state`.
fn state_member(py: Python<'_>, state: CoreState) -> PyResult<Bound<'_, PyAny>> {
    let members = STATES.get_or_try_init(py, || -> PyResult<[Py<PyAny>; 3]> {
        let enum_cls = py.import("cano.resilience")?.getattr("CircuitState")?;
        Ok([
            enum_cls.getattr("CLOSED")?.unbind(),
            enum_cls.getattr("OPEN")?.unbind(),
            enum_cls.getattr("HALF_OPEN")?.unbind(),
        ])
    })?;
    let i = match state {
        CoreState::Closed => 0,
        CoreState::Open => 1,
        CoreState::HalfOpen => 2,
    };
    Ok(members[i].bind(py).clone())
}

fn rejected(py: Python<'_>, rejection: Rejection, call: Option<&str>) -> PyErr {
    errors::EngineError::CircuitOpen.into_py(
        py,
        rejection.message(call),
        errors::Context::none(),
        None,
    )
}

/// When a breaker trips and how it recovers.
///
/// ``failure_threshold`` consecutive failures open the breaker; after ``reset_timeout``
/// seconds it lets ``half_open_max_calls`` probe calls through, and closes once that many
/// succeeded (any failed probe reopens it). Invalid values raise ``ConfigurationError``.
///
///     policy = CircuitPolicy(failure_threshold=3, reset_timeout=10.0)
#[pyclass(frozen, skip_from_py_object, module = "cano._core", name = "CircuitPolicy")]
#[derive(Clone)]
pub struct CircuitPolicy {
    pub policy: CorePolicy,
}

#[pymethods]
impl CircuitPolicy {
    #[new]
    #[pyo3(
        signature = (failure_threshold=None, reset_timeout=None, half_open_max_calls=None),
        text_signature = "(failure_threshold=5, reset_timeout=30.0, half_open_max_calls=1)"
    )]
    fn new(
        py: Python<'_>,
        failure_threshold: Option<&Bound<'_, PyAny>>,
        reset_timeout: Option<&Bound<'_, PyAny>>,
        half_open_max_calls: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let defaults = CorePolicy::default();
        let threshold = match failure_threshold {
            Some(v) => values::count::<u64>(v, "CircuitPolicy(failure_threshold)", 0)?,
            None => u64::from(defaults.failure_threshold()),
        };
        let reset = match reset_timeout {
            Some(v) if !v.is_none() => values::duration(v, "CircuitPolicy(reset_timeout)")?,
            _ => defaults.reset_timeout(),
        };
        let half_open = match half_open_max_calls {
            Some(v) => values::count::<u64>(v, "CircuitPolicy(half_open_max_calls)", 0)?,
            None => u64::from(defaults.half_open_max_calls()),
        };
        CorePolicy::new(threshold, reset, half_open)
            .map(|policy| CircuitPolicy { policy })
            .map_err(|e| errors::configuration(py, e.to_string()))
    }

    /// Consecutive failures that open the breaker.
    #[getter]
    fn failure_threshold(&self) -> u32 {
        self.policy.failure_threshold()
    }

    /// Seconds the breaker stays open before it admits a probe.
    #[getter]
    fn reset_timeout(&self) -> f64 {
        self.policy.reset_timeout().as_secs_f64()
    }

    /// Probes admitted at once while half-open, and successes needed to close.
    #[getter]
    fn half_open_max_calls(&self) -> u32 {
        self.policy.half_open_max_calls()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<CircuitPolicy>().is_ok_and(|o| o.get().policy == self.policy)
    }

    fn __hash__(&self) -> u64 {
        let p = &self.policy;
        (u64::from(p.failure_threshold()) << 32)
            ^ u64::from(p.half_open_max_calls())
            ^ p.reset_timeout().as_nanos() as u64
    }

    fn __repr__(&self) -> String {
        format!(
            "CircuitPolicy(failure_threshold={}, reset_timeout={}, half_open_max_calls={})",
            self.policy.failure_threshold(),
            float_repr(self.reset_timeout()),
            self.policy.half_open_max_calls()
        )
    }
}

/// `x` the way Python's `repr(float)` shows it for the usual values (`30.0`, `0.05`).
pub(crate) fn float_repr(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// A thread-safe circuit breaker, shared by every caller of one dependency.
///
/// ``failure_threshold`` consecutive failures open it: calls are then rejected with
/// ``CircuitOpenError`` until ``reset_timeout`` has passed, after which probe calls decide
/// whether it closes again. Use it as a decorator (sync or async functions), or acquire
/// permits by hand::
///
///     breaker = CircuitBreaker(CircuitPolicy(failure_threshold=3, reset_timeout=10.0))
///
///     @breaker
///     def fetch(url: str) -> bytes: ...
///
///     with breaker.try_acquire():     # raises CircuitOpenError when open
///         call_the_dependency()       # an exception here records a failure
#[pyclass(frozen, module = "cano._core", name = "CircuitBreaker")]
pub struct CircuitBreaker {
    pub inner: Arc<CoreBreaker>,
}

impl CircuitBreaker {
    fn check_owner(&self, py: Python<'_>, permit: &CircuitPermit) -> PyResult<()> {
        if Arc::ptr_eq(&self.inner, &permit.breaker) {
            return Ok(());
        }
        Err(errors::configuration(
            py,
            "this CircuitPermit was issued by another CircuitBreaker".to_owned(),
        ))
    }
}

#[pymethods]
impl CircuitBreaker {
    #[new]
    #[pyo3(signature = (policy=None))]
    fn new(policy: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let policy = match policy {
            Some(p) if !p.is_none() => {
                values::instance::<CircuitPolicy>(p, "CircuitBreaker(policy)", "CircuitPolicy")?
                    .get()
                    .policy
            }
            _ => CorePolicy::default(),
        };
        Ok(CircuitBreaker { inner: Arc::new(CoreBreaker::new(policy)) })
    }

    /// ``CircuitState.CLOSED``, ``OPEN`` or ``HALF_OPEN`` (an open breaker whose reset
    /// timeout has passed reports ``HALF_OPEN``).
    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        state_member(py, self.inner.state(SystemClock))
    }

    /// The breaker's policy.
    #[getter]
    fn policy(&self) -> CircuitPolicy {
        CircuitPolicy { policy: *self.inner.policy() }
    }

    /// Consecutive failures counted while closed.
    #[getter]
    fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive_failures()
    }

    /// A permit for one call, or ``CircuitOpenError`` saying why not. Record the outcome
    /// with ``record_success`` / ``record_failure``, or use the permit as a context manager.
    /// A permit never recorded counts as a failure once it is garbage-collected.
    fn try_acquire(&self, py: Python<'_>) -> PyResult<CircuitPermit> {
        match self.inner.try_acquire(SystemClock) {
            Ok(permit) => Ok(CircuitPermit {
                breaker: Arc::clone(&self.inner),
                permit: Mutex::new(Some(permit)),
            }),
            Err(r) => Err(rejected(py, r, None)),
        }
    }

    /// Records that the call ``permit`` allowed succeeded. Recording twice is a no-op.
    fn record_success(&self, py: Python<'_>, permit: &Bound<'_, CircuitPermit>) -> PyResult<()> {
        self.check_owner(py, permit.get())?;
        permit.get().finish(true);
        Ok(())
    }

    /// Records that the call ``permit`` allowed failed. Recording twice is a no-op.
    fn record_failure(&self, py: Python<'_>, permit: &Bound<'_, CircuitPermit>) -> PyResult<()> {
        self.check_owner(py, permit.get())?;
        permit.get().finish(false);
        Ok(())
    }

    /// Decorates a sync or async callable so that every call goes through the breaker.
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let guard = GUARD.import(slf.py(), "cano.resilience", "_guard")?;
        guard.call1((slf, func))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let state = state_member(py, self.inner.state(SystemClock))?;
        let name = state.getattr(intern!(py, "name"))?;
        Ok(format!(
            "CircuitBreaker(state={name}, consecutive_failures={}, policy={})",
            self.inner.consecutive_failures(),
            self.policy().__repr__()
        ))
    }
}

/// Permission for one call through a ``CircuitBreaker``.
///
/// As a context manager, leaving the block normally records a success and leaving it with
/// an exception records a failure (the exception propagates). Recording twice is a no-op;
/// a permit that is never recorded counts as a failure when it is garbage-collected.
#[pyclass(frozen, module = "cano._core", name = "CircuitPermit")]
pub struct CircuitPermit {
    breaker: Arc<CoreBreaker>,
    permit: Mutex<Option<Permit>>,
}

impl CircuitPermit {
    /// Records the outcome once; later calls do nothing.
    fn finish(&self, success: bool) {
        let taken = self.permit.lock().take();
        if let Some(permit) = taken {
            self.breaker.record(permit, success, SystemClock);
        }
    }
}

impl Drop for CircuitPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.get_mut().take() {
            self.breaker.record(permit, false, SystemClock);
        }
    }
}

#[pymethods]
impl CircuitPermit {
    /// True once the outcome was recorded.
    #[getter]
    fn recorded(&self) -> bool {
        self.permit.lock().is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, exc_value=None, traceback=None))]
    fn __exit__(
        &self,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc_value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        let _ = (exc_value, traceback);
        self.finish(exc_type.is_none_or(|t| t.is_none()));
        false
    }

    fn __repr__(&self) -> String {
        format!("CircuitPermit(recorded={})", if self.recorded() { "True" } else { "False" })
    }
}

/// A sync callable guarded by a ``CircuitBreaker`` (what ``@breaker`` returns for a
/// function that is not ``async``): each call acquires a permit, calls the function, and
/// records a failure if it raised, a success otherwise. ``functools.wraps`` metadata is
/// copied from the function, and it binds like a function when used as a method.
#[pyclass(frozen, dict, module = "cano._core", name = "GuardedCall")]
pub struct GuardedCall {
    breaker: Py<CircuitBreaker>,
    func: Py<PyAny>,
}

impl GuardedCall {
    fn rejected(&self, py: Python<'_>, rejection: Rejection) -> PyErr {
        let func = self.func.bind(py);
        let name = func
            .getattr(intern!(py, "__qualname__"))
            .or_else(|_| func.repr().map(Bound::into_any))
            .map(|n| n.to_string())
            .unwrap_or_default();
        rejected(py, rejection, Some(&name))
    }
}

#[pymethods]
impl GuardedCall {
    #[new]
    fn new(breaker: Py<CircuitBreaker>, func: Py<PyAny>) -> Self {
        GuardedCall { breaker, func }
    }

    /// The breaker guarding the function.
    #[getter]
    fn breaker(&self, py: Python<'_>) -> Py<CircuitBreaker> {
        self.breaker.clone_ref(py)
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let breaker = &self.breaker.get().inner;
        let permit = match breaker.try_acquire(SystemClock) {
            Ok(permit) => permit,
            Err(r) => return Err(self.rejected(py, r)),
        };
        let out = self.func.bind(py).call(args, kwargs);
        breaker.record(permit, out.is_ok(), SystemClock);
        out
    }

    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        instance: Option<&Bound<'py, PyAny>>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match instance {
            Some(obj) if !obj.is_none() => {
                let py = slf.py();
                let method_type = METHOD_TYPE.import(py, "types", "MethodType")?;
                method_type.call1((slf, obj))
            }
            _ => Ok(slf.clone().into_any()),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<GuardedCall {}>", self.func.bind(py).repr()?))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        visit.call(&self.func)?;
        Ok(())
    }
}
