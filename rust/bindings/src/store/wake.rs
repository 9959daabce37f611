//! Waking event loops when the writer thread finished a batch, and resolving the futures
//! of that batch on each loop (see the module docs of [`super`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use cano_core::checkpoint::{RedbStore, Row, RunSummary, StoreError, Timed};
use parking_lot::Mutex;
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3::{PyTraverseError, PyVisit};

use crate::gc::PyGcTraverse;

use super::rows::{checkpoint_error, rows_to_python, summaries_to_python, timed_to_python};
use super::waiter::Waiter;
use super::{RunWaiters, GET_RUNNING_LOOP};

/// What a finished request gives its future, still as Rust data.
pub(super) enum Outcome {
    Done,
    Rows(Vec<Row>),
    /// Rows with their times, as `(sequence, state, task_id, kind, output, at)` tuples.
    Timed(Vec<Timed>),
    /// `(name, json)` values of a namespace.
    Values(Vec<(String, Vec<u8>)>),
    Value(Option<Vec<u8>>),
    RunIds(Vec<RunSummary>),
    Summaries(Vec<RunSummary>),
    Failed(StoreError),
}

/// What a finished request resolves.
pub(super) enum Target {
    Future(Py<PyAny>),
    /// A waiter, and the generation the row was appended for.
    Waiter(Py<Waiter>, u64),
    /// The oldest row in flight of a run appending through its `RunLog`: its waiter is taken
    /// from the run's queue on the loop. Not visited here: the run's `RunLog` visits the
    /// queue, and this reference only keeps it until the loop drains it.
    Row(Arc<RunWaiters>),
}

/// A finished request waiting for its loop to drain it.
pub(super) struct Pending {
    pub(super) channel: u64,
    pub(super) target: Target,
    pub(super) outcome: Outcome,
}

/// How the writer wakes a loop.
pub(super) enum Wake {
    /// The writing end of the socket pair the loop watches.
    #[cfg(unix)]
    Socket(std::os::unix::net::UnixStream),
    /// `loop.call_soon_threadsafe(drain)`, attached.
    Threadsafe(Py<Drain>),
}

/// One event loop that uses the store.
pub(super) struct Channel {
    pub(super) id: u64,
    /// Only compared by identity, or used attached.
    pub(super) event_loop: Py<PyAny>,
    /// Set once a wake-up is on its way, cleared by `Drain` before it takes the outcomes.
    pub(super) armed: Arc<AtomicBool>,
    pub(super) wake: Wake,
}

crate::gc_traverse!(Pending { target });
crate::gc_traverse!(Channel { event_loop, wake });

impl PyGcTraverse for Target {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Target::Future(f) => visit.call(f),
            Target::Waiter(w, _) => visit.call(w),
            Target::Row(_) => Ok(()),
        }
    }
}

impl PyGcTraverse for Wake {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            #[cfg(unix)]
            Wake::Socket(_) => Ok(()),
            Wake::Threadsafe(drain) => visit.call(drain),
        }
    }
}

/// Shared by the Python object, the writer thread's completions and batch hook, and the
/// loops' `Drain`s. Nothing here is dropped by the writer thread: it only moves the `Py`
/// references of a completion into `pending`.
/// Held behind an `Arc` by the store, its `Drain`s, its at-exit hook and the writer's batch
/// hook: only the store visits it (see `crate::gc`).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) pending: Mutex<Vec<Pending>>,
    pub(super) channels: Mutex<Vec<Channel>>,
    pub(super) next_channel: AtomicU64,
    /// Set while a Python thread closes the store synchronously: the writer must not attach
    /// then (the closing thread wakes the `call_soon_threadsafe` loops itself afterwards).
    pub(super) hold: AtomicBool,
}

crate::gc_traverse!(Shared { pending, channels });

impl Shared {
    /// The channels that have outcomes waiting.
    pub(super) fn waiting_channels(&self) -> Vec<u64> {
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
    pub(super) fn take_channel(&self, channel: u64) -> Vec<Pending> {
        let mut pending = self.pending.lock();
        if pending.iter().all(|p| p.channel == channel) {
            // Room for as many next time, allocated here rather than grown by the writer.
            let room = pending.len();
            return std::mem::replace(&mut *pending, Vec::with_capacity(room));
        }
        let (mine, rest) =
            std::mem::take(&mut *pending).into_iter().partition(|p| p.channel == channel);
        *pending = rest;
        mine
    }

    /// The batch hook, on the writer thread.
    pub(super) fn wake_from_writer(&self) {
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
    pub(super) fn wake_threadsafe(&self, py: Python<'_>, ids: &[u64]) {
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
    pub(super) fn channel(self: &Arc<Self>, event_loop: &Bound<'_, PyAny>) -> PyResult<u64> {
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
    pub(super) fn register(
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
    pub(super) fn forget_closed_loops(&self, py: Python<'_>) {
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
pub(super) fn close_blocking(
    py: Python<'_>,
    store: &RedbStore,
    shared: &Shared,
) -> Result<(), StoreError> {
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
pub(super) struct CloseAtExit {
    pub(super) store: Weak<RedbStore>,
    pub(super) shared: Arc<Shared>,
}

#[pymethods]
impl CloseAtExit {
    pub(super) fn __call__(&self, py: Python<'_>) {
        if let Some(store) = self.store.upgrade() {
            if let Err(e) = close_blocking(py, &store, &self.shared) {
                checkpoint_error(py, &e).write_unraisable(py, None);
            }
        }
    }
}

/// The loop callback that resolves a loop's outcomes (see the module docs).
#[pyclass(frozen, module = "cano._core", name = "_Drain")]
pub(super) struct Drain {
    pub(super) shared: Arc<Shared>,
    pub(super) channel: u64,
    pub(super) armed: Arc<AtomicBool>,
    /// The watched end of the socket pair (`None` for `call_soon_threadsafe` loops).
    #[cfg(unix)]
    pub(super) rx: Option<std::os::unix::net::UnixStream>,
}

impl Drain {
    /// Empties the socket; true once the writing end is gone (the store was dropped).
    pub(super) fn read_signal(&self) -> bool {
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
    pub(super) fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        // The socket is emptied before `armed` is cleared, and `armed` is cleared before the
        // outcomes are taken: an outcome pushed after `take_channel` finds `armed` clear and
        // sends a new byte, which nothing here can consume any more.
        let gone = self.read_signal();
        self.armed.store(false, Ordering::SeqCst);
        let items = self.shared.take_channel(self.channel);
        // A `KeyboardInterrupt` or `SystemExit` from a task is raised once every outcome is
        // delivered: nothing taken here is lost, and the loop stops as it would for the task.
        let mut interrupt = None;
        for p in items {
            let (waiter, generation) = match p.target {
                Target::Future(future) => {
                    if let Err(e) = resolve(py, future.bind(py), p.outcome) {
                        e.write_unraisable(py, Some(future.bind(py)));
                    }
                    continue;
                }
                Target::Waiter(waiter, generation) => (waiter, generation),
                Target::Row(run) => match run.oldest() {
                    Some(oldest) => oldest,
                    None => continue,
                },
            };
            let raised = Waiter::finish(waiter.bind(py), p.outcome, generation);
            match (raised, &interrupt) {
                (Some(e), None) => interrupt = Some(e),
                (Some(e), Some(_)) => e.write_unraisable(py, Some(waiter.bind(py))),
                (None, _) => {}
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
        interrupt.map_or(Ok(()), Err)
    }
}

pub(super) fn resolve(py: Python<'_>, future: &Bound<'_, PyAny>, outcome: Outcome) -> PyResult<()> {
    // Cancelled (or otherwise finished) futures have nobody waiting for this outcome.
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    let value = match outcome {
        Outcome::Done => Ok(py.None().into_bound(py)),
        Outcome::Rows(rows) => rows_to_python(py, rows).map(Bound::into_any),
        Outcome::Timed(rows) => timed_to_python(py, rows).map(Bound::into_any),
        Outcome::Values(values) => {
            PyList::new(py, values.into_iter().map(|(name, json)| (name, PyBytes::new(py, &json))))
                .map(Bound::into_any)
        }
        Outcome::Value(value) => {
            Ok(value.map_or_else(|| py.None().into_bound(py), |v| PyBytes::new(py, &v).into_any()))
        }
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
