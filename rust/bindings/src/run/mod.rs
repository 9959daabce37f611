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
//! - [`protocol`]: resuming inner awaitables, normalising `throw()` arguments;
//! - [`attempt`]: one task attempt and the retry loop, breaker and limiter around it;
//! - [`signals`]: attempt/total timeouts and token cancellation;
//! - [`durable`]: checkpoint rows, stepped cursors, the compensation stack and drain;
//! - [`split`]: split states, their branches and the join;
//! - [`report`]: engine errors with state/attempt/path, and observer events.

mod attempt;
mod durable;
mod protocol;
mod report;
mod signals;
mod split;

pub use durable::Committer;
pub use split::{BranchDone, Mailbox};

use crate::cancel::CancellationToken;
use crate::errors::{self, Context};
use crate::workflow::{Handler, Hook, Plan};
use cano_core::circuit::{Permit, Rejection, SystemClock};
use cano_core::fsm::{Cursor, Entry, HandlerKind, StateId};
use cano_core::retry::Verdict;
use cano_core::CoreError;
use protocol::{awaitable, normalise_exception, resume, Input, Sent};
use pyo3::exceptions::{PyException, PyGeneratorExit, PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use signals::{SIG_ATTEMPT, SIG_CANCEL, SIG_TOTAL};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the run is waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Created, not stepped yet.
    Init,
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
    /// Driving `store.clear()` after success or a clean rollback.
    Clearing,
    /// Driving the compensation drain.
    Draining,
    /// Driving `Resources._release()`; the outcome is kept aside.
    Teardown,
    /// Finished; stepping again is an error.
    Done,
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

/// Where a run starts from: a fresh start, or what a resume read from the log.
#[derive(Default)]
pub struct Origin {
    pub workflow_id: Option<Py<PyString>>,
    pub sequence: u64,
    pub path: Vec<StateId>,
    /// Decoded cursors of stepped states, consumed on first entry.
    pub cursors: Vec<(StateId, Py<PyAny>)>,
    /// The rehydrated compensation stack: (task name, output JSON).
    pub stack: Vec<(Py<PyString>, Py<PyBytes>)>,
    /// The run continues a checkpoint log.
    pub resumed: bool,
}

static CANCELLED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SLEEP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
    workflow_id: Option<Py<PyString>>,
    /// The next checkpoint sequence number (shared with a stream task's committer).
    sequence: Arc<AtomicU64>,
    /// The cursor handed to the next step of a stepped task.
    step_cursor: Option<Py<PyAny>>,
    resume_cursors: Vec<(StateId, Py<PyAny>)>,
    stack: Vec<(Py<PyString>, Py<PyBytes>)>,
    /// The error being compensated for, while the drain runs.
    failure: Option<Py<PyAny>>,
    /// The run's result while cleanup runs: the final state, or the exception to raise.
    outcome: Option<Result<Py<PyAny>, Py<PyAny>>>,
    /// The run continues a checkpoint log.
    resumed: bool,
    /// `on_run_start` fired: `on_run_finish` is owed.
    began: bool,
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
}

impl Run {
    pub fn new(
        plan: Py<Plan>,
        initial: StateId,
        resources: Py<PyAny>,
        lease: Option<Py<PyAny>>,
        token: Option<Py<CancellationToken>>,
        origin: Origin,
    ) -> Self {
        let cursor = if origin.path.is_empty() {
            Cursor::new(initial)
        } else {
            Cursor::resumed(initial, origin.path)
        };
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
            workflow_id: origin.workflow_id,
            sequence: Arc::new(AtomicU64::new(origin.sequence)),
            step_cursor: None,
            resume_cursors: origin.cursors,
            stack: origin.stack,
            failure: None,
            outcome: None,
            resumed: origin.resumed,
            began: false,
            res_args: None,
            permit: None,
            throttled: false,
            branch: None,
            split: None,
            overlay: None,
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
    pub fn fail_at_start(&mut self, py: Python<'_>, err: PyErr) {
        self.phase = Phase::Done;
        self.outcome = Some(Err(err.into_value(py).into_any()));
    }

    // ----- stepping ---------------------------------------------------------------------

    fn drive(&mut self, slf: &Bound<'_, Self>, mut input: Input) -> PyResult<Py<PyAny>> {
        let py = slf.py();
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
    fn install(&mut self, py: Python<'_>, phase: Phase, value: Bound<'_, PyAny>) -> PyResult<()> {
        match awaitable(value) {
            Ok(it) => {
                self.phase = phase;
                self.inner = Some(it.unbind());
                Ok(())
            }
            Err(v) => {
                let _ = py;
                Err(PyRuntimeError::new_err(format!(
                    "cano: expected an awaitable, got {}",
                    v.repr().map(|r| r.to_string()).unwrap_or_default()
                )))
            }
        }
    }

    /// First step: set up resources, or go straight to the first state.
    fn begin(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        if self.branch.is_some() {
            let plan_ref = self.plan.bind(py).clone();
            return self.dispatch(slf, plan_ref.get());
        }
        if let Some(lease) = &self.lease {
            let acquired = lease.bind(py).call_method0(intern!(py, "_acquire"));
            if let Err(e) = acquired.and_then(|coro| self.install(py, Phase::Setup, coro)) {
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
        plan.get().notify(py, Hook::RunStart, (self.workflow_id.as_ref().map(|i| i.bind(py)),));
        if self.resumed {
            if let Some(id) = &self.workflow_id {
                let resumed_at = self.sequence.load(Ordering::Relaxed).saturating_sub(1);
                plan.get().notify(py, Hook::Resume, (id.bind(py), resumed_at));
            }
        }
        self.enter(slf);
    }

    /// Enters the cursor's state: boundary checks, observers, checkpoint, then exit or
    /// dispatch.
    fn enter(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        let s = self.cursor.state();
        if self.signals & SIG_CANCEL != 0 || self.token.as_ref().is_some_and(|t| t.get().fired()) {
            return self.cancelled_at_boundary(py, plan);
        }
        if plan.observes(Hook::StateEnter) {
            plan.notify(py, Hook::StateEnter, (plan.label(py, s),));
        }
        match self.cursor.enter(&plan.graph) {
            Some(Entry::Exit) => {
                if plan.store.is_some() {
                    self.save_entry(slf, plan, None, After::Exit);
                } else {
                    let state = plan.states[s as usize].clone_ref(py);
                    self.end(py, Ok(state));
                }
            }
            Some(Entry::Dispatch(kind)) => {
                if plan.store.is_some() && kind.checkpointed() {
                    self.save_entry(slf, plan, plan.handler(s), After::Dispatch);
                } else {
                    self.dispatch(slf, plan);
                }
            }
            None => {
                let msg = format!("no task registered for state {}", plan.label(py, s));
                let err = self.error(py, plan, "WorkflowError", msg, None, None);
                self.fail(slf, err);
            }
        }
    }

    /// Starts the first attempt of the current state's task.
    fn dispatch(&mut self, slf: &Bound<'_, Self>, plan: &Plan) {
        let py = slf.py();
        let s = self.cursor.state();
        if self.signals & SIG_TOTAL != 0 {
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

    /// The inner awaitable returned `value`.
    fn on_return(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
        let py = slf.py();
        match self.phase {
            Phase::Attempt => {
                if self.attempt_timer.is_some() {
                    self.disarm_attempt(py);
                }
                if self.permit.is_some() {
                    let plan_ref = self.plan.bind(py).clone();
                    self.record_permit(plan_ref.get(), true);
                }
                if self.cancel_owed {
                    self.settle_cancel(py);
                }
                self.signals &= !SIG_ATTEMPT;
                self.uninterruptible = false;
                self.completed(slf, value);
            }
            Phase::Sleep | Phase::Throttle => {
                self.throttled = self.phase == Phase::Throttle;
                let plan_ref = self.plan.bind(py).clone();
                let plan = plan_ref.get();
                match self.handler(plan).map(|h| h.bind(py).clone()) {
                    Some(h) => self.start_attempt(slf, plan, h.get()),
                    None => self.end(py, Err(PyRuntimeError::new_err("cano: handler missing"))),
                }
            }
            Phase::Saving(after) => self.saved(slf, after),
            Phase::Split => self.split_step(slf),
            Phase::Clearing => self.cleared(py),
            Phase::Draining => self.drained(slf, value),
            Phase::Setup => {
                self.acquired = true;
                self.begin_states(slf);
            }
            Phase::Teardown => {
                self.acquired = false;
                self.phase = Phase::Done;
            }
            Phase::Init | Phase::Done => {}
        }
    }

    /// A task attempt returned `value`: interpret it by handler kind and move on.
    fn completed(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
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
        let next = match plan.lookup(&value) {
            Some(id) => id,
            None => match self.resolve_slow(py, plan, &value) {
                Ok(id) => id,
                Err(e) => {
                    self.task_failed_event(py, plan, &e);
                    return self.fail(slf, e);
                }
            },
        };
        self.task_succeeded_event(py, plan);
        self.advance(slf, plan, next);
    }

    /// Moves the cursor to `next` and enters it.
    fn advance(&mut self, slf: &Bound<'_, Self>, plan: &Plan, next: StateId) {
        let py = slf.py();
        match self.cursor.advance(&plan.graph, next) {
            Ok(()) => self.enter(slf),
            Err(e) => {
                let err = self.transition_error(py, plan, &e, next);
                self.fail(slf, err);
            }
        }
    }

    /// The inner awaitable raised `err`.
    fn on_raise(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        match self.phase {
            Phase::Attempt | Phase::Sleep | Phase::Throttle => self.attempt_raised(slf, err),
            Phase::Saving(_) => self.save_failed(slf, err),
            Phase::Split => self.split_raised(slf, err),
            Phase::Clearing => self.clear_failed(py, err),
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
            Phase::Init | Phase::Done => {
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

    /// Fails without a drain (used where the run never started a task).
    fn fail_now(&mut self, py: Python<'_>, err: PyErr) {
        if self.stack.is_empty() {
            return self.end(py, Err(err));
        }
        // A cancel at a boundary still undoes what was done: drain through `fail`.
        self.failure = Some(err.into_value(py).into_any());
        self.phase = Phase::Draining;
        self.resume_drain(py);
    }

    /// Ends the run with `outcome`; tears resources down first when they were set up.
    fn end(&mut self, py: Python<'_>, outcome: PyResult<Py<PyAny>>) {
        self.disarm(py);
        if std::mem::take(&mut self.began) {
            self.finished_event(py, outcome.as_ref());
        }
        self.outcome = Some(outcome.map_err(|e| e.into_value(py).into_any()));
        if self.acquired {
            if let Some(lease) = &self.lease {
                let lease = lease.clone_ref(py);
                let released = lease.bind(py).call_method0(intern!(py, "_release"));
                match released.and_then(|coro| self.install(py, Phase::Teardown, coro)) {
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

    /// Loop callback for timers (`kind` is an internal signal number).
    fn _signal(slf: &Bound<'_, Self>, kind: u8) {
        if let Ok(mut run) = slf.try_borrow_mut() {
            run.signal(slf.py(), kind);
        }
    }

    /// Loop callback for the cancellation token.
    fn _on_cancel(slf: &Bound<'_, Self>) {
        if let Ok(mut run) = slf.try_borrow_mut() {
            run.listener = None;
            run.signal(slf.py(), SIG_CANCEL);
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
                    plan.label(py, run.cursor.state()),
                    run.phase
                )
            }
            Err(_) => "<cano Run (running)>".to_owned(),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.plan)?;
        visit.call(&self.resources)?;
        for o in [
            &self.lease,
            &self.inner,
            &self.task,
            &self.attempt_timer,
            &self.total_timer,
            &self.step_cursor,
            &self.failure,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(o)?;
        }
        if let Some(t) = &self.token {
            visit.call(t)?;
        }
        for (_, c) in &self.resume_cursors {
            visit.call(c)?;
        }
        if let Some(b) = &self.branch {
            visit.call(b)?;
        }
        if let Some(a) = &self.res_args {
            visit.call(a)?;
        }
        if let Some((_, o)) = &self.overlay {
            visit.call(o)?;
        }
        if let Some(sp) = &self.split {
            sp.traverse(&visit)?;
        }
        match &self.outcome {
            Some(Ok(o)) | Some(Err(o)) => visit.call(o),
            None => Ok(()),
        }
    }

    fn __clear__(&mut self) {
        self.inner = None;
        self.task = None;
        self.attempt_timer = None;
        self.total_timer = None;
        self.outcome = None;
        self.lease = None;
        self.token = None;
        self.step_cursor = None;
        self.failure = None;
        self.resume_cursors.clear();
        self.branch = None;
        self.res_args = None;
        self.split = None;
        self.overlay = None;
        self.phase = Phase::Done;
    }
}

fn is_cancel_error(py: Python<'_>, err: &PyErr) -> bool {
    CANCELLED_ERROR.import(py, "asyncio", "CancelledError").is_ok_and(|c| err.is_instance(py, c))
}

fn already_running() -> PyErr {
    pyo3::exceptions::PyValueError::new_err("coroutine already executing")
}

/// A closed run cannot await its teardown: hand it to the loop, if one is running.
#[cold]
fn release_in_background(py: Python<'_>, lease: &Bound<'_, PyAny>) {
    let Ok(event_loop) = signals::running_loop(py) else { return };
    if let Ok(coro) = lease.call_method0(intern!(py, "_release")) {
        let _ = event_loop.call_method1(intern!(py, "create_task"), (coro,));
    }
}
