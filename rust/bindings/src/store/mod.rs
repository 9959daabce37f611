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

//!
//! - [`wake`]: the loops' wake-up channels and the `Drain` callback;
//! - [`waiter`]: the `Waiter` future of a durable row;
//! - [`rows`]: conversions between Python rows and core rows, and the store's errors;
//! - [`RunLog`]: what one run needs to append its rows, resolved once per run.

mod rows;
mod waiter;
mod wake;

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use cano_core::checkpoint::{
    codec, Completion, Durability, Entry, Fence, Namespace, OpenOptions, RedbStore, Row, RunRows,
    StoreError,
};
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors;
use rows::{checkpoint_error, row_kind, store_path};
pub use waiter::Waiter;
use wake::{close_blocking, CloseAtExit, Outcome, Pending, Shared, Target};

pub(crate) static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ATEXIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ROW_FIELDS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CHECK_WORKFLOW_ID: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FENCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `cano.records.FENCE` in the current context: the `(owner, epoch)` of the lease a Worker
/// runs the current task under, if any.
fn current_fence(py: Python<'_>) -> PyResult<Option<(String, u64)>> {
    FENCE.import(py, "cano.records", "FENCE")?.call_method0(intern!(py, "get"))?.extract()
}

/// A namespace of the store's own values, by the name the Python side uses.
fn namespace(py: Python<'_>, name: &str) -> PyResult<Namespace> {
    match name {
        "record" => Ok(Namespace::Record),
        "queue" => Ok(Namespace::Queue),
        "signal" => Ok(Namespace::Signal),
        other => Err(errors::configuration(py, format!("unknown store namespace {other:?}"))),
    }
}

/// A workflow id given to a store method, checked by `cano.store.check_workflow_id`.
fn checked_id(value: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let check = CHECK_WORKFLOW_ID.import(value.py(), "cano.store", "check_workflow_id")?;
    check.call1((value, what))?.extract()
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
#[pyclass(frozen, subclass, module = "cano._core", name = "RedbCheckpointStore")]
pub struct RedbCheckpointStore {
    store: Arc<RedbStore>,
    shared: Arc<Shared>,
    path: String,
    /// The `CloseAtExit` registered for this store, unregistered when it closes.
    at_exit: Py<PyAny>,
}

/// What one run needs to append its rows, resolved once (on the run's first row, on the
/// loop that drives it): the store, the loop's wake-up channel and the run's id. The
/// dispatcher appends through it directly from Rust — no Python method call, argument
/// tuple, running-loop lookup or channel search per row, and no allocation but the row's
/// envelope.
pub struct RunLog {
    store: Arc<RedbStore>,
    /// The run's handle on the store (see [`RunRows`]); the same `Arc` as `rows_handle`.
    rows: Arc<RunWaiters>,
    rows_handle: Arc<dyn RunRows>,
    event_loop: Py<PyAny>,
    /// The lease the run is held under (`cano.records.FENCE` when the run's log was
    /// resolved) and its cell: every append checks it still holds (one atomic load).
    fence: Option<(Arc<Fence>, u64)>,
}

/// The run's id, its loop's channel, and the waiter (with the generation it is armed for)
/// of each of its rows in flight, oldest first: the store finishes a run's rows in the order
/// they were queued, so each finished row is the oldest one here. Shared by the run's
/// [`RunLog`] (which alone visits it for the garbage collector) and its rows in flight.
pub(super) struct RunWaiters {
    workflow_id: String,
    /// Weak: the loop's outcomes (in `Shared`) hold runs in turn.
    shared: Weak<Shared>,
    channel: u64,
    waiting: OwnLine<Mutex<VecDeque<Armed>>>,
}

/// A row's waiter, and the generation it is armed for.
type Armed = (Py<Waiter>, u64);

/// A value on a cache line of its own: the loop changes a run's waiters on every row, and
/// the writer thread reads the run's id beside them as often.
#[repr(align(64))]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl RunWaiters {
    /// On the loop: the waiter of the run's oldest row in flight, which just finished.
    pub(super) fn oldest(&self) -> Option<Armed> {
        self.waiting.lock().pop_front()
    }
}

impl RunRows for RunWaiters {
    fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// On the writer thread: the row's reference to the run moves into the loop's outcomes,
    /// and the loop takes the run's oldest waiter when it drains them (the writer touches
    /// neither the waiters nor a reference count).
    fn finished(self: Arc<Self>, result: Result<(), StoreError>) {
        let outcome = match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        };
        // `Shared` is counted here instead of the run: its count stays in this thread's cache.
        // (The writer's batch hook holds it: it is there while the writer runs.)
        let Some(shared) = self.shared.upgrade() else { return };
        let channel = self.channel;
        shared.pending.lock().push(Pending { channel, target: Target::Row(self), outcome });
    }
}

impl crate::gc::PyGcTraverse for Arc<RunWaiters> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.waiting.lock().iter().try_for_each(|(waiter, _)| visit.call(waiter))
    }
}

crate::gc_traverse!(RunLog { event_loop, rows });

impl RunLog {
    /// A run's waiter on this handle's loop (see [`Waiter::for_run`]): `resumer` moves the
    /// run on when a row is durable while its task is parked on the waiter.
    pub fn waiter<'py>(&self, py: Python<'py>, resumer: Py<PyAny>) -> PyResult<Bound<'py, Waiter>> {
        Waiter::for_run(py, self.event_loop.clone_ref(py), resumer)
    }

    /// Queues one row of this run; `waiter` (armed for `generation`) learns once it is
    /// durable (or committed, with `durability="eventual"`).
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        py: Python<'_>,
        waiter: &Bound<'_, Waiter>,
        generation: u64,
        sequence: u64,
        kind: cano_core::RowKind,
        state: &str,
        task_id: &str,
        output: Option<&[u8]>,
        version: u32,
    ) -> PyResult<()> {
        if let Some((cell, epoch)) = &self.fence {
            if !cell.holds(*epoch) {
                return Err(errors::lease_lost(py, &self.rows.workflow_id));
            }
        }
        let mut envelope = Vec::with_capacity(24 + state.len() + task_id.len());
        codec::encode_fields(
            &self.rows.workflow_id,
            sequence,
            kind,
            version,
            state,
            task_id,
            output,
            codec::now_micros(),
            &mut envelope,
        );
        self.rows.waiting.lock().push_back((waiter.clone().unbind(), generation));
        if let Err(e) = self.store.append_run(&self.rows_handle, sequence, envelope) {
            // Nothing was queued: the waiter just pushed is still the newest.
            drop(self.rows.waiting.lock().pop_back());
            return Err(checkpoint_error(py, &e));
        }
        Ok(())
    }
}

impl RedbCheckpointStore {
    /// The handle run `workflow_id` appends through, for the running loop.
    pub fn run_log(&self, py: Python<'_>, workflow_id: &str) -> PyResult<RunLog> {
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let channel = self.shared.channel(&event_loop)?;
        let fence = current_fence(py)?
            .map(|(owner, epoch)| (self.store.fence(workflow_id, &owner, epoch), epoch));
        let rows = Arc::new(RunWaiters {
            workflow_id: workflow_id.to_owned(),
            shared: Arc::downgrade(&self.shared),
            channel,
            waiting: OwnLine(Mutex::new(VecDeque::new())),
        });
        Ok(RunLog {
            store: self.store.clone(),
            rows_handle: rows.clone(),
            rows,
            event_loop: event_loop.unbind(),
            fence,
        })
    }

    /// Refuses a write of `workflow_id` made under a lease (`cano.records.FENCE`) that is no
    /// longer current.
    fn check_fence(&self, py: Python<'_>, workflow_id: &str) -> PyResult<()> {
        match current_fence(py)? {
            Some((owner, epoch)) if !self.store.fence_holds(workflow_id, &owner, epoch) => {
                Err(errors::lease_lost(py, workflow_id))
            }
            _ => Ok(()),
        }
    }

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
    /// `RedbCheckpointStore(path, *, durability="immediate", read_only=False, create=True,
    /// repair=False)`. Keyword options are read by hand so that each bad value — `None`
    /// included — is a `ConfigurationError` naming the option.
    #[new]
    #[pyo3(signature = (path, **options))]
    fn new(
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let path = store_path(path)?;
        let bad = |name: &str, value: &Bound<'_, PyAny>, expected: &str| {
            let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
            errors::configuration(
                py,
                format!("RedbCheckpointStore {name}= must be {expected}, got {shown}"),
            )
        };
        let mut level = Durability::Immediate;
        let mut options_set = OpenOptions::new(level);
        for (key, value) in options.into_iter().flat_map(|d| d.iter()) {
            let key: String = key.extract()?;
            let flag = || value.extract::<bool>().map_err(|_| bad(&key, &value, "True or False"));
            match key.as_str() {
                "durability" => {
                    level = match value.extract::<String>().as_deref() {
                        Ok("immediate") => Durability::Immediate,
                        Ok("eventual") => Durability::Eventual,
                        _ => {
                            return Err(bad("durability", &value, "\"immediate\" or \"eventual\""))
                        }
                    }
                }
                "read_only" => options_set.read_only = flag()?,
                "create" => options_set.create = flag()?,
                "repair" => options_set.repair = flag()?,
                other => {
                    return Err(errors::configuration(
                        py,
                        format!(
                            "RedbCheckpointStore got an unknown option {other}=; the options are \
                             durability, read_only, create and repair"
                        ),
                    ))
                }
            }
        }
        let mut options = options_set;
        options.durability = level;
        if options.read_only && options.repair {
            return Err(errors::configuration(
                py,
                "RedbCheckpointStore: repair=True writes, so it cannot be read_only".to_owned(),
            ));
        }
        let shared = Arc::new(Shared::default());
        let hook_shared = shared.clone();
        let hook = Box::new(move || hook_shared.wake_from_writer());
        let open = |hook| py.detach(|| RedbStore::open_with(&path, &options, Some(hook)));
        let opened = match open(hook) {
            // The holder may be a store of this process that nothing references any more but
            // that waits for the cycle collector (a failed run's traceback keeps its workflow
            // alive): collect it, which closes it, and try once more.
            Err(StoreError::InUse { .. }) => {
                py.import("gc")?.call_method0("collect")?;
                let hook_shared = shared.clone();
                open(Box::new(move || hook_shared.wake_from_writer()))
            }
            other => other,
        };
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

    /// What `repair=True` did when the store was opened: `{"replayed": records replayed,
    /// "missing": record numbers lost, "moved_to": where the damaged log was kept (or None),
    /// "problems": [what was wrong, in words]}`; `None` without `repair=True`.
    #[getter]
    fn repair_report<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(report) = self.store.repair_report() else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("replayed", report.replayed)?;
        d.set_item("missing", report.missing.clone())?;
        d.set_item("moved_to", report.moved_to.as_ref().map(|p| p.display().to_string()))?;
        d.set_item("problems", report.problems.clone())?;
        Ok(Some(d))
    }

    /// True when the store was opened with `read_only=True`.
    #[getter]
    fn read_only(&self) -> bool {
        self.store.is_read_only()
    }

    /// Appends `row` (a `cano.store.CheckpointRow`); the future completes once the row is
    /// committed (and on disk, with `durability="immediate"`). A row already stored at the
    /// same `(workflow_id, sequence)` fails it with `CheckpointError` and is kept.
    fn append<'py>(&self, row: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = row.py();
        // One rule for every built-in store: `cano.store.row_fields` checks and unpacks.
        let fields = ROW_FIELDS.import(py, "cano.store", "row_fields")?.call1((row,))?;
        let (workflow_id, sequence, state, task_id, kind, output, workflow_version): (
            String,
            u64,
            String,
            String,
            u8,
            Option<Vec<u8>>,
            u32,
        ) = fields.extract()?;
        let kind = row_kind(py, kind)?;
        self.check_fence(py, &workflow_id)?;
        let row = Row { workflow_id, sequence, state, task_id, kind, output, workflow_version };
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
        self.check_fence(py, &workflow_id)?;
        // Encoded here, straight from the Python strings: one buffer instead of a `Row`.
        let mut envelope = Vec::new();
        codec::encode_fields(
            &workflow_id,
            sequence,
            row_kind(py, kind)?,
            version,
            state,
            task_id,
            output,
            codec::now_micros(),
            &mut envelope,
        );
        let entry = Entry { workflow_id, sequence, envelope };
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let channel = self.shared.channel(&event_loop)?;
        let waiter = Bound::new(py, Waiter::new(event_loop.unbind()))?;
        let shared = self.shared.clone();
        let target = Target::Waiter(waiter.clone().unbind(), 0);
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
    fn load_run<'py>(&self, workflow_id: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = workflow_id.py();
        let workflow_id = checked_id(workflow_id, "load_run(workflow_id)")?;
        let (future, done) = self.waiter(py, Outcome::Rows)?;
        self.store.load_run(workflow_id, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Removes every row of `workflow_id`; an unknown id is not an error.
    fn clear<'py>(&self, workflow_id: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = workflow_id.py();
        let workflow_id = checked_id(workflow_id, "clear(workflow_id)")?;
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

    // ----- run records, step histories and queue settings (`cano.stores.redb`) ----------

    /// Stores `json` as the value of `name` in namespace `"record"` or `"queue"`.
    fn _put_value<'py>(
        &self,
        py: Python<'py>,
        namespace_name: &str,
        name: &str,
        json: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let ns = namespace(py, namespace_name)?;
        let (future, done) = self.waiter(py, |()| Outcome::Done)?;
        self.store.put_value(ns, name, json, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Stores `json` as the value of `name` unless it has one; the future gets the value
    /// found (`None`: stored).
    fn _insert_value<'py>(
        &self,
        py: Python<'py>,
        namespace_name: &str,
        name: &str,
        json: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let ns = namespace(py, namespace_name)?;
        let (future, done) = self.waiter(py, Outcome::Value)?;
        self.store.insert_value(ns, name, json, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Stores a run's final record and, with `archive`, moves its log into its history.
    fn _end_run<'py>(
        &self,
        py: Python<'py>,
        workflow_id: &str,
        record: &[u8],
        archive: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, |()| Outcome::Done)?;
        self.store
            .end_run(workflow_id, record, archive, done)
            .map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Forgets a run's record, history and log.
    fn _delete_run<'py>(&self, py: Python<'py>, workflow_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, |()| Outcome::Done)?;
        self.store.delete_run(workflow_id, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// `[(name, json)]` of a namespace, ordered by name.
    fn _values<'py>(&self, py: Python<'py>, namespace_name: &str) -> PyResult<Bound<'py, PyAny>> {
        let ns = namespace(py, namespace_name)?;
        let (future, done) = self.waiter(py, Outcome::Values)?;
        self.store.values(ns, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// `_values`, blocking (for opening: no loop is needed).
    fn _values_now<'py>(
        &self,
        py: Python<'py>,
        namespace_name: &str,
    ) -> PyResult<Vec<(String, Bound<'py, PyBytes>)>> {
        let ns = namespace(py, namespace_name)?;
        let values =
            py.detach(|| self.store.values_blocking(ns)).map_err(|e| checkpoint_error(py, &e))?;
        Ok(values.into_iter().map(|(name, json)| (name, PyBytes::new(py, &json))).collect())
    }

    /// The json of `name` in a namespace, or None.
    fn _value<'py>(
        &self,
        py: Python<'py>,
        namespace_name: &str,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ns = namespace(py, namespace_name)?;
        let (future, done) = self.waiter(py, Outcome::Value)?;
        self.store.value(ns, name, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// A run's log (or its history) as `(sequence, state, task_id, kind, output, at)`.
    fn _timed_rows<'py>(
        &self,
        py: Python<'py>,
        workflow_id: &str,
        history: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (future, done) = self.waiter(py, Outcome::Timed)?;
        self.store.timed_rows(workflow_id, history, done).map_err(|e| checkpoint_error(py, &e))?;
        Ok(future)
    }

    /// Records the lease `workflow_id` is held under in this process (`owner=None`: none).
    #[pyo3(signature = (workflow_id, owner, epoch))]
    fn _set_fence(&self, workflow_id: &str, owner: Option<String>, epoch: u64) {
        self.store.set_fence(workflow_id, owner.map(|o| (o, epoch)));
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

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        crate::gc::PyGcTraverse::py_gc_traverse(&*self.shared, &visit)?;
        visit.call(&self.at_exit)
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
