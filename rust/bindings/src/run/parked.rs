//! A durable run moving on while its task stays parked.
//!
//! A run on the embedded store waits for each state-entry row on one [`Waiter`] of its own,
//! re-armed for every row. Once its task has parked on that waiter, each durable row calls
//! the run's [`Resumer`] — in the task's `contextvars.Context`, with the task entered as the
//! loop's current task, just as a task step would — and the resumer drives the run on: the
//! state's task runs, the next row is appended, the waiter is re-armed, and the task never
//! wakes. The task is woken only when the run needs it: user code awaiting something else,
//! the end of the run, a failure. What the run had for the task then waits in
//! [`Run::handoff`] until the task steps it.
//!
//! A cancelled waiter is never re-armed, so a task cancelled meanwhile (from user code, a
//! timeout) always takes its `CancelledError` into the run, as it would have without this.

use super::protocol::Input;
use super::{Phase, Run};
use crate::store::{RunLog, Waiter};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::{PyTraverseError, PyVisit};

static ENTER_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LEAVE_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Moves a run on when a row is durable while its task is parked (see the module docs).
#[pyclass(frozen, module = "cano._core", name = "_Resumer")]
pub struct Resumer {
    run: Py<Run>,
}

#[pymethods]
impl Resumer {
    /// Drives the run from a durable row; true when the task stays parked on `waiter`
    /// (re-armed for the next row), false when the task must be woken.
    fn __call__(&self, waiter: &Bound<'_, Waiter>) -> bool {
        let py = waiter.py();
        let Some(task) = waiter.get().parked_task(py) else { return false };
        let run = self.run.bind(py);
        let Ok(mut this) = run.try_borrow_mut() else { return false };
        let waits_here = matches!(this.phase, Phase::Saving(_))
            && this.inner.as_ref().is_some_and(|i| i.is(waiter));
        if !waits_here {
            return false;
        }
        let event_loop = waiter.get().event_loop().bind(py);
        let entered = ENTER_TASK
            .import(py, "asyncio.tasks", "_enter_task")
            .and_then(|enter| enter.call1((event_loop, &task)));
        if entered.is_err() {
            return false; // another task is current: let the task step the run itself
        }
        let result = this.drive(run, Input::Send(None));
        let left = LEAVE_TASK
            .import(py, "asyncio.tasks", "_leave_task")
            .and_then(|leave| leave.call1((event_loop, &task)));
        if let Err(e) = left {
            e.write_unraisable(py, Some(waiter.as_any()));
        }
        let parked = matches!(&result, Ok(y) if y.is(waiter.as_any())) && waiter.get().is_waiting();
        if !parked {
            this.handoff = Some(result.map_err(|e| e.into_value(py).into_any()));
        }
        parked
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.run)
    }
}

impl Run {
    /// The waiter for the run's next row, and the generation it is armed for: the run's own
    /// waiter re-armed when it may be, else a new one (which becomes the run's).
    pub(super) fn row_waiter<'py>(
        parker: &mut Option<Py<Waiter>>,
        slf: &Bound<'py, Self>,
        log: &RunLog,
    ) -> PyResult<(Bound<'py, Waiter>, u64)> {
        let py = slf.py();
        if let Some(waiter) = parker.as_ref() {
            if let Some(generation) = waiter.get().rearm() {
                return Ok((waiter.bind(py).clone(), generation));
            }
        }
        let resumer = Py::new(py, Resumer { run: slf.clone().unbind() })?;
        let waiter = log.waiter(py, resumer.into_any())?;
        *parker = Some(waiter.clone().unbind());
        Ok((waiter, 0))
    }
}
