//! Moving through the graph: entering a state (boundary checks, observers, its checkpoint
//! row, exit or dispatch) and resolving the next state from what a task returned.
//!
//! The graph's rules are `cano_core::Graph`/`Cursor`'s; this module maps Python values to
//! state ids (identity first, then equality; `TaskResult.single(s)` unwrapped) and turns a
//! refused move into the `WorkflowError` that names the task, the state and the value.

use super::{After, Run};
use crate::errors::{self, EngineError};
use crate::plan::{Hook, Plan};
use cano_core::{Cursor, Entry, GraphError, HandlerKind, StateId};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

impl Run {
    /// Enters the cursor's state: boundary checks, observers, checkpoint, then exit or
    /// dispatch.
    pub(super) fn enter(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let s = self.cursor.state();
        if self.signals & super::SIG_CANCEL != 0
            || self.token.as_ref().is_some_and(|t| t.get().fired())
        {
            return self.cancelled_at_boundary(py, plan);
        }
        if plan.observes(Hook::StateEnter) {
            plan.notify(py, Hook::StateEnter, (plan.label(py, s),));
        }
        let logged = self.journal.is_some();
        // A resumed run's first entry continues the visit whose entry row is in the log.
        let write = logged && !std::mem::take(&mut self.reentering);
        match self.cursor.enter(&plan.graph) {
            Some(Entry::Exit) => {
                let state = plan.states[s as usize].clone_ref(py);
                if write {
                    self.save_entry(slf, plan, None, After::Exit);
                } else if logged {
                    self.clear_log(py, Ok(state));
                } else {
                    self.end(py, Ok(state));
                }
            }
            Some(Entry::Dispatch(kind)) => {
                if write && kind.checkpointed() {
                    self.save_entry(slf, plan, plan.handler(s), After::Dispatch);
                } else {
                    self.dispatch(slf, plan);
                }
            }
            None => {
                let msg = format!("no task registered for state {}", plan.label(py, s));
                let err = self.workflow_error(py, plan, msg);
                self.fail(slf, err);
            }
        }
    }

    /// Starts the first attempt of the current state's task.
    pub(super) fn dispatch(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
        let py = slf.py();
        let s = self.cursor.state();
        if self.signals & super::SIG_TOTAL != 0 {
            let err = self.total_timeout_error(py, plan, false);
            return self.fail(slf, err);
        }
        let Some(handler) = self.handler(plan).map(|h| h.bind(py).clone()) else {
            return self.end(py, Err(PyRuntimeError::new_err("cano: handler missing")));
        };
        let h = handler.get();
        if h.kind == HandlerKind::Split {
            return self.start_split(slf, handler.unbind());
        }
        self.attempt = 1;
        if matches!(h.kind, HandlerKind::Stepped | HandlerKind::Stream) {
            self.step_cursor = self.take_resume_cursor(s);
        }
        if plan.observes(Hook::TaskStart) {
            plan.notify(py, Hook::TaskStart, (h.name.bind(py),));
        }
        self.start_attempt(slf, plan, h);
    }

    /// A task attempt returned `value`: interpret it by handler kind and move on.
    pub(super) fn completed(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let s = self.cursor.state();
        if let Some((state, _)) = &self.overlay {
            if *state == s {
                self.overlay = None;
            }
        }
        if self.branch.is_some() {
            // A branch's value is recorded, not routed; unwrap TaskResult.single(...).
            let value = match plan.lookup(&value) {
                Some(_) => value,
                None => self.unwrap_task_result(py, plan, value),
            };
            self.task_succeeded_event(py, plan);
            return self.end(py, Ok(value.unbind()));
        }
        let kind = self.handler(plan).map_or(HandlerKind::Single, |h| h.get().kind);
        let value = match kind {
            HandlerKind::Single
            | HandlerKind::Router
            | HandlerKind::Split
            | HandlerKind::Stream => value,
            HandlerKind::Stepped => match self.stepped_outcome(slf, plan, value) {
                Some(state) => state,
                None => return,
            },
            HandlerKind::Compensatable => {
                return self.compensatable_outcome(slf, plan, value);
            }
        };
        let next = match self.next_state(py, plan, &value) {
            Ok(id) => id,
            Err(e) => {
                self.task_failed_event(py, plan, &e);
                return self.fail(slf, e);
            }
        };
        self.task_succeeded_event(py, plan);
        self.advance(slf, plan, next);
    }

    /// The state a task's returned `value` names.
    #[inline]
    pub(super) fn next_state(
        &self,
        py: Python<'_>,
        plan: &Plan,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<StateId> {
        match plan.lookup(value) {
            Some(id) => Ok(id),
            None => self.resolve_slow(py, plan, value),
        }
    }

    /// Moves the cursor to `next` and enters it.
    pub(super) fn advance(&mut self, slf: &Bound<'_, Self>, plan: &Plan, next: StateId) {
        let py = slf.py();
        match self.cursor.advance(&plan.graph, next) {
            Ok(()) => self.enter(slf),
            Err(e) => {
                let err = self.transition_error(py, plan, &e, next);
                self.fail(slf, err);
            }
        }
    }

    /// A returned value that is not a state by identity or equality: a `TaskResult`, an
    /// unregistered state, or something that is not a state at all.
    #[cold]
    fn resolve_slow(
        &self,
        py: Python<'_>,
        plan: &Plan,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<StateId> {
        let (code, payload) = self.explain_return(py, plan, value)?;
        if code == 0 {
            // A TaskResult.single(...) wrapping a state.
            if let Some(id) = plan.lookup(&payload) {
                return Ok(id);
            }
            return self.resolve_slow(py, plan, &payload);
        }
        let message: String = payload.extract()?;
        Err(self.workflow_error(py, plan, message))
    }

    /// `TaskResult.single(s)` → `s`; anything else unchanged (a split branch's value).
    #[cold]
    pub(super) fn unwrap_task_result<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        value: Bound<'py, PyAny>,
    ) -> Bound<'py, PyAny> {
        match self.explain_return(py, plan, &value) {
            Ok((0, state)) => state,
            _ => value,
        }
    }

    /// Asks `cano._returns` what an unexpected return value is: `(0, state)` for a
    /// `TaskResult` to unwrap, `(1, message)` for an error naming task, state and value.
    fn explain_return<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<(u8, Bound<'py, PyAny>)> {
        let task = self.task_name(py, plan);
        let label = plan.label(py, self.cursor.state());
        plan.returns.bind(py).call_method1(intern!(py, "explain"), (value, label, task))?.extract()
    }

    #[cold]
    fn transition_error(
        &self,
        py: Python<'_>,
        plan: &Plan,
        err: &GraphError,
        next: StateId,
    ) -> PyErr {
        let s = self.cursor.state();
        let task = errors::quoted(&self.task_name(py, plan));
        let message = match err {
            GraphError::TooManyTransitions { limit } => format!(
                "workflow exceeded its limit of {limit} transitions: task {task} in state {} \
                 returned {}",
                plan.label(py, s),
                plan.label(py, next)
            ),
            GraphError::UnknownState(_) => format!(
                "task {task} in state {} returned {}, which is neither a registered nor an exit \
                 state",
                plan.label(py, s),
                plan.label(py, next)
            ),
            other => format!("task {task}: {}", plan.describe(py, other)),
        };
        self.workflow_error(py, plan, message)
    }

    /// A cancellation seen at a state boundary: the refused state counts as the failing one
    /// (`path[-1] == state`), then the run fails (undoing finished saga steps).
    #[cold]
    pub(super) fn cancelled_at_boundary(&mut self, py: Python<'_>, plan: &Plan) {
        let s = self.cursor.state();
        if self.cursor.path().last() != Some(&s) {
            let mut path = self.cursor.path().to_vec();
            path.push(s);
            self.cursor = Cursor::resumed(s, path);
        }
        let e = self.cancel_error(py, plan);
        self.notify_cancelled(py, plan);
        self.fail_now(py, e);
    }

    fn workflow_error(&self, py: Python<'_>, plan: &Plan, message: String) -> PyErr {
        self.engine_error(py, plan, EngineError::Workflow { exceptions: None }, message, None)
    }
}
