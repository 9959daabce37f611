//! What a run tells the world: engine errors carrying the state, attempt and path, and the
//! observer events of tasks, cancellation, timeouts and the run's end.

use super::*;

impl Run {
    #[cold]
    pub(super) fn unwrap_task_result<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        value: Bound<'py, PyAny>,
    ) -> Bound<'py, PyAny> {
        let task = self.task_name(py, plan);
        let label = plan.label(py, self.cursor.state());
        let verdict = plan
            .support
            .bind(py)
            .call_method1(intern!(py, "explain_return"), (&value, label, task))
            .and_then(|v| v.extract::<(u8, Bound<'py, PyAny>)>());
        match verdict {
            Ok((0, state)) => state,
            _ => value,
        }
    }

    /// Adds this run's state, attempt and path to an engine error raised by Python code
    /// (a store, the codec) that had no run context.
    pub(super) fn contextualise(&self, py: Python<'_>, plan: &Plan, err: PyErr) -> PyErr {
        let value = err.value(py);
        let is_cano = errors::is_cano_error(py, value);
        if is_cano && value.getattr(intern!(py, "state")).is_ok_and(|s| s.is_none()) {
            let _ = value.setattr(intern!(py, "state"), plan.label(py, self.cursor.state()));
            let _ = value.setattr(intern!(py, "attempt"), self.attempt);
            let _ = value.setattr(intern!(py, "path"), plan.labels_of(py, self.cursor.path()));
        }
        err
    }

    /// A returned value that is not a state by identity or equality: a `TaskResult`, an
    /// unregistered state, or something that is not a state at all.
    #[cold]
    pub(super) fn resolve_slow(
        &self,
        py: Python<'_>,
        plan: &Plan,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<StateId> {
        let s = self.cursor.state();
        let task = self.task_name(py, plan);
        let verdict = plan
            .support
            .bind(py)
            .call_method1(intern!(py, "explain_return"), (value, plan.label(py, s), task))?;
        let (code, payload): (u8, Bound<'_, PyAny>) = verdict.extract()?;
        if code == 0 {
            // A TaskResult.single(...) wrapping a state.
            if let Some(id) = plan.lookup(&payload) {
                return Ok(id);
            }
            return self.resolve_slow(py, plan, &payload);
        }
        let message: String = payload.extract()?;
        Err(self.error(py, plan, "WorkflowError", message, None, None))
    }

    #[cold]
    pub(super) fn transition_error(
        &self,
        py: Python<'_>,
        plan: &Plan,
        err: &CoreError,
        next: StateId,
    ) -> PyErr {
        let s = self.cursor.state();
        let task = self.task_name(py, plan);
        let message = match err {
            CoreError::TooManyTransitions { limit } => format!(
                "workflow exceeded its limit of {limit} transitions: task '{task}' in state {} \
                 returned {}",
                plan.label(py, s),
                plan.label(py, next)
            ),
            CoreError::UnknownState(_) => format!(
                "task '{task}' in state {} returned {}, which is neither a registered nor an exit \
                 state",
                plan.label(py, s),
                plan.label(py, next)
            ),
            other => format!("task '{task}': {}", plan.describe(py, other)),
        };
        self.error(py, plan, "WorkflowError", message, None, None)
    }

    #[cold]
    pub(super) fn cancelled_at_boundary(&mut self, py: Python<'_>, plan: &Plan) {
        // The refused state counts as the failing one (`path[-1] == state`).
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

    #[cold]
    pub(super) fn cancelled_by_asyncio(&mut self, slf: &Bound<'_, Self>, plan: &Plan, err: PyErr) {
        let py = slf.py();
        self.task_failed_event(py, plan, &err);
        if self.branch.is_none() {
            self.notify_cancelled(py, plan);
        }
        self.fail(slf, err);
    }

    pub(super) fn notify_cancelled(&self, py: Python<'_>, plan: &Plan) {
        plan.notify(py, Hook::Cancelled, (plan.label(py, self.cursor.state()),));
    }

    pub(super) fn cancel_error(&self, py: Python<'_>, plan: &Plan) -> PyErr {
        let msg = format!("workflow cancelled in state {}", plan.label(py, self.cursor.state()));
        self.error_at(py, plan, "WorkflowCancelledError", msg, 0, None, None)
    }

    #[cold]
    pub(super) fn total_timeout_error(
        &self,
        py: Python<'_>,
        plan: &Plan,
        in_flight: bool,
    ) -> PyErr {
        let limit = plan.total_timeout.unwrap_or_default();
        let elapsed = self.started.map_or(limit, |t| t.elapsed().as_secs_f64());
        let msg = format!(
            "workflow exceeded its total timeout of {limit}s in state {} (elapsed {elapsed:.3}s)",
            plan.label(py, self.cursor.state())
        );
        let extra = PyDict::new(py);
        let _ = extra.set_item("elapsed", elapsed);
        let _ = extra.set_item("limit", limit);
        let err = self.error_at(py, plan, "WorkflowTimeoutError", msg, 0, None, Some(extra));
        if in_flight {
            self.task_failed_event(py, plan, &err);
        }
        plan.notify(py, Hook::WorkflowTimeout, (elapsed, limit));
        err
    }

    #[cold]
    pub(super) fn attempt_timeout_error(&self, py: Python<'_>, plan: &Plan) -> PyErr {
        let s = self.cursor.state();
        let limit = self.handler(plan).and_then(|h| h.get().attempt_timeout).unwrap_or(0.0);
        let msg = format!(
            "task '{}' in state {} exceeded its attempt timeout of {limit}s (attempt {})",
            self.task_name(py, plan),
            plan.label(py, s),
            self.attempt
        );
        self.error(py, plan, "TaskTimeoutError", msg, None, None)
    }

    // ----- ending -----------------------------------------------------------------------

    pub(super) fn task_name(&self, py: Python<'_>, plan: &Plan) -> String {
        plan.handler(self.cursor.state())
            .map(|h| h.get().name.bind(py).to_string())
            .unwrap_or_default()
    }

    /// `on_run_finish(final_state_label | None, error | None)`, once per run.
    pub(super) fn finished_event(&self, py: Python<'_>, outcome: Result<&Py<PyAny>, &PyErr>) {
        let plan = self.plan.get();
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

    pub(super) fn error(
        &self,
        py: Python<'_>,
        plan: &Plan,
        kind: &str,
        message: String,
        cause: Option<PyErr>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyErr {
        self.error_at(py, plan, kind, message, self.attempt, cause, extra)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn error_at(
        &self,
        py: Python<'_>,
        plan: &Plan,
        kind: &str,
        message: String,
        attempt: u32,
        cause: Option<PyErr>,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyErr {
        let ctx = Context {
            state: Some(plan.label(py, self.cursor.state()).into_any()),
            attempt: Some(attempt),
            path: Some(plan.labels_of(py, self.cursor.path())),
        };
        let cause = cause.map(|e| e.into_value(py).into_bound(py).into_any());
        errors::make(py, kind, message, ctx, cause, extra)
    }
}
