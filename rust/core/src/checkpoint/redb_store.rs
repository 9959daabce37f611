//! The embedded checkpoint store: one redb file, one writer thread, group commit.
//!
//! Every request (append, clear, load, list, flush, close) goes through one channel to the
//! store's writer thread, so their order is total: a `load_run` sees every `append` submitted
//! before it, whatever the durability. The writer takes everything queued, applies it as one
//! batch, makes the batch durable once (one fsync for all of it), and only then calls each
//! request's completion. A caller that must not continue before its row is on disk waits for
//! its completion; nobody blocks on anybody else's fsync.
//!
//! Completions run on the writer thread, in submission order, once the batch is durable (or,
//! with [`Durability::Eventual`], committed). After each batch the optional *batch hook* runs
//! once: the Python bindings use it to wake each event loop once per batch instead of once
//! per row.
//!
//! **[`Durability::Immediate`]: a write-ahead log.** A redb commit that must reach the disk
//! writes several pages at scattered offsets; a batch instead becomes one record appended to
//! a log next to the database (`<path>.wal`, see [`wal`]) and one `fdatasync`,
//! about the cost of the disk's fsync alone. Its rows go to an in-memory
//! [`overlay`](super::overlay) that every read merges over redb, and reach redb in a
//! *checkpoint*: one durable redb commit that also retires the log's records (they are
//! stamped with a generation that the same commit bumps). A checkpoint runs every few
//! thousand batches, and at close. Opening a store replays the records a crash left.
//!
//! **[`Durability::Eventual`]**: no log; each batch is a redb commit without fsync, and
//! `flush` and `close` commit durably.

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
use super::overlay::{append_logged, list_runs_logged, load_run_logged, Base, Overlay};
use super::recovery::{recover, META, META_GENERATION};
use super::row::{Row, RunSummary};
use super::wal::{self, Wal};

/// The rows of a store: `(workflow_id, sequence)` → envelope (see [`codec`]).
pub(super) const TABLE: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("cano_checkpoints");

/// With a write-ahead log, a checkpoint is also due once the overlay holds this many rows.
const CHECKPOINT_ROWS: usize = 50_000;

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

/// A row ready to be stored: its key, and its value already encoded (see [`codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub workflow_id: String,
    pub sequence: u64,
    pub envelope: Vec<u8>,
}

impl Entry {
    /// Encodes `row`.
    pub fn from_row(row: Row) -> Self {
        let envelope = codec::encode(&row);
        Entry { workflow_id: row.workflow_id, sequence: row.sequence, envelope }
    }
}

enum Request {
    Append(Entry, Completion<()>),
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
    checkpoints: AtomicU64,
    wal_syncs: AtomicU64,
}

/// A redb checkpoint store. Cheap to share behind an `Arc`; every method may be called from
/// any thread. Dropping the store closes it (flushes and joins the writer thread).
pub struct RedbStore {
    path: PathBuf,
    durability: Durability,
    owner_pid: u32,
    /// [`fork_generation`] when the store was opened.
    forks: u64,
    /// `None` once closed: no request can be queued behind `Close`.
    sender: Mutex<Option<Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_id: std::thread::ThreadId,
    stats: Arc<Stats>,
    replayed: usize,
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
        // Takes the file lock: from here on the log next to the file is ours alone.
        let db = Database::create(&path).map_err(|e| StoreError::from_redb(&path, e))?;
        let wal_path = wal::wal_path(&path);
        let (store_id, generation, replayed) = recover(&db, &path, &wal_path)?;
        let wal = match durability {
            Durability::Immediate => Some(Wal::open(wal_path, store_id, generation)?),
            Durability::Eventual => {
                wal::remove(&wal_path)?;
                None
            }
        };

        let stats = Arc::new(Stats::default());
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            db: Some(db),
            path: path.clone(),
            unsynced: false,
            stats: stats.clone(),
            hook,
            wal,
            failed: None,
            overlay: Overlay::default(),
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
            forks: fork_generation(),
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            writer_id,
            stats,
            replayed,
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

    /// How many group commits the writer made (the opening one excluded): with
    /// [`Durability::Immediate`], log records plus checkpoints; with
    /// [`Durability::Eventual`], redb commits.
    pub fn commit_count(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// How many batches the writer processed.
    pub fn batch_count(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// How many durable redb commits the writer made since the store opened (with
    /// [`Durability::Immediate`]: checkpoints of the write-ahead log).
    pub fn checkpoint_count(&self) -> u64 {
        self.stats.checkpoints.load(Ordering::Relaxed)
    }

    /// How many times the writer synced the write-ahead log (one per durable batch that was
    /// not a checkpoint).
    pub fn wal_sync_count(&self) -> u64 {
        self.stats.wal_syncs.load(Ordering::Relaxed)
    }

    /// How many write-ahead log records opening the store replayed into the database (records
    /// a crash left behind before their checkpoint).
    pub fn replayed_records(&self) -> usize {
        self.replayed
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
        self.append_entry(Entry::from_row(row), done)
    }

    /// [`append`](Self::append) of a row encoded by the caller (see [`codec::encode_fields`]).
    pub fn append_entry(
        &self,
        entry: Entry,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(Request::Append(entry, Box::new(done)))
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
        if fork_generation() == self.forks {
            Ok(())
        } else {
            Err(StoreError::Forked {
                path: path_text(&self.path),
                owner_pid: self.owner_pid,
                pid: std::process::id(),
            })
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

/// How many times this process is a `fork()` child of the process it started as (0 in the
/// original). Counting in an `atfork` handler keeps a `getpid` system call off every request.
fn fork_generation() -> u64 {
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    REGISTERED.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe, as
        // handlers run right after fork() must be); it is never unregistered, and the
        // function lives as long as the process.
        #[cfg(unix)]
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
        #[cfg(not(unix))]
        let _ = in_child; // no fork() there
    });
    FORKS.load(Ordering::Relaxed)
}

/// The state owned by the writer thread.
struct Writer {
    /// `None` after `Close`: the file is released before the close completes.
    db: Option<Database>,
    path: PathBuf,
    /// [`Durability::Eventual`]: a commit without fsync happened since the last durable one.
    unsynced: bool,
    stats: Arc<Stats>,
    hook: Option<BatchHook>,
    /// The write-ahead log ([`Durability::Immediate`] only).
    wal: Option<Wal>,
    /// Set when the store can no longer guarantee what it acknowledges (a log write or sync,
    /// or a checkpoint, failed): every later request fails with it.
    failed: Option<StoreError>,
    /// With a write-ahead log: what the log holds that redb does not (see [`overlay`]).
    /// Batches need no redb write at all until the next checkpoint.
    ///
    /// [`overlay`]: super::overlay
    overlay: Overlay,
}

/// What applying a batch left to do before its requests may complete.
enum Durable {
    /// Nothing: no mutation, or the batch's commit was durable itself.
    Now,
    /// The batch's log record is written; it is durable once the log is synced.
    AfterSync,
}

/// Records that the store can no longer guarantee what it acknowledges.
fn poison(failed: &mut Option<StoreError>, path: &Path, err: &StoreError) {
    if failed.is_none() {
        *failed = Some(StoreError::WriterFailed {
            path: path_text(path),
            reason: format!("{err}; reopen the store to recover what the log holds"),
        });
    }
}

/// Every request of a batch that had succeeded reports `err`; refusals (conflicts) keep their
/// own error.
fn fail_succeeded(answers: &mut [Answer], requests: &[Request], err: &StoreError) {
    for (answer, request) in answers.iter_mut().zip(requests) {
        if answer.is_ok() {
            *answer = Answer::failed(request, err.clone());
        }
    }
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
        // drop closes): still make what was acknowledged durable in redb.
        if self.db.is_some() && self.failed.is_none() && self.sync().is_ok() {
            if let Some(wal) = self.wal.take() {
                let _ = wal.remove();
            }
        }
    }

    /// Applies a batch, makes it durable (one log sync, a checkpoint, or with
    /// [`Durability::Eventual`] one redb commit), then completes its requests in order.
    fn process(&mut self, mut requests: Vec<Request>, closing: bool) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let applied = panic::catch_unwind(AssertUnwindSafe(|| self.apply(&mut requests, closing)));
        let (mut answers, durable) = match applied {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => {
                let answers = requests.iter().map(|r| Answer::failed(r, err.clone())).collect();
                (answers, Durable::Now)
            }
            Err(_) => {
                let err = StoreError::WriterFailed {
                    path: path_text(&self.path),
                    reason: "redb panicked while applying a batch".into(),
                };
                if self.wal.is_some() {
                    // The overlay may hold part of the batch.
                    poison(&mut self.failed, &self.path, &err);
                }
                let answers = requests.iter().map(|r| Answer::failed(r, err.clone())).collect();
                (answers, Durable::Now)
            }
        };
        if let (Durable::AfterSync, Some(wal)) = (&durable, self.wal.as_ref()) {
            // The batch's one fsync. Appends queued meanwhile wait in the channel, without
            // waking anybody, and form the next batch.
            match wal.sync() {
                Ok(()) => {
                    self.stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    // Whether the record reached the disk is unknown, and so is what a retried
                    // sync would mean (the kernel may have dropped the dirty pages): stop here.
                    poison(&mut self.failed, &self.path, &err);
                    fail_succeeded(&mut answers, &requests, &err);
                }
            }
        }
        if closing {
            // The last batch was a checkpoint: the log is stale; delete it while the file lock
            // is still ours. If the checkpoint failed, the log keeps the rows for the next open.
            if let Some(wal) = self.wal.take() {
                if wal.records() == 0 && self.overlay.is_empty() && self.failed.is_none() {
                    let _ = wal.remove();
                }
            }
            // Release the file before anyone hears that the store is closed.
            self.db = None;
        }
        for (request, answer) in requests.into_iter().zip(answers) {
            complete(request, answer);
        }
    }

    /// Applies the whole batch and returns the answers and what makes them durable.
    fn apply(
        &mut self,
        requests: &mut [Request],
        closing: bool,
    ) -> Result<(Vec<Answer>, Durable), StoreError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.db.is_none() {
            return Err(StoreError::Closed { path: path_text(&self.path) });
        }
        if self.wal.is_some() {
            self.apply_logged(requests, closing)
        } else {
            self.apply_eventual(requests, closing)
        }
    }

    /// [`Durability::Eventual`]: one redb write transaction per batch, committed without
    /// fsync unless the batch flushes or closes.
    fn apply_eventual(
        &mut self,
        requests: &[Request],
        closing: bool,
    ) -> Result<(Vec<Answer>, Durable), StoreError> {
        let path = self.path.clone();
        let redb_err = |e: redb::Error| StoreError::from_redb(&path, e);
        let db = self.db.as_ref().expect("checked by apply");
        let mutates =
            requests.iter().any(|r| matches!(r, Request::Append(..) | Request::Clear(..)));
        let durable = closing || requests.iter().any(|r| matches!(r, Request::Flush(_)));

        let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
        let mut answers = Vec::with_capacity(requests.len());
        {
            let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
            for request in requests {
                answers.push(match request {
                    Request::Append(entry, _) => Answer::Unit(append(&mut table, entry, &path)),
                    Request::Clear(id, _) => {
                        let id = id.as_str();
                        Answer::Unit(
                            table
                                .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
                                .map_err(|e| redb_err(e.into())),
                        )
                    }
                    Request::LoadRun(id, _) => Answer::Rows(load_run(&table, id, &path)),
                    Request::ListRuns(_) => Answer::Runs(list_runs(&table, &path)),
                    Request::Flush(_) | Request::Close(_) => Answer::Unit(Ok(())),
                });
            }
        }
        if !(mutates || (durable && self.unsynced)) {
            // Reads only, or a flush with nothing pending: no commit, no fsync.
            tx.abort().map_err(|e| redb_err(e.into()))?;
            return Ok((answers, Durable::Now));
        }
        if let Err(err) = self.commit(tx, durable, false) {
            // Nothing of the batch was committed.
            fail_succeeded(&mut answers, requests, &err);
        }
        Ok((answers, Durable::Now))
    }

    /// [`Durability::Immediate`]: the batch goes to the overlay and into one log record; a
    /// checkpoint (when due, and at close) writes the overlay to redb durably instead.
    fn apply_logged(
        &mut self,
        requests: &mut [Request],
        closing: bool,
    ) -> Result<(Vec<Answer>, Durable), StoreError> {
        let path = self.path.clone();
        let db = self.db.as_ref().expect("checked by apply");
        let wal = self.wal.as_mut().expect("checked by apply");
        // Room for the record first: a batch in the overlay that cannot be logged would be
        // rows nobody acknowledged.
        wal.reserve(requests.iter().map(record_bound).sum())?;
        wal.begin();
        let mut base = Base { db, path: &path, table: None };
        let overlay = &mut self.overlay;
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests.iter_mut() {
            answers.push(match request {
                Request::Append(entry, _) => {
                    let appended = append_logged(overlay, &mut base, entry);
                    if appended.is_ok() {
                        wal.push_append(&entry.workflow_id, entry.sequence, &entry.envelope);
                        // The request only needs its completion from here on.
                        let envelope = std::mem::take(&mut entry.envelope);
                        overlay.insert(&entry.workflow_id, entry.sequence, envelope);
                    }
                    Answer::Unit(appended)
                }
                Request::Clear(id, _) => {
                    wal.push_clear(id);
                    overlay.clear(id);
                    Answer::Unit(Ok(()))
                }
                Request::LoadRun(id, _) => Answer::Rows(load_run_logged(overlay, &mut base, id)),
                Request::ListRuns(_) => Answer::Runs(list_runs_logged(overlay, &mut base)),
                Request::Flush(_) | Request::Close(_) => Answer::Unit(Ok(())),
            });
        }
        drop(base);

        let logged = !wal.is_empty();
        let due = wal.checkpoint_due() || self.overlay.rows() >= CHECKPOINT_ROWS;
        if closing || (logged && due) {
            // A checkpoint makes this batch durable together with everything before it.
            if let Err(err) = self.checkpoint() {
                fail_succeeded(&mut answers, requests, &err);
            }
            return Ok((answers, Durable::Now));
        }
        if !logged {
            // Reads, flushes, or appends that all conflicted. Reads may have seen rows still
            // being synced: they complete after them, in order.
            return Ok((answers, Durable::Now));
        }
        let wal = self.wal.as_mut().expect("checked by apply");
        if let Err(err) = wal.write() {
            // The batch is in the overlay but not in the log: stop here (the log still holds
            // every batch acknowledged before).
            poison(&mut self.failed, &self.path, &err);
            fail_succeeded(&mut answers, requests, &err);
            return Ok((answers, Durable::Now));
        }
        // One group commit: the batch is durable once the log is synced.
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok((answers, Durable::AfterSync))
    }

    /// Writes the overlay to redb in one durable commit that also moves the log to its next
    /// generation; the log then starts over. A failure leaves the store poisoned (the log
    /// keeps every acknowledged batch for the next open).
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.as_ref() else { return self.sync() };
        if wal.records() == 0 && self.overlay.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let redb_err = |e: redb::Error| StoreError::from_redb(&path, e);
        let changes = self.overlay.take();
        let written = (|| {
            let db =
                self.db.as_ref().ok_or_else(|| StoreError::Closed { path: path_text(&path) })?;
            let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
            {
                let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
                for (id, run) in &changes {
                    let id = id.as_str();
                    if run.cleared {
                        table
                            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
                            .map_err(|e| redb_err(e.into()))?;
                    }
                    for (sequence, envelope) in &run.rows {
                        table
                            .insert((id, *sequence), envelope.as_slice())
                            .map_err(|e| redb_err(e.into()))?;
                    }
                }
            }
            Ok(tx)
        })();
        let result = written.and_then(|tx| self.commit(tx, true, true));
        if let Err(err) = &result {
            poison(&mut self.failed, &self.path, err);
        }
        result
    }

    /// Commits `tx`; a durable commit with a write-ahead log (`checkpoint`) also moves the log
    /// to its next generation in the same transaction, and the log starts over.
    fn commit(
        &mut self,
        mut tx: WriteTransaction,
        durable: bool,
        checkpoint: bool,
    ) -> Result<(), StoreError> {
        let path = &self.path;
        let next_generation = match (&self.wal, checkpoint) {
            (Some(wal), true) => {
                let generation = wal.generation() + 1;
                tx.open_table(META)
                    .map_err(|e| StoreError::from_redb(path, e))?
                    .insert(META_GENERATION, generation)
                    .map_err(|e| StoreError::from_redb(path, e))?;
                Some(generation)
            }
            _ => None,
        };
        let level = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        tx.set_durability(level).map_err(|e| StoreError::from_redb(path, e))?;
        tx.commit().map_err(|e| StoreError::from_redb(path, e))?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if durable {
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        self.unsynced = !durable;
        if let (Some(generation), Some(wal)) = (next_generation, self.wal.as_mut()) {
            wal.reset(generation);
        }
        Ok(())
    }

    /// Makes everything applied so far durable in redb: a checkpoint with a log, otherwise a
    /// durable empty commit after eventual ones.
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.wal.is_some() {
            return self.checkpoint();
        }
        if !self.unsynced {
            return Ok(());
        }
        let Some(db) = self.db.as_ref() else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| StoreError::from_redb(&self.path, e))?;
        self.commit(tx, true, false)
    }
}

/// At most the bytes `request` adds to a log record.
fn record_bound(request: &Request) -> u64 {
    let bytes = match request {
        Request::Append(entry, _) => {
            1 + 10 + entry.workflow_id.len() + 10 + 10 + entry.envelope.len()
        }
        Request::Clear(id, _) => 1 + 10 + id.len(),
        _ => 0,
    };
    bytes as u64
}

/// Inserts `entry` unless its key is taken.
fn append(
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    entry: &Entry,
    path: &Path,
) -> Result<(), StoreError> {
    let key = (entry.workflow_id.as_str(), entry.sequence);
    // One lookup: insert, and in the rare case the key was taken, put the stored row back
    // (nobody can see the transaction in between).
    let previous = table
        .insert(key, entry.envelope.as_slice())
        .map_err(|e| StoreError::from_redb(path, e))?
        .map(|old| old.value().to_vec());
    if let Some(old) = previous {
        table.insert(key, old.as_slice()).map_err(|e| StoreError::from_redb(path, e))?;
        return Err(StoreError::Conflict {
            workflow_id: entry.workflow_id.clone(),
            sequence: entry.sequence,
        });
    }
    Ok(())
}

pub(super) fn load_run(
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
