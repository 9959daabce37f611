//! Split states: branches run as their own asyncio tasks, joined by a strategy.
//!
//! Each branch is a [`Run`] in *branch mode*: it runs one handler's retry loop (attempt
//! timeouts, retries, observers with the branch id `name[index]`) and returns what the
//! task returned. The parent waits on a single future that branch done-callbacks resolve
//! (one wake-up per batch of completions, no `asyncio.wait` over every branch), asks
//! `cano_core::join` after each batch whether the join is decided, starts queued branches
//! when a bulkhead limits them, and once decided cancels the branches still running and
//! waits for them to finish before moving on. Every rule of the join — what a branch counts
//! as, when the verdict is reached, what a timeout decides — is `cano_core`'s
//! ([`Tally::record`], [`cano_core::JoinStrategy::decide`]).

use super::interrupts::{SIG_CANCEL, SIG_JOIN, SIG_TOTAL};
use super::{Phase, Run};
use crate::errors::EngineError;
use crate::gc::PyGcTraverse;
use crate::gc_traverse;
use crate::plan::Handler;
use cano_core::{BranchEnd, Counted, Cursor, JoinVerdict as Verdict, Tally};
use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};
use pyo3::{PyTraverseError, PyVisit};

static SPLIT_RESULT_KEY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SPLIT_RESULT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SPLIT_MESSAGE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

enum Slot {
    Waiting,
    Running,
    Succeeded(Py<PyAny>),
    Failed(Py<PyAny>),
    Cancelled,
}

impl PyGcTraverse for Slot {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Slot::Succeeded(o) | Slot::Failed(o) => visit.call(o),
            _ => Ok(()),
        }
    }
}

/// How a decided split ends once its running branches have stopped.
enum Decision {
    Succeeded,
    Failed,
    /// Cancelled or timed out from outside: end with this error.
    Interrupted(Py<PyAny>),
}

impl PyGcTraverse for Decision {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Decision::Interrupted(e) => visit.call(e),
            _ => Ok(()),
        }
    }
}

/// Completed branch indices and the parent's wake future, shared with done-callbacks.
#[pyclass(frozen, module = "cano._core", name = "_SplitMailbox")]
pub struct Mailbox {
    done: Mutex<Vec<usize>>,
    wake: Mutex<Option<Py<PyAny>>>,
}

impl Mailbox {
    fn wake(&self, py: Python<'_>) {
        let wake = self.wake.lock().take();
        if let Some(fut) = wake {
            let fut = fut.bind(py);
            if !fut.call_method0(intern!(py, "done")).and_then(|d| d.extract()).unwrap_or(true) {
                let _ = fut.call_method1(intern!(py, "set_result"), (py.None(),));
            }
        }
    }
}

gc_traverse!(Mailbox { wake });

#[pymethods]
impl Mailbox {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.py_gc_traverse(&visit)
    }
}

/// The done-callback of one branch task.
#[pyclass(frozen, module = "cano._core", name = "_BranchDone")]
pub struct BranchDone {
    mailbox: Py<Mailbox>,
    index: usize,
}

#[pymethods]
impl BranchDone {
    fn __call__(&self, py: Python<'_>, _task: &Bound<'_, PyAny>) {
        let mailbox = self.mailbox.get();
        mailbox.done.lock().push(self.index);
        mailbox.wake(py);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.mailbox)
    }
}

/// A split in progress.
pub(super) struct SplitRun {
    handler: Py<Handler>,
    tasks: Vec<Option<Py<PyAny>>>,
    slots: Vec<Slot>,
    started: usize,
    running: usize,
    tally: Tally,
    mailbox: Py<Mailbox>,
    timer: Option<Py<PyAny>>,
    timed_out: bool,
    decided: Option<Decision>,
}

gc_traverse!(SplitRun { handler, mailbox, tasks, timer, slots, decided });

impl Run {
    /// A run that executes one branch handler of a split and returns its raw result.
    fn branch_run(&self, py: Python<'_>, handler: Py<Handler>) -> Run {
        let mut run = Run::new(
            self.plan.clone_ref(py),
            Cursor::new(self.cursor.state()),
            self.resources.clone_ref(py),
            None,
            None,
        );
        run.branch = Some(handler);
        run
    }

    /// Enters a split state: starts its branches and waits for the join.
    pub(super) fn start_split(&mut self, slf: &Bound<'_, Self>, handler: Py<Handler>) {
        let py = slf.py();
        let Some(spec) = handler.get().split.as_ref() else {
            return self.end(py, Err(PyRuntimeError::new_err("cano: split handler missing")));
        };
        let n = spec.branches.len();
        let timeout = spec.timeout;
        let mailbox = Mailbox { done: Mutex::new(Vec::new()), wake: Mutex::new(None) };
        let mailbox = match Py::new(py, mailbox) {
            Ok(m) => m,
            Err(e) => return self.end(py, Err(e)),
        };
        self.split = Some(Box::new(SplitRun {
            handler,
            tasks: (0..n).map(|_| None).collect(),
            slots: (0..n).map(|_| Slot::Waiting).collect(),
            started: 0,
            running: 0,
            tally: Tally { total: n, ..Tally::default() },
            mailbox,
            timer: None,
            timed_out: false,
            decided: None,
        }));
        if let Some(limit) = timeout {
            match self.arm(slf, limit, SIG_JOIN) {
                Ok(t) => {
                    if let Some(sp) = self.split.as_mut() {
                        sp.timer = Some(t);
                    }
                }
                Err(e) => return self.end(py, Err(e)),
            }
        }
        self.split_step(slf);
    }

    /// Reads finished branches, decides, starts or cancels branches, then waits or ends.
    pub(super) fn split_step(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        let Some(mut sp) = self.split.take() else { return };
        collect(py, &mut sp);
        if sp.decided.is_none() {
            let strategy = sp.handler.get().split.as_ref().map(|s| s.strategy);
            let verdict = match strategy {
                Some(s) => s.decide(sp.tally, sp.timed_out),
                None => Verdict::Failed,
            };
            match verdict {
                Verdict::Pending => {
                    if let Err(e) = self.start_branches(slf, &mut sp) {
                        self.split = Some(sp);
                        return self.interrupt_split(slf, e);
                    }
                }
                Verdict::Succeeded => sp.decided = Some(Decision::Succeeded),
                Verdict::Failed => sp.decided = Some(Decision::Failed),
            }
            if sp.decided.is_some() {
                cancel_running(py, &mut sp);
            }
        }
        if sp.decided.is_some() && sp.running == 0 {
            return self.finish_split(slf, *sp);
        }
        let waited = super::interrupts::running_loop(py)
            .and_then(|lp| lp.call_method0(intern!(py, "create_future")))
            .and_then(|fut| {
                *sp.mailbox.get().wake.lock() = Some(fut.clone().unbind());
                self.install(Phase::Split, fut)
            });
        self.split = Some(sp);
        if let Err(e) = waited {
            self.interrupt_split(slf, e);
        }
    }

    fn start_branches(&mut self, slf: &Bound<'_, Self>, sp: &mut SplitRun) -> PyResult<()> {
        let py = slf.py();
        let Some(spec) = sp.handler.get().split.as_ref() else { return Ok(()) };
        let limit = spec.bulkhead.unwrap_or(usize::MAX);
        while sp.started < spec.branches.len() && sp.running < limit {
            let i = sp.started;
            let branch = self.branch_run(py, spec.branches[i].clone_ref(py));
            let branch = Py::new(py, branch)?;
            let task = super::interrupts::running_loop(py)?
                .call_method1(intern!(py, "create_task"), (branch,))?;
            let done = BranchDone { mailbox: sp.mailbox.clone_ref(py), index: i };
            task.call_method1(intern!(py, "add_done_callback"), (done,))?;
            sp.tasks[i] = Some(task.unbind());
            sp.slots[i] = Slot::Running;
            sp.started += 1;
            sp.running += 1;
        }
        Ok(())
    }

    /// The parent was cancelled or timed out while waiting on its branches.
    pub(super) fn split_raised(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let external = if self.cancel_owed { self.settle_cancel(py) } else { false };
        let e = if external || self.signals & (SIG_CANCEL | SIG_TOTAL) == 0 {
            self.notify_cancelled(py, plan);
            err
        } else if self.signals & SIG_CANCEL != 0 {
            self.notify_cancelled(py, plan);
            self.cancel_error(py, plan)
        } else {
            self.total_timeout_error(py, plan, false)
        };
        self.interrupt_split(slf, e);
    }

    fn interrupt_split(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        let Some(sp) = self.split.as_mut() else { return self.fail(slf, err) };
        sp.decided = Some(Decision::Interrupted(err.into_value(py).into_any()));
        cancel_running(py, sp);
        self.split_step(slf);
    }

    /// A loop callback for the join timeout.
    pub(super) fn split_timed_out(&mut self, py: Python<'_>) {
        if let Some(sp) = self.split.as_mut() {
            sp.timer = None;
            sp.timed_out = true;
            sp.mailbox.get().wake(py);
        }
    }

    fn finish_split(&mut self, slf: &Bound<'_, Self>, mut sp: SplitRun) {
        let py = slf.py();
        if let Some(t) = sp.timer.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let successes = PyList::empty(py);
        let errors = PyList::empty(py);
        let cancelled = PyList::empty(py);
        for (i, slot) in sp.slots.iter().enumerate() {
            let _ = match slot {
                Slot::Succeeded(v) => successes.append((i, v.bind(py))),
                Slot::Failed(e) => errors.append((i, e.bind(py))),
                Slot::Cancelled | Slot::Waiting | Slot::Running => cancelled.append(i),
            };
        }
        let Some(spec) = sp.handler.get().split.as_ref() else { return };
        match sp.decided.take() {
            Some(Decision::Succeeded) => {
                let made = SPLIT_RESULT
                    .import(py, "cano.split", "SplitResult")
                    .and_then(|c| c.call1((successes, errors, cancelled)));
                let overlay = made.and_then(|result| {
                    let key = SPLIT_RESULT_KEY.import(py, "cano.resources", "SPLIT_RESULT_KEY")?;
                    let extra = PyDict::new(py);
                    extra.set_item(key, result)?;
                    self.resources.bind(py).call_method1(intern!(py, "_overlay"), (extra,))
                });
                match overlay {
                    Ok(o) => {
                        self.overlay = Some((spec.join_state, o.unbind()));
                        self.advance(slf, plan, spec.join_state);
                    }
                    Err(e) => self.fail(slf, e),
                }
            }
            Some(Decision::Interrupted(err)) => {
                self.fail(slf, PyErr::from_value(err.into_bound(py)));
            }
            Some(Decision::Failed) | None => {
                let message =
                    SPLIT_MESSAGE.import(py, "cano.split", "_split_message").and_then(|f| {
                        f.call1((
                            plan.label(py, self.cursor.state()),
                            spec.strategy_repr.bind(py),
                            sp.tally.total,
                            sp.tally.succeeded,
                            &errors,
                            sp.timed_out,
                            spec.timeout,
                        ))
                    });
                let err = message.and_then(|m| m.extract::<String>()).map(|m| {
                    let exceptions = PyList::empty(py);
                    for item in errors.iter() {
                        if let Ok(e) = item.get_item(1) {
                            let _ = exceptions.append(e);
                        }
                    }
                    let kind = EngineError::Workflow { exceptions: Some(exceptions) };
                    self.engine_error_at(py, plan, kind, m, 1, None)
                });
                let err = err.unwrap_or_else(|e| e);
                self.fail(slf, err);
            }
        }
    }
}

/// Moves finished branches from the mailbox into their slots.
fn collect(py: Python<'_>, sp: &mut SplitRun) {
    let finished: Vec<usize> = std::mem::take(&mut *sp.mailbox.get().done.lock());
    for i in finished {
        let Some(task) = sp.tasks.get_mut(i).and_then(Option::take) else { continue };
        let task = task.bind(py);
        sp.running = sp.running.saturating_sub(1);
        let cancelled =
            task.call_method0(intern!(py, "cancelled")).and_then(|c| c.extract()).unwrap_or(false);
        // What the branch produced: its value, or the exception it would raise alone.
        let (end, value) = if cancelled {
            let err = match task.call_method0(intern!(py, "result")) {
                Err(e) => e.into_value(py).into_any(),
                Ok(v) => v.unbind(),
            };
            (BranchEnd::Cancelled, err)
        } else {
            match task.call_method0(intern!(py, "exception")) {
                Ok(exc) if !exc.is_none() => (BranchEnd::Raised, exc.unbind()),
                Ok(_) => match task.call_method0(intern!(py, "result")) {
                    Ok(v) => (BranchEnd::Returned, v.unbind()),
                    Err(e) => (BranchEnd::Raised, e.into_value(py).into_any()),
                },
                Err(e) => (BranchEnd::Raised, e.into_value(py).into_any()),
            }
        };
        sp.slots[i] = match sp.tally.record(end, sp.decided.is_some()) {
            Counted::Success => Slot::Succeeded(value),
            Counted::Failure => Slot::Failed(value),
            Counted::Cancelled => Slot::Cancelled,
        };
    }
}

/// Cancels every branch still running (they report through the mailbox when stopped).
fn cancel_running(py: Python<'_>, sp: &mut SplitRun) {
    for (i, task) in sp.tasks.iter().enumerate() {
        if let (Some(task), Slot::Running) = (task, &sp.slots[i]) {
            let _ = task.bind(py).call_method0(intern!(py, "cancel"));
        }
    }
}
