//! The run's record, for stores that keep them (`cano.runs.RunRegistry`): the store learns
//! when the run starts and how it ends, so `cano.Client` can answer "what happened to run
//! X?" after the log is gone.
//!
//! - Before resources are set up, `store.run_started(id, name, version, state, resumed)`.
//! - A success (or a clean rollback) ends with `store.run_ended(..., clear_log=True)`
//!   *instead of* `store.clear(id)`: the store keeps the log as the run's history and
//!   clears it in the same transaction.
//! - Any other end — a failure, a cancellation by the token, a timeout — with
//!   `store.run_ended(..., clear_log=False)`: the log stays, so the run can be resumed.
//! - An outside cancellation (`asyncio.CancelledError`), `KeyboardInterrupt`, or a lost
//!   lease writes nothing: the run stays RUNNING, like a run whose process died.
//!
//! Per transition nothing is written but the log row (which the store stamps with its time).

use super::{Phase, Run};
use crate::errors::{self, EngineError};
use crate::plan::Plan;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

static CANCELLED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static RUN_END: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Where the run is with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Records {
    /// The store keeps no records, or the run has no log.
    #[default]
    Off,
    /// `run_started` not written yet.
    Unregistered,
    /// `run_started` written; the end is owed.
    Registered,
    /// The end is written (or must not be).
    Recorded,
}

impl Run {
    /// Whether this run keeps a record in its store.
    pub(super) fn records_for(&self, plan: &Plan) -> Records {
        let keeps = plan.store.as_ref().is_some_and(|s| s.registry.is_some());
        if keeps && self.journal.is_some() && self.branch.is_none() {
            Records::Unregistered
        } else {
            Records::Off
        }
    }

    /// Writes `run_started`; the run continues with its setup once it is durable. Returns
    /// false when there is nothing to write.
    pub(super) fn register(&mut self, slf: &Bound<'_, Self>) -> bool {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        if self.records == Records::Off {
            self.records = self.records_for(plan);
        }
        if self.records != Records::Unregistered {
            return false;
        }
        let (Some(store), Some(journal)) = (&plan.store, &self.journal) else { return false };
        let Some((started, _)) = &store.registry else { return false };
        let name = plan.name.as_ref().map(|n| n.bind(py).clone().into_any());
        let call = started.bind(py).call1((
            journal.workflow_id.bind(py),
            name,
            plan.version,
            plan.label(py, self.cursor.state()),
            self.resumed,
        ));
        self.records = Records::Registered;
        if let Err(e) = call.and_then(|aw| self.install(Phase::Registering, aw)) {
            self.register_failed(py, e);
        }
        true
    }

    /// The store refused the record: the run does not start.
    pub(super) fn register_failed(&mut self, py: Python<'_>, err: PyErr) {
        self.records = Records::Recorded;
        let plan_ref = self.plan.bind(py).clone();
        if errors::is_lease_lost(py, &err) {
            return self.abandon(py, plan_ref.get(), err); // another worker owns the run
        }
        let msg = format!("cannot record the start of run {}", self.quoted_id(py));
        let e = self.engine_error(py, plan_ref.get(), EngineError::Checkpoint, msg, Some(err));
        self.end(py, Err(e));
    }

    /// The arguments of `run_ended` for `outcome`, or `None` when the end is not recorded
    /// (an outside cancellation: the run stays RUNNING and resumable).
    fn end_record<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        outcome: Result<&Py<PyAny>, &Py<PyAny>>,
        clear_log: bool,
    ) -> Option<(Bound<'py, PyString>, RecordArgs<'py>)> {
        let journal = self.journal.as_ref()?;
        let state = plan.label(py, self.cursor.state());
        let (status, final_state, error_type, error) = match outcome {
            Ok(_) => ("COMPLETED", Some(state.clone()), None, None),
            Err(e) => {
                let e = e.bind(py);
                if !e.is_instance_of::<PyException>() || errors::is_lease_lost_value(py, e) {
                    return None;
                }
                let cancelled = CANCELLED
                    .import(py, "cano.errors", "WorkflowCancelledError")
                    .is_ok_and(|c| e.is_instance(c).unwrap_or(false));
                let kind = e.get_type().name().ok().map(|n| n.to_string());
                let text = e.str().ok().map(|s| s.to_string());
                (if cancelled { "CANCELLED" } else { "FAILED" }, None, kind, text)
            }
        };
        let end = RUN_END.import(py, "cano.records", "RunEnd").and_then(|c| {
            c.call_method1("_from_engine", (status, state, final_state, error_type, error))
        });
        match end {
            Ok(end) => Some((journal.workflow_id.bind(py).clone(), (end, clear_log))),
            Err(e) => {
                e.write_unraisable(py, None);
                None
            }
        }
    }

    /// The outcome is known: record it (when owed) before ending. Returns `Some` when a
    /// write was started (the run ends once it is done, with the outcome kept aside).
    pub(super) fn record_end(
        &mut self,
        py: Python<'_>,
        outcome: &PyResult<Py<PyAny>>,
    ) -> Option<()> {
        if self.records != Records::Registered {
            return None;
        }
        self.records = Recorded;
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let kept: Result<Py<PyAny>, Py<PyAny>> = match outcome {
            Ok(v) => Ok(v.clone_ref(py)),
            Err(e) => Err(e.value(py).clone().into_any().unbind()),
        };
        let (id, (end, clear_log)) = self.end_record(py, plan, kept.as_ref(), false)?;
        let ended = plan.store.as_ref()?.registry.as_ref()?.1.bind(py).clone();
        let started =
            ended.call1((id, end, clear_log)).and_then(|aw| self.install(Phase::Recording, aw));
        match started {
            Ok(()) => {
                self.outcome = Some(kept);
                Some(())
            }
            Err(e) => {
                e.write_unraisable(py, None);
                None
            }
        }
    }

    /// `run_ended(..., clear_log=True)`, called instead of `store.clear(id)` at the end of a
    /// success or a clean rollback; `None` when the store keeps no records.
    pub(super) fn record_and_clear<'py>(
        &mut self,
        py: Python<'py>,
        plan: &Plan,
        outcome: Result<&Py<PyAny>, &Py<PyAny>>,
    ) -> Option<PyResult<Bound<'py, PyAny>>> {
        if self.records != Records::Registered {
            return None;
        }
        self.records = Records::Recorded;
        let ended = plan.store.as_ref()?.registry.as_ref()?.1.bind(py).clone();
        let (id, (end, clear_log)) = self.end_record(py, plan, outcome, true)?;
        Some(ended.call1((id, end, clear_log)))
    }

    /// The arguments `clear_in_background` needs to finish a success's record later.
    pub(super) fn background_clear_args<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
    ) -> Option<(Bound<'py, PyAny>, RecordArgs<'py>)> {
        let ended = plan.store.as_ref()?.registry.as_ref()?.1.bind(py).clone();
        let outcome = self.outcome.as_ref()?;
        let outcome = match outcome {
            Ok(v) => Ok(v),
            Err(e) => Err(e),
        };
        let (_, args) = self.end_record(py, plan, outcome, true)?;
        Some((ended, args))
    }
}

use Records::Recorded;

/// `(end, clear_log)` of `run_ended`: a `cano.records.RunEnd` and whether to clear the log.
pub(super) type RecordArgs<'py> = (Bound<'py, PyAny>, bool);
