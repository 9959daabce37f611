//! The embedded checkpoint store: one redb file, one writer thread, group commit.
//!
//! Every request (append, clear, load, list, flush, close) goes through one channel to the
//! store's writer thread, so their order is total: a `load_run` sees every `append` submitted
//! before it, whatever the durability. The writer takes everything queued, applies it in one
//! write transaction, commits once (one fsync for the whole batch), and only then calls each
//! request's completion. A caller that must not continue before its row is on disk waits for
//! its completion; nobody blocks on anybody else's fsync.
//!
//! Completions run on the writer thread, in submission order, after the batch's commit. After
//! each batch the optional *batch hook* runs once: the Python bindings use it to wake each
//! event loop once per commit instead of once per row.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::codec;
use super::error::{path_text, StoreError};
use super::row::{Row, RunSummary};

/// The one table of a store: `(workflow_id, sequence)` → envelope (see [`codec`]).
const TABLE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("cano_checkpoints");

/// At most this many requests share one write transaction, so one huge burst cannot delay
/// the first caller's completion indefinitely.
const MAX_BATCH: usize = 4096;

/// Called once with the outcome of a request, on the writer thread.
pub type Completion<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// Runs on the writer thread after the completions of each batch have run.
pub type BatchHook = Box<dyn FnMut() + Send>;

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced before its completions run: an appended row survives a crash.
    Immediate,
    /// Commits are not fsynced; `flush` and `close` make everything durable. A crash may lose
    /// the rows of the last commits, never corrupt the file. Reads in this process see every
    /// row either way.
    Eventual,
}

impl Durability {
    /// `"immediate"` or `"eventual"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Immediate => "immediate",
            Durability::Eventual => "eventual",
        }
    }
}

enum Request {
    Append(Row, Completion<()>),
    Clear(String, Completion<()>),
    LoadRun(String, Completion<Vec<Row>>),
    ListRuns(Completion<Vec<RunSummary>>),
    Flush(Completion<()>),
    Close(Completion<()>),
}

/// What a request gets back, before its completion is called.
enum Answer {
    Unit(Result<(), StoreError>),
    Rows(Result<Vec<Row>, StoreError>),
    Runs(Result<Vec<RunSummary>, StoreError>),
}

impl Answer {
    fn is_ok(&self) -> bool {
        match self {
            Answer::Unit(r) => r.is_ok(),
            Answer::Rows(r) => r.is_ok(),
            Answer::Runs(r) => r.is_ok(),
        }
    }

    fn failed(request: &Request, err: StoreError) -> Answer {
        match request {
            Request::LoadRun(..) => Answer::Rows(Err(err)),
            Request::ListRuns(..) => Answer::Runs(Err(err)),
            _ => Answer::Unit(Err(err)),
        }
    }
}

#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    batches: AtomicU64,
}

/// A redb checkpoint store. Cheap to share behind an `Arc`; every method may be called from
/// any thread. Dropping the store closes it (flushes and joins the writer thread).
pub struct RedbStore {
    path: PathBuf,
    durability: Durability,
    owner_pid: u32,
    /// `None` once closed: no request can be queued behind `Close`.
    sender: Mutex<Option<Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_id: std::thread::ThreadId,
    stats: Arc<Stats>,
}

impl RedbStore {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    ///
    /// Fails with [`StoreError::InUse`] if another process or another store of this process
    /// has the file open, [`StoreError::NotAStore`] if the file is not a redb checkpoint store,
    /// and [`StoreError::Io`] if it cannot be created or read.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with_hook(path, durability, None)
    }

    /// [`open`](Self::open) with a hook run on the writer thread after every batch.
    pub fn open_with_hook(
        path: impl AsRef<Path>,
        durability: Durability,
        hook: Option<BatchHook>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| StoreError::from_redb(&path, e))?;
        // Materialise the table now, so a file with an incompatible table fails here.
        let tx = db.begin_write().map_err(|e| StoreError::from_redb(&path, e))?;
        tx.open_table(TABLE).map_err(|e| StoreError::from_redb(&path, e))?;
        tx.commit().map_err(|e| StoreError::from_redb(&path, e))?;

        let stats = Arc::new(Stats::default());
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            db: Some(db),
            path: path.clone(),
            durability,
            unsynced: false,
            stats: stats.clone(),
            hook,
        };
        let handle = std::thread::Builder::new()
            .name("cano-checkpoint-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Io { path: path_text(&path), message: e.to_string() })?;
        let writer_id = handle.thread().id();
        Ok(RedbStore {
            path,
            durability,
            owner_pid: std::process::id(),
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            writer_id,
            stats,
        })
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// True once `close` was called.
    pub fn is_closed(&self) -> bool {
        self.sender.lock().is_none()
    }

    /// How many write transactions the writer committed (the opening one excluded).
    pub fn commit_count(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// How many batches the writer processed.
    pub fn batch_count(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// Queues `row`; `done` gets `Ok` once it is committed (and durable, for
    /// [`Durability::Immediate`]), or [`StoreError::Conflict`] if the key is taken.
    ///
    /// Like every request method, an `Err` here means nothing was queued and `done` was
    /// dropped without being called.
    pub fn append(
        &self,
        row: Row,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(Request::Append(row, Box::new(done)))
    }

    /// Queues the removal of every row of `workflow_id` (a no-op for an unknown id).
    pub fn clear(
        &self,
        workflow_id: impl Into<String>,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(Request::Clear(workflow_id.into(), Box::new(done)))
    }

    /// Queues a read of every row of `workflow_id`, ascending by sequence.
    pub fn load_run(
        &self,
        workflow_id: impl Into<String>,
        done: impl FnOnce(Result<Vec<Row>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(Request::LoadRun(workflow_id.into(), Box::new(done)))
    }

    /// Queues a summary of every run in the store, ordered by workflow id.
    pub fn list_runs(
        &self,
        done: impl FnOnce(Result<Vec<RunSummary>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(Request::ListRuns(Box::new(done)))
    }

    /// Queues a flush: `done` runs once everything queued before it is durable.
    pub fn flush(
        &self,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(Request::Flush(Box::new(done)))
    }

    /// Starts closing: no request is accepted after this one; `done` runs once everything
    /// queued before is durable and the file is released. Returns [`StoreError::Closed`] if
    /// the store was already closing.
    pub fn close_with(
        &self,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.check_process()?;
        let sender = self.sender.lock().take();
        match sender {
            None => Err(self.closed()),
            Some(s) => s.send(Request::Close(Box::new(done))).map_err(|_| self.writer_gone()),
        }
    }

    /// Closes the store: flushes, releases the file and joins the writer thread. Blocks
    /// (except on the writer thread itself, where it only queues the close).
    /// Idempotent: closing a closed store returns `Ok(())`.
    pub fn close(&self) -> Result<(), StoreError> {
        if std::thread::current().id() == self.writer_id {
            // Dropped by one of its own completions: the writer cannot wait for itself; it
            // stops after the current batch, having flushed.
            return match self.close_with(|_| {}) {
                Ok(()) | Err(StoreError::Closed { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let outcome = match self.close_with(move |r| {
            let _ = tx.send(r);
        }) {
            Ok(()) => rx.recv().unwrap_or_else(|_| Err(self.writer_gone())),
            Err(StoreError::Closed { .. }) => Ok(()),
            Err(e) => return Err(e),
        };
        // Held while joining, so a concurrent `close` returns only once the file is released.
        let mut writer = self.writer.lock();
        if let Some(handle) = writer.take() {
            if handle.join().is_err() && outcome.is_ok() {
                return Err(self.writer_gone());
            }
        }
        outcome
    }

    /// [`append`](Self::append), waiting for the outcome.
    pub fn append_blocking(&self, row: Row) -> Result<(), StoreError> {
        self.wait(|done| self.append(row, done))
    }

    /// [`clear`](Self::clear), waiting for the outcome.
    pub fn clear_blocking(&self, workflow_id: impl Into<String>) -> Result<(), StoreError> {
        self.wait(|done| self.clear(workflow_id, done))
    }

    /// [`load_run`](Self::load_run), waiting for the rows.
    pub fn load_run_blocking(
        &self,
        workflow_id: impl Into<String>,
    ) -> Result<Vec<Row>, StoreError> {
        self.wait(|done| self.load_run(workflow_id, done))
    }

    /// [`list_runs`](Self::list_runs), waiting for the summaries.
    pub fn list_runs_blocking(&self) -> Result<Vec<RunSummary>, StoreError> {
        self.wait(|done| self.list_runs(done))
    }

    /// [`flush`](Self::flush), waiting until everything queued before is durable.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.wait(|done| self.flush(done))
    }

    fn wait<T: Send + 'static>(
        &self,
        submit: impl FnOnce(Completion<T>) -> Result<(), StoreError>,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        submit(Box::new(move |r| {
            let _ = tx.send(r);
        }))?;
        rx.recv().unwrap_or_else(|_| Err(self.writer_gone()))
    }

    fn submit(&self, request: Request) -> Result<(), StoreError> {
        self.check_process()?;
        let sender = self.sender.lock();
        match sender.as_ref() {
            None => Err(self.closed()),
            Some(s) => s.send(request).map_err(|_| self.writer_gone()),
        }
    }

    /// The writer thread does not exist in a `fork()` child, and the parent's file lock is
    /// shared with it: refuse rather than hang or write behind the parent's back.
    fn check_process(&self) -> Result<(), StoreError> {
        let pid = std::process::id();
        if pid == self.owner_pid {
            Ok(())
        } else {
            Err(StoreError::Forked { path: path_text(&self.path), owner_pid: self.owner_pid, pid })
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed { path: path_text(&self.path) }
    }

    fn writer_gone(&self) -> StoreError {
        StoreError::WriterFailed {
            path: path_text(&self.path),
            reason: "it stopped before answering".into(),
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if self.check_process().is_err() {
            // In a fork() child the writer thread and its channel belong to the parent.
            std::mem::forget(self.writer.get_mut().take());
            std::mem::forget(self.sender.get_mut().take());
            return;
        }
        let _ = self.close();
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The state owned by the writer thread.
struct Writer {
    /// `None` after `Close`: the file is released before the close completes.
    db: Option<Database>,
    path: PathBuf,
    durability: Durability,
    /// An eventual commit happened since the last durable one.
    unsynced: bool,
    stats: Arc<Stats>,
    hook: Option<BatchHook>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Request>) {
        let mut batch = Vec::new();
        while let Ok(first) = receiver.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let closing = batch.iter().any(|r| matches!(r, Request::Close(_)));
            self.process(std::mem::take(&mut batch), closing);
            if let Some(hook) = self.hook.as_mut() {
                hook();
            }
            if closing {
                return;
            }
        }
        // Every sender is gone without a `Close` (cannot happen through `RedbStore`, whose
        // drop closes): still make what was committed durable.
        if self.db.is_some() {
            let _ = self.sync();
        }
    }

    fn process(&mut self, requests: Vec<Request>, closing: bool) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let applied = panic::catch_unwind(AssertUnwindSafe(|| self.apply(&requests, closing)));
        let answers = match applied {
            Ok(Ok(answers)) => answers,
            Ok(Err(err)) => requests.iter().map(|r| Answer::failed(r, err.clone())).collect(),
            Err(_) => {
                let err = StoreError::WriterFailed {
                    path: path_text(&self.path),
                    reason: "redb panicked while applying a batch".into(),
                };
                requests.iter().map(|r| Answer::failed(r, err.clone())).collect()
            }
        };
        if closing {
            // Release the file before anyone hears that the store is closed.
            self.db = None;
        }
        for (request, answer) in requests.into_iter().zip(answers) {
            complete(request, answer);
        }
    }

    /// Applies the whole batch in one write transaction and commits it once.
    fn apply(&mut self, requests: &[Request], closing: bool) -> Result<Vec<Answer>, StoreError> {
        let path = self.path.clone();
        let redb_err = |e: redb::Error| StoreError::from_redb(&path, e);
        let Some(db) = self.db.as_ref() else {
            return Err(StoreError::Closed { path: path_text(&path) });
        };
        let mutates =
            requests.iter().any(|r| matches!(r, Request::Append(..) | Request::Clear(..)));
        let wants_sync = closing || requests.iter().any(|r| matches!(r, Request::Flush(_)));

        let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
        let mut answers = Vec::with_capacity(requests.len());
        {
            let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
            for request in requests {
                answers.push(match request {
                    Request::Append(row, _) => Answer::Unit(append(&mut table, row, &path)),
                    Request::Clear(id, _) => Answer::Unit(
                        table
                            .retain_in((id.as_str(), 0u64)..=(id.as_str(), u64::MAX), |_, _| false)
                            .map_err(|e| redb_err(e.into())),
                    ),
                    Request::LoadRun(id, _) => Answer::Rows(load_run(&table, id, &path)),
                    Request::ListRuns(_) => Answer::Runs(list_runs(&table, &path)),
                    Request::Flush(_) | Request::Close(_) => Answer::Unit(Ok(())),
                });
            }
        }

        let durable = match self.durability {
            Durability::Immediate => true,
            Durability::Eventual => wants_sync,
        };
        let must_commit = mutates || (durable && self.unsynced);
        if !must_commit {
            // Reads only, or a flush with nothing pending: no commit, no fsync.
            tx.abort().map_err(|e| redb_err(e.into()))?;
            return Ok(answers);
        }
        if let Err(err) = self.commit(tx, durable) {
            // Nothing of the batch was written: every request that had succeeded reports the
            // commit's failure; refusals (conflicts) keep their own error.
            for (answer, request) in answers.iter_mut().zip(requests) {
                if answer.is_ok() {
                    *answer = Answer::failed(request, err.clone());
                }
            }
        }
        Ok(answers)
    }

    fn commit(&mut self, mut tx: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let path = &self.path;
        let level = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        tx.set_durability(level).map_err(|e| StoreError::from_redb(path, e))?;
        tx.commit().map_err(|e| StoreError::from_redb(path, e))?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.unsynced = !durable;
        Ok(())
    }

    /// A durable, empty commit: persists every earlier eventual commit.
    fn sync(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        let Some(db) = self.db.as_ref() else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| StoreError::from_redb(&self.path, e))?;
        self.commit(tx, true)
    }
}

fn append(
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    row: &Row,
    path: &Path,
) -> Result<(), StoreError> {
    let key = (row.workflow_id.as_str(), row.sequence);
    // Checked first: an insert would overwrite the stored row before we could refuse it.
    if table.get(key).map_err(|e| StoreError::from_redb(path, e))?.is_some() {
        return Err(StoreError::Conflict {
            workflow_id: row.workflow_id.clone(),
            sequence: row.sequence,
        });
    }
    let value = codec::encode(row);
    table.insert(key, value.as_slice()).map_err(|e| StoreError::from_redb(path, e))?;
    Ok(())
}

fn load_run(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    workflow_id: &str,
    path: &Path,
) -> Result<Vec<Row>, StoreError> {
    let range = table
        .range((workflow_id, 0u64)..=(workflow_id, u64::MAX))
        .map_err(|e| StoreError::from_redb(path, e))?;
    let mut rows = Vec::new();
    for entry in range {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (_, sequence) = key.value();
        rows.push(codec::decode(workflow_id, sequence, value.value())?);
    }
    Ok(rows)
}

fn list_runs(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    path: &Path,
) -> Result<Vec<RunSummary>, StoreError> {
    // Keys are ordered by (workflow id, sequence): a run's rows are contiguous and its last
    // row is the one just before the next id starts.
    let mut runs: Vec<RunSummary> = Vec::new();
    let mut last_value: Vec<u8> = Vec::new();
    let finish = |runs: &mut Vec<RunSummary>, last_value: &[u8]| -> Result<(), StoreError> {
        if let Some(run) = runs.last_mut() {
            run.last_state = codec::decode_state(&run.workflow_id, run.last_sequence, last_value)?;
        }
        Ok(())
    };
    for entry in table.iter().map_err(|e| StoreError::from_redb(path, e))? {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (id, sequence) = key.value();
        match runs.last_mut() {
            Some(run) if run.workflow_id == id => {
                run.rows += 1;
                run.last_sequence = sequence;
            }
            _ => {
                finish(&mut runs, &last_value)?;
                runs.push(RunSummary {
                    workflow_id: id.to_owned(),
                    rows: 1,
                    last_state: String::new(),
                    last_sequence: sequence,
                });
            }
        }
        last_value.clear();
        last_value.extend_from_slice(value.value());
    }
    finish(&mut runs, &last_value)?;
    Ok(runs)
}

fn complete(request: Request, answer: Answer) {
    match (request, answer) {
        (Request::Append(_, done), Answer::Unit(r))
        | (Request::Clear(_, done), Answer::Unit(r))
        | (Request::Flush(done), Answer::Unit(r))
        | (Request::Close(done), Answer::Unit(r)) => done(r),
        (Request::LoadRun(_, done), Answer::Rows(r)) => done(r),
        (Request::ListRuns(done), Answer::Runs(r)) => done(r),
        // `apply` answers each request with its own variant.
        _ => unreachable!("checkpoint writer answered a request with the wrong kind"),
    }
}

#[cfg(test)]
mod tests;
