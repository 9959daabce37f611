//! `RedbCheckpointStore`: the embedded checkpoint store, as Python sees it.
//!
//! Every async method returns an `asyncio.Future` of the running loop and queues a request
//! to the store's writer thread (`cano_core::checkpoint::RedbStore`); nothing blocks the
//! loop. The writer commits a whole batch at once; its completions only record outcomes
//! (plain Rust data) in [`Shared::pending`]. After the batch, the writer attaches once and
//! schedules one [`Resolutions`] callable per event loop with `loop.call_soon_threadsafe`;
//! that callable turns the outcomes into Python values on the loop thread and resolves the
//! futures. So a commit costs each loop one wake-up, however many rows it carried.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use cano_core::checkpoint::{
    Completion, Durability, RedbStore, Row, RowKind, RunSummary, StoreError,
};
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::errors::{self, Context};

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CHECKPOINT_ROW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ROW_KIND: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ATEXIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What a finished request gives its future, still as Rust data.
enum Outcome {
    Done,
    Rows(Vec<Row>),
    RunIds(Vec<RunSummary>),
    Summaries(Vec<RunSummary>),
    Failed(StoreError),
}

/// Futures of one event loop with what to set on each.
type Batch = Vec<(Py<PyAny>, Outcome)>;

/// A finished request waiting for its loop to be woken.
struct Pending {
    event_loop: Py<PyAny>,
    future: Py<PyAny>,
    outcome: Outcome,
}

/// Shared by the Python object and the writer thread's completions and batch hook.
#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<Pending>>,
    /// Set while a Python thread closes the store synchronously: that thread holds (or is
    /// about to retake) the interpreter and wakes the loops itself after the writer stopped.
    hold: AtomicBool,
}

impl Shared {
    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.pending.lock())
    }

    /// The batch hook, on the writer thread.
    fn wake_from_writer(&self) {
        if self.hold.load(Ordering::Acquire) {
            return;
        }
        let items = self.take();
        if items.is_empty() {
            return;
        }
        let mut items = Some(items);
        Python::try_attach(|py| {
            if let Some(items) = items.take() {
                wake(py, items);
            }
        });
        if let Some(left) = items {
            // The interpreter is gone: there is no loop to wake, and Python references cannot
            // be released without it.
            std::mem::forget(left);
        }
    }
}

/// Closes from a Python thread, blocking without the interpreter (the writer's last batch
/// may need it); then wakes the loops of whatever that batch finished.
fn close_blocking(py: Python<'_>, store: &RedbStore, shared: &Shared) -> Result<(), StoreError> {
    shared.hold.store(true, Ordering::Release);
    let result = py.detach(|| store.close());
    wake(py, shared.take());
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

/// Schedules one `Resolutions` call per event loop. Every reference is dropped attached.
fn wake(py: Python<'_>, items: Vec<Pending>) {
    let mut by_loop: Vec<(Py<PyAny>, Batch)> = Vec::new();
    for p in items {
        match by_loop.iter_mut().find(|(l, _)| l.is(&p.event_loop)) {
            Some((_, list)) => list.push((p.future, p.outcome)),
            None => by_loop.push((p.event_loop, vec![(p.future, p.outcome)])),
        }
    }
    for (event_loop, list) in by_loop {
        let scheduled = Py::new(py, Resolutions { items: Mutex::new(list) }).and_then(|r| {
            event_loop.bind(py).call_method1(intern!(py, "call_soon_threadsafe"), (r,))
        });
        if let Err(e) = scheduled {
            // A closed loop has nobody left waiting on its futures.
            if !e.is_instance_of::<PyRuntimeError>(py) {
                e.write_unraisable(py, None);
            }
        }
    }
}

/// Resolves a batch of futures on their own loop (scheduled by the writer thread).
#[pyclass(frozen, module = "cano._core", name = "_Resolutions")]
struct Resolutions {
    items: Mutex<Batch>,
}

#[pymethods]
impl Resolutions {
    fn __call__(&self, py: Python<'_>) {
        let items = std::mem::take(&mut *self.items.lock());
        for (future, outcome) in items {
            if let Err(e) = resolve(py, future.bind(py), outcome) {
                e.write_unraisable(py, Some(future.bind(py)));
            }
        }
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
    errors::make(py, "CheckpointError", err.to_string(), Context::none(), None, None)
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
/// completes; `"eventual"` skips the fsync (a crash may lose the last rows; `flush()` and
/// `close()` make everything durable). Either way `load_run` sees every appended row.
/// The file is opened, and locked, at construction: a second store on the same file, in
/// this process or another, raises `CheckpointError`.
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
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        let shared = self.shared.clone();
        let (l, f) = (event_loop.unbind(), future.clone().unbind());
        let done: Completion<T> = Box::new(move |result: Result<T, StoreError>| {
            let outcome = match result {
                Ok(v) => outcome(v),
                Err(e) => Outcome::Failed(e),
            };
            shared.pending.lock().push(Pending { event_loop: l, future: f, outcome });
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

    /// `append` without building a `CheckpointRow` (used by the dispatcher).
    #[allow(clippy::too_many_arguments)]
    fn _append_raw<'py>(
        &self,
        py: Python<'py>,
        workflow_id: String,
        sequence: u64,
        state: String,
        task_id: String,
        kind: u8,
        output: Option<Bound<'py, PyBytes>>,
        version: u32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let row = Row {
            workflow_id,
            sequence,
            state,
            task_id,
            kind: row_kind(kind)?,
            output: output.map(|b| b.as_bytes().to_vec()),
            workflow_version: version,
        };
        self.append_row(py, row)
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
        // finishing the close batch (`__aexit__` does not wait for it) and needing the
        // interpreter: join it detached, then wake the loops ourselves.
        Python::attach(|py| {
            let _ = self.close_blocking(py);
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
