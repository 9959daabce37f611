//! A compiled, immutable snapshot of a workflow: the state table, the handlers and the
//! run-wide settings. `cano.Workflow` (Python) builds one per definition change; every
//! run holds the snapshot it started with.

use crate::cancel::CancellationToken;
use crate::circuit::CircuitBreaker;
use crate::config::TaskConfig;
use crate::errors;
use crate::run::{Origin, Run};
use cano_core::fsm::{Graph, HandlerKind, StateId};
use cano_core::join::Strategy;
use cano_core::retry::RetryMode;
use cano_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use rustc_hash::FxHashMap;

/// One state's handler: the callable producing the task coroutine and its policy.
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
}

/// The branches and join of a split state.
pub struct SplitSpec {
    pub branches: Vec<Py<Handler>>,
    pub strategy: Strategy,
    pub strategy_repr: Py<PyString>,
    pub timeout: Option<f64>,
    pub bulkhead: Option<usize>,
    pub join_state: StateId,
}

#[pymethods]
impl Handler {
    #[new]
    #[pyo3(signature = (call, *, takes_resources, name, kind, config, targets=None))]
    fn new(
        py: Python<'_>,
        call: Py<PyAny>,
        takes_resources: bool,
        name: Py<PyString>,
        kind: &str,
        config: &TaskConfig,
        targets: Option<Vec<StateId>>,
    ) -> PyResult<Self> {
        let kind = match kind {
            "single" => HandlerKind::Single,
            "router" => HandlerKind::Router,
            "stepped" => HandlerKind::Stepped,
            "compensatable" => HandlerKind::Compensatable,
            "stream" => HandlerKind::Stream,
            other => {
                return Err(errors::configuration(py, format!("unknown handler kind {other:?}")))
            }
        };
        Ok(Handler {
            call,
            takes_resources,
            name,
            kind,
            retry: config.retry,
            attempt_timeout: config.attempt_timeout,
            retry_on: config.retry_on.as_ref().map(|t| t.clone_ref(py)),
            targets,
            split: None,
            breaker: config.breaker.as_ref().map(|b| b.clone_ref(py)),
            rate_limiter: config.rate_limiter.as_ref().map(|(l, c)| (l.clone_ref(py), *c)),
        })
    }

    /// A split state: `branches` run concurrently and are joined by the strategy.
    #[staticmethod]
    #[pyo3(signature = (name, branches, *, strategy, value, strategy_repr, join_state,
                        timeout=None, bulkhead=None))]
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
    ) -> PyResult<Self> {
        let strategy = match strategy {
            "all" => Strategy::All,
            "any" => Strategy::Any,
            "quorum" => Strategy::Quorum(value as usize),
            "percentage" => Strategy::Percentage(value),
            "partial_results" => Strategy::PartialResults(value as usize),
            "partial_timeout" => Strategy::PartialTimeout,
            other => {
                return Err(errors::configuration(py, format!("unknown join strategy {other:?}")))
            }
        };
        strategy.validate().map_err(|m| errors::configuration(py, m))?;
        if strategy == Strategy::PartialTimeout && timeout.is_none() {
            return Err(errors::configuration(
                py,
                "JoinStrategy.PARTIAL_TIMEOUT requires a timeout".to_owned(),
            ));
        }
        if bulkhead == Some(0) {
            return Err(errors::configuration(
                py,
                "bulkhead requires a positive number of branches, got 0".to_owned(),
            ));
        }
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
        })
    }

    /// The task's name, as observers and errors show it.
    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.call)?;
        if let Some(t) = &self.retry_on {
            visit.call(t)?;
        }
        if let Some(split) = &self.split {
            for b in &split.branches {
                visit.call(b)?;
            }
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

/// The observer hooks the dispatcher fires.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    StateEnter,
    TaskStart,
    TaskSuccess,
    TaskFailure,
    Retry,
    CircuitOpen,
    Checkpoint,
    Resume,
    WorkflowTimeout,
    Cancelled,
    ClearFailed,
    RunStart,
    RunFinish,
}

impl Hook {
    const ALL: [Hook; 13] = [
        Hook::StateEnter,
        Hook::TaskStart,
        Hook::TaskSuccess,
        Hook::TaskFailure,
        Hook::Retry,
        Hook::CircuitOpen,
        Hook::Checkpoint,
        Hook::Resume,
        Hook::WorkflowTimeout,
        Hook::Cancelled,
        Hook::ClearFailed,
        Hook::RunStart,
        Hook::RunFinish,
    ];

    fn name(self) -> &'static str {
        match self {
            Hook::StateEnter => "on_state_enter",
            Hook::TaskStart => "on_task_start",
            Hook::TaskSuccess => "on_task_success",
            Hook::TaskFailure => "on_task_failure",
            Hook::Retry => "on_retry",
            Hook::CircuitOpen => "on_circuit_open",
            Hook::Checkpoint => "on_checkpoint",
            Hook::Resume => "on_resume",
            Hook::WorkflowTimeout => "on_workflow_timeout",
            Hook::Cancelled => "on_cancelled",
            Hook::ClearFailed => "on_checkpoint_clear_failed",
            Hook::RunStart => "on_run_start",
            Hook::RunFinish => "on_run_finish",
        }
    }
}

/// The observer methods implementing each hook, resolved once per plan, so that a hook no
/// observer implements costs one branch and an implemented one a direct call.
struct Observers {
    targets: Vec<Vec<Py<PyAny>>>,
    hub: Py<PyAny>,
}

/// The compiled workflow. Frozen: runs read it without borrowing.
#[pyclass(frozen, module = "cano._core", name = "Plan")]
pub struct Plan {
    pub states: Vec<Py<PyAny>>,
    pub labels: Vec<Py<PyString>>,
    by_identity: FxHashMap<usize, StateId>,
    by_value: Py<PyDict>,
    pub graph: Graph,
    handlers: Vec<Option<Py<Handler>>>,
    pub hub: Option<Py<PyAny>>,
    observers: Option<Observers>,
    pub support: Py<PyAny>,
    pub total_timeout: Option<f64>,
    /// The checkpoint store, if any, and whether it has the raw-row fast path.
    pub store: Option<Py<PyAny>>,
    pub fast_store: bool,
    pub version: u32,
    pub compensation_budget: Option<f64>,
}

impl Plan {
    /// The state id of `value`: by identity first (enum members, interned strings), then by
    /// equality.
    #[inline]
    pub fn lookup(&self, value: &Bound<'_, PyAny>) -> Option<StateId> {
        if let Some(&id) = self.by_identity.get(&(value.as_ptr() as usize)) {
            return Some(id);
        }
        self.lookup_by_value(value)
    }

    #[cold]
    fn lookup_by_value(&self, value: &Bound<'_, PyAny>) -> Option<StateId> {
        let found = self.by_value.bind(value.py()).get_item(value).ok().flatten()?;
        found.extract::<StateId>().ok()
    }

    /// True when some observer implements `hook`.
    #[inline]
    pub fn observes(&self, hook: Hook) -> bool {
        self.observers.as_ref().is_some_and(|o| !o.targets[hook as usize].is_empty())
    }

    /// Calls every observer method implementing `hook`; one that raises is logged on the
    /// `cano` logger and ignored.
    pub fn notify<'py, A>(&self, py: Python<'py>, hook: Hook, args: A)
    where
        A: IntoPyObject<'py, Target = PyTuple>,
    {
        let Some(obs) = &self.observers else { return };
        let targets = &obs.targets[hook as usize];
        if targets.is_empty() {
            return;
        }
        let Ok(args) = args.into_pyobject(py) else { return };
        let args = pyo3::BoundObject::into_bound(args);
        for target in targets {
            if let Err(e) = target.bind(py).call(&args, None) {
                let reported = obs
                    .hub
                    .bind(py)
                    .call_method1(pyo3::intern!(py, "report"), (hook.name(), e.value(py)));
                if let Err(e) = reported {
                    e.write_unraisable(py, None);
                }
            }
        }
    }

    /// The handler of state `s` (present for every dispatchable state).
    #[inline]
    pub fn handler(&self, s: StateId) -> Option<&Py<Handler>> {
        self.handlers.get(s as usize).and_then(Option::as_ref)
    }

    /// The label of state `s`.
    pub fn label<'py>(&self, py: Python<'py>, s: StateId) -> Bound<'py, PyString> {
        self.labels[s as usize].bind(py).clone()
    }

    /// Labels of `path`, as a Python list.
    pub fn labels_of<'py>(&self, py: Python<'py>, path: &[StateId]) -> Bound<'py, PyList> {
        PyList::new(py, path.iter().map(|&s| self.labels[s as usize].bind(py)))
            .unwrap_or_else(|_| PyList::empty(py))
    }

    /// Renders a core error with labels instead of ids.
    pub fn describe(&self, py: Python<'_>, err: &CoreError) -> String {
        let l = |s: StateId| {
            self.labels.get(s as usize).map_or_else(|| format!("#{s}"), |l| l.bind(py).to_string())
        };
        match err {
            CoreError::InitialNotRegistered(s) => {
                format!("initial state {} is neither registered nor an exit state", l(*s))
            }
            CoreError::UnknownDeclaredTarget { from, to } => format!(
                "state {} declares target {} (to=...), which is neither registered nor an exit \
                 state",
                l(*from),
                l(*to)
            ),
            CoreError::UndeclaredTransition { from, to } => format!(
                "state {} returned {}, which is not among the targets it declared with to=",
                l(*from),
                l(*to)
            ),
            CoreError::UnknownState(s) => {
                format!("state {} is neither registered nor an exit state", l(*s))
            }
            other => other.to_string(),
        }
    }
}

#[pymethods]
impl Plan {
    #[new]
    #[pyo3(signature = (states, labels, exits, handlers, *, support, hub=None,
                        max_transitions=None, total_timeout=None, store=None, version=0,
                        compensation_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        states: Vec<Py<PyAny>>,
        labels: Vec<Py<PyString>>,
        exits: Vec<StateId>,
        handlers: Vec<(StateId, Py<Handler>)>,
        support: Py<PyAny>,
        hub: Option<Py<PyAny>>,
        max_transitions: Option<u64>,
        total_timeout: Option<f64>,
        store: Option<Py<PyAny>>,
        version: u32,
        compensation_timeout: Option<f64>,
    ) -> PyResult<Self> {
        if labels.len() != states.len() {
            return Err(errors::configuration(py, "one label per state is required".to_owned()));
        }
        let n = states.len();
        let by_value = PyDict::new(py);
        let mut by_identity = FxHashMap::default();
        for (i, s) in states.iter().enumerate() {
            by_identity.insert(s.as_ptr() as usize, i as StateId);
            by_value.set_item(s.bind(py), i)?;
        }
        let mut graph = Graph::new(n);
        graph.set_max_transitions(max_transitions);
        for &e in &exits {
            if e as usize >= n {
                return Err(errors::configuration(py, format!("exit state #{e} out of range")));
            }
            graph.set_exit(e);
        }
        let mut table: Vec<Option<Py<Handler>>> = (0..n).map(|_| None).collect();
        for (s, h) in handlers {
            if s as usize >= n || h.get().targets.iter().flatten().any(|&t| t as usize >= n) {
                return Err(errors::configuration(py, format!("handler state #{s} out of range")));
            }
            graph.set_handler(s, h.get().kind, h.get().targets.clone());
            table[s as usize] = Some(h);
        }
        let fast_store = store.as_ref().is_some_and(|st| {
            st.bind(py).hasattr(pyo3::intern!(py, "_append_raw")).unwrap_or(false)
        });
        let secs =
            |v: f64| std::time::Duration::try_from_secs_f64(v).unwrap_or(std::time::Duration::MAX);
        let compensation_budget = cano_core::deadline::compensation_budget(
            total_timeout.map(secs),
            compensation_timeout.map(secs),
        )
        .map(|d| d.as_secs_f64());
        let observers = match &hub {
            Some(h) => {
                let mut targets = Vec::with_capacity(Hook::ALL.len());
                for hook in Hook::ALL {
                    let found =
                        h.bind(py).call_method1(pyo3::intern!(py, "targets"), (hook.name(),))?;
                    targets.push(found.extract::<Vec<Py<PyAny>>>()?);
                }
                Some(Observers { targets, hub: h.clone_ref(py) })
            }
            None => None,
        };
        let plan = Plan {
            states,
            labels,
            by_identity,
            by_value: by_value.unbind(),
            graph,
            handlers: table,
            hub,
            observers,
            support,
            total_timeout,
            store,
            fast_store,
            version,
            compensation_budget,
        };
        if let Err(e) = plan.graph.validate() {
            return Err(errors::configuration(py, plan.describe(py, &e)));
        }
        Ok(plan)
    }

    /// The id of `state`, or `None` when it is not part of this workflow.
    fn state_id(&self, state: &Bound<'_, PyAny>) -> Option<StateId> {
        self.lookup(state)
    }

    /// Starts a run at `initial`. Problems with the initial state surface when the run is
    /// first awaited, like every other validation error.
    #[pyo3(signature = (initial, resources, lease=None, token=None, workflow_id=None))]
    fn start(
        slf: &Bound<'_, Self>,
        initial: &Bound<'_, PyAny>,
        resources: Py<PyAny>,
        lease: Option<Py<PyAny>>,
        token: Option<Py<CancellationToken>>,
        workflow_id: Option<Py<PyString>>,
    ) -> Run {
        let py = slf.py();
        let plan = slf.get();
        let verdict = match plan.lookup(initial) {
            Some(id) => {
                plan.graph.check_initial(id).map(|()| id).map_err(|e| plan.describe(py, &e))
            }
            None => {
                let label = plan
                    .support
                    .bind(py)
                    .call_method1(pyo3::intern!(py, "label"), (initial,))
                    .and_then(|l| l.extract::<String>())
                    .unwrap_or_else(|_| initial.repr().map(|r| r.to_string()).unwrap_or_default());
                Err(format!("initial state {label} is neither registered nor an exit state"))
            }
        };
        let origin = Origin { workflow_id, ..Origin::default() };
        match verdict {
            Ok(id) => Run::new(slf.clone().unbind(), id, resources, lease, token, origin),
            Err(message) => {
                let mut run = Run::new(slf.clone().unbind(), 0, resources, None, None, origin);
                run.fail_at_start(py, errors::configuration(py, message));
                run
            }
        }
    }

    /// Resumes a run at `state` (already validated by the caller from the log).
    #[pyo3(signature = (state, resources, lease, token, workflow_id, sequence, path, cursors, stack))]
    #[allow(clippy::too_many_arguments)]
    fn resume(
        slf: &Bound<'_, Self>,
        state: StateId,
        resources: Py<PyAny>,
        lease: Option<Py<PyAny>>,
        token: Option<Py<CancellationToken>>,
        workflow_id: Py<PyString>,
        sequence: u64,
        path: Vec<StateId>,
        cursors: Vec<(StateId, Py<PyAny>)>,
        stack: Vec<(Py<PyString>, Py<PyBytes>)>,
    ) -> PyResult<Run> {
        let py = slf.py();
        let plan = slf.get();
        if plan.graph.check_initial(state).is_err()
            || path.iter().any(|&s| s as usize >= plan.states.len())
        {
            let shown = plan
                .labels
                .get(state as usize)
                .map_or_else(|| format!("#{state}"), |l| l.bind(py).to_string());
            return Err(errors::configuration(
                py,
                format!(
                    "cannot resume at state {shown}: it is neither registered nor an exit state"
                ),
            ));
        }
        let origin = Origin {
            workflow_id: Some(workflow_id),
            sequence,
            path,
            cursors,
            stack,
            resumed: true,
        };
        Ok(Run::new(slf.clone().unbind(), state, resources, lease, token, origin))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for s in &self.states {
            visit.call(s)?;
        }
        visit.call(&self.by_value)?;
        for h in self.handlers.iter().flatten() {
            visit.call(h)?;
        }
        if let Some(h) = &self.hub {
            visit.call(h)?;
        }
        if let Some(obs) = &self.observers {
            visit.call(&obs.hub)?;
            for t in obs.targets.iter().flatten() {
                visit.call(t)?;
            }
        }
        if let Some(st) = &self.store {
            visit.call(st)?;
        }
        visit.call(&self.support)
    }
}
