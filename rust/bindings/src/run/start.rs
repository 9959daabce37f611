//! Making a run: a fresh start at an initial state, or a resume that first loads the
//! checkpoint log and asks `cano_core::resume_point` where to continue.

use super::journal::Journal;
use super::{Phase, Run};
use crate::cancel::CancellationToken;
use crate::errors::{self, EngineError};
use crate::plan::{Hook, Plan};
use cano_core::{resume_point, Cursor, ResumeError, Row, RowKind};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};

static LABEL_OF: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static DECODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Starts a run of `plan` at `initial`. Problems with the initial state surface when the
/// run is first awaited, like every other validation error.
#[pyfunction]
#[pyo3(signature = (plan, initial, resources, lease=None, token=None, workflow_id=None))]
pub fn start_run(
    plan: &Bound<'_, Plan>,
    initial: &Bound<'_, PyAny>,
    resources: Py<PyAny>,
    lease: Option<Py<PyAny>>,
    token: Option<Py<CancellationToken>>,
    workflow_id: Option<Py<PyString>>,
) -> Run {
    let py = plan.py();
    let p = plan.get();
    let label_of = || {
        LABEL_OF
            .import(py, "cano._registration", "state_label")
            .and_then(|f| f.call1((initial,)))
            .and_then(|l| l.extract::<String>())
            .unwrap_or_else(|_| initial.repr().map(|r| r.to_string()).unwrap_or_default())
    };
    let verdict = match p.lookup(initial) {
        Some(id) => p.graph.check_initial(id).map(|()| id).map_err(|e| p.describe(py, &e)),
        None => {
            Err(format!("initial state {} is neither registered nor an exit state", label_of()))
        }
    };
    let mut run = match verdict {
        Ok(id) => Run::new(plan.clone().unbind(), Cursor::new(id), resources, lease, token),
        Err(message) => {
            let mut run = Run::new(plan.clone().unbind(), Cursor::new(0), resources, None, None);
            // The refused state is the failing one; no state was entered.
            let ctx = errors::Context {
                state: Some(pyo3::types::PyString::new(py, &label_of()).into_any()),
                attempt: Some(0),
                path: Some(pyo3::types::PyList::empty(py)),
            };
            run.fail_at_start(py, EngineError::Configuration.into_py(py, message, ctx, None));
            return run;
        }
    };
    run.journal = workflow_id.as_ref().and_then(|id| Journal::new(py, p, id.clone_ref(py), 0));
    run.workflow_id = workflow_id;
    run
}

/// Resumes the run `workflow_id` from its checkpoint log. The first step loads the log
/// (before any resource is set up); errors surface when the run is first awaited.
#[pyfunction]
#[pyo3(signature = (plan, workflow_id, resources, lease=None, token=None))]
pub fn resume_run(
    plan: &Bound<'_, Plan>,
    workflow_id: Py<PyString>,
    resources: Py<PyAny>,
    lease: Option<Py<PyAny>>,
    token: Option<Py<CancellationToken>>,
) -> Run {
    let py = plan.py();
    let p = plan.get();
    let mut run = Run::new(plan.clone().unbind(), Cursor::new(0), resources, lease, token);
    run.resumed = true;
    match Journal::new(py, p, workflow_id.clone_ref(py), 0) {
        Some(mut journal) => {
            journal.loaded = false;
            run.journal = Some(journal);
        }
        None => {
            let msg = format!(
                "resume_from({}) requires a checkpoint store (call with_checkpoint_store)",
                errors::quoted(&workflow_id.bind(py).to_string())
            );
            run.fail_at_start(py, errors::configuration(py, msg));
        }
    }
    run.workflow_id = Some(workflow_id);
    run
}

impl Run {
    /// First step of a resumed run: read its log.
    pub(super) fn load_log(&mut self, py: Python<'_>) {
        let plan_ref = self.plan.bind(py).clone();
        let loaded = match (&plan_ref.get().store, &self.journal) {
            (Some(store), Some(journal)) => {
                store.load_run.bind(py).call1((journal.workflow_id.bind(py),))
            }
            _ => return self.end(py, Err(errors::checkpoint(py, "no store".to_owned()))),
        };
        if let Err(e) = loaded.and_then(|aw| self.install(Phase::Loading, aw)) {
            self.load_failed(py, e);
        }
    }

    /// The store could not read the log.
    pub(super) fn load_failed(&mut self, py: Python<'_>, err: PyErr) {
        if super::is_cancel_error(py, &err) || errors::is_cano_error(py, err.value(py)) {
            return self.end(py, Err(err));
        }
        let msg = format!("cannot load checkpoint run {}", self.quoted_id(py));
        let e = EngineError::Checkpoint.into_py(
            py,
            msg,
            self.context(py),
            Some(err.into_value(py).into_bound(py).into_any()),
        );
        self.end(py, Err(e));
    }

    /// The log is read: decide where to resume, then set up and enter that state.
    pub(super) fn loaded(&mut self, slf: &Bound<'_, Self>, rows: Bound<'_, PyAny>) {
        let py = slf.py();
        match self.restore(py, &rows) {
            Ok(()) => {
                if let Some(j) = self.journal.as_mut() {
                    j.loaded = true;
                }
                self.set_up(slf);
            }
            Err(e) => self.end(py, Err(e)),
        }
    }

    /// Applies the resume point of `rows` to this run.
    fn restore(&mut self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let id =
            self.journal.as_ref().map(|j| j.workflow_id.bind(py).to_string()).unwrap_or_default();
        let mut core_rows = to_core_rows(py, &id, rows)
            .map_err(|m| EngineError::Checkpoint.into_py(py, m, self.context(py), None))?;
        let point = match resume_point(&id, &mut core_rows, plan.version) {
            Ok(p) => p,
            Err(e) => return Err(self.resume_error(py, plan, &e)),
        };
        let Some(state) =
            plan.by_label(&point.state).filter(|&s| plan.graph.check_initial(s).is_ok())
        else {
            let msg = format!(
                "checkpoint state {} of {} is not a registered or exit state of this workflow",
                errors::quoted(&point.state),
                errors::quoted(&id)
            );
            return Err(EngineError::Workflow { exceptions: None }.into_py(
                py,
                msg,
                self.context(py),
                None,
            ));
        };
        let mut path = Vec::with_capacity(point.path.len());
        for (sequence, label) in &point.path {
            match plan.by_label(label) {
                Some(s) => path.push(s),
                None => plan.notify(
                    py,
                    Hook::UnknownResumeState,
                    (self.workflow_id.as_ref().map(|i| i.bind(py)), *sequence, label.as_str()),
                ),
            }
        }
        self.cursor = Cursor::resumed(state, path);
        self.reentering = true;
        if let Some(j) = self.journal.as_mut() {
            j.set_sequence(point.next_sequence);
        }
        self.stack = point
            .stack
            .iter()
            .map(|(task, out)| (PyString::new(py, task).unbind(), PyBytes::new(py, out).unbind()))
            .collect();
        if let (Some(blob), Some(h)) = (point.cursor, plan.handler(state)) {
            let h = h.get();
            let cursor_type = h.value_type.as_ref().map_or_else(|| py.None(), |t| t.clone_ref(py));
            let decode = DECODE.import(py, "cano._codec", "decode")?;
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item("task", h.name.bind(py))?;
            kwargs.set_item("what", "cursor")?;
            let value = decode
                .call((PyBytes::new(py, &blob), cursor_type), Some(&kwargs))
                .map_err(|e| self.contextualise(py, plan, e))?;
            self.resume_cursor = Some((state, value.unbind()));
        }
        Ok(())
    }

    #[cold]
    fn resume_error(&self, py: Python<'_>, plan: &Plan, err: &ResumeError) -> PyErr {
        let _ = plan;
        let ctx = self.context(py);
        match err {
            ResumeError::VersionMismatch { stored, expected, workflow_id } => {
                let msg = format!(
                    "checkpoint log of {} was written by workflow version {stored}, this \
                     workflow is version {expected}",
                    errors::quoted(workflow_id)
                );
                EngineError::VersionMismatch { stored: *stored, expected: *expected }
                    .into_py(py, msg, ctx, None)
            }
            ResumeError::NoRows { workflow_id } => {
                let mut msg = format!(
                    "resume_from: no checkpoint rows for workflow id {}",
                    errors::quoted(workflow_id)
                );
                if let Some(place) = self.store_place(py) {
                    msg.push_str(&format!(" in {place}"));
                }
                EngineError::Checkpoint.into_py(py, msg, ctx, None)
            }
            ResumeError::DuplicateSequence { workflow_id, sequence } => {
                let msg = format!(
                    "checkpoint log of {} has two rows at sequence {sequence}: the store returned \
                     a damaged log",
                    errors::quoted(workflow_id)
                );
                EngineError::Checkpoint.into_py(py, msg, ctx, None)
            }
            ResumeError::ForeignRow { workflow_id, other, sequence } => {
                let msg = format!(
                    "checkpoint log of {} holds a row of run {} at sequence {sequence}: the store \
                     returned a damaged log",
                    errors::quoted(workflow_id),
                    errors::quoted(other)
                );
                EngineError::Checkpoint.into_py(py, msg, ctx, None)
            }
        }
    }

    /// Where the store keeps its data, when it says (`store.path`), for messages.
    fn store_place(&self, py: Python<'_>) -> Option<String> {
        let plan = self.plan.get();
        let store = plan.store.as_ref()?.store.bind(py);
        let path = store.getattr(intern!(py, "path")).ok()?;
        if path.is_none() {
            return None;
        }
        let given = path.str().ok()?.to_string();
        // A relative path is named with the directory it was looked up in, too.
        let absolute = py
            .import(intern!(py, "os.path"))
            .and_then(|m| m.call_method1(intern!(py, "abspath"), (&given,)))
            .and_then(|p| p.extract::<String>())
            .ok()
            .filter(|a| *a != given && given != ":memory:");
        Some(match absolute {
            Some(a) => format!("{} ({a})", errors::quoted(&given)),
            None => errors::quoted(&given),
        })
    }
}

/// The rows a store returned, as core rows; a message naming the problem otherwise.
fn to_core_rows(py: Python<'_>, id: &str, rows: &Bound<'_, PyAny>) -> Result<Vec<Row>, String> {
    let bad = |what: String| {
        format!("the checkpoint store returned an invalid log for {}: {what}", errors::quoted(id))
    };
    let iter = rows.try_iter().map_err(|_| bad("load_run() did not return a list".into()))?;
    let mut out = Vec::new();
    for item in iter {
        let r = item.map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| r.getattr(name).map_err(|_| bad(format!("a row has no {name}")));
        let kind_obj = get("kind")?;
        let kind_value = match kind_obj.getattr(intern!(py, "value")) {
            Ok(v) => v,
            Err(_) => kind_obj.clone(),
        };
        let kind = kind_value.extract::<u8>().ok().and_then(RowKind::from_u8).ok_or_else(|| {
            bad(format!(
                "unknown row kind {}",
                kind_obj.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        let sequence = get("sequence")?
            .extract::<u64>()
            .map_err(|_| bad("a row's sequence is not an int >= 0".into()))?;
        let text = |name: &str| -> Result<String, String> {
            get(name)?
                .extract::<String>()
                .map_err(|_| bad(format!("row {sequence}: {name} is not a str")))
        };
        let output = get("output")?;
        let output = if output.is_none() {
            None
        } else {
            Some(
                output
                    .extract::<Vec<u8>>()
                    .map_err(|_| bad(format!("row {sequence}: output is not bytes")))?,
            )
        };
        out.push(Row {
            workflow_id: text("workflow_id")?,
            sequence,
            state: text("state")?,
            task_id: text("task_id")?,
            kind,
            output,
            workflow_version: get("workflow_version")?
                .extract::<u32>()
                .map_err(|_| bad(format!("row {sequence}: workflow_version is not an int >= 0")))?,
        });
    }
    Ok(out)
}
