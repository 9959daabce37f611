//! [`Waiter`]: the small future-compatible awaitable a durable row's append returns.

use parking_lot::Mutex;
use pyo3::exceptions::PyBaseException;
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
}

/// What `_append_raw` returns: an awaitable that completes (with `None`) once the row is
/// durable, and a future-compatible object for `asyncio` (`isfuture`, `Task`, `gather`,
/// `wait_for`, `shield`): `done`, `result`, `exception`, `cancel`, `cancelled`,
/// `add_done_callback`, `remove_done_callback`, `get_loop`. Cancelling it stops the wait,
/// not the append. Only touched on its loop's thread.
#[pyclass(frozen, module = "cano._core", name = "_DurableWaiter")]
pub struct Waiter {
    pub(super) event_loop: Py<PyAny>,
    pub(super) inner: Mutex<WaiterInner>,
}

impl Waiter {
    pub(super) fn new(event_loop: Py<PyAny>) -> Self {
        Waiter {
            event_loop,
            inner: Mutex::new(WaiterInner {
                state: WaiterState::Pending,
                blocking: false,
                callbacks: Callbacks::default(),
            }),
        }
    }

    /// Records the append's outcome and runs the done-callbacks right away (see the module
    /// docs); a cancelled waiter ignores it.
    pub(super) fn finish(slf: &Bound<'_, Self>, outcome: Outcome) {
        let py = slf.py();
        let state = match outcome {
            Outcome::Failed(err) => WaiterState::Failed(checkpoint_error(py, &err).into_value(py)),
            _ => WaiterState::Done,
        };
        let callbacks = {
            let mut inner = slf.get().inner.lock();
            if !matches!(inner.state, WaiterState::Pending) {
                return;
            }
            inner.state = state;
            std::mem::take(&mut inner.callbacks)
        };
        let Callbacks { first, rest } = callbacks;
        for (callback, context) in first.into_iter().chain(rest) {
            let ran = match &context {
                Some(ctx) => ctx.bind(py).call_method1(intern!(py, "run"), (&callback, slf)),
                None => callback.bind(py).call1((slf,)),
            };
            if let Err(e) = ran {
                report_callback_error(slf, &callback, e);
            }
        }
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
        {
            let mut inner = slf.get().inner.lock();
            if matches!(inner.state, WaiterState::Pending) {
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
        let inner = self.inner.lock();
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
            let state = match inner.state {
                WaiterState::Failed(_) | WaiterState::Cancelled(Some(_)) => {
                    Some(std::mem::replace(&mut inner.state, WaiterState::Cancelled(None)))
                }
                _ => None,
            };
            (callbacks, state)
        };
        drop(dropped);
    }
}
