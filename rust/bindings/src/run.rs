//! The dispatcher: one run of a workflow, as a coroutine implemented in Rust.
//!
//! `Workflow.orchestrate()` returns a [`Run`]. The asyncio task awaiting it steps it with
//! `__next__`/`send`/`throw`; each step resumes the current inner coroutine (a task
//! attempt, a retry sleep, resource setup or teardown) with `PyIter_Send`. When a task
//! returns its next state, the FSM moves and the next task's coroutine is started in the
//! same step, so a transition costs one Python call and a few Rust operations: no
//! `asyncio.Task` per state, no extra loop iteration, no thread hop. When user code
//! suspends, the future it yielded goes straight up to the event loop.
//!
//! Timeouts and token cancellation use asyncio's own mechanism, as `asyncio.timeout`
//! does: a loop callback records the reason and cancels the awaiting task; the resulting
//! `CancelledError` travels through the user's coroutine (its `finally` blocks run), and
//! when it comes back out the dispatcher balances the task's cancel count with
//! `uncancel()` and turns it into the engine error for that reason.

use crate::cancel::CancellationToken;
use crate::errors::{self, Context};
use crate::workflow::{Handler, Plan};
use cano_core::fsm::{Cursor, Entry, StateId};
use cano_core::retry::Verdict;
use cano_core::CoreError;
use pyo3::exceptions::{
    PyBaseException, PyException, PyGeneratorExit, PyRuntimeError, PyStopIteration,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::time::Instant;

/// What the run is waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Created, not stepped yet.
    Init,
    /// Driving `Resources._acquire()`.
    Setup,
    /// Driving a task attempt.
    Attempt,
    /// Driving the sleep before a retry.
    Sleep,
    /// Driving `Resources._release()`; the outcome is kept aside.
    Teardown,
    /// Finished; stepping again is an error.
    Done,
}

/// Reasons for the dispatcher to interrupt the task in flight.
const SIG_CANCEL: u8 = 1;
const SIG_TOTAL: u8 = 2;
const SIG_ATTEMPT: u8 = 4;

/// How the awaiting task resumes us.
enum Input {
    Send(Option<Py<PyAny>>),
    Throw(PyErr),
}

/// What the inner coroutine did.
enum Sent<'py> {
    Yield(Bound<'py, PyAny>),
    Return(Bound<'py, PyAny>),
    Raise(PyErr),
}

static COROUTINE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SLEEP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CURRENT_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CANCELLED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn cancelled_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    CANCELLED_ERROR.import(py, "asyncio", "CancelledError")
}

/// Resumes `coro` with a value or an exception.
#[inline]
fn resume<'py>(py: Python<'py>, coro: &Bound<'py, PyAny>, input: Input) -> Sent<'py> {
    match input {
        Input::Send(value) => {
            let mut out: *mut ffi::PyObject = std::ptr::null_mut();
            let arg = value.as_ref().map_or_else(|| unsafe { ffi::Py_None() }, |v| v.as_ptr());
            // SAFETY: `coro` and `arg` are live references held for the call; `out` receives
            // a new reference on NEXT/RETURN, and an exception is set on ERROR.
            let result = unsafe { ffi::PyIter_Send(coro.as_ptr(), arg, &mut out) };
            match result {
                ffi::PySendResult::PYGEN_NEXT => {
                    Sent::Yield(unsafe { Bound::from_owned_ptr(py, out) })
                }
                ffi::PySendResult::PYGEN_RETURN => {
                    Sent::Return(unsafe { Bound::from_owned_ptr(py, out) })
                }
                ffi::PySendResult::PYGEN_ERROR => Sent::Raise(PyErr::fetch(py)),
            }
        }
        Input::Throw(err) => throw_into(py, coro, err),
    }
}

#[cold]
fn throw_into<'py>(py: Python<'py>, coro: &Bound<'py, PyAny>, err: PyErr) -> Sent<'py> {
    let Ok(throw) = coro.getattr(intern!(py, "throw")) else {
        // A plain iterator cannot receive exceptions: it is raised where it waits.
        return Sent::Raise(err);
    };
    match throw.call1((err.into_value(py),)) {
        Ok(y) => Sent::Yield(y),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            let value = e
                .value(py)
                .getattr(intern!(py, "value"))
                .unwrap_or_else(|_| py.None().into_bound(py));
            Sent::Return(value)
        }
        Err(e) => Sent::Raise(e),
    }
}

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
    signals: u8,
    /// We called `task.cancel()` and owe the task an `uncancel()`.
    cancel_owed: bool,
    cancel_base: i64,
    task: Option<Py<PyAny>>,
    attempt_timer: Option<Py<PyAny>>,
    total_timer: Option<Py<PyAny>>,
    listener: Option<u64>,
    started: Option<Instant>,
    acquired: bool,
    /// The run's result while teardown runs: the final state, or the exception to raise.
    outcome: Option<Result<Py<PyAny>, Py<PyAny>>>,
}

impl Run {
    pub fn new(
        plan: Py<Plan>,
        initial: StateId,
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
            cursor: Cursor::new(initial),
            attempt: 0,
            signals: 0,
            cancel_owed: false,
            cancel_base: 0,
            task: None,
            attempt_timer: None,
            total_timer: None,
            listener: None,
            started: None,
            acquired: false,
            outcome: None,
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
                    let sent = resume(py, inner.bind(py), input);
                    input = Input::Send(None);
                    match sent {
                        Sent::Yield(y) => {
                            self.inner = Some(inner);
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
                        // Thrown in while nothing runs (before the first step): end here.
                        input = Input::Send(None);
                        self.disarm(py);
                        self.phase = Phase::Done;
                        self.outcome = Some(Err(e.into_value(py).into_any()));
                    }
                    (_, Input::Send(_)) => {
                        return Err(PyRuntimeError::new_err(
                            "cano: run has nothing to resume (internal error)",
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

    /// First step: set up resources, or go straight to the first state.
    fn begin(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        if let Some(lease) = &self.lease {
            match lease.bind(py).call_method0(intern!(py, "_acquire")) {
                Ok(coro) => {
                    self.phase = Phase::Setup;
                    self.inner = Some(coro.unbind());
                }
                Err(e) => self.end(py, Err(e)),
            }
            return;
        }
        self.begin_states(slf);
    }

    /// After setup: arm the total timeout and the token, then enter the first state.
    fn begin_states(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        let plan = self.plan.clone_ref(py);
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
        self.enter(slf);
    }

    /// Enters the cursor's state: boundary checks, observers, then exit or dispatch.
    fn enter(&mut self, slf: &Bound<'_, Self>) {
        let py = slf.py();
        let plan_ref = self.plan.clone_ref(py);
        let plan = plan_ref.get();
        let s = self.cursor.state();
        if self.signals & SIG_CANCEL != 0 || self.token.as_ref().is_some_and(|t| t.get().fired()) {
            return self.cancelled_at_boundary(py, plan, s);
        }
        if let Some(hub) = &plan.hub {
            let _ = hub.bind(py).call_method1(intern!(py, "on_state_enter"), (plan.label(py, s),));
        }
        match self.cursor.enter(&plan.graph) {
            Some(Entry::Exit) => {
                let state = plan.states[s as usize].clone_ref(py);
                self.end(py, Ok(state));
            }
            Some(Entry::Dispatch(_)) => {
                if self.signals & SIG_TOTAL != 0 {
                    let err = self.total_timeout_error(py, plan, None);
                    return self.end(py, Err(err));
                }
                let Some(handler) = plan.handler(s) else {
                    return self.end(py, Err(PyRuntimeError::new_err("cano: handler missing")));
                };
                self.attempt = 1;
                if let Some(hub) = &plan.hub {
                    let _ = hub
                        .bind(py)
                        .call_method1(intern!(py, "on_task_start"), (handler.get().name.bind(py),));
                }
                self.start_attempt(slf, plan, handler.get());
            }
            None => {
                let msg = format!("no task registered for state {}", plan.label(py, s));
                let err = self.error(py, plan, "WorkflowError", msg, None, None);
                self.end(py, Err(err));
            }
        }
    }

    /// Calls the handler and installs its coroutine as the inner one.
    fn start_attempt(&mut self, slf: &Bound<'_, Self>, plan: &Plan, h: &Handler) {
        let py = slf.py();
        if let Some(limit) = h.attempt_timeout {
            match self.arm(slf, limit, SIG_ATTEMPT) {
                Ok(t) => self.attempt_timer = Some(t),
                Err(e) => return self.end(py, Err(e)),
            }
        }
        let call = h.call.bind(py);
        let made =
            if h.takes_resources { call.call1((self.resources.bind(py),)) } else { call.call0() };
        self.phase = Phase::Attempt;
        match made {
            Ok(coro) => {
                let coroutine_type = match COROUTINE_TYPE.import(py, "types", "CoroutineType") {
                    Ok(t) => t,
                    Err(e) => return self.end(py, Err(e)),
                };
                if coro.get_type().is(coroutine_type) {
                    self.inner = Some(coro.unbind());
                } else {
                    self.install_awaitable(slf, plan, h, coro);
                }
            }
            Err(e) => self.on_raise(slf, e),
        }
    }

    #[cold]
    fn install_awaitable(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        h: &Handler,
        value: Bound<'_, PyAny>,
    ) {
        let py = slf.py();
        match value.call_method0(intern!(py, "__await__")) {
            Ok(it) => self.inner = Some(it.unbind()),
            Err(_) => {
                self.disarm_attempt(py);
                let msg = format!(
                    "task '{}' for state {} returned {} instead of a coroutine; declare it with \
                     `async def`",
                    h.name.bind(py),
                    plan.label(py, self.cursor.state()),
                    value.repr().map(|r| r.to_string()).unwrap_or_default()
                );
                let err = self.error(py, plan, "ConfigurationError", msg, None, None);
                self.end(py, Err(err));
            }
        }
    }

    /// The inner coroutine returned `value`.
    fn on_return(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
        let py = slf.py();
        match self.phase {
            Phase::Attempt => {
                if self.attempt_timer.is_some() {
                    self.disarm_attempt(py);
                }
                if self.cancel_owed {
                    self.settle_cancel(py);
                }
                self.signals &= !SIG_ATTEMPT;
                self.completed(slf, value);
            }
            Phase::Sleep => {
                let plan_ref = self.plan.clone_ref(py);
                let plan = plan_ref.get();
                match plan.handler(self.cursor.state()) {
                    Some(h) => self.start_attempt(slf, plan, h.get()),
                    None => self.end(py, Err(PyRuntimeError::new_err("cano: handler missing"))),
                }
            }
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

    /// A task attempt returned `value`: map it to the next state and move on.
    fn completed(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
        let py = slf.py();
        let plan_ref = self.plan.clone_ref(py);
        let plan = plan_ref.get();
        let s = self.cursor.state();
        let next = match plan.lookup(&value) {
            Some(id) => id,
            None => match self.resolve_slow(py, plan, &value) {
                Ok(id) => id,
                Err(e) => {
                    self.task_failed_event(py, plan, &e);
                    return self.end(py, Err(e));
                }
            },
        };
        if let Some(hub) = &plan.hub {
            if let Some(h) = plan.handler(s) {
                let _ = hub
                    .bind(py)
                    .call_method1(intern!(py, "on_task_success"), (h.get().name.bind(py),));
            }
        }
        match self.cursor.advance(&plan.graph, next) {
            Ok(()) => self.enter(slf),
            Err(e) => {
                let err = self.transition_error(py, plan, &e, next);
                self.end(py, Err(err));
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
        let s = self.cursor.state();
        let task = plan.handler(s).map(|h| h.get().name.bind(py).to_string()).unwrap_or_default();
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
    fn transition_error(
        &self,
        py: Python<'_>,
        plan: &Plan,
        err: &CoreError,
        next: StateId,
    ) -> PyErr {
        let s = self.cursor.state();
        let task = plan.handler(s).map(|h| h.get().name.bind(py).to_string()).unwrap_or_default();
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

    /// The inner coroutine raised `err`.
    fn on_raise(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        match self.phase {
            Phase::Attempt | Phase::Sleep => self.attempt_raised(slf, err),
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

    fn attempt_raised(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        let plan_ref = self.plan.clone_ref(py);
        let plan = plan_ref.get();
        if self.attempt_timer.is_some() {
            self.disarm_attempt(py);
        }
        let external = if self.cancel_owed { self.settle_cancel(py) } else { false };
        let is_cancel = cancelled_error(py).is_ok_and(|c| err.is_instance(py, c));
        if is_cancel {
            if external || self.signals & (SIG_CANCEL | SIG_TOTAL | SIG_ATTEMPT) == 0 {
                return self.cancelled_by_asyncio(py, plan, err);
            }
            if self.signals & SIG_CANCEL != 0 {
                let e = self.cancel_error(py, plan);
                self.task_failed_event(py, plan, &e);
                self.notify_cancelled(py, plan);
                return self.end(py, Err(e));
            }
            if self.signals & SIG_TOTAL != 0 {
                let e = self.total_timeout_error(py, plan, Some(()));
                return self.end(py, Err(e));
            }
            // Our attempt timer fired.
            self.signals &= !SIG_ATTEMPT;
            let e = self.attempt_timeout_error(py, plan);
            return self.failed_attempt(slf, plan, e, true);
        }
        self.signals &= !SIG_ATTEMPT;
        if !err.is_instance_of::<PyException>(py) {
            // KeyboardInterrupt, SystemExit: never retried, never wrapped, no cleanup awaits.
            self.disarm(py);
            self.phase = Phase::Done;
            self.outcome = Some(Err(err.into_value(py).into_any()));
            return;
        }
        self.failed_attempt(slf, plan, err, false)
    }

    /// Decides between retrying and failing after attempt `self.attempt` raised `err`.
    /// `engine_made` marks errors that are already engine errors (attempt timeouts).
    fn failed_attempt(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        err: PyErr,
        engine_made: bool,
    ) {
        let py = slf.py();
        let s = self.cursor.state();
        let Some(handler) = plan.handler(s) else {
            return self.end(py, Err(err));
        };
        let h = handler.get();
        let retryable = match &h.retry_on {
            Some(types) => err.is_instance(py, types.bind(py)),
            None => true,
        };
        let verdict = if retryable {
            h.retry.after_failure(self.attempt)
        } else {
            Verdict::Exhausted { attempts: self.attempt }
        };
        match verdict {
            Verdict::Retry(delay) => {
                if let Some(hub) = &plan.hub {
                    let _ = hub
                        .bind(py)
                        .call_method1(intern!(py, "on_retry"), (h.name.bind(py), self.attempt));
                }
                self.attempt += 1;
                if delay.is_zero() {
                    return self.start_attempt(slf, plan, h);
                }
                let sleep = SLEEP
                    .import(py, "asyncio", "sleep")
                    .and_then(|f| f.call1((delay.as_secs_f64(),)));
                match sleep {
                    Ok(coro) => {
                        self.phase = Phase::Sleep;
                        self.inner = Some(coro.unbind());
                    }
                    Err(e) => self.end(py, Err(e)),
                }
            }
            Verdict::Exhausted { attempts } => {
                let e = if engine_made && (attempts <= 1 || !retryable) {
                    err
                } else if attempts > 1 && retryable {
                    let msg = format!(
                        "task '{}' failed in state {} after {attempts} attempts",
                        h.name.bind(py),
                        plan.label(py, s)
                    );
                    let extra = PyDict::new(py);
                    let _ = extra.set_item("attempts", attempts);
                    self.error(py, plan, "RetryExhaustedError", msg, Some(err), Some(extra))
                } else {
                    let msg = format!(
                        "task '{}' failed in state {} (attempt {})",
                        h.name.bind(py),
                        plan.label(py, s),
                        self.attempt
                    );
                    self.error(py, plan, "TaskError", msg, Some(err), None)
                };
                self.task_failed_event(py, plan, &e);
                self.end(py, Err(e));
            }
        }
    }

    // ----- cancellation and timeouts ----------------------------------------------------

    /// Schedules `_signal(kind)` on the running loop after `delay` seconds.
    fn arm(&mut self, slf: &Bound<'_, Self>, delay: f64, kind: u8) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        self.capture_task(py)?;
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let callback = slf.getattr(intern!(py, "_signal"))?;
        let handle = event_loop.call_method1(intern!(py, "call_later"), (delay, callback, kind))?;
        Ok(handle.unbind())
    }

    fn listen(&mut self, slf: &Bound<'_, Self>, token: &CancellationToken) -> PyResult<()> {
        let py = slf.py();
        self.capture_task(py)?;
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let callback = slf.getattr(intern!(py, "_on_cancel"))?;
        self.listener = Some(token.listen(event_loop.unbind(), callback.unbind()));
        Ok(())
    }

    /// Remembers the asyncio task stepping us, to interrupt it later.
    fn capture_task(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let task = CURRENT_TASK.import(py, "asyncio", "current_task")?.call0()?;
        if !task.is_none() {
            self.cancel_base = task.call_method0(intern!(py, "cancelling"))?.extract()?;
            self.task = Some(task.unbind());
        }
        Ok(())
    }

    /// A loop callback: record the reason, and interrupt the attempt or sleep in flight.
    fn signal(&mut self, py: Python<'_>, kind: u8) {
        match kind {
            SIG_ATTEMPT => self.attempt_timer = None,
            SIG_TOTAL => self.total_timer = None,
            _ => {}
        }
        match self.phase {
            Phase::Attempt | Phase::Sleep => {}
            Phase::Init | Phase::Setup => {
                // Honoured at the first state boundary.
                self.signals |= kind & SIG_CANCEL;
                return;
            }
            Phase::Teardown | Phase::Done => return,
        }
        if kind == SIG_ATTEMPT && self.phase == Phase::Sleep {
            return;
        }
        self.signals |= kind;
        if !self.cancel_owed {
            if let Some(task) = &self.task {
                if let Ok(true) =
                    task.bind(py).call_method0(intern!(py, "cancel")).and_then(|r| r.extract())
                {
                    self.cancel_owed = true;
                }
            }
        }
    }

    /// Balances our `task.cancel()`; true when someone else cancelled the task too.
    fn settle_cancel(&mut self, py: Python<'_>) -> bool {
        self.cancel_owed = false;
        let Some(task) = &self.task else { return false };
        match task.bind(py).call_method0(intern!(py, "uncancel")).and_then(|r| r.extract::<i64>()) {
            Ok(left) => left > self.cancel_base,
            Err(_) => false,
        }
    }

    fn disarm_attempt(&mut self, py: Python<'_>) {
        if let Some(t) = self.attempt_timer.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
    }

    /// Cancels timers and stops listening to the token.
    fn disarm(&mut self, py: Python<'_>) {
        self.disarm_attempt(py);
        if let Some(t) = self.total_timer.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
        if let (Some(id), Some(token)) = (self.listener.take(), &self.token) {
            token.get().unlisten(id);
        }
        if self.cancel_owed {
            self.settle_cancel(py);
        }
        self.task = None;
    }

    #[cold]
    fn cancelled_at_boundary(&mut self, py: Python<'_>, plan: &Plan, s: StateId) {
        let _ = s;
        self.cursor_path_include_current();
        let e = self.cancel_error(py, plan);
        self.notify_cancelled(py, plan);
        self.end(py, Err(e));
    }

    fn cursor_path_include_current(&mut self) {
        let s = self.cursor.state();
        if self.cursor.path().last() != Some(&s) {
            let mut path = self.cursor.path().to_vec();
            path.push(s);
            self.cursor = Cursor::resumed(s, path);
        }
    }

    #[cold]
    fn cancelled_by_asyncio(&mut self, py: Python<'_>, plan: &Plan, err: PyErr) {
        self.task_failed_event(py, plan, &err);
        self.notify_cancelled(py, plan);
        self.end(py, Err(err));
    }

    fn notify_cancelled(&self, py: Python<'_>, plan: &Plan) {
        if let Some(hub) = &plan.hub {
            let label = plan.label(py, self.cursor.state());
            let _ = hub.bind(py).call_method1(intern!(py, "on_cancelled"), (label,));
        }
    }

    fn cancel_error(&self, py: Python<'_>, plan: &Plan) -> PyErr {
        let msg = format!("workflow cancelled in state {}", plan.label(py, self.cursor.state()));
        self.error_at(py, plan, "WorkflowCancelledError", msg, 0, None, None)
    }

    #[cold]
    fn total_timeout_error(&self, py: Python<'_>, plan: &Plan, in_flight: Option<()>) -> PyErr {
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
        if in_flight.is_some() {
            self.task_failed_event(py, plan, &err);
        }
        if let Some(hub) = &plan.hub {
            let _ = hub.bind(py).call_method1(intern!(py, "on_workflow_timeout"), (elapsed, limit));
        }
        err
    }

    #[cold]
    fn attempt_timeout_error(&self, py: Python<'_>, plan: &Plan) -> PyErr {
        let s = self.cursor.state();
        let (name, limit) = plan
            .handler(s)
            .map(|h| (h.get().name.bind(py).to_string(), h.get().attempt_timeout.unwrap_or(0.0)))
            .unwrap_or_default();
        let msg = format!(
            "task '{name}' in state {} exceeded its attempt timeout of {limit}s (attempt {})",
            plan.label(py, s),
            self.attempt
        );
        self.error(py, plan, "TaskTimeoutError", msg, None, None)
    }

    // ----- ending -----------------------------------------------------------------------

    fn task_failed_event(&self, py: Python<'_>, plan: &Plan, err: &PyErr) {
        if let Some(hub) = &plan.hub {
            if let Some(h) = plan.handler(self.cursor.state()) {
                let _ = hub.bind(py).call_method1(
                    intern!(py, "on_task_failure"),
                    (h.get().name.bind(py), err.value(py)),
                );
            }
        }
    }

    /// Ends the run with `outcome`; tears resources down first when they were set up.
    fn end(&mut self, py: Python<'_>, outcome: PyResult<Py<PyAny>>) {
        self.disarm(py);
        let outcome = outcome.map_err(|e| e.into_value(py).into_any());
        self.outcome = Some(outcome);
        if self.acquired {
            if let Some(lease) = &self.lease {
                match lease.bind(py).call_method0(intern!(py, "_release")) {
                    Ok(coro) => {
                        self.phase = Phase::Teardown;
                        self.inner = Some(coro.unbind());
                        return;
                    }
                    Err(e) => e.write_unraisable(py, None),
                }
            }
        }
        self.phase = Phase::Done;
    }

    fn error(
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
    fn error_at(
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
        errors::make(
            py,
            kind,
            message,
            ctx,
            cause.map(|e| e.into_value(py).into_bound(py).into_any()),
            extra,
        )
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
            // The run cannot await any more: release its resources on the loop.
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

    #[getter]
    fn __name__(&self) -> &'static str {
        "orchestrate"
    }

    #[getter]
    fn __qualname__(&self) -> &'static str {
        "Workflow.orchestrate"
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let plan = self.plan.get();
        format!("<cano Run state={} phase={:?}>", plan.label(py, self.cursor.state()), self.phase)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.plan)?;
        visit.call(&self.resources)?;
        for o in [&self.lease, &self.inner, &self.task, &self.attempt_timer, &self.total_timer]
            .into_iter()
            .flatten()
        {
            visit.call(o)?;
        }
        if let Some(t) = &self.token {
            visit.call(t)?;
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
        self.phase = Phase::Done;
    }
}

fn already_running() -> PyErr {
    pyo3::exceptions::PyValueError::new_err("coroutine already executing")
}

#[cold]
fn release_in_background(py: Python<'_>, lease: &Bound<'_, PyAny>) {
    let started = GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")
        .and_then(|f| f.call0())
        .and_then(|lp| {
            let coro = lease.call_method0(intern!(py, "_release"))?;
            lp.call_method1(intern!(py, "create_task"), (coro,))
        });
    if started.is_err() {
        // No running loop: nothing can await the teardown any more.
    }
}

/// `throw(typ, val, tb)` → an exception instance, as generators do.
fn normalise_exception<'py>(
    py: Python<'py>,
    typ: &Bound<'py, PyAny>,
    val: Option<&Bound<'py, PyAny>>,
    tb: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let exc = if typ.is_instance_of::<PyBaseException>() {
        typ.clone()
    } else if let Ok(t) = typ.cast::<PyType>() {
        match val {
            Some(v) if v.is_instance(t)? => v.clone(),
            Some(v) if v.is_instance_of::<PyTuple>() => t.call1(v.cast::<PyTuple>()?)?,
            Some(v) if !v.is_none() => t.call1((v,))?,
            _ => t.call0()?,
        }
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "exceptions must be classes or instances deriving from BaseException",
        ));
    };
    if let Some(tb) = tb.filter(|t| !t.is_none()) {
        exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    let _ = PyString::new(py, "");
    Ok(exc)
}
