//! One state's handler: the callable that makes the task's coroutine, and its policy.

use crate::circuit::CircuitBreaker;
use crate::config::TaskConfig;
use crate::errors;
use crate::gc_traverse;
use cano_core::{HandlerKind, JoinStrategy, RetryMode, StateId};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

/// One state's handler, compiled from the task registered for it.
#[pyclass(frozen, module = "cano._core", name = "Handler")]
pub struct Handler {
    pub call: Py<PyAny>,
    pub takes_resources: bool,
    pub name: Py<PyString>,
    pub kind: HandlerKind,
    pub retry: RetryMode,
    pub attempt_timeout: Option<f64>,
    pub retry_on: Option<Py<PyTuple>>,
    pub targets: Option<Vec<StateId>>,
    pub split: Option<SplitSpec>,
    pub breaker: Option<Py<CircuitBreaker>>,
    pub rate_limiter: Option<(Py<PyAny>, u64)>,
    /// What a persisted value of the task is rebuilt as: a stepped or stream task's
    /// `cursor_type`, a compensatable task's `output_type`.
    pub value_type: Option<Py<PyAny>>,
}

/// The branches and join of a split state.
pub struct SplitSpec {
    pub branches: Vec<Py<Handler>>,
    pub strategy: JoinStrategy,
    pub strategy_repr: Py<PyString>,
    pub timeout: Option<f64>,
    pub bulkhead: Option<usize>,
    pub join_state: StateId,
}

gc_traverse!(SplitSpec { branches, strategy_repr });
gc_traverse!(Handler { call, name, retry_on, split, breaker, rate_limiter, value_type });

fn kind_of(py: Python<'_>, kind: &str) -> PyResult<HandlerKind> {
    Ok(match kind {
        "single" => HandlerKind::Single,
        "router" => HandlerKind::Router,
        "stepped" => HandlerKind::Stepped,
        "compensatable" => HandlerKind::Compensatable,
        "stream" => HandlerKind::Stream,
        other => return Err(errors::configuration(py, format!("unknown handler kind {other:?}"))),
    })
}

fn strategy_of(py: Python<'_>, strategy: &str, value: f64) -> PyResult<JoinStrategy> {
    Ok(match strategy {
        "all" => JoinStrategy::All,
        "any" => JoinStrategy::Any,
        "quorum" => JoinStrategy::Quorum(value as usize),
        "percentage" => JoinStrategy::Percentage(value),
        "partial_results" => JoinStrategy::PartialResults(value as usize),
        "partial_timeout" => JoinStrategy::PartialTimeout,
        other => return Err(errors::configuration(py, format!("unknown join strategy {other:?}"))),
    })
}

/// Refuses, at registration, a split that could never succeed: no branches, a quorum or
/// minimum above the branch count, `PARTIAL_TIMEOUT` without a timeout, a zero bulkhead.
#[pyfunction]
#[pyo3(signature = (state, strategy, value, branches, *, has_timeout, bulkhead=None))]
pub fn check_split(
    py: Python<'_>,
    state: &str,
    strategy: &str,
    value: f64,
    branches: usize,
    has_timeout: bool,
    bulkhead: Option<usize>,
) -> PyResult<()> {
    strategy_of(py, strategy, value)?
        .validate_split(branches, has_timeout, bulkhead)
        .map_err(|e| errors::configuration(py, format!("split state {state}: {e}")))
}

#[pymethods]
impl Handler {
    #[new]
    #[pyo3(signature = (call, *, takes_resources, name, kind, config, targets=None, value_type=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        call: Py<PyAny>,
        takes_resources: bool,
        name: Py<PyString>,
        kind: &str,
        config: &TaskConfig,
        targets: Option<Vec<StateId>>,
        value_type: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        Ok(Handler {
            call,
            takes_resources,
            name,
            kind: kind_of(py, kind)?,
            retry: config.retry,
            attempt_timeout: config.attempt_timeout,
            retry_on: config.retry_on.as_ref().map(|t| t.clone_ref(py)),
            targets,
            split: None,
            breaker: config.breaker.as_ref().map(|b| b.clone_ref(py)),
            rate_limiter: config.rate_limiter.as_ref().map(|(l, c)| (l.clone_ref(py), *c)),
            value_type,
        })
    }

    /// A split state: `branches` run concurrently and are joined by the strategy. A split
    /// that could never succeed (no branches, a quorum above the branch count, ...) is a
    /// `ConfigurationError` naming `state`.
    #[staticmethod]
    #[pyo3(signature = (name, branches, *, strategy, value, strategy_repr, join_state,
                        timeout=None, bulkhead=None, state=None))]
    #[allow(clippy::too_many_arguments)]
    fn split(
        py: Python<'_>,
        name: Py<PyString>,
        branches: Vec<Py<Handler>>,
        strategy: &str,
        value: f64,
        strategy_repr: Py<PyString>,
        join_state: StateId,
        timeout: Option<f64>,
        bulkhead: Option<usize>,
        state: Option<String>,
    ) -> PyResult<Self> {
        let strategy = strategy_of(py, strategy, value)?;
        strategy.validate_split(branches.len(), timeout.is_some(), bulkhead).map_err(|e| {
            let state = state.as_deref().unwrap_or("?");
            errors::configuration(py, format!("split state {state}: {e}"))
        })?;
        Ok(Handler {
            call: py.None(),
            takes_resources: false,
            name,
            kind: HandlerKind::Split,
            retry: RetryMode::None,
            attempt_timeout: None,
            retry_on: None,
            targets: Some(vec![join_state]),
            split: Some(SplitSpec {
                branches,
                strategy,
                strategy_repr,
                timeout,
                bulkhead,
                join_state,
            }),
            breaker: None,
            rate_limiter: None,
            value_type: None,
        })
    }

    /// The task's name, as observers and errors show it.
    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        crate::gc::PyGcTraverse::py_gc_traverse(self, &visit)
    }
}
