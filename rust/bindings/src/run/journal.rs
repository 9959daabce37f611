//! The run's checkpoint log: every durable write of a run goes through here, and nowhere
//! else (the seam the run registry, worker leases and parking build on).
//!
//! - Entering any state but a router appends a state-entry row *before* its task runs; the
//!   run waits until the store says the row is durable.
//! - A stepped task's `More(cursor)` and a stream's committed window append cursor rows; a
//!   compensatable task's success appends its output.
//! - The end of the log: reaching an exit state, or rolling back cleanly, clears it; any
//!   other failure keeps it, so the run can be inspected and resumed.
//! - A write refused with `LeaseLostError` (another worker owns the run now) *abandons*
//!   the run: it ends at once with that error — no compensation, no clear — and the new
//!   owner carries on from the log.

use super::{After, Phase, Run};
use crate::errors::{self, EngineError};
use crate::gc_traverse;
use crate::plan::{Handler, Hook, Plan};
use crate::store::RunLog;
use cano_core::{RowKind, StateId};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static ROW: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ROW_KIND: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ENCODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static COMMIT_CURSOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NOTHING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CLEAR_LATER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The per-run handle of a checkpoint log: which run, and the next row's sequence number
/// (shared with a stream task's committer).
pub struct Journal {
    pub workflow_id: Py<PyString>,
    sequence: Arc<AtomicU64>,
    /// False until a resumed run has read its log.
    pub loaded: bool,
    /// The embedded store's handle for this run, made on its first row.
    redb: Option<RunLog>,
}

gc_traverse!(Journal { workflow_id, redb });

impl Journal {
    /// The journal of run `workflow_id`, when the plan has a store.
    pub fn new(
        py: Python<'_>,
        plan: &Plan,
        workflow_id: Py<PyString>,
        sequence: u64,
    ) -> Option<Self> {
        let _ = py;
        plan.store.as_ref()?;
        Some(Journal {
            workflow_id,
            sequence: Arc::new(AtomicU64::new(sequence)),
            loaded: true,
            redb: None,
        })
    }

    #[inline]
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence.store(sequence, Ordering::Relaxed);
    }
}

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
        self.save_row(slf, plan, RowKind::StateEntry, task_id, None, after);
    }

    /// Appends one row of the current state and waits for it, then does `after`. Without
    /// a log, does `after` at once.
    pub(super) fn save_row(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        kind: RowKind,
        task_id: Bound<'_, PyString>,
        blob: Option<Bound<'_, PyBytes>>,
        after: After,
    ) {
        let py = slf.py();
        let (Some(store), Some(journal)) = (&plan.store, &mut self.journal) else {
            return self.saved(slf, after);
        };
        if let Some(redb) = &store.redb {
            let seq = journal.sequence();
            let label = plan.labels[self.cursor.state() as usize].bind(py);
            let parker = &mut self.parker;
            let appended = (|| {
                if journal.redb.is_none() {
                    let id = journal.workflow_id.bind(py).to_str()?;
                    journal.redb = Some(redb.get().run_log(py, id)?);
                }
                let log = journal.redb.as_ref().expect("made above");
                let (waiter, generation) = Run::row_waiter(parker, slf, log)?;
                let output = blob.as_ref().map(|b| b.as_bytes());
                log.append(
                    py,
                    &waiter,
                    generation,
                    seq,
                    kind,
                    label.to_str()?,
                    task_id.to_str()?,
                    output,
                    plan.version,
                )?;
                Ok::<_, PyErr>(waiter)
            })();
            return match appended {
                Ok(waiter) => {
                    // The waiter is its own iterator: driven directly, no `__await__` call.
                    self.phase = Phase::Saving(after);
                    self.inner = Some(waiter.into_any().unbind());
                }
                Err(e) => self.save_failed(slf, e),
            };
        }
        let id = journal.workflow_id.bind(py);
        let label = plan.label(py, self.cursor.state());
        let seq = journal.sequence();
        let append = store.append.bind(py);
        let made = if store.raw {
            append.call1((id, seq, label, task_id, kind as u8, blob, plan.version))
        } else {
            ROW_KIND
                .import(py, "cano.store", "RowKind")
                .and_then(|k| k.call1((kind as u8,)))
                .and_then(|k| {
                    ROW.import(py, "cano.store", "CheckpointRow")?.call1((
                        id,
                        seq,
                        label,
                        task_id,
                        k,
                        blob,
                        plan.version,
                    ))
                })
                .and_then(|row| append.call1((row,)))
        };
        if let Err(e) = made.and_then(|aw| self.install(Phase::Saving(after), aw)) {
            self.save_failed(slf, e);
        }
    }

    /// The row is durable: report it and carry on.
    pub(super) fn saved(&mut self, slf: &Bound<'_, Self>, after: After) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        if let Some(journal) = &self.journal {
            let seq = journal.sequence.fetch_add(1, Ordering::Relaxed);
            if plan.observes(Hook::Checkpoint) {
                plan.notify(py, Hook::Checkpoint, (journal.workflow_id.bind(py), seq));
            }
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

    /// The store refused or failed the append: the run fails, its log stays as it was —
    /// or, when the run's lease was lost, the run is abandoned.
    pub(super) fn save_failed(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        if super::is_cancel_error(py, &err) {
            // Interrupted while the row was being written (the store may still commit it):
            // by the run's token or total timeout, or from outside (which propagates).
            let external = if self.cancel_owed { self.settle_cancel(py) } else { false };
            let e = if !external && self.signals & super::SIG_CANCEL != 0 {
                self.notify_cancelled(py, plan);
                self.cancel_error(py, plan)
            } else if !external && self.signals & super::SIG_TOTAL != 0 {
                self.total_timeout_error(py, plan, false)
            } else {
                self.notify_cancelled(py, plan);
                err
            };
            return self.fail(slf, e);
        }
        if errors::is_lease_lost(py, &err) {
            return self.abandon(py, plan, err);
        }
        let msg = format!(
            "cannot append checkpoint row {} of workflow {} in state {}",
            self.journal.as_ref().map_or(0, Journal::sequence),
            self.quoted_id(py),
            plan.label(py, self.cursor.state())
        );
        let e = self.engine_error(py, plan, EngineError::Checkpoint, msg, Some(err));
        self.fail(slf, e);
    }

    /// Another worker owns the run now: end at once with `err`, writing nothing more — no
    /// compensation (the new owner goes on with the saga), no clear.
    #[cold]
    pub(super) fn abandon(&mut self, py: Python<'_>, plan: &Plan, err: PyErr) {
        self.stack.clear();
        let err = self.contextualise(py, plan, err);
        self.end(py, Err(err));
    }

    // ----- the end of the log -----------------------------------------------------------

    /// Clears the log (when there is one), then ends with `outcome`.
    pub(super) fn clear_log(&mut self, py: Python<'_>, outcome: Result<Py<PyAny>, Py<PyAny>>) {
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let (Some(store), Some(journal)) = (&plan.store, &self.journal) else {
            return self.end(py, outcome.map_err(|o| PyErr::from_value(o.into_bound(py))));
        };
        let id = journal.workflow_id.clone_ref(py);
        let clear = store.clear.clone_ref(py);
        let cleared = match self.record_and_clear(py, plan, outcome.as_ref()) {
            Some(recorded) => recorded,
            None => clear.bind(py).call1((id.bind(py),)),
        };
        self.outcome = Some(outcome);
        if let Err(e) = cleared.and_then(|aw| self.install(Phase::Clearing, aw)) {
            self.clear_failed(py, e);
        }
    }

    pub(super) fn cleared(&mut self, py: Python<'_>) {
        let outcome = self.outcome.take().unwrap_or_else(|| Ok(py.None()));
        self.end(py, outcome.map_err(|o| PyErr::from_value(o.into_bound(py))));
    }

    /// Clearing is best effort: report it and keep the run's outcome. A cancellation that
    /// arrives while the log is being cleared comes too late to change the outcome — the run
    /// reached its end — so the run still ends with it, and the clear is finished in the
    /// background.
    pub(super) fn clear_failed(&mut self, py: Python<'_>, err: PyErr) {
        let plan_ref = self.plan.bind(py).clone();
        if super::is_cancel_error(py, &err) {
            if self.cancel_owed {
                self.settle_cancel(py);
            }
            self.clear_in_background(py, plan_ref.get());
            return self.cleared(py);
        }
        if errors::is_lease_lost(py, &err) {
            self.outcome = None;
            return self.abandon(py, plan_ref.get(), err);
        }
        if let Some(journal) = &self.journal {
            plan_ref.get().notify(
                py,
                Hook::ClearFailed,
                (journal.workflow_id.bind(py), err.value(py)),
            );
        }
        self.cleared(py);
    }

    /// Issues the log clear again as a background task (kept referenced until done).
    #[cold]
    fn clear_in_background(&self, py: Python<'_>, plan: &Plan) {
        let (Some(store), Some(journal)) = (&plan.store, &self.journal) else { return };
        let id = journal.workflow_id.bind(py);
        let started =
            CLEAR_LATER.import(py, "cano._journal", "clear_in_background").and_then(|f| match self
                .background_clear_args(py, plan)
            {
                Some((ended, (end, clear_log))) => f.call1((ended, id, end, clear_log)),
                None => f.call1((store.clear.bind(py), id)),
            });
        if let Err(e) = started {
            e.write_unraisable(py, None);
        }
    }

    // ----- encoding ---------------------------------------------------------------------

    /// JSON bytes of a cursor or compensation output (`what`), or a `CheckpointError`
    /// naming the task and the type.
    pub(super) fn encode<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        value: &Bound<'py, PyAny>,
        what: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("task", self.task_name_str(py, plan))?;
        kwargs.set_item("what", what)?;
        let value_type = self.handler(plan).and_then(|h| h.get().value_type.as_ref());
        let bytes = ENCODE
            .import(py, "cano._codec", "encode")?
            .call((value, value_type), Some(&kwargs))
            .map_err(|e| self.contextualise(py, plan, e))?;
        Ok(bytes.cast_into::<PyBytes>()?)
    }

    /// The workflow id in single quotes, for messages.
    pub(super) fn quoted_id(&self, py: Python<'_>) -> String {
        let id = self.journal.as_ref().map(|j| &j.workflow_id).or(self.workflow_id.as_ref());
        errors::quoted(&id.map(|i| i.bind(py).to_string()).unwrap_or_default())
    }

    /// The commit callable for the stream task of the current state.
    pub(super) fn committer(&self, py: Python<'_>, plan: &Plan) -> PyResult<Py<Committer>> {
        Py::new(
            py,
            Committer {
                plan: self.plan.clone_ref(py),
                log: self
                    .journal
                    .as_ref()
                    .map(|j| (j.workflow_id.clone_ref(py), j.sequence.clone())),
                state: self.cursor.state(),
                task_id: self.task_name_str(py, plan).unbind(),
            },
        )
    }
}

/// The `commit(cursor)` callable handed to a stream task's driver: appends a cursor row at
/// the run's next sequence number (shared with the run) and returns an awaitable that
/// completes once the row is durable. Without a log it does nothing.
#[pyclass(frozen, module = "cano._core", name = "_Committer")]
pub struct Committer {
    plan: Py<Plan>,
    log: Option<(Py<PyString>, Arc<AtomicU64>)>,
    state: StateId,
    task_id: Py<PyString>,
}

#[pymethods]
impl Committer {
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        cursor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let plan = this.plan.get();
        let (Some(store), Some((id, sequence))) = (&plan.store, &this.log) else {
            return NOTHING.import(py, "cano._journal", "nothing")?.call0();
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("task", this.task_id.bind(py))?;
        kwargs.set_item("what", "cursor")?;
        let value_type = plan.handler(this.state).and_then(|h| h.get().value_type.as_ref());
        let blob = ENCODE
            .import(py, "cano._codec", "encode")?
            .call((cursor, value_type), Some(&kwargs))?;
        let seq = sequence.fetch_add(1, Ordering::Relaxed);
        let on_durable = if plan.observes(Hook::Checkpoint) {
            Some(slf.getattr(intern!(py, "_checkpointed"))?)
        } else {
            None
        };
        COMMIT_CURSOR.import(py, "cano._journal", "commit_cursor")?.call1((
            store.append.bind(py),
            store.raw,
            id.bind(py),
            seq,
            plan.label(py, this.state),
            this.task_id.bind(py),
            blob,
            plan.version,
            on_durable,
        ))
    }

    /// Reports a committed cursor row to observers once it is durable.
    fn _checkpointed(&self, py: Python<'_>, sequence: u64) {
        if let Some((id, _)) = &self.log {
            self.plan.get().notify(py, Hook::Checkpoint, (id.bind(py), sequence));
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.plan)?;
        visit.call(&self.task_id)?;
        if let Some((id, _)) = &self.log {
            visit.call(id)?;
        }
        Ok(())
    }
}
