//! The dispatcher: one run of a workflow, as a coroutine implemented in Rust.
//!
//! `Workflow.orchestrate()` returns a [`Run`]. The asyncio task awaiting it steps it with
//! `__next__`/`send`/`throw`; each step resumes the current *inner* awaitable (a task
//! attempt, a retry sleep, a checkpoint write, resource setup or teardown, the
//! compensation drain) with `PyIter_Send`. When a task returns its next state, the FSM
//! moves and the next task's coroutine starts in the same step, so a transition costs one
//! Python call and a few Rust operations: no `asyncio.Task` per state, no extra loop
//! iteration, no thread hop. When user code suspends, the future it yielded goes straight
//! up to the event loop.
//!
//! Where each thing happens (the decisions themselves are `cano_core`'s):
//! - [`start`]: making a run — a fresh start, or a resume that first loads the log;
//! - [`transition`]: entering a state and resolving the next one from what a task returned;
//! - [`attempt`]: one task attempt and the retry loop around it;
//! - [`interrupts`]: attempt/total timeouts and token cancellation;
//! - [`journal`]: every checkpoint write and the end of the log (the store seam);
//! - [`stepped`], [`saga`], [`split`]: stepped tasks, compensation, split/join;
//! - [`failures`]: the engine errors a run raises, with state, attempt and path;
//! - [`events`]: observer events; [`protocol`]: the coroutine protocol's edges.

mod attempt;
mod events;
mod failures;
mod interrupts;
mod journal;
mod parked;
mod protocol;
mod records;
mod saga;
mod split;
mod start;
mod stepped;
mod transition;

pub use journal::Committer;
pub use split::{BranchDone, Mailbox};
pub use start::{resume_run, start_run};

use crate::cancel::CancellationToken;
use crate::gc::PyGcTraverse;
use crate::gc_traverse;
use crate::plan::{Handler, Plan};
use cano_core::{Cursor, Permit, StateId};
use interrupts::{SIG_CANCEL, SIG_TOTAL};
use journal::Journal;
use protocol::{awaitable, normalise_exception, resume, Input, Sent};
use pyo3::exceptions::{PyException, PyGeneratorExit, PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::time::Instant;

/// What the run is waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Created, not stepped yet.
    Init,
    /// Driving `store.load_run()` of a resumed run.
    Loading,
    /// Driving `Resources._acquire()`.
    Setup,
    /// Driving a checkpoint append; then do `After`.
    Saving(After),
    /// Driving a task attempt.
    Attempt,
    /// Driving the sleep before a retry.
    Sleep,
    /// Waiting for the task's rate limiter before an attempt.
    Throttle,
    /// Waiting for split branches to report.
    Split,
    /// Driving `store.clear()` (or `store.run_ended(..., clear_log=True)`) after success or
    /// a clean rollback.
    Clearing,
    /// Driving `store.run_started()`; then set up the resources.
    Registering,
    /// Driving `store.run_ended()`; then end with the kept outcome.
    Recording,
    /// Driving the compensation drain.
    Draining,
    /// Yielded to the event loop once (a loop that did not suspend by itself); then `Resume`.
    Yield(Resume),
    /// Driving `Resources._release()`; the outcome is kept aside.
    Teardown,
    /// Finished; stepping again is an error.
    Done,
}

/// What a run does after yielding to the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Start the attempt the retry decision asked for.
    Attempt,
    /// Run the next step of a stepped task.
    NextStep,
}

/// What follows a checkpoint write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Run the state's task (state-entry row).
    Dispatch,
    /// The state is an exit: clear the log and finish (state-entry row).
    Exit,
    /// Run the next step of a stepped task (cursor row).
    Step,
    /// Move to this state (compensation row).
    Move(StateId),
}

static CANCELLED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static RUN_ID: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// One workflow run; a coroutine (`asyncio.iscoroutine(run)` is true).
#[pyclass(module = "cano._core", name = "Run")]
pub struct Run {
    plan: Py<Plan>,
    resources: Py<PyAny>,
    lease: Option<Py<PyAny>>,
    token: Option<Py<CancellationToken>>,
    inner: Option<Py<PyAny>>,
    phase: Phase,
    cursor: Cursor,
    attempt: u32,
    /// Signals received (`SIG_*`).
    signals: u8,
    /// The attempt in flight must not be interrupted (a saga step).
    uninterruptible: bool,
    /// We called `task.cancel()` and owe the task an `uncancel()`.
    cancel_owed: bool,
    cancel_base: i64,
    task: Option<Py<PyAny>>,
    attempt_timer: Option<Py<PyAny>>,
    total_timer: Option<Py<PyAny>>,
    listener: Option<u64>,
    started: Option<Instant>,
    acquired: bool,
    /// The run's checkpoint log (a store and a workflow id), if it has one.
    journal: Option<Journal>,
    /// The workflow id, for observers (also set without a store).
    workflow_id: Option<Py<PyString>>,
    /// The cursor handed to the next step of a stepped task.
    step_cursor: Option<Py<PyAny>>,
    /// A resumed run's cursor for the state it resumes in (consumed on first entry).
    resume_cursor: Option<(StateId, Py<PyAny>)>,
    /// The saga stack: (task name, output JSON).
    stack: Vec<(Py<PyString>, Py<PyBytes>)>,
    /// The error being compensated for, while the drain runs.
    failure: Option<Py<PyAny>>,
    /// The run's result while cleanup runs: the final state, or the exception to raise.
    outcome: Option<Result<Py<PyAny>, Py<PyAny>>>,
    /// The run continues a checkpoint log.
    resumed: bool,
    /// A `Phase::Yield` has returned control to the event loop once.
    yielded: bool,
    /// The next entry is a resumed run re-entering the state its log ends in: that visit's
    /// entry row is already in the log, so none is written (a new row would read as a new
    /// visit, and the visit's cursor would be lost).
    reentering: bool,
    /// `on_run_start` fired: `on_run_finish` is owed.
    began: bool,
    /// The run's record in a store that keeps them.
    records: records::Records,
    /// `(resources,)`, the argument tuple of most task calls.
    res_args: Option<Py<PyTuple>>,
    /// The circuit-breaker permit of the attempt in flight.
    permit: Option<Permit>,
    /// The rate limiter granted the attempt about to start.
    throttled: bool,
    /// Branch mode: run only this handler's retry loop and return its raw result.
    branch: Option<Py<Handler>>,
    /// The split in progress.
    split: Option<Box<split::SplitRun>>,
    /// Resources seen by the join state's task (with the split result), by state.
    overlay: Option<(StateId, Py<PyAny>)>,
    /// The run's own waiter for its durable rows (see [`parked`]).
    parker: Option<Py<crate::store::Waiter>>,
    /// What a run driven while its task was parked has for the task's next step: the
    /// awaitable to yield, or the exception (`StopIteration` at the end) to raise.
    handoff: Option<Result<Py<PyAny>, Py<PyAny>>>,
}

gc_traverse!(Run {
    plan,
    resources,
    lease,
    token,
    inner,
    task,
    attempt_timer,
    total_timer,
    journal,
    workflow_id,
    step_cursor,
    resume_cursor,
    stack,
    failure,
    outcome,
    res_args,
    branch,
    split,
    overlay,
    parker,
    handoff
});

impl Run {
    fn new(
        plan: Py<Plan>,
        cursor: Cursor,
        resources: Py<PyAny>,
        lease: Option<Py<PyAny>>,
        token: Option<Py<CancellationToken>>,
    ) -> Self {
        Run {
            plan,
            resources,
            lease,
            token,
            inner: None,
            phase: Phase::Init,
            cursor,
            attempt: 0,
            signals: 0,
            uninterruptible: false,
            cancel_owed: false,
            cancel_base: 0,
            task: None,
            attempt_timer: None,
            total_timer: None,
            listener: None,
            started: None,
            acquired: false,
            journal: None,
            workflow_id: None,
            step_cursor: None,
            resume_cursor: None,
            stack: Vec::new(),
            failure: None,
            outcome: None,
            resumed: false,
            reentering: false,
            yielded: false,
            began: false,
            records: records::Records::Off,
            res_args: None,
            permit: None,
            throttled: false,
            branch: None,
            split: None,
            overlay: None,
            parker: None,
            handoff: None,
        }
    }

    /// The handler of the current state (or the branch this run executes).
    #[inline]
    fn handler<'a>(&'a self, plan: &'a Plan) -> Option<&'a Py<Handler>> {
        match &self.branch {
            Some(b) => Some(b),
            None => plan.handler(self.cursor.state()),
        }
    }

    /// Makes the first step raise `err` (a validation error found when starting).
    fn fail_at_start(&mut self, py: Python<'_>, err: PyErr) {
        self.phase = Phase::Done;
        self.outcome = Some(Err(err.into_value(py).into_any()));
    }

    // ----- stepping ---------------------------------------------------------------------

    fn drive(&mut self, slf: &Bound<'_, Self>, mut input: Input) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if let Some(handoff) = self.handoff.take() {
            match (handoff, input) {
                (Ok(awaitable), Input::Send(_)) => return Ok(awaitable),
                // Thrown in instead: it goes where the run waits.
                (Ok(_), thrown) => input = thrown,
                (Err(exc), _) => return Err(PyErr::from_value(exc.into_bound(py))),
            }
        }
        loop {
            match self.inner.take() {
                Some(inner) => {
                    // A Bound drops with a plain decref (a Py would check the GIL first).
                    let inner = inner.into_bound(py);
                    let sent = resume(py, &inner, input);
                    input = Input::Send(None);
                    match sent {
                        Sent::Yield(y) => {
                            self.inner = Some(inner.unbind());
                            return Ok(y.unbind());
                        }
                        Sent::Return(v) => {
                            drop(inner);
                            self.on_return(slf, v);
                        }
                        Sent::Raise(e) => {
                            drop(inner);
                            self.on_raise(slf, e);
                        }
                    }
                }
                None => match (self.phase, input) {
                    (Phase::Init, Input::Send(_)) => {
                        input = Input::Send(None);
                        self.begin(slf);
                    }
                    (Phase::Done, _) => return self.take_outcome(py),
                    (Phase::Yield(resume), Input::Send(_)) => {
                        input = Input::Send(None);
                        self.yielded = false;
                        self.resume_after_yield(slf, resume);
                    }
                    (Phase::Yield(_), Input::Throw(e)) => {
                        // Interrupted while yielding: as if the attempt had been.
                        input = Input::Send(None);
                        self.yielded = false;
                        self.attempt_raised(slf, e);
                    }
                    (_, Input::Throw(e)) => {
                        // Thrown in before the first step: nothing started, nothing to undo.
                        input = Input::Send(None);
                        self.disarm(py);
                        self.phase = Phase::Done;
                        self.outcome = Some(Err(e.into_value(py).into_any()));
                    }
                    (_, Input::Send(_)) => {
                        return Err(PyRuntimeError::new_err(
                            "cano: the run has nothing to resume (internal error)",
                        ));
                    }
                },
            }
            if self.phase == Phase::Done && self.inner.is_none() {
                return self.take_outcome(py);
            }
            if matches!(self.phase, Phase::Yield(_)) && self.inner.is_none() && !self.yielded {
                // A bare `yield` hands the step back to the event loop, which steps the task
                // again on its next iteration (what `asyncio.sleep(0)` does).
                self.yielded = true;
                return Ok(py.None());
            }
        }
    }

    /// Yields to the event loop before going on with `resume` — for engine loops that would
    /// otherwise never suspend (zero-delay retries, store-less stepped tasks).
    fn yield_then(&mut self, resume: Resume) {
        self.phase = Phase::Yield(resume);
    }

    fn resume_after_yield(&mut self, slf: &Bound<'_, Self>, resume: Resume) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        match resume {
            Resume::NextStep => self.next_step_now(slf, plan),
            Resume::Attempt => match self.handler(plan).map(|h| h.bind(py).clone()) {
                Some(h) if self.signals & (SIG_CANCEL | SIG_TOTAL) == 0 => {
                    self.start_attempt(slf, plan, h.get())
                }
                Some(_) => self.step_interrupted(slf, plan),
                None => self.end(py, Err(PyRuntimeError::new_err("cano: handler missing"))),
            },
        }
    }

    fn take_outcome(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.outcome.take() {
            Some(Ok(state)) => Err(PyStopIteration::new_err((state,))),
            Some(Err(exc)) => Err(PyErr::from_value(exc.into_bound(py))),
            None => Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine")),
        }
    }

    /// Installs `value` as the inner awaitable of `phase`.
    fn install(&mut self, phase: Phase, value: Bound<'_, PyAny>) -> PyResult<()> {
        match awaitable(value) {
            Ok(it) => {
                self.phase = phase;
                self.inner = Some(it.unbind());
                Ok(())
            }
            Err(v) => Err(PyRuntimeError::new_err(format!(
                "cano: expected an awaitable, got {}",
                v.repr().map(|r| r.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// First step: load the log of a resumed run, or set up resources, or go straight to
    /// the first state.
    fn begin(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        if self.branch.is_some() {
            let plan_ref = self.plan.bind(py).clone();
            return self.dispatch(slf, plan_ref.get());
        }
        if let Some(journal) = &self.journal {
            // What a task reads as the id of the durable run it belongs to (wait states
            // consume the run's signals): set in the context of the task driving the run.
            let set = RUN_ID.import(py, "cano.records", "RUN_ID").and_then(|var| {
                var.call_method1(intern!(py, "set"), (journal.workflow_id.bind(py),))
            });
            if let Err(e) = set {
                return self.end(py, Err(e));
            }
        }
        if self.resumed && self.journal.as_ref().is_some_and(|j| !j.loaded) {
            return self.load_log(py);
        }
        self.set_up(slf);
    }

    /// Sets up the resources (when they have a lifecycle), then enters the first state.
    fn set_up(&mut self, slf: &Bound<'_, Self>) {
        if self.register(slf) {
            return; // set_up again once the store has the run's record
        }
        let py = slf.py();
        if let Some(lease) = &self.lease {
            let acquired = lease.bind(py).call_method0(intern!(py, "_acquire"));
            if let Err(e) = acquired.and_then(|coro| self.install(Phase::Setup, coro)) {
                self.end(py, Err(e));
            }
            return;
        }
        self.begin_states(slf);
    }

    /// After setup: arm the total timeout and the token, then enter the first state.
    fn begin_states(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        let plan = self.plan.bind(py).clone();
        if let Some(limit) = plan.get().total_timeout {
            self.started = Some(Instant::now());
            match self.arm(slf, limit, SIG_TOTAL) {
                Ok(t) => self.total_timer = Some(t),
                Err(e) => return self.end(py, Err(e)),
            }
        }
        if let Some(token) = &self.token {
            let token = token.clone_ref(py);
            if let Err(e) = self.listen(slf, token.get()) {
                return self.end(py, Err(e));
            }
        }
        self.began = true;
        self.run_started_events(py, plan.get());
        self.enter(slf);
    }

    /// The inner awaitable returned `value`.
    fn on_return(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
        let py = slf.py();
        match self.phase {
            Phase::Attempt => self.attempt_returned(slf, value),
            Phase::Sleep | Phase::Throttle => {
                self.throttled = self.phase == Phase::Throttle;
                let plan_ref = self.plan.bind(py).clone();
                let plan = plan_ref.get();
                match self.handler(plan).map(|h| h.bind(py).clone()) {
                    Some(h) => self.start_attempt(slf, plan, h.get()),
                    None => self.end(py, Err(PyRuntimeError::new_err("cano: handler missing"))),
                }
            }
            Phase::Loading => self.loaded(slf, value),
            Phase::Saving(after) => self.saved(slf, after),
            Phase::Split => self.split_step(slf),
            Phase::Clearing => self.cleared(py),
            Phase::Registering => self.set_up(slf),
            Phase::Recording => self.cleared(py),
            Phase::Draining => self.drained(slf, value),
            Phase::Setup => {
                self.acquired = true;
                self.begin_states(slf);
            }
            Phase::Teardown => {
                self.acquired = false;
                self.phase = Phase::Done;
            }
            Phase::Init | Phase::Done | Phase::Yield(_) => {}
        }
    }

    /// The inner awaitable raised `err`.
    fn on_raise(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        match self.phase {
            Phase::Attempt | Phase::Sleep | Phase::Throttle => self.attempt_raised(slf, err),
            Phase::Loading => self.load_failed(py, err),
            Phase::Saving(_) => self.save_failed(slf, err),
            Phase::Split => self.split_raised(slf, err),
            Phase::Clearing => self.clear_failed(py, err),
            Phase::Registering => self.register_failed(py, err),
            Phase::Recording => {
                // The outcome stands; the store did not record it (the record stays RUNNING).
                if !is_cancel_error(py, &err) {
                    err.write_unraisable(py, None);
                } else if self.cancel_owed {
                    self.settle_cancel(py);
                }
                self.cleared(py);
            }
            Phase::Draining if crate::errors::is_lease_lost(py, &err) => {
                // The lease was lost before anything was undone: the new owner carries the
                // saga on; this worker compensates nothing.
                let plan_ref = self.plan.bind(py).clone();
                self.abandon(py, plan_ref.get(), err);
            }
            Phase::Draining => {
                // The drain itself failed (cancelled from outside, or an engine bug).
                self.stack.clear();
                self.end(py, Err(err));
            }
            Phase::Setup => self.end(py, Err(err)),
            Phase::Teardown => {
                self.acquired = false;
                self.phase = Phase::Done;
                let cancel_like = !err.is_instance_of::<PyException>(py);
                if cancel_like && matches!(self.outcome, Some(Ok(_)) | None) {
                    self.outcome = Some(Err(err.into_value(py).into_any()));
                }
            }
            Phase::Init | Phase::Done | Phase::Yield(_) => {
                self.phase = Phase::Done;
                self.outcome = Some(Err(err.into_value(py).into_any()));
            }
        }
    }

    /// Fails the run with `err`: undoes finished saga steps first, when there are any.
    fn fail(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        if self.stack.is_empty() {
            return self.end(slf.py(), Err(err));
        }
        self.start_drain(slf, err);
    }

    /// Fails where no task is in flight (a refused boundary): still undoes finished steps.
    fn fail_now(&mut self, py: Python<'_>, err: PyErr) {
        if self.stack.is_empty() {
            return self.end(py, Err(err));
        }
        self.failure = Some(err.into_value(py).into_any());
        self.phase = Phase::Draining;
        self.resume_drain(py);
    }

    /// Ends the run with `outcome`; tears resources down first when they were set up.
    fn end(&mut self, py: Python<'_>, outcome: PyResult<Py<PyAny>>) {
        if self.record_end(py, &outcome).is_some() {
            return; // ends once the store has recorded the outcome
        }
        self.disarm(py);
        self.parker = None;
        if std::mem::take(&mut self.began) {
            self.finished_event(py, outcome.as_ref());
        }
        self.outcome = Some(outcome.map_err(|e| e.into_value(py).into_any()));
        if self.acquired {
            if let Some(lease) = &self.lease {
                let lease = lease.clone_ref(py);
                let released = lease.bind(py).call_method0(intern!(py, "_release"));
                match released.and_then(|coro| self.install(Phase::Teardown, coro)) {
                    Ok(()) => return,
                    Err(e) => e.write_unraisable(py, None),
                }
            }
        }
        self.phase = Phase::Done;
    }
}

#[pymethods]
impl Run {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let mut run = slf.try_borrow_mut().map_err(|_| already_running())?;
        run.drive(slf, Input::Send(None))
    }

    fn send(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let mut run = slf.try_borrow_mut().map_err(|_| already_running())?;
        let value = if value.is_none(slf.py()) { None } else { Some(value) };
        run.drive(slf, Input::Send(value))
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let exc = normalise_exception(py, typ, val, tb)?;
        if exc.is_instance_of::<PyGeneratorExit>() {
            Self::close(slf)?;
            return Err(PyErr::from_value(exc));
        }
        let mut run = slf.try_borrow_mut().map_err(|_| already_running())?;
        run.drive(slf, Input::Throw(PyErr::from_value(exc)))
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut run = slf.try_borrow_mut().map_err(|_| already_running())?;
        let inner = run.inner.take();
        run.handoff = None;
        run.parker = None;
        let was_acquired = run.acquired && run.phase != Phase::Teardown;
        run.disarm(py);
        run.phase = Phase::Done;
        run.outcome = None;
        run.acquired = false;
        let lease = run.lease.as_ref().map(|l| l.clone_ref(py));
        drop(run);
        if was_acquired {
            if let Some(lease) = lease {
                release_in_background(py, lease.bind(py));
            }
        }
        if let Some(inner) = inner {
            if let Ok(close) = inner.bind(py).getattr(intern!(py, "close")) {
                close.call0()?;
            }
        }
        Ok(())
    }

    /// Loop callback for timers (`kind` is an internal signal number). A run that is busy
    /// (being stepped) when it arrives gets it again on the next loop turn: never dropped.
    fn _signal(slf: &Bound<'_, Self>, kind: u8) -> PyResult<()> {
        match slf.try_borrow_mut() {
            Ok(mut run) => {
                run.signal(slf.py(), kind);
                Ok(())
            }
            Err(_) => redeliver(slf, intern!(slf.py(), "_signal"), Some(kind)),
        }
    }

    /// Loop callback for the cancellation token (redelivered like `_signal` when busy).
    fn _on_cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.try_borrow_mut() {
            Ok(mut run) => {
                run.listener = None;
                run.signal(slf.py(), SIG_CANCEL);
                Ok(())
            }
            Err(_) => redeliver(slf, intern!(slf.py(), "_on_cancel"), None),
        }
    }

    // These never borrow the run: asyncio reads them (task repr) while the run executes.
    #[getter]
    fn __name__(_slf: &Bound<'_, Self>) -> &'static str {
        "orchestrate"
    }

    #[getter]
    fn __qualname__(_slf: &Bound<'_, Self>) -> &'static str {
        "Workflow.orchestrate"
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        let py = slf.py();
        match slf.try_borrow() {
            Ok(run) => {
                let plan = run.plan.get();
                format!(
                    "<cano Run state={} phase={:?}>",
                    plan.label_text(py, run.cursor.state()),
                    run.phase
                )
            }
            Err(_) => "<cano Run (running)>".to_owned(),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.py_gc_traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.inner = None;
        self.task = None;
        self.attempt_timer = None;
        self.total_timer = None;
        self.outcome = None;
        self.lease = None;
        self.token = None;
        self.journal = None;
        self.step_cursor = None;
        self.resume_cursor = None;
        self.stack.clear();
        self.failure = None;
        self.branch = None;
        self.res_args = None;
        self.split = None;
        self.overlay = None;
        self.parker = None;
        self.handoff = None;
        self.phase = Phase::Done;
    }
}

impl Drop for Run {
    /// A run that was never stepped warns, as CPython does for a coroutine never awaited.
    fn drop(&mut self) {
        if self.phase != Phase::Init || self.branch.is_some() {
            return;
        }
        Python::attach(|py| {
            let warned = PyErr::warn(
                py,
                &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(),
                c"coroutine 'Workflow.orchestrate' was never awaited",
                1,
            );
            if let Err(e) = warned {
                e.write_unraisable(py, None);
            }
        });
    }
}

fn is_cancel_error(py: Python<'_>, err: &PyErr) -> bool {
    CANCELLED_ERROR.import(py, "asyncio", "CancelledError").is_ok_and(|c| err.is_instance(py, c))
}

fn already_running() -> PyErr {
    pyo3::exceptions::PyValueError::new_err("coroutine already executing")
}

/// Schedules `method(arg)` of a busy run again on the next loop turn.
#[cold]
fn redeliver(slf: &Bound<'_, Run>, method: &Bound<'_, PyString>, arg: Option<u8>) -> PyResult<()> {
    let py = slf.py();
    let callback = slf.getattr(method)?;
    let event_loop = interrupts::running_loop(py)?;
    match arg {
        Some(a) => event_loop.call_method1(intern!(py, "call_soon"), (callback, a))?,
        None => event_loop.call_method1(intern!(py, "call_soon"), (callback,))?,
    };
    Ok(())
}

static RELEASE_LATER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A closed run cannot await its teardown: it runs as a background task that
/// `cano.resources` keeps a strong reference to until it is done.
#[cold]
fn release_in_background(py: Python<'_>, lease: &Bound<'_, PyAny>) {
    let released = RELEASE_LATER
        .import(py, "cano.resources", "_release_in_background")
        .and_then(|f| f.call1((lease,)));
    if let Err(e) = released {
        e.write_unraisable(py, None);
    }
}
