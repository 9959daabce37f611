//! Stepped tasks: each step is an attempt with a fresh retry budget; `More(cursor)` logs
//! the cursor (with a store) before the next step, `Done(state)` moves on. A resumed run
//! hands the last logged cursor of the resumed state's visit to its first step.

use super::{After, Run};
use crate::errors::EngineError;
use crate::plan::Plan;
use cano_core::{RowKind, StateId};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static MORE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DONE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

impl Run {
    /// The cursor a resumed run left for state `s` (consumed on first entry).
    pub(super) fn take_resume_cursor(&mut self, s: StateId) -> Option<Py<PyAny>> {
        match &self.resume_cursor {
            Some((state, _)) if *state == s => self.resume_cursor.take().map(|(_, c)| c),
            _ => None,
        }
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
            cell.import(py, "cano.stepped", name)
                .is_ok_and(|t| value.is_instance(t).unwrap_or(false))
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
            if self.journal.is_some() {
                match self.encode(py, plan, &cursor, "cursor") {
                    Ok(blob) => {
                        let name = self.task_name_str(py, plan);
                        self.save_row(
                            slf,
                            plan,
                            RowKind::StepCursor,
                            name,
                            Some(blob),
                            After::Step,
                        );
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
            "stepped task {} in state {} returned {}; expected More(cursor) or Done(state)",
            crate::errors::quoted(&self.task_name(py, plan)),
            plan.label(py, self.cursor.state()),
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        );
        let e = self.engine_error(py, plan, EngineError::Workflow { exceptions: None }, msg, None);
        self.task_failed_event(py, plan, &e);
        self.fail(slf, e);
        None
    }

    /// Runs the next step with a fresh retry budget. Without a log to write (which yields to
    /// the loop), it yields first: a step that never suspends must not starve the loop.
    pub(super) fn next_step(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
        if self.journal.is_none() {
            return self.yield_then(super::Resume::NextStep);
        }
        self.next_step_now(slf, plan);
    }

    pub(super) fn next_step_now(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
        let py = slf.py();
        if self.token.as_ref().is_some_and(|t| t.get().fired()) || self.signals != 0 {
            // Cancelled or timed out between steps: stop here, the cursor is saved.
            return self.step_interrupted(slf, plan);
        }
        self.attempt = 1;
        match self.handler(plan).map(|h| h.bind(py).clone()) {
            Some(h) => self.start_attempt(slf, plan, h.get()),
            None => self.end(py, Err(pyo3::exceptions::PyRuntimeError::new_err("handler missing"))),
        }
    }

    #[cold]
    pub(super) fn step_interrupted(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
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
}
