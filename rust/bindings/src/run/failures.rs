//! The engine errors a run raises, each carrying the state it failed in, the attempt and
//! the path walked (API.md §11), built through the one mapping in `crate::errors`.

use super::Run;
use crate::errors::{self, Context, EngineError};
use crate::plan::{Hook, Plan};
use pyo3::intern;
use pyo3::prelude::*;

impl Run {
    /// Where this run is, for an error: the current state, the attempt, the path.
    pub(super) fn context<'py>(&self, py: Python<'py>) -> Context<'py> {
        let plan = self.plan.get();
        Context {
            state: Some(plan.label(py, self.cursor.state()).into_any()),
            attempt: Some(self.attempt),
            path: Some(plan.labels_of(py, self.cursor.path())),
        }
    }

    /// An engine error of `kind` at the current attempt; `cause` becomes its `__cause__`.
    pub(super) fn engine_error(
        &self,
        py: Python<'_>,
        plan: &Plan,
        kind: EngineError<'_>,
        message: String,
        cause: Option<PyErr>,
    ) -> PyErr {
        self.engine_error_at(py, plan, kind, message, self.attempt, cause)
    }

    /// An engine error of `kind` reported at `attempt` (0 for timeouts, cancellation and
    /// circuit rejections).
    pub(super) fn engine_error_at(
        &self,
        py: Python<'_>,
        plan: &Plan,
        kind: EngineError<'_>,
        message: String,
        attempt: u32,
        cause: Option<PyErr>,
    ) -> PyErr {
        let ctx = Context {
            state: Some(plan.label(py, self.cursor.state()).into_any()),
            attempt: Some(attempt),
            path: Some(plan.labels_of(py, self.cursor.path())),
        };
        let cause = cause.map(|e| e.into_value(py).into_bound(py).into_any());
        // SAFETY of lifetimes: `kind` borrows nothing that outlives this call.
        kind.into_py(py, message, ctx, cause)
    }

    /// Adds this run's state, attempt and path to an engine error raised by Python code
    /// (a store, the codec, the saga drain) that had no run context.
    pub(super) fn contextualise(&self, py: Python<'_>, plan: &Plan, err: PyErr) -> PyErr {
        let value = err.value(py);
        if errors::is_cano_error(py, value)
            && value.getattr(intern!(py, "state")).is_ok_and(|s| s.is_none())
        {
            let _ = value.setattr(intern!(py, "state"), plan.label(py, self.cursor.state()));
            let _ = value.setattr(intern!(py, "attempt"), self.attempt);
            let _ = value.setattr(intern!(py, "path"), plan.labels_of(py, self.cursor.path()));
        }
        err
    }

    pub(super) fn cancel_error(&self, py: Python<'_>, plan: &Plan) -> PyErr {
        let msg = format!("workflow cancelled in state {}", plan.label(py, self.cursor.state()));
        self.engine_error_at(py, plan, EngineError::Cancelled, msg, 0, None)
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
        let kind = EngineError::WorkflowTimeout { elapsed, limit };
        let err = self.engine_error_at(py, plan, kind, msg, 0, None);
        if in_flight {
            self.task_failed_event(py, plan, &err);
        }
        plan.notify(py, Hook::WorkflowTimeout, (elapsed, limit));
        err
    }

    #[cold]
    pub(super) fn attempt_timeout_error(&self, py: Python<'_>, plan: &Plan) -> PyErr {
        let limit = self.handler(plan).and_then(|h| h.get().attempt_timeout).unwrap_or(0.0);
        let msg = format!(
            "task {} in state {} exceeded its attempt timeout of {limit}s (attempt {})",
            errors::quoted(&self.task_name(py, plan)),
            plan.label(py, self.cursor.state()),
            self.attempt
        );
        self.engine_error(py, plan, EngineError::TaskTimeout, msg, None)
    }

    /// The asyncio task awaiting the run was cancelled: the cancellation propagates as is.
    #[cold]
    pub(super) fn cancelled_by_asyncio(&mut self, slf: &Bound<'_, Self>, plan: &Plan, err: PyErr) {
        let py = slf.py();
        self.task_failed_event(py, plan, &err);
        if self.branch.is_none() {
            self.notify_cancelled(py, plan);
        }
        self.fail(slf, err);
    }
}
