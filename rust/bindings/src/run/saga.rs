//! Sagas: a compensatable task's output is pushed on the run's stack (and logged with a
//! store); when the run fails later, the stack is drained last-first by `cano._saga.drain`
//! within the compensation budget. A clean rollback clears the log; a failed one raises
//! `CompensationFailedError` with the original error first, then each compensation error.

use super::{After, Phase, Run};
use crate::errors::{self, EngineError};
use crate::plan::Plan;
use cano_core::RowKind;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};

static DRAIN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl Run {
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
                "compensatable task {} in state {} returned {}; expected (next_state, output)",
                errors::quoted(&self.task_name(py, plan)),
                plan.label(py, self.cursor.state()),
                value.repr().map(|r| r.to_string()).unwrap_or_default()
            );
            let kind = EngineError::Workflow { exceptions: None };
            let e = self.engine_error(py, plan, kind, msg, None);
            self.task_failed_event(py, plan, &e);
            return self.fail(slf, e);
        };
        let (state, output) = match (pair.get_item(0), pair.get_item(1)) {
            (Ok(s), Ok(o)) => (s, o),
            (Err(e), _) | (_, Err(e)) => return self.fail(slf, e),
        };
        let next = self.next_state(py, plan, &state);
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
        if self.journal.is_some() {
            self.save_row(slf, plan, RowKind::Compensation, name, Some(blob), After::Move(next));
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
            DRAIN.import(py, "cano._saga", "drain")?.call1((
                stack,
                plan.compensators.bind(py),
                self.resources.bind(py),
                plan.compensation_budget,
            ))
        });
        if let Err(e) = started.and_then(|coro| self.install(Phase::Draining, coro)) {
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
            // The drain's own errors (orphans, compensation timeouts) get the run's context.
            let e = self.contextualise(py, plan, PyErr::from_value(e.clone()));
            let _ = all.append(e.value(py));
        }
        let msg = format!("compensation failed ({} error(s)) after the run failed", errors.len());
        let cause = PyErr::from_value(original.into_bound(py));
        let e = self.engine_error(
            py,
            plan,
            EngineError::CompensationFailed { errors: all },
            msg,
            Some(cause),
        );
        self.end(py, Err(e));
    }
}
