//! What a run writes to its checkpoint log, and the saga stack it unwinds on failure.
//!
//! - Entering any state but a router appends a state-entry row *before* its task runs;
//!   the run waits until the store says the row is durable.
//! - A stepped task's `More(cursor)` appends a cursor row before the next step.
//! - A compensatable task's success appends a compensation row with its output and pushes
//!   the output on the stack; a later failure drains the stack last-first (`cano._saga`).
//! - Reaching an exit state, or rolling back cleanly, clears the log; any other failure
//!   keeps it, so the run can be inspected and resumed.

use super::{After, Phase, Run};
use crate::workflow::{Handler, Hook, Plan};
use cano_core::fsm::StateId;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Row kinds, as `cano.store.RowKind` values.
const ROW_STATE_ENTRY: u8 = 0;
const ROW_COMPENSATION: u8 = 1;
const ROW_STEP_CURSOR: u8 = 2;

static ROW: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ROW_KIND: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MORE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DONE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

impl Run {
    /// Appends the state-entry row of the current state, then does `after`.
    pub(super) fn save_entry(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        handler: Option<&Py<Handler>>,
        after: After,
    ) {
        let py = slf.py();
        let task_id = match handler {
            Some(h) => h.get().name.bind(py).clone(),
            None => PyString::new(py, ""),
        };
        self.save_row(slf, plan, ROW_STATE_ENTRY, task_id, None, after);
    }

    fn save_row(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        kind: u8,
        task_id: Bound<'_, PyString>,
        blob: Option<Bound<'_, PyBytes>>,
        after: After,
    ) {
        let py = slf.py();
        let (Some(store), Some(id)) = (&plan.store, &self.workflow_id) else {
            return self.saved(slf, after);
        };
        let store = store.bind(py);
        let label = plan.label(py, self.cursor.state());
        let seq = self.sequence.load(Ordering::Relaxed);
        let made = if plan.fast_store {
            store.call_method1(
                intern!(py, "_append_raw"),
                (id.bind(py), seq, label, task_id, kind, blob, plan.version),
            )
        } else {
            ROW_KIND
                .import(py, "cano.store", "RowKind")
                .and_then(|k| k.call1((kind,)))
                .and_then(|k| {
                    ROW.import(py, "cano.store", "CheckpointRow")?.call1((
                        id.bind(py),
                        seq,
                        label,
                        task_id,
                        k,
                        blob,
                        plan.version,
                    ))
                })
                .and_then(|row| store.call_method1(intern!(py, "append"), (row,)))
        };
        if let Err(e) = made.and_then(|aw| self.install(py, Phase::Saving(after), aw)) {
            self.save_failed(slf, e);
        }
    }

    /// The row is durable: report it and carry on.
    pub(super) fn saved(&mut self, slf: &Bound<'_, Self>, after: After) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        if let Some(id) = &self.workflow_id {
            plan.notify(py, Hook::Checkpoint, (id.bind(py), self.sequence.load(Ordering::Relaxed)));
        }
        if plan.store.is_some() && self.workflow_id.is_some() {
            self.sequence.fetch_add(1, Ordering::Relaxed);
        }
        match after {
            After::Dispatch => self.dispatch(slf, plan),
            After::Exit => {
                let state = plan.states[self.cursor.state() as usize].clone_ref(py);
                self.clear_log(py, Ok(state));
            }
            After::Step => self.next_step(slf, plan),
            After::Move(next) => self.advance(slf, plan, next),
        }
    }

    /// The store refused or failed the append: the run fails, its log stays as it was.
    pub(super) fn save_failed(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        if super::is_cancel_error(py, &err) {
            // Cancelled from outside while the row was being written: the log keeps what
            // the store committed; the cancellation propagates.
            self.notify_cancelled(py, plan);
            return self.fail(slf, err);
        }
        let id = self.workflow_id.as_ref().map(|i| i.bind(py).to_string()).unwrap_or_default();
        let msg = format!(
            "cannot append checkpoint row {} of workflow {id:?} in state {}",
            self.sequence.load(Ordering::Relaxed),
            plan.label(py, self.cursor.state())
        );
        let e = self.error(py, plan, "CheckpointError", msg, Some(err), None);
        self.fail(slf, e);
    }

    // ----- stepped tasks ----------------------------------------------------------------

    /// The cursor a resumed run left for stepped state `s` (consumed on first entry).
    pub(super) fn take_resume_cursor(&mut self, s: StateId) -> Option<Py<PyAny>> {
        let i = self.resume_cursors.iter().position(|(state, _)| *state == s)?;
        Some(self.resume_cursors.swap_remove(i).1)
    }

    /// Interprets a step's result: `Some(state)` for `Done`; `None` when the loop goes on
    /// (`More`) or the run failed.
    pub(super) fn stepped_outcome<'py>(
        &mut self,
        slf: &Bound<'py, Self>,
        plan: &Plan,
        value: Bound<'py, PyAny>,
    ) -> Option<Bound<'py, PyAny>> {
        let py = slf.py();
        let is = |cell: &'static PyOnceLock<Py<PyType>>, name: &str| {
            cell.import(py, "cano.tasks", name).is_ok_and(|t| value.is_instance(t).unwrap_or(false))
        };
        if is(&MORE, "More") {
            let cursor = match value.getattr(intern!(py, "cursor")) {
                Ok(c) => c,
                Err(e) => {
                    self.fail(slf, e);
                    return None;
                }
            };
            self.step_cursor = Some(cursor.clone().unbind());
            if plan.store.is_some() && self.workflow_id.is_some() {
                match self.encode(py, plan, &cursor, "cursor") {
                    Ok(blob) => {
                        let name = self.task_name_str(py, plan);
                        self.save_row(slf, plan, ROW_STEP_CURSOR, name, Some(blob), After::Step);
                    }
                    Err(e) => {
                        self.task_failed_event(py, plan, &e);
                        self.fail(slf, e);
                    }
                }
            } else {
                self.next_step(slf, plan);
            }
            return None;
        }
        if is(&DONE, "Done") {
            self.step_cursor = None;
            return match value.getattr(intern!(py, "state")) {
                Ok(state) => Some(state),
                Err(e) => {
                    self.fail(slf, e);
                    None
                }
            };
        }
        let msg = format!(
            "stepped task '{}' in state {} returned {}; expected More(cursor) or Done(state)",
            self.task_name(py, plan),
            plan.label(py, self.cursor.state()),
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        );
        let e = self.error(py, plan, "WorkflowError", msg, None, None);
        self.task_failed_event(py, plan, &e);
        self.fail(slf, e);
        None
    }

    /// Runs the next step with a fresh retry budget.
    fn next_step(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
        let py = slf.py();
        if self.token.as_ref().is_some_and(|t| t.get().fired()) || self.signals != 0 {
            // Cancelled or timed out between steps: stop here, the cursor is saved.
            return self.enter_interrupted(slf, plan);
        }
        self.attempt = 1;
        match self.handler(plan).map(|h| h.bind(py).clone()) {
            Some(h) => self.start_attempt(slf, plan, h.get()),
            None => self.end(py, Err(pyo3::exceptions::PyRuntimeError::new_err("handler missing"))),
        }
    }

    #[cold]
    fn enter_interrupted(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
        let py = slf.py();
        let e = if self.signals & super::SIG_TOTAL != 0 {
            self.total_timeout_error(py, plan, true)
        } else {
            let e = self.cancel_error(py, plan);
            self.task_failed_event(py, plan, &e);
            self.notify_cancelled(py, plan);
            e
        };
        self.fail(slf, e);
    }

    // ----- sagas ------------------------------------------------------------------------

    /// A compensatable task returned `(next_state, output)`: push the output, log it, move.
    pub(super) fn compensatable_outcome(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        value: Bound<'_, PyAny>,
    ) {
        let py = slf.py();
        let pair = value.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
        let Some(pair) = pair else {
            let msg = format!(
                "compensatable task '{}' in state {} returned {}; expected (next_state, output)",
                self.task_name(py, plan),
                plan.label(py, self.cursor.state()),
                value.repr().map(|r| r.to_string()).unwrap_or_default()
            );
            let e = self.error(py, plan, "WorkflowError", msg, None, None);
            self.task_failed_event(py, plan, &e);
            return self.fail(slf, e);
        };
        let (state, output) = match (pair.get_item(0), pair.get_item(1)) {
            (Ok(s), Ok(o)) => (s, o),
            (Err(e), _) | (_, Err(e)) => return self.fail(slf, e),
        };
        let next = match plan.lookup(&state) {
            Some(id) => Ok(id),
            None => self.resolve_slow(py, plan, &state),
        };
        let blob = next.and_then(|next| Ok((next, self.encode(py, plan, &output, "output")?)));
        let (next, blob) = match blob {
            Ok(v) => v,
            Err(e) => {
                self.task_failed_event(py, plan, &e);
                return self.fail(slf, e);
            }
        };
        let name = self.task_name_str(py, plan);
        self.stack.push((name.clone().unbind(), blob.clone().unbind()));
        self.task_succeeded_event(py, plan);
        if plan.store.is_some() && self.workflow_id.is_some() {
            self.save_row(slf, plan, ROW_COMPENSATION, name, Some(blob), After::Move(next));
        } else {
            self.advance(slf, plan, next);
        }
    }

    /// Starts undoing the stack because the run failed with `err`.
    pub(super) fn start_drain(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        self.disarm(py);
        self.failure = Some(err.into_value(py).into_any());
        self.phase = Phase::Draining;
        self.resume_drain(py);
    }

    pub(super) fn resume_drain(&mut self, py: Python<'_>) {
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let entries = self.stack.drain(..).map(|(name, blob)| {
            PyTuple::new(py, [name.into_any(), blob.into_any()]).map(|t| t.unbind())
        });
        let entries: PyResult<Vec<_>> = entries.collect();
        let started = entries.and_then(|entries| {
            let stack = PyList::new(py, entries)?;
            plan.support.bind(py).call_method1(
                intern!(py, "drain"),
                (stack, self.resources.bind(py), plan.compensation_budget),
            )
        });
        if let Err(e) = started.and_then(|coro| self.install(py, Phase::Draining, coro)) {
            let outcome = match self.failure.take() {
                Some(original) => {
                    e.write_unraisable(py, None);
                    Err(PyErr::from_value(original.into_bound(py)))
                }
                None => Err(e),
            };
            self.end(py, outcome);
        }
    }

    /// The drain finished: `errors` lists what could not be undone.
    pub(super) fn drained(&mut self, slf: &Bound<'_, Self>, errors: Bound<'_, PyAny>) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let Some(original) = self.failure.take() else {
            return self
                .end(py, Err(pyo3::exceptions::PyRuntimeError::new_err("drain lost its error")));
        };
        let errors: Vec<Bound<'_, PyAny>> = errors.extract().unwrap_or_default();
        if errors.is_empty() {
            // A clean rollback: nothing is left to resume.
            return self.clear_log(py, Err(original));
        }
        let all = PyList::empty(py);
        let _ = all.append(original.bind(py));
        for e in &errors {
            let _ = all.append(e);
        }
        let msg = format!("compensation failed ({} error(s)) after the run failed", errors.len());
        let extra = pyo3::types::PyDict::new(py);
        let _ = extra.set_item("errors", all);
        let cause = PyErr::from_value(original.into_bound(py));
        let e = self.error(py, plan, "CompensationFailedError", msg, Some(cause), Some(extra));
        self.end(py, Err(e));
    }

    // ----- clearing ---------------------------------------------------------------------

    /// Clears the log (when there is one), then ends with `outcome`.
    pub(super) fn clear_log(&mut self, py: Python<'_>, outcome: Result<Py<PyAny>, Py<PyAny>>) {
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let (Some(store), Some(id)) = (&plan.store, &self.workflow_id) else {
            return self.end(py, outcome.map_err(|o| PyErr::from_value(o.into_bound(py))));
        };
        self.outcome = Some(outcome);
        let cleared = store.bind(py).call_method1(intern!(py, "clear"), (id.bind(py),));
        if let Err(e) = cleared.and_then(|aw| self.install(py, Phase::Clearing, aw)) {
            self.clear_failed(py, e);
        }
    }

    pub(super) fn cleared(&mut self, py: Python<'_>) {
        let outcome = self.outcome.take().unwrap_or_else(|| Ok(py.None()));
        self.end(py, outcome.map_err(|o| PyErr::from_value(o.into_bound(py))));
    }

    /// Clearing is best effort: report it and keep the run's outcome.
    pub(super) fn clear_failed(&mut self, py: Python<'_>, err: PyErr) {
        if super::is_cancel_error(py, &err) {
            // Cancelled from outside while clearing: the run ends cancelled, log kept.
            self.outcome = None;
            return self.end(py, Err(err));
        }
        let plan_ref = self.plan.bind(py).clone();
        if let Some(id) = &self.workflow_id {
            plan_ref.get().notify(py, Hook::ClearFailed, (id.bind(py), err.value(py)));
        }
        self.cleared(py);
    }

    // ----- helpers ----------------------------------------------------------------------

    fn encode<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        value: &Bound<'py, PyAny>,
        what: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let task = self.task_name(py, plan);
        let bytes = plan
            .support
            .bind(py)
            .call_method1(intern!(py, "encode"), (value, task, what))
            .map_err(|e| self.contextualise(py, plan, e))?;
        Ok(bytes.cast_into::<PyBytes>()?)
    }

    fn task_name_str<'py>(&self, py: Python<'py>, plan: &Plan) -> Bound<'py, PyString> {
        match self.handler(plan) {
            Some(h) => h.get().name.bind(py).clone(),
            None => PyString::new(py, ""),
        }
    }
}

/// The `commit(cursor)` callable handed to a stream task's driver: appends a cursor row at
/// the run's next sequence number (shared with the run) and returns an awaitable that
/// completes once the row is durable. Without a store it does nothing.
#[pyclass(frozen, module = "cano._core", name = "_Committer")]
pub struct Committer {
    plan: Py<Plan>,
    workflow_id: Option<Py<PyString>>,
    state: StateId,
    task_id: Py<PyString>,
    sequence: Arc<AtomicU64>,
}

#[pymethods]
impl Committer {
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        cursor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let plan = self.plan.get();
        let support = plan.support.bind(py);
        let (Some(store), Some(id)) = (&plan.store, &self.workflow_id) else {
            return support.call_method0(intern!(py, "nothing"));
        };
        let blob = support
            .call_method1(intern!(py, "encode"), (cursor, self.task_id.bind(py), "cursor"))?;
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        support.call_method1(
            intern!(py, "commit_cursor"),
            (
                store.bind(py),
                plan.fast_store,
                id.bind(py),
                seq,
                plan.label(py, self.state),
                self.task_id.bind(py),
                blob,
                plan.version,
                plan.hub.as_ref().map(|h| h.bind(py)),
            ),
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.plan)
    }
}

impl Run {
    /// The commit callable for the stream task of the current state.
    pub(super) fn committer(&self, py: Python<'_>, plan: &Plan) -> PyResult<Py<Committer>> {
        Py::new(
            py,
            Committer {
                plan: self.plan.clone_ref(py),
                workflow_id: self.workflow_id.as_ref().map(|i| i.clone_ref(py)),
                state: self.cursor.state(),
                task_id: self.task_name_str(py, plan).unbind(),
                sequence: self.sequence.clone(),
            },
        )
    }
}
