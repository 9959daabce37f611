//! `Plan`: a compiled, immutable snapshot of a workflow — the state table, the handlers and
//! the run-wide settings. `cano.Workflow` builds one per definition change; every run holds
//! the snapshot it started with.
//!
//! - [`handler`]: [`Handler`] and [`SplitSpec`], one per state;
//! - [`observers`]: the observer hooks, resolved once per plan.

mod handler;
mod observers;

pub use handler::{check_split, Handler};
pub use observers::Hook;

use crate::errors;
use crate::gc_traverse;
use cano_core::{Graph, GraphError, StateId};
use observers::Observers;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use rustc_hash::FxHashMap;

/// Where a plan's runs write their checkpoint rows: the store, with the methods the
/// dispatcher calls resolved once per plan.
pub struct StoreTarget {
    pub store: Py<PyAny>,
    /// The embedded store, appended to directly from Rust (see `crate::store::RunLog`).
    pub redb: Option<Py<crate::store::RedbCheckpointStore>>,
    /// `store.append` (a `CheckpointRow`), or `store._append_raw` (the row's fields).
    pub append: Py<PyAny>,
    pub raw: bool,
    pub clear: Py<PyAny>,
    pub load_run: Py<PyAny>,
    /// `store.run_started` and `store.run_ended` when the store keeps run records
    /// (`cano.runs.RunRegistry`).
    pub registry: Option<(Py<PyAny>, Py<PyAny>)>,
}

gc_traverse!(StoreTarget { store, redb, append, clear, load_run, registry });

/// The compiled workflow. Frozen: runs read it without borrowing.
#[pyclass(frozen, module = "cano._core", name = "Plan")]
pub struct Plan {
    pub states: Vec<Py<PyAny>>,
    pub labels: Vec<Py<PyString>>,
    by_identity: FxHashMap<usize, StateId>,
    by_value: Py<PyDict>,
    by_label: FxHashMap<String, StateId>,
    pub graph: Graph,
    handlers: Vec<Option<Py<Handler>>>,
    observers: Option<Observers>,
    /// Explains a returned value that is not a state (`cano._returns.ReturnCheck`).
    pub returns: Py<PyAny>,
    /// `{task name: (task, attempt timeout)}` of the compensatable tasks.
    pub compensators: Py<PyAny>,
    pub total_timeout: Option<f64>,
    pub store: Option<StoreTarget>,
    pub version: u32,
    pub compensation_budget: Option<f64>,
    /// `Workflow(name=...)`: what run records and workers know the workflow by.
    pub name: Option<Py<PyString>>,
}

gc_traverse!(Plan {
    states,
    labels,
    by_value,
    handlers,
    observers,
    returns,
    compensators,
    store,
    name
});

impl Plan {
    /// The state id of `value`: by identity first (enum members, interned strings), then by
    /// equality — except that a bool never equals a state that is not a bool (`True` is
    /// not state `1`).
    #[inline]
    pub fn lookup(&self, value: &Bound<'_, PyAny>) -> Option<StateId> {
        if let Some(&id) = self.by_identity.get(&(value.as_ptr() as usize)) {
            return Some(id);
        }
        self.lookup_by_value(value)
    }

    #[cold]
    fn lookup_by_value(&self, value: &Bound<'_, PyAny>) -> Option<StateId> {
        let py = value.py();
        if value.is_instance_of::<PyBool>() {
            // True and False are singletons: a bool state was found by identity above.
            return None;
        }
        let found = self.by_value.bind(py).get_item(value).ok().flatten()?;
        let id = found.extract::<StateId>().ok()?;
        if self.states[id as usize].bind(py).is_instance_of::<PyBool>() {
            return None;
        }
        Some(id)
    }

    /// The id of the state labelled `label`.
    pub fn by_label(&self, label: &str) -> Option<StateId> {
        self.by_label.get(label).copied()
    }

    /// True when some observer implements `hook`.
    #[inline]
    pub fn observes(&self, hook: Hook) -> bool {
        self.observers.as_ref().is_some_and(|o| o.observes(hook))
    }

    /// Calls every observer method implementing `hook`.
    #[inline]
    pub fn notify<'py, A>(&self, py: Python<'py>, hook: Hook, args: A)
    where
        A: IntoPyObject<'py, Target = PyTuple>,
    {
        if let Some(o) = &self.observers {
            o.notify(py, hook, args);
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

    /// The label of `s` as Rust text (or `#id` for an id out of range).
    pub fn label_text(&self, py: Python<'_>, s: StateId) -> String {
        self.labels.get(s as usize).map_or_else(|| format!("#{s}"), |l| l.bind(py).to_string())
    }

    /// Labels of `path`, as a Python list.
    pub fn labels_of<'py>(&self, py: Python<'py>, path: &[StateId]) -> Bound<'py, PyList> {
        PyList::new(py, path.iter().map(|&s| self.labels[s as usize].bind(py)))
            .unwrap_or_else(|_| PyList::empty(py))
    }

    /// Renders a graph error with labels instead of ids.
    pub fn describe(&self, py: Python<'_>, err: &GraphError) -> String {
        let l = |s: StateId| self.label_text(py, s);
        match err {
            GraphError::InitialNotRegistered(s) => {
                format!("initial state {} is neither registered nor an exit state", l(*s))
            }
            GraphError::UnknownDeclaredTarget { from, to } => format!(
                "state {} declares target {} (to=...), which is neither registered nor an exit \
                 state",
                l(*from),
                l(*to)
            ),
            GraphError::UndeclaredTransition { from, to } => format!(
                "state {} returned {}, which is not among the targets it declared with to=",
                l(*from),
                l(*to)
            ),
            GraphError::UnknownState(s) => {
                format!("state {} is neither registered nor an exit state", l(*s))
            }
            other => other.to_string(),
        }
    }
}

fn store_target(store: Option<Py<PyAny>>, py: Python<'_>) -> PyResult<Option<StoreTarget>> {
    let Some(store) = store else { return Ok(None) };
    let s = store.bind(py);
    let raw = s.hasattr(pyo3::intern!(py, "_append_raw"))?;
    let append = if raw {
        s.getattr(pyo3::intern!(py, "_append_raw"))?
    } else {
        s.getattr(pyo3::intern!(py, "append"))?
    };
    let redb = s.cast::<crate::store::RedbCheckpointStore>().ok().map(|r| r.clone().unbind());
    let method = |name: &Bound<'_, PyString>| -> Option<Py<PyAny>> {
        s.getattr(name).ok().filter(|m| m.is_callable()).map(Bound::unbind)
    };
    let registry =
        method(pyo3::intern!(py, "run_started")).zip(method(pyo3::intern!(py, "run_ended")));
    Ok(Some(StoreTarget {
        registry,
        redb,
        append: append.unbind(),
        raw,
        clear: s.getattr(pyo3::intern!(py, "clear"))?.unbind(),
        load_run: s.getattr(pyo3::intern!(py, "load_run"))?.unbind(),
        store,
    }))
}

#[pymethods]
impl Plan {
    #[new]
    #[pyo3(signature = (states, labels, exits, handlers, *, returns, compensators, hub=None,
                        max_transitions=None, total_timeout=None, store=None, version=0,
                        compensation_timeout=None, name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        states: Vec<Py<PyAny>>,
        labels: Vec<Py<PyString>>,
        exits: Vec<StateId>,
        handlers: Vec<(StateId, Py<Handler>)>,
        returns: Py<PyAny>,
        compensators: Py<PyAny>,
        hub: Option<Py<PyAny>>,
        max_transitions: Option<u64>,
        total_timeout: Option<f64>,
        store: Option<Py<PyAny>>,
        version: u32,
        compensation_timeout: Option<f64>,
        name: Option<Py<PyString>>,
    ) -> PyResult<Self> {
        if labels.len() != states.len() {
            return Err(errors::configuration(py, "one label per state is required".to_owned()));
        }
        let n = states.len();
        let by_value = PyDict::new(py);
        let mut by_identity = FxHashMap::default();
        let mut by_label = FxHashMap::default();
        for (i, s) in states.iter().enumerate() {
            by_identity.insert(s.as_ptr() as usize, i as StateId);
            by_value.set_item(s.bind(py), i)?;
            by_label.insert(labels[i].bind(py).to_string(), i as StateId);
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
        let secs =
            |v: f64| std::time::Duration::try_from_secs_f64(v).unwrap_or(std::time::Duration::MAX);
        let compensation_budget =
            cano_core::compensation_budget(total_timeout.map(secs), compensation_timeout.map(secs))
                .map(|d| d.as_secs_f64());
        let observers = match &hub {
            Some(h) => Some(Observers::resolve(h.bind(py))?),
            None => None,
        };
        let plan = Plan {
            states,
            labels,
            by_identity,
            by_value: by_value.unbind(),
            by_label,
            graph,
            handlers: table,
            observers,
            returns,
            compensators,
            total_timeout,
            store: store_target(store, py)?,
            version,
            compensation_budget,
            name,
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

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        crate::gc::PyGcTraverse::py_gc_traverse(self, &visit)
    }
}
