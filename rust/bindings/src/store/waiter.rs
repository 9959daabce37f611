//! [`Waiter`]: the small future-compatible awaitable a durable row's append returns.

use parking_lot::Mutex;
use pyo3::exceptions::{PyBaseException, PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::gc::PyGcTraverse;

use super::rows::checkpoint_error;
use super::wake::Outcome;

static CANCELLED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_STATE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Where a [`Waiter`] is.
pub(super) enum WaiterState {
    Pending,
    Done,
    Failed(Py<PyBaseException>),
    Cancelled(Option<Py<PyAny>>),
}

/// A done-callback and the `contextvars.Context` to run it in.
type Callback = (Py<PyAny>, Option<Py<PyAny>>);

/// Done-callbacks in registration order. The first is stored inline: a waiter almost always
/// has exactly one (its task's wake-up), and this spares an allocation per row.
#[derive(Default)]
pub(super) struct Callbacks {
    first: Option<Callback>,
    rest: Vec<Callback>,
}

impl Callbacks {
    pub(super) fn push(&mut self, callback: Callback) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(callback);
        } else {
            self.rest.push(callback);
        }
    }

    pub(super) fn into_vec(self) -> Vec<Callback> {
        let mut all = Vec::with_capacity(self.rest.len() + 1);
        all.extend(self.first);
        all.extend(self.rest);
        all
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Callback> {
        self.first.iter().chain(self.rest.iter())
    }
}

pub(super) struct WaiterInner {
    state: WaiterState,
    blocking: bool,
    callbacks: Callbacks,
    /// Which append of its run the waiter stands for (a run's waiter is re-armed for each
    /// row; an outcome of an earlier generation is stale).
    generation: u64,
    /// The row of this generation is durable, but the task parked on the waiter has not
    /// been told: its run goes on without waking it (see [`Waiter::finish`]).
    row_done: bool,
    /// The `asyncio.Task` whose wake-up is the only callback (its `__self__`), when it is
    /// one: the task a resumer may drive the run for.
    task: Option<Py<PyAny>>,
}

/// What `_append_raw` returns: an awaitable that completes (with `None`) once the row is
/// durable, and a future-compatible object for `asyncio` (`isfuture`, `Task`, `gather`,
/// `wait_for`, `shield`): `done`, `result`, `exception`, `cancel`, `cancelled`,
/// `add_done_callback`, `remove_done_callback`, `get_loop`. Cancelling it stops the wait,
/// not the append. Only touched on its loop's thread.
///
/// **A run's waiter.** The dispatcher gives each run one waiter with a *resumer* (see
/// [`Waiter::for_run`]) and re-arms it for every row. When a row is durable and the run's
/// task is parked on the waiter, [`finish`](Self::finish) does not wake the task: it calls
/// the resumer in the task's context, which moves the run on (the state's task runs, the
/// next row is appended) and re-arms the waiter, the task still parked on it. The task is
/// woken only when the run needs it: another awaitable, the end of the run, an error.
#[pyclass(frozen, module = "cano._core", name = "_DurableWaiter")]
pub struct Waiter {
    pub(super) event_loop: Py<PyAny>,
    /// Called as `resumer(waiter)`, in the parked task's context, when a row is durable;
    /// returns true if the task stays parked (the waiter was re-armed for the next row).
    resumer: Option<Py<PyAny>>,
    pub(super) inner: Mutex<WaiterInner>,
}

static TASK_TYPES: PyOnceLock<(Py<PyType>, Py<PyType>)> = PyOnceLock::new();

/// `(asyncio.Task, asyncio.tasks._PyTask)`.
fn task_types(py: Python<'_>) -> PyResult<&(Py<PyType>, Py<PyType>)> {
    TASK_TYPES.get_or_try_init(py, || {
        let tasks = py.import("asyncio.tasks")?;
        Ok((
            tasks.getattr("Task")?.cast_into::<PyType>()?.unbind(),
            tasks.getattr("_PyTask")?.cast_into::<PyType>()?.unbind(),
        ))
    })
}

impl Waiter {
    pub(super) fn new(event_loop: Py<PyAny>) -> Self {
        Self::with_resumer(event_loop, None)
    }

    fn with_resumer(event_loop: Py<PyAny>, resumer: Option<Py<PyAny>>) -> Self {
        Waiter {
            event_loop,
            resumer,
            inner: Mutex::new(WaiterInner {
                state: WaiterState::Pending,
                blocking: false,
                callbacks: Callbacks::default(),
                generation: 0,
                row_done: false,
                task: None,
            }),
        }
    }

    /// A run's waiter (see the type's docs), pending for generation 0.
    pub fn for_run(
        py: Python<'_>,
        event_loop: Py<PyAny>,
        resumer: Py<PyAny>,
    ) -> PyResult<Bound<'_, Self>> {
        Bound::new(py, Self::with_resumer(event_loop, Some(resumer)))
    }

    /// Makes a run's waiter pending again, for its next row, and returns that row's
    /// generation — if the run may reuse it: the last row is done (its task was woken, or
    /// is parked and a resumer is driving the run). `None` when it was cancelled or failed
    /// (the task has that outcome to take) or is still waiting.
    pub fn rearm(&self) -> Option<u64> {
        let mut inner = self.inner.lock();
        let reusable = match inner.state {
            WaiterState::Done => true,
            WaiterState::Pending => inner.row_done,
            _ => false,
        };
        if !reusable {
            return None;
        }
        inner.state = WaiterState::Pending;
        inner.row_done = false;
        inner.blocking = false;
        inner.generation += 1;
        Some(inner.generation)
    }

    /// The loop the waiter belongs to.
    pub fn event_loop(&self) -> &Py<PyAny> {
        &self.event_loop
    }

    /// True while the waiter waits for a row (its task, if any, parked on it).
    pub fn is_waiting(&self) -> bool {
        let inner = self.inner.lock();
        matches!(inner.state, WaiterState::Pending) && !inner.row_done
    }

    /// The task parked on this waiter, as recorded by `add_done_callback`.
    pub fn parked_task(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().task.as_ref().map(|t| t.clone_ref(py))
    }

    /// Records the outcome of the row of `generation` (stale generations and cancelled
    /// waiters ignore it). A durable row of a run's waiter whose task is parked on it goes
    /// to the resumer; otherwise the waiter completes and its done-callbacks run right away
    /// (see the module docs). A `KeyboardInterrupt` or `SystemExit` raised by a callback is
    /// returned, for the loop callback to raise once every outcome is delivered, as an
    /// asyncio callback would (the loop only stops for them because they propagate).
    pub(super) fn finish(
        slf: &Bound<'_, Self>,
        outcome: Outcome,
        generation: u64,
    ) -> Option<PyErr> {
        let py = slf.py();
        let resume = {
            let mut inner = slf.get().inner.lock();
            if inner.generation != generation
                || inner.row_done
                || !matches!(inner.state, WaiterState::Pending)
            {
                return None;
            }
            let resume = match (&outcome, &slf.get().resumer, &inner.task, &inner.callbacks) {
                (
                    Outcome::Done,
                    Some(resumer),
                    Some(_),
                    Callbacks { first: Some((_, Some(context))), rest },
                ) if rest.is_empty() => Some((resumer.clone_ref(py), context.clone_ref(py))),
                _ => None,
            };
            if resume.is_some() {
                inner.row_done = true;
            }
            resume
        };
        if let Some((resumer, context)) = resume {
            let parked = context
                .bind(py)
                .call_method1(intern!(py, "run"), (resumer, slf))
                .and_then(|r| r.is_truthy());
            let interrupt = match parked {
                Ok(true) => return None,
                Ok(false) => None,
                Err(e) if is_interrupt(py, &e) => Some(e),
                Err(e) => {
                    e.write_unraisable(py, Some(slf.as_any()));
                    None
                }
            };
            let woken = Self::wake(slf);
            return interrupt.or(woken);
        }
        let state = match outcome {
            Outcome::Failed(err) => WaiterState::Failed(checkpoint_error(py, &err).into_value(py)),
            _ => WaiterState::Done,
        };
        let callbacks = {
            let mut inner = slf.get().inner.lock();
            inner.state = state;
            inner.task = None;
            std::mem::take(&mut inner.callbacks)
        };
        Self::run_callbacks(slf, callbacks)
    }

    /// Completes a pending waiter (whatever its row) and runs its done-callbacks right away:
    /// its task has something to take from the run. A cancelled waiter has already
    /// scheduled them. Returns an interrupt a callback raised (see [`finish`](Self::finish)).
    fn wake(slf: &Bound<'_, Self>) -> Option<PyErr> {
        let callbacks = {
            let mut inner = slf.get().inner.lock();
            if !matches!(inner.state, WaiterState::Pending) {
                return None;
            }
            inner.state = WaiterState::Done;
            inner.row_done = false;
            inner.task = None;
            std::mem::take(&mut inner.callbacks)
        };
        Self::run_callbacks(slf, callbacks)
    }

    /// Runs the callbacks, reporting their errors to the loop as asyncio does; the first
    /// `KeyboardInterrupt` or `SystemExit` is returned instead (after the other callbacks
    /// ran), to be raised from the loop's callback.
    fn run_callbacks(slf: &Bound<'_, Self>, callbacks: Callbacks) -> Option<PyErr> {
        let py = slf.py();
        let Callbacks { first, rest } = callbacks;
        let mut interrupt = None;
        for (callback, context) in first.into_iter().chain(rest) {
            let ran = match &context {
                Some(ctx) => ctx.bind(py).call_method1(intern!(py, "run"), (&callback, slf)),
                None => callback.bind(py).call1((slf,)),
            };
            match ran {
                Err(e) if interrupt.is_none() && is_interrupt(py, &e) => interrupt = Some(e),
                Err(e) => report_callback_error(slf, &callback, e),
                Ok(_) => {}
            }
        }
        interrupt
    }

    /// Schedules the done-callbacks with `loop.call_soon`, as `asyncio.Future` does.
    pub(super) fn schedule_callbacks(
        slf: &Bound<'_, Self>,
        callbacks: Vec<Callback>,
    ) -> PyResult<()> {
        let py = slf.py();
        let event_loop = slf.get().event_loop.bind(py);
        for (callback, context) in callbacks {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "context"), context)?;
            event_loop.call_method(intern!(py, "call_soon"), (callback, slf), Some(&kwargs))?;
        }
        Ok(())
    }

    pub(super) fn cancelled_error(py: Python<'_>, msg: Option<&Py<PyAny>>) -> PyErr {
        match CANCELLED_ERROR.import(py, "asyncio", "CancelledError") {
            Ok(cls) => {
                let made = match msg {
                    Some(m) => cls.call1((m,)),
                    None => cls.call0(),
                };
                match made {
                    Ok(e) => PyErr::from_value(e),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        }
    }

    pub(super) fn invalid_state(py: Python<'_>, message: &str) -> PyErr {
        match INVALID_STATE_ERROR.import(py, "asyncio", "InvalidStateError") {
            Ok(cls) => match cls.call1((message,)) {
                Ok(e) => PyErr::from_value(e),
                Err(e) => e,
            },
            Err(e) => e,
        }
    }
}

/// True for the exceptions asyncio lets out of a callback: they stop the loop.
pub(super) fn is_interrupt(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// The task `callback` wakes up, if it is an `asyncio.Task`'s wake-up method.
fn parked_task(callback: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    let py = callback.py();
    let Ok(owner) = callback.getattr(intern!(py, "__self__")) else {
        return Ok(None);
    };
    let (task, py_task) = task_types(py)?;
    let is_task = owner.is_instance(task.bind(py))? || owner.is_instance(py_task.bind(py))?;
    Ok(is_task.then(|| owner.unbind()))
}

pub(super) fn report_callback_error(waiter: &Bound<'_, Waiter>, callback: &Py<PyAny>, err: PyErr) {
    let py = waiter.py();
    let reported = (|| -> PyResult<()> {
        let context = PyDict::new(py);
        let shown = callback.bind(py).repr()?;
        context.set_item("message", format!("Exception in callback {shown}"))?;
        context.set_item("exception", err.clone_ref(py).into_value(py))?;
        context.set_item("future", waiter)?;
        waiter
            .get()
            .event_loop
            .bind(py)
            .call_method1(intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    })();
    if reported.is_err() {
        err.write_unraisable(py, Some(waiter.as_any()));
    }
}

#[pymethods]
impl Waiter {
    pub(super) fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    pub(super) fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Yields itself while pending (the task then waits on it), returns `None` once done.
    /// There is no `send`/`throw`/`close`, as on `asyncio.Future`: with them the waiter would
    /// pass for a coroutine (`collections.abc.Coroutine`), which `asyncio.wait` refuses.
    pub(super) fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, Self>>> {
        let py = slf.py();
        let mut inner = slf.get().inner.lock();
        match &inner.state {
            WaiterState::Pending if inner.row_done => Ok(None),
            WaiterState::Pending => {
                inner.blocking = true;
                Ok(Some(slf.clone()))
            }
            WaiterState::Done => Ok(None),
            WaiterState::Failed(e) => Err(PyErr::from_value(e.bind(py).clone().into_any())),
            WaiterState::Cancelled(msg) => {
                let msg = msg.as_ref().map(|m| m.clone_ref(py));
                drop(inner);
                Err(Self::cancelled_error(py, msg.as_ref()))
            }
        }
    }

    #[getter(_asyncio_future_blocking)]
    pub(super) fn get_blocking(&self) -> bool {
        self.inner.lock().blocking
    }

    #[setter(_asyncio_future_blocking)]
    pub(super) fn set_blocking(&self, value: bool) {
        self.inner.lock().blocking = value;
    }

    pub(super) fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.event_loop.clone_ref(py)
    }

    pub(super) fn done(&self) -> bool {
        !matches!(self.inner.lock().state, WaiterState::Pending)
    }

    pub(super) fn cancelled(&self) -> bool {
        matches!(self.inner.lock().state, WaiterState::Cancelled(_))
    }

    pub(super) fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inner = self.inner.lock();
        match &inner.state {
            WaiterState::Pending => {
                drop(inner);
                Err(Self::invalid_state(py, "Result is not ready."))
            }
            WaiterState::Done => Ok(py.None()),
            WaiterState::Failed(e) => Err(PyErr::from_value(e.bind(py).clone().into_any())),
            WaiterState::Cancelled(msg) => {
                let msg = msg.as_ref().map(|m| m.clone_ref(py));
                drop(inner);
                Err(Self::cancelled_error(py, msg.as_ref()))
            }
        }
    }

    pub(super) fn exception(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inner = self.inner.lock();
        match &inner.state {
            WaiterState::Pending => {
                drop(inner);
                Err(Self::invalid_state(py, "Exception is not set."))
            }
            WaiterState::Done => Ok(py.None()),
            WaiterState::Failed(e) => Ok(e.clone_ref(py).into_any()),
            WaiterState::Cancelled(msg) => {
                let msg = msg.as_ref().map(|m| m.clone_ref(py));
                drop(inner);
                Err(Self::cancelled_error(py, msg.as_ref()))
            }
        }
    }

    #[pyo3(signature = (callback, *, context = None))]
    pub(super) fn add_done_callback(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        // A run's waiter notes the task that parks on it (the `__self__` of its wake-up).
        let task = match &slf.get().resumer {
            Some(_) if context.is_some() => parked_task(callback.bind(py))?,
            _ => None,
        };
        {
            let mut inner = slf.get().inner.lock();
            if matches!(inner.state, WaiterState::Pending) {
                let first = inner.callbacks.first.is_none() && inner.callbacks.rest.is_empty();
                inner.task = if first { task } else { None };
                inner.callbacks.push((callback, context));
                return Ok(());
            }
        }
        Self::schedule_callbacks(slf, vec![(callback, context)])
    }

    pub(super) fn remove_done_callback(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        // Compared without the lock held (`==` may run Python code).
        let callbacks = std::mem::take(&mut self.inner.lock().callbacks).into_vec();
        let mut kept = Callbacks::default();
        let mut removed = 0;
        let mut failed = None;
        for (cb, ctx) in callbacks {
            match cb.bind(py).eq(callback) {
                Ok(true) if failed.is_none() => removed += 1,
                Err(e) if failed.is_none() => {
                    failed = Some(e);
                    kept.push((cb, ctx));
                }
                _ => kept.push((cb, ctx)),
            }
        }
        let mut inner = self.inner.lock();
        // Callbacks added meanwhile (by the `==` above) go after the kept ones.
        for added in std::mem::take(&mut inner.callbacks).into_vec() {
            kept.push(added);
        }
        inner.callbacks = kept;
        inner.task = None;
        drop(inner);
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    #[pyo3(signature = (msg = None))]
    pub(super) fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        let callbacks = {
            let mut inner = slf.get().inner.lock();
            if !matches!(inner.state, WaiterState::Pending) {
                return Ok(false);
            }
            inner.state = WaiterState::Cancelled(msg);
            inner.row_done = false;
            inner.task = None;
            std::mem::take(&mut inner.callbacks).into_vec()
        };
        Self::schedule_callbacks(slf, callbacks)?;
        Ok(true)
    }

    pub(super) fn __repr__(&self) -> &'static str {
        match self.inner.lock().state {
            WaiterState::Pending => "<_DurableWaiter pending>",
            WaiterState::Done => "<_DurableWaiter finished>",
            WaiterState::Failed(_) => "<_DurableWaiter failed>",
            WaiterState::Cancelled(_) => "<_DurableWaiter cancelled>",
        }
    }

    pub(super) fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(resumer) = &self.resumer {
            visit.call(resumer)?;
        }
        let inner = self.inner.lock();
        if let Some(task) = &inner.task {
            visit.call(task)?;
        }
        match &inner.state {
            WaiterState::Failed(e) => visit.call(e)?,
            WaiterState::Cancelled(Some(m)) => visit.call(m)?,
            _ => {}
        }
        for callback in inner.callbacks.iter() {
            callback.py_gc_traverse(&visit)?;
        }
        Ok(())
    }

    pub(super) fn __clear__(&self) {
        // Dropped after the lock is released: a finaliser may call back into this waiter.
        let dropped = {
            let mut inner = self.inner.lock();
            let callbacks = std::mem::take(&mut inner.callbacks);
            let task = inner.task.take();
            let state = match inner.state {
                WaiterState::Failed(_) | WaiterState::Cancelled(Some(_)) => {
                    Some(std::mem::replace(&mut inner.state, WaiterState::Cancelled(None)))
                }
                _ => None,
            };
            (callbacks, task, state)
        };
        drop(dropped);
    }
}
