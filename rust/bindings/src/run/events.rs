//! What a run tells its observers: the start and end of the run, task outcomes and
//! cancellation. Every hook costs one branch when no observer implements it.

use super::Run;
use crate::errors;
use crate::log;
use crate::plan::{Hook, Plan};
use pyo3::prelude::*;
use pyo3::types::PyString;

impl Run {
    /// `on_run_start(workflow_id)`, and `on_resume(workflow_id, sequence)` for a resume.
    pub(super) fn run_started_events(&self, py: Python<'_>, plan: &Plan) {
        let id = self.workflow_id.as_ref().map(|i| i.bind(py));
        if let Some(journal) = &self.journal {
            let label = plan.label(py, self.cursor.state());
            let verb = if self.resumed { "resumed" } else { "started" };
            let wid = journal.workflow_id.bind(py);
            log::record(py, log::INFO, Some(wid.as_any()), label.as_any(), self.attempt, || {
                format!("run {} {verb} in state {label}", errors::quoted(&wid.to_string()))
            });
        }
        plan.notify(py, Hook::RunStart, (id,));
        if self.resumed {
            if let (Some(id), Some(journal)) = (id, &self.journal) {
                plan.notify(py, Hook::Resume, (id, journal.sequence().saturating_sub(1)));
            }
        }
    }

    /// `on_run_finish(final_state_label | None, error | None)`, once per run.
    pub(super) fn finished_event(&self, py: Python<'_>, outcome: Result<&Py<PyAny>, &PyErr>) {
        let plan = self.plan.get();
        if let Some(journal) = &self.journal {
            let label = plan.label(py, self.cursor.state());
            let wid = journal.workflow_id.bind(py);
            let id = errors::quoted(&wid.to_string());
            let (level, text) = match outcome {
                Ok(_) => (log::INFO, format!("run {id} completed in state {label}")),
                Err(e) if errors::is_parked(py, e) => {
                    (log::INFO, format!("run {id} parked in state {label}: {}", e.value(py)))
                }
                Err(e) if errors::is_lease_lost(py, e) => (
                    log::WARNING,
                    format!(
                        "run {id} abandoned in state {label}: its lease went to another worker"
                    ),
                ),
                Err(e) => {
                    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
                    let verb =
                        if kind == "WorkflowCancelledError" { "cancelled" } else { "failed" };
                    (
                        log::INFO,
                        format!("run {id} {verb} in state {label}: {kind}: {}", e.value(py)),
                    )
                }
            };
            log::record(py, level, Some(wid.as_any()), label.as_any(), self.attempt, || text);
        }
        if !plan.observes(Hook::RunFinish) {
            return;
        }
        match outcome {
            Ok(_) => {
                plan.notify(py, Hook::RunFinish, (plan.label(py, self.cursor.state()), py.None()))
            }
            Err(e) => plan.notify(py, Hook::RunFinish, (py.None(), e.value(py))),
        }
    }

    pub(super) fn task_succeeded_event(&self, py: Python<'_>, plan: &Plan) {
        if plan.observes(Hook::TaskSuccess) {
            if let Some(h) = self.handler(plan) {
                plan.notify(py, Hook::TaskSuccess, (h.get().name.bind(py),));
            }
        }
    }

    pub(super) fn task_failed_event(&self, py: Python<'_>, plan: &Plan, err: &PyErr) {
        if plan.observes(Hook::TaskFailure) {
            if let Some(h) = self.handler(plan) {
                plan.notify(py, Hook::TaskFailure, (h.get().name.bind(py), err.value(py)));
            }
        }
    }

    pub(super) fn notify_cancelled(&self, py: Python<'_>, plan: &Plan) {
        plan.notify(py, Hook::Cancelled, (plan.label(py, self.cursor.state()),));
    }

    /// The current task's name as text (empty for an exit state).
    pub(super) fn task_name(&self, py: Python<'_>, plan: &Plan) -> String {
        self.handler(plan).map(|h| h.get().name.bind(py).to_string()).unwrap_or_default()
    }

    /// The current task's name as a Python string.
    pub(super) fn task_name_str<'py>(&self, py: Python<'py>, plan: &Plan) -> Bound<'py, PyString> {
        match self.handler(plan) {
            Some(h) => h.get().name.bind(py).clone(),
            None => PyString::new(py, ""),
        }
    }
}
