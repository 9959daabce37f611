//! `RedbCheckpointStore`: the embedded checkpoint store, as Python sees it.
//!
//! Every async method returns an awaitable bound to the running loop and queues a request to
//! the store's writer thread (`cano_core::checkpoint::RedbStore`); nothing blocks the loop.
//! The writer makes a whole batch durable at once; its completions only record outcomes
//! (plain Rust data) in [`Shared::pending`], and never need the interpreter.
//!
//! **Waking a loop.** Each event loop that uses the store gets a [`Channel`]: a socket pair
//! whose reading end is registered with `loop.add_reader`, with a [`Drain`] as callback.
//! After a batch, the writer writes one byte to the channel of every loop that has outcomes
//! waiting (at most one byte until the loop drained), without attaching to the interpreter;
//! the loop then runs `Drain`, which resolves all of that loop's outcomes in one callback.
//! Loops without `add_reader` (e.g. a Windows proactor loop) fall back to one
//! `loop.call_soon_threadsafe(drain)` per batch, from the writer, attached.
//!
//! **Waiters.** The public methods return `asyncio.Future`s. `_append_raw`, the dispatcher's
//! fast path, returns a [`Waiter`] instead: a small future-compatible object (the protocol
//! `asyncio.Task` and `asyncio.isfuture` use) whose done-callbacks `Drain` runs directly,
//! instead of scheduling one loop callback per row as `Future.set_result` does. `Drain` is
//! itself a top-level loop callback, so running a task's wake-up there is what the loop
//! would do one iteration later.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use cano_core::checkpoint::{
    codec, Completion, Durability, Entry, RedbStore, Row, RowKind, RunSummary, StoreError,
};
use parking_lot::Mutex;
use pyo3::exceptions::{
    PyBaseException, PyNotImplementedError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors;

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CHECKPOINT_ROW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ROW_KIND: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ATEXIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CANCELLED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_STATE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// What a finished request gives its future, still as Rust data.
enum Outcome {
    Done,
    Rows(Vec<Row>),
    RunIds(Vec<RunSummary>),
    Summaries(Vec<RunSummary>),
    Failed(StoreError),
}

/// What a finished request resolves.
enum Target {
    Future(Py<PyAny>),
    Waiter(Py<Waiter>),
}

/// A finished request waiting for its loop to drain it.
struct Pending {
    channel: u64,
    target: Target,
    outcome: Outcome,
}

/// How the writer wakes a loop.
enum Wake {
    /// The writing end of the socket pair the loop watches.
    #[cfg(unix)]
    Socket(std::os::unix::net::UnixStream),
    /// `loop.call_soon_threadsafe(drain)`, attached.
    Threadsafe(Py<Drain>),
}

/// One event loop that uses the store.
struct Channel {
    id: u64,
    /// Only compared by identity, or used attached.
    event_loop: Py<PyAny>,
    /// Set once a wake-up is on its way, cleared by `Drain` before it takes the outcomes.
    armed: Arc<AtomicBool>,
    wake: Wake,
}

/// Shared by the Python object, the writer thread's completions and batch hook, and the
/// loops' `Drain`s. Nothing here is dropped by the writer thread: it only moves the `Py`
/// references of a completion into `pending`.
#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<Pending>>,
    channels: Mutex<Vec<Channel>>,
    next_channel: AtomicU64,
    /// Set while a Python thread closes the store synchronously: the writer must not attach
    /// then (the closing thread wakes the `call_soon_threadsafe` loops itself afterwards).
    hold: AtomicBool,
}

impl Shared {
    /// The channels that have outcomes waiting.
    fn waiting_channels(&self) -> Vec<u64> {
        let pending = self.pending.lock();
        let mut ids: Vec<u64> = Vec::new();
        for p in pending.iter() {
            if !ids.contains(&p.channel) {
                ids.push(p.channel);
            }
        }
        ids
    }

    /// Takes the outcomes of `channel` out of `pending`.
    fn take_channel(&self, channel: u64) -> Vec<Pending> {
        let mut pending = self.pending.lock();
        if pending.iter().all(|p| p.channel == channel) {
            return std::mem::take(&mut *pending);
        }
        let (mine, rest) =
            std::mem::take(&mut *pending).into_iter().partition(|p| p.channel == channel);
        *pending = rest;
        mine
    }

    /// The batch hook, on the writer thread.
    fn wake_from_writer(&self) {
        let ids = self.waiting_channels();
        if ids.is_empty() {
            return;
        }
        let mut threadsafe = false;
        {
            let channels = self.channels.lock();
            for c in channels.iter().filter(|c| ids.contains(&c.id)) {
                match &c.wake {
                    #[cfg(unix)]
                    Wake::Socket(tx) => {
                        if !c.armed.swap(true, Ordering::SeqCst) {
                            // Non-blocking; a full buffer means a wake-up is already pending.
                            let _ = std::io::Write::write(&mut &*tx, &[1]);
                        }
                    }
                    Wake::Threadsafe(_) => threadsafe = true,
                }
            }
        }
        if threadsafe && !self.hold.load(Ordering::Acquire) {
            // `None` while the interpreter shuts down: there is no loop left to wake.
            Python::try_attach(|py| self.wake_threadsafe(py, &ids));
        }
    }

    /// Schedules the `Drain` of each `call_soon_threadsafe` channel in `ids`. Attached.
    fn wake_threadsafe(&self, py: Python<'_>, ids: &[u64]) {
        // References are cloned under the lock, and Python is called after releasing it.
        let targets: Vec<(Py<PyAny>, Py<Drain>)> = {
            let channels = self.channels.lock();
            channels
                .iter()
                .filter(|c| ids.contains(&c.id))
                .filter_map(|c| match &c.wake {
                    Wake::Threadsafe(drain) if !c.armed.swap(true, Ordering::SeqCst) => {
                        Some((c.event_loop.clone_ref(py), drain.clone_ref(py)))
                    }
                    _ => None,
                })
                .collect()
        };
        for (event_loop, drain) in targets {
            let scheduled =
                event_loop.bind(py).call_method1(intern!(py, "call_soon_threadsafe"), (drain,));
            if let Err(e) = scheduled {
                // A closed loop has nobody left waiting on its futures.
                if !e.is_instance_of::<PyRuntimeError>(py) {
                    e.write_unraisable(py, None);
                }
            }
        }
    }

    /// The channel of `event_loop`, registering one on first use. On the loop's thread.
    fn channel(self: &Arc<Self>, event_loop: &Bound<'_, PyAny>) -> PyResult<u64> {
        {
            let channels = self.channels.lock();
            if let Some(c) = channels.iter().rev().find(|c| c.event_loop.is(event_loop)) {
                return Ok(c.id);
            }
        }
        let py = event_loop.py();
        self.forget_closed_loops(py);
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let armed = Arc::new(AtomicBool::new(false));
        let wake = self.register(event_loop, id, &armed)?;
        self.channels.lock().push(Channel {
            id,
            event_loop: event_loop.clone().unbind(),
            armed,
            wake,
        });
        Ok(id)
    }

    /// Watches a new socket pair on `event_loop`, or falls back to `call_soon_threadsafe`.
    fn register(
        self: &Arc<Self>,
        event_loop: &Bound<'_, PyAny>,
        id: u64,
        armed: &Arc<AtomicBool>,
    ) -> PyResult<Wake> {
        let py = event_loop.py();
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let (rx, tx) = std::os::unix::net::UnixStream::pair()
                .and_then(|(rx, tx)| {
                    rx.set_nonblocking(true)?;
                    tx.set_nonblocking(true)?;
                    Ok((rx, tx))
                })
                .map_err(|e| PyRuntimeError::new_err(format!("checkpoint store: {e}")))?;
            let fd = rx.as_raw_fd();
            let drain =
                Drain { shared: self.clone(), channel: id, armed: armed.clone(), rx: Some(rx) };
            match event_loop.call_method1(intern!(py, "add_reader"), (fd, Py::new(py, drain)?)) {
                Ok(_) => return Ok(Wake::Socket(tx)),
                Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => {}
                Err(e) => return Err(e),
            }
        }
        let drain = Drain {
            shared: self.clone(),
            channel: id,
            armed: armed.clone(),
            #[cfg(unix)]
            rx: None,
        };
        Ok(Wake::Threadsafe(Py::new(py, drain)?))
    }

    /// Drops the channels (and the outcomes nobody will drain) of closed loops. Attached.
    fn forget_closed_loops(&self, py: Python<'_>) {
        let loops: Vec<(u64, Py<PyAny>)> =
            self.channels.lock().iter().map(|c| (c.id, c.event_loop.clone_ref(py))).collect();
        let closed: Vec<u64> = loops
            .iter()
            .filter(|(_, l)| {
                l.bind(py)
                    .call_method0(intern!(py, "is_closed"))
                    .and_then(|v| v.is_truthy())
                    .unwrap_or(false)
            })
            .map(|(id, _)| *id)
            .collect();
        drop(loops);
        if closed.is_empty() {
            return;
        }
        let gone: Vec<Channel> = {
            let mut channels = self.channels.lock();
            let (gone, kept) =
                std::mem::take(&mut *channels).into_iter().partition(|c| closed.contains(&c.id));
            *channels = kept;
            gone
        };
        let orphans: Vec<Pending> = {
            let mut pending = self.pending.lock();
            let (orphans, kept) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|p| closed.contains(&p.channel));
            *pending = kept;
            orphans
        };
        // Dropped here, attached.
        drop((gone, orphans));
    }
}

/// Closes from a Python thread, blocking without the interpreter; then wakes the
/// `call_soon_threadsafe` loops of whatever the last batch finished (socket loops were woken
/// by the writer).
fn close_blocking(py: Python<'_>, store: &RedbStore, shared: &Shared) -> Result<(), StoreError> {
    shared.hold.store(true, Ordering::Release);
    let result = py.detach(|| store.close());
    let ids = shared.waiting_channels();
    if !ids.is_empty() {
        shared.wake_threadsafe(py, &ids);
    }
    result
}

/// Registered with `atexit`: a store still open when the interpreter exits is closed (and so
/// flushed) while Python is fully alive, rather than during finalisation or never.
#[pyclass(frozen, module = "cano._core", name = "_CloseAtExit")]
struct CloseAtExit {
    store: Weak<RedbStore>,
    shared: Arc<Shared>,
}

#[pymethods]
impl CloseAtExit {
    fn __call__(&self, py: Python<'_>) {
        if let Some(store) = self.store.upgrade() {
            if let Err(e) = close_blocking(py, &store, &self.shared) {
                checkpoint_error(py, &e).write_unraisable(py, None);
            }
        }
    }
}

/// The loop callback that resolves a loop's outcomes (see the module docs).
#[pyclass(frozen, module = "cano._core", name = "_Drain")]
struct Drain {
    shared: Arc<Shared>,
    channel: u64,
    armed: Arc<AtomicBool>,
    /// The watched end of the socket pair (`None` for `call_soon_threadsafe` loops).
    #[cfg(unix)]
    rx: Option<std::os::unix::net::UnixStream>,
}

impl Drain {
    /// Empties the socket; true once the writing end is gone (the store was dropped).
    fn read_signal(&self) -> bool {
        #[cfg(unix)]
        if let Some(rx) = &self.rx {
            let mut buf = [0u8; 64];
            loop {
                match std::io::Read::read(&mut &*rx, &mut buf) {
                    Ok(0) => return true,
                    // The writer sends one byte per wake-up: a short read emptied the socket.
                    Ok(n) if n < buf.len() => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                    Err(_) => return true,
                }
            }
        }
        false
    }
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        // The socket is emptied before `armed` is cleared, and `armed` is cleared before the
        // outcomes are taken: an outcome pushed after `take_channel` finds `armed` clear and
        // sends a new byte, which nothing here can consume any more.
        let gone = self.read_signal();
        self.armed.store(false, Ordering::SeqCst);
        let items = self.shared.take_channel(self.channel);
        for p in items {
            match p.target {
                Target::Future(future) => {
                    if let Err(e) = resolve(py, future.bind(py), p.outcome) {
                        e.write_unraisable(py, Some(future.bind(py)));
                    }
                }
                Target::Waiter(waiter) => Waiter::finish(waiter.bind(py), p.outcome),
            }
        }
        #[cfg(unix)]
        if gone {
            if let Some(rx) = &self.rx {
                use std::os::fd::AsRawFd;
                let event_loop =
                    GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
                event_loop.call_method1(intern!(py, "remove_reader"), (rx.as_raw_fd(),))?;
            }
        }
        let _ = gone;
        Ok(())
    }
}

fn resolve(py: Python<'_>, future: &Bound<'_, PyAny>, outcome: Outcome) -> PyResult<()> {
    // Cancelled (or otherwise finished) futures have nobody waiting for this outcome.
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    let value = match outcome {
        Outcome::Done => Ok(py.None().into_bound(py)),
        Outcome::Rows(rows) => rows_to_python(py, rows).map(Bound::into_any),
        Outcome::RunIds(runs) => {
            PyList::new(py, runs.into_iter().map(|r| r.workflow_id)).map(Bound::into_any)
        }
        Outcome::Summaries(runs) => summaries_to_python(py, runs).map(Bound::into_any),
        Outcome::Failed(err) => Err(checkpoint_error(py, &err)),
    };
    match value {
        Ok(v) => future.call_method1(intern!(py, "set_result"), (v,))?,
        Err(e) => future.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?,
    };
    Ok(())
}

/// Where a [`Waiter`] is.
enum WaiterState {
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
struct Callbacks {
    first: Option<Callback>,
    rest: Vec<Callback>,
}

impl Callbacks {
    fn push(&mut self, callback: Callback) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(callback);
        } else {
            self.rest.push(callback);
        }
    }

    fn into_vec(self) -> Vec<Callback> {
        let mut all = Vec::with_capacity(self.rest.len() + 1);
        all.extend(self.first);
        all.extend(self.rest);
        all
    }

    fn iter(&self) -> impl Iterator<Item = &Callback> {
        self.first.iter().chain(self.rest.iter())
    }
}

struct WaiterInner {
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
    event_loop: Py<PyAny>,
    inner: Mutex<WaiterInner>,
}

impl Waiter {
    fn new(event_loop: Py<PyAny>) -> Self {
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
    fn finish(slf: &Bound<'_, Self>, outcome: Outcome) {
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
    fn schedule_callbacks(slf: &Bound<'_, Self>, callbacks: Vec<Callback>) -> PyResult<()> {
        let py = slf.py();
        let event_loop = slf.get().event_loop.bind(py);
        for (callback, context) in callbacks {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "context"), context)?;
            event_loop.call_method(intern!(py, "call_soon"), (callback, slf), Some(&kwargs))?;
        }
        Ok(())
    }

    fn cancelled_error(py: Python<'_>, msg: Option<&Py<PyAny>>) -> PyErr {
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

    fn invalid_state(py: Python<'_>, message: &str) -> PyErr {
        match INVALID_STATE_ERROR.import(py, "asyncio", "InvalidStateError") {
            Ok(cls) => match cls.call1((message,)) {
                Ok(e) => PyErr::from_value(e),
                Err(e) => e,
            },
            Err(e) => e,
        }
    }
}

fn report_callback_error(waiter: &Bound<'_, Waiter>, callback: &Py<PyAny>, err: PyErr) {
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
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Yields itself while pending (the task then waits on it), returns `None` once done.
    /// There is no `send`/`throw`/`close`, as on `asyncio.Future`: with them the waiter would
    /// pass for a coroutine (`collections.abc.Coroutine`), which `asyncio.wait` refuses.
    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, Self>>> {
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
    fn get_blocking(&self) -> bool {
        self.inner.lock().blocking
    }

    #[setter(_asyncio_future_blocking)]
    fn set_blocking(&self, value: bool) {
        self.inner.lock().blocking = value;
    }

    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.event_loop.clone_ref(py)
    }

    fn done(&self) -> bool {
        !matches!(self.inner.lock().state, WaiterState::Pending)
    }

    fn cancelled(&self) -> bool {
        matches!(self.inner.lock().state, WaiterState::Cancelled(_))
    }

    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
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

    fn exception(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
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
    fn add_done_callback(
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

    fn remove_done_callback(&self, py: Python<'_>, callback: &Bound<'_, PyAny>) -> PyResult<usize> {
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
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
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

    fn __repr__(&self) -> &'static str {
        match self.inner.lock().state {
            WaiterState::Pending => "<_DurableWaiter pending>",
            WaiterState::Done => "<_DurableWaiter finished>",
            WaiterState::Failed(_) => "<_DurableWaiter failed>",
            WaiterState::Cancelled(_) => "<_DurableWaiter cancelled>",
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Some(inner) = self.inner.try_lock() {
            match &inner.state {
                WaiterState::Failed(e) => visit.call(e)?,
                WaiterState::Cancelled(Some(m)) => visit.call(m)?,
                _ => {}
            }
            for (cb, ctx) in inner.callbacks.iter() {
                visit.call(cb)?;
                if let Some(c) = ctx {
                    visit.call(c)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
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

fn rows_to_python(py: Python<'_>, rows: Vec<Row>) -> PyResult<Bound<'_, PyList>> {
    let row_class = CHECKPOINT_ROW.import(py, "cano.store", "CheckpointRow")?;
    let kind_class = ROW_KIND.import(py, "cano.store", "RowKind")?;
    let kinds = [kind_class.call1((0,))?, kind_class.call1((1,))?, kind_class.call1((2,))?];
    let list = PyList::empty(py);
    for r in rows {
        let output = r.output.map(|b| PyBytes::new(py, &b));
        list.append(row_class.call1((
            r.workflow_id,
            r.sequence,
            r.state,
            r.task_id,
            &kinds[r.kind as usize],
            output,
            r.workflow_version,
        ))?)?;
    }
    Ok(list)
}

fn summaries_to_python(py: Python<'_>, runs: Vec<RunSummary>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for r in runs {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "workflow_id"), r.workflow_id)?;
        d.set_item(intern!(py, "rows"), r.rows)?;
        d.set_item(intern!(py, "last_state"), r.last_state)?;
        d.set_item(intern!(py, "last_sequence"), r.last_sequence)?;
        list.append(d)?;
    }
    Ok(list)
}

fn checkpoint_error(py: Python<'_>, err: &StoreError) -> PyErr {
    errors::checkpoint(py, err.to_string())
}

/// The embedded, durable checkpoint store: one redb file per process.
///
/// ```python
/// async with cano.RedbCheckpointStore("runs.redb") as store:
///     wf.with_checkpoint_store(store)
///     await wf.orchestrate(Step.START, workflow_id="order-7")
/// ```
///
/// `durability="immediate"` (default) makes every appended row durable before `append`
/// completes: concurrent appends share one record of a write-ahead log next to the file
/// (`<path>.wal`) and one fsync; the rows reach the database file at periodic checkpoints
/// and at `close()`, which deletes the log. A store reopened after a crash replays the log
/// first. `"eventual"` skips the fsync (a crash may lose the last rows; `flush()` and
/// `close()` make everything durable). Either way `load_run` sees every appended row.
/// The file is opened, and locked, at construction: a second store on the same file, in
/// this process or another, raises `CheckpointError`. Copy or move the file only while no
/// store has it open (a closed store leaves no log behind).
#[pyclass(frozen, module = "cano._core", name = "RedbCheckpointStore")]
pub struct RedbCheckpointStore {
    store: Arc<RedbStore>,
    shared: Arc<Shared>,
    path: String,
    /// The `CloseAtExit` registered for this store, unregistered when it closes.
    at_exit: Py<PyAny>,
}

impl RedbCheckpointStore {
    /// A future of the running loop, and the completion that will resolve it.
    fn waiter<'py, T: Send + 'static>(
        &self,
        py: Python<'py>,
        outcome: fn(T) -> Outcome,
    ) -> PyResult<(Bound<'py, PyAny>, Completion<T>)> {
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let channel = self.shared.channel(&event_loop)?;
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        let shared = self.shared.clone();
        let target = Target::Future(future.clone().unbind());
        let done: Completion<T> = Box::new(move |result: Result<T, StoreError>| {
            let outcome = match result {
                Ok(v) => outcome(v),
                Err(e) => Outcome::Failed(e),
            };
            shared.pending.lock().push(Pending { channel, target, outcome });
        });
        Ok((future, done))
    }

    fn append_row<'py>(&self, py: Python<'py>, row: Row) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, |()| Outcome::Done)?;
        self.store.append(row, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    fn close_blocking(&self, py: Python<'_>) -> Result<(), StoreError> {
        let result = close_blocking(py, &self.store, &self.shared);
        self.forget_at_exit(py);
        result
    }

    fn forget_at_exit(&self, py: Python<'_>) {
        // Fails only while the interpreter shuts down, when there is nothing left to forget.
        let _ = ATEXIT
            .import(py, "atexit", "unregister")
            .and_then(|unregister| unregister.call1((self.at_exit.bind(py),)));
    }
}

#[pymethods]
impl RedbCheckpointStore {
    #[new]
    #[pyo3(signature = (path, *, durability = "immediate"))]
    fn new(py: Python<'_>, path: PathBuf, durability: &str) -> PyResult<Self> {
        let level = match durability {
            "immediate" => Durability::Immediate,
            "eventual" => Durability::Eventual,
            other => {
                return Err(errors::configuration(
                    py,
                    format!("durability must be \"immediate\" or \"eventual\", got {other:?}"),
                ))
            }
        };
        let shared = Arc::new(Shared::default());
        let hook_shared = shared.clone();
        let hook = Box::new(move || hook_shared.wake_from_writer());
        let opened = py.detach(|| RedbStore::open_with_hook(&path, level, Some(hook)));
        let store = Arc::new(opened.map_err(|e| checkpoint_error(py, &e))?);
        let at_exit =
            Py::new(py, CloseAtExit { store: Arc::downgrade(&store), shared: shared.clone() })?
                .into_any();
        let registered = py.import("atexit").and_then(|m| m.call_method1("register", (&at_exit,)));
        if let Err(e) = registered {
            let _ = close_blocking(py, &store, &shared);
            return Err(e);
        }
        Ok(RedbCheckpointStore { store, shared, path: path.display().to_string(), at_exit })
    }

    /// Appends `row` (a `cano.store.CheckpointRow`); the future completes once the row is
    /// committed (and on disk, with `durability="immediate"`). A row already stored at the
    /// same `(workflow_id, sequence)` fails it with `CheckpointError` and is kept.
    fn append<'py>(&self, row: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = row.py();
        let kind_value = field(row, "kind")?;
        let kind_value = kind_value.getattr(intern!(py, "value")).unwrap_or(kind_value);
        let output = field(row, "output")?;
        let row = Row {
            workflow_id: extract(&field(row, "workflow_id")?, "workflow_id", "a str")?,
            sequence: extract(&field(row, "sequence")?, "sequence", "an int >= 0")?,
            state: extract(&field(row, "state")?, "state", "a str")?,
            task_id: extract(&field(row, "task_id")?, "task_id", "a str")?,
            kind: row_kind(extract(&kind_value, "kind", "a RowKind")?)?,
            output: output_bytes(&output)?,
            workflow_version: extract(
                &field(row, "workflow_version")?,
                "workflow_version",
                "an int in [0, 2**32)",
            )?,
        };
        self.append_row(py, row)
    }

    /// `append` without building a `CheckpointRow` (used by the dispatcher). Returns a
    /// lightweight future-compatible awaitable rather than an `asyncio.Future` (see the
    /// module docs); it completes with `None` once the row is durable.
    #[allow(clippy::too_many_arguments)]
    fn _append_raw<'py>(
        &self,
        py: Python<'py>,
        workflow_id: String,
        sequence: u64,
        state: &str,
        task_id: &str,
        kind: u8,
        output: Option<&[u8]>,
        version: u32,
    ) -> PyResult<Bound<'py, Waiter>> {
        // Encoded here, straight from the Python strings: one buffer instead of a `Row`.
        let mut envelope = Vec::new();
        codec::encode_fields(row_kind(kind)?, version, state, task_id, output, &mut envelope);
        let entry = Entry { workflow_id, sequence, envelope };
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let channel = self.shared.channel(&event_loop)?;
        let waiter = Bound::new(py, Waiter::new(event_loop.unbind()))?;
        let shared = self.shared.clone();
        let target = Target::Waiter(waiter.clone().unbind());
        let done = move |result: Result<(), StoreError>| {
            let outcome = match result {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(e),
            };
            shared.pending.lock().push(Pending { channel, target, outcome });
        };
        self.store.append_entry(entry, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(waiter)
    }

    /// Every row of `workflow_id` as `CheckpointRow`s, ascending by sequence (`[]` if none).
    fn load_run<'py>(&self, py: Python<'py>, workflow_id: String) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, Outcome::Rows)?;
        self.store.load_run(workflow_id, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Removes every row of `workflow_id`; an unknown id is not an error.
    fn clear<'py>(&self, py: Python<'py>, workflow_id: String) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, |()| Outcome::Done)?;
        self.store.clear(workflow_id, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// The workflow ids that have rows, sorted.
    fn list_runs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, Outcome::RunIds)?;
        self.store.list_runs(done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// One dict per run, sorted by id:
    /// `{"workflow_id", "rows", "last_state", "last_sequence"}` (what `cano runs list` shows).
    fn runs_summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, Outcome::Summaries)?;
        self.store.list_runs(done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Blocks until every row appended so far is on disk (a no-op cost with "immediate").
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.store.flush_blocking()).map_err(|e| checkpoint_error(py, &e))
    }

    /// Flushes, releases the file and stops the writer thread. Idempotent. Afterwards every
    /// method raises `CheckpointError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.close_blocking(py).map_err(|e| checkpoint_error(py, &e))
    }

    /// The file this store writes.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// `"immediate"` or `"eventual"`.
    #[getter]
    fn durability(&self) -> &'static str {
        self.store.durability().as_str()
    }

    /// True once `close()` (or leaving a `with` block) closed the store.
    #[getter]
    fn closed(&self) -> bool {
        self.store.is_closed()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        exc_value: &Bound<'_, PyAny>,
        traceback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let _ = (exc_type, exc_value, traceback);
        self.close(py)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        future.call_method1(intern!(py, "set_result"), (slf,))?;
        Ok(future)
    }

    /// Closes without blocking the loop: the future completes once the file is released.
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: &Bound<'py, PyAny>,
        exc_value: &Bound<'py, PyAny>,
        traceback: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (exc_type, exc_value, traceback);
        let (future, done) = self.waiter(py, |()| Outcome::Done)?;
        self.forget_at_exit(py);
        match self.store.close_with(done) {
            Ok(()) => {}
            Err(StoreError::Closed { .. }) => {
                future.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
            Err(e) => return Err(checkpoint_error(py, &e)),
        }
        Ok(future)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let path = PyString::new(py, &self.path).repr()?;
        let closed = if self.store.is_closed() { ", closed" } else { "" };
        Ok(format!(
            "RedbCheckpointStore({path}, durability='{}'{closed})",
            self.store.durability().as_str()
        ))
    }
}

impl Drop for RedbCheckpointStore {
    fn drop(&mut self) {
        // Dropped by Python, attached. Even a closed store may still have its writer thread
        // finishing the close batch (`__aexit__` does not wait for it): join it detached,
        // then wake the loops ourselves.
        Python::attach(|py| {
            let _ = self.close_blocking(py);
            // Closes the writing end of every loop's socket: each `Drain` sees the end of
            // the stream, resolves what is left for its loop and unregisters itself. The
            // outcomes stay in `Shared`, which the `Drain`s keep alive.
            let channels = std::mem::take(&mut *self.shared.channels.lock());
            drop(channels);
        });
    }
}

fn field<'py>(row: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    row.getattr(name).map_err(|_| {
        PyTypeError::new_err(format!(
            "append() expects a cano.store.CheckpointRow; {} has no attribute {name:?}",
            row.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "the value".into())
        ))
    })
}

fn extract<'py, T: FromPyObjectOwned<'py>>(
    value: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<T> {
    value.extract::<T>().map_err(|_| {
        let shown = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("CheckpointRow.{name} must be {expected}, got {shown}"))
    })
}

fn output_bytes(value: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    if value.is_none() {
        return Ok(None);
    }
    match value.cast::<PyBytes>() {
        Ok(b) => Ok(Some(b.as_bytes().to_vec())),
        Err(_) => Err(PyTypeError::new_err(format!(
            "CheckpointRow.output must be bytes or None, got {}",
            value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
        ))),
    }
}

fn row_kind(value: u8) -> PyResult<RowKind> {
    RowKind::from_u8(value).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown checkpoint row kind {value} (0 state entry, 1 compensation, 2 step cursor)"
        ))
    })
}
