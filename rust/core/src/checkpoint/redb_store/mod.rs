//! The embedded checkpoint store: one redb file, one writer thread, group commit.
//!
//! Every request (append, clear, load, list, flush, close) is ordered as its caller made
//! it: a `load_run` sees every `append` submitted before it, whatever the durability. The
//! writer takes everything queued, applies it as one batch, makes the batch durable once
//! (one fsync for all of it), and only then calls each request's completion. A caller that
//! must not continue before its row is on disk waits for its completion; nobody blocks on
//! anybody else's fsync.
//!
//! Requests reach the writer through one channel. With a write-ahead log, a row usually does
//! not: its thread applies it itself, beside the writer, while the writer writes the last
//! batch (see [`front`]); a row goes through the channel when a request still queued there
//! concerns its key, or when the writer holds the front.
//!
//! Completions run on the writer thread, in order, once the batch is durable (or, with
//! [`Durability::Eventual`], committed). After each batch the optional *batch hook* runs
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

mod fork;
mod front;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use redb::{Database, ReadOnlyDatabase};

use std::collections::HashMap;

use super::codec;
use super::contain::contain;
use super::error::{path_text, StoreError};
use super::overlay::Overlay;
use super::reads::Timed;
use super::replay::{pending_records, recover, repair, RepairReport};
use super::row::{Entry, Row, RowKind, RunSummary};
use super::schema::Namespace;
use super::wal::{self, Wal, WalOp};
use fork::fork_generation;
use front::{Front, Staged};
use writer::{Db, Writer};

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

/// A run's handle for appending its rows through [`RedbStore::append_run`]: the run's id,
/// and who hears that each of its appends finished. The store calls
/// [`finished`](Self::finished) once per row appended through it, on the writer thread, in
/// the order the rows were queued — so a row costs no allocation but its envelope. Each row
/// holds a reference to the handle, which `finished` takes over: the writer thread neither
/// counts nor drops it.
pub trait RunRows: Send + Sync {
    fn workflow_id(&self) -> &str;
    fn finished(self: Arc<Self>, result: Result<(), StoreError>);
}

/// A row to append: an entry with a completion of its own, or a row of a run that appends
/// through a [`RunRows`] handle.
enum AppendRow {
    Entry(Entry, Completion<()>),
    Run(Arc<dyn RunRows>, u64, Vec<u8>),
}

impl AppendRow {
    fn workflow_id(&self) -> &str {
        match self {
            AppendRow::Entry(entry, _) => &entry.workflow_id,
            AppendRow::Run(run, _, _) => run.workflow_id(),
        }
    }

    /// The key, and the envelope (which the writer may move out once it is applied).
    fn parts(&mut self) -> (&str, u64, &mut Vec<u8>) {
        match self {
            AppendRow::Entry(entry, _) => (&entry.workflow_id, entry.sequence, &mut entry.envelope),
            AppendRow::Run(run, sequence, envelope) => (run.workflow_id(), *sequence, envelope),
        }
    }

    fn envelope_len(&self) -> usize {
        match self {
            AppendRow::Entry(entry, _) => entry.envelope.len(),
            AppendRow::Run(_, _, envelope) => envelope.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            AppendRow::Entry(entry, _) => entry.workflow_id.len() + entry.envelope.len(),
            AppendRow::Run(run, _, envelope) => run.workflow_id().len() + envelope.len(),
        }
    }

    fn complete(self, result: Result<(), StoreError>) {
        match self {
            AppendRow::Entry(_, done) => done(result),
            AppendRow::Run(run, _, _) => run.finished(result),
        }
    }
}

enum Request {
    Append(AppendRow),
    Clear(String, Completion<()>),
    /// Changes to the store's own keys (see [`Namespace`]), applied together, in order.
    Write(Vec<Op>, Completion<()>),
    /// Stores a value of the store's own unless its key holds one; answers the value found.
    Insert(Entry, Completion<Option<Vec<u8>>>),
    LoadRun(String, Completion<Vec<Row>>),
    Read(Source, Completion<Vec<Timed>>),
    ListRuns(Completion<Vec<RunSummary>>),
    Flush(Completion<()>),
    Close(Completion<()>),
    /// Rows were staged in the [`Front`] while the writer waited: nothing to answer.
    Wake,
}

/// One change of a [`Request::Write`].
enum Op {
    /// Stores a row whose key an earlier `Clear` of the same write freed.
    Put(Entry),
    Clear(String),
    /// Moves a run's log into its step history (replacing an earlier history of the id).
    Archive(String),
}

/// What a [`Request::Read`] reads, with each row's time.
enum Source {
    Run(String),
    Namespace(Namespace),
}

/// What a request gets back, before its completion is called.
enum Answer {
    Unit(Result<(), StoreError>),
    Rows(Result<Vec<Row>, StoreError>),
    Timed(Result<Vec<Timed>, StoreError>),
    Found(Result<Option<Vec<u8>>, StoreError>),
    Runs(Result<Vec<RunSummary>, StoreError>),
}

impl Answer {
    fn is_ok(&self) -> bool {
        match self {
            Answer::Unit(r) => r.is_ok(),
            Answer::Rows(r) => r.is_ok(),
            Answer::Timed(r) => r.is_ok(),
            Answer::Found(r) => r.is_ok(),
            Answer::Runs(r) => r.is_ok(),
        }
    }

    fn failed(request: &Request, err: StoreError) -> Answer {
        match request {
            Request::LoadRun(..) => Answer::Rows(Err(err)),
            Request::Read(..) => Answer::Timed(Err(err)),
            Request::Insert(..) => Answer::Found(Err(err)),
            Request::ListRuns(..) => Answer::Runs(Err(err)),
            _ => Answer::Unit(Err(err)),
        }
    }
}

/// The row a value of the store's own (a record, a queue's settings) is kept in.
fn value_entry(key: String, json: &[u8]) -> Entry {
    let mut envelope = Vec::with_capacity(24 + json.len());
    codec::encode_fields(
        &key,
        0,
        RowKind::StepCursor,
        0,
        "",
        "",
        Some(json),
        codec::now_micros(),
        &mut envelope,
    );
    Entry { workflow_id: key, sequence: 0, envelope }
}

#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    wal_syncs: AtomicU64,
    staged: AtomicU64,
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
    read_only: bool,
    repair: Option<RepairReport>,
    /// `workflow id → (owner, lease)` of the runs workers of this process hold (see
    /// [`set_fence`](Self::set_fence)).
    fences: Mutex<HashMap<String, (String, Arc<Fence>)>>,
    /// Where appending threads apply their rows themselves (see [`front`]).
    front: Arc<Front>,
}

/// The lease epoch a worker of this process holds one run under, shared with that run's
/// appends ([`RedbStore::fence`]): checking a row against it is one atomic load — no lock,
/// no lookup by id. Epochs of one run only grow, so an epoch names one claim.
#[derive(Debug)]
pub struct Fence(AtomicU64);

impl Fence {
    const NOT_HELD: u64 = u64::MAX;

    fn not_held() -> Self {
        Fence(AtomicU64::new(Self::NOT_HELD))
    }

    /// True while the run is held under lease `epoch`.
    pub fn holds(&self, epoch: u64) -> bool {
        epoch != Self::NOT_HELD && self.0.load(Ordering::Acquire) == epoch
    }
}

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    pub durability: Durability,
    /// Create the file when it does not exist (otherwise a missing file is an error).
    pub create: bool,
    /// Open for reading only: nothing is written (a full disk can be inspected), the file is
    /// shared with other readers and refused while a writer holds it.
    pub read_only: bool,
    /// Salvage a damaged write-ahead log first (see [`RepairReport`]).
    pub repair: bool,
}

impl OpenOptions {
    pub fn new(durability: Durability) -> Self {
        OpenOptions { durability, create: true, read_only: false, repair: false }
    }
}

/// Refuses a path that cannot be a store before redb touches it: a directory, an empty file
/// (redb would silently make it a new database), or — when not creating — a missing file.
fn check_file(path: &Path, create: bool) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            Err(StoreError::NotAStore { path: path_text(path), reason: "it is a directory".into() })
        }
        Ok(m) if m.len() == 0 => Err(StoreError::NotAStore {
            path: path_text(path),
            reason: "the file is empty (0 bytes), so it holds no store; delete it to create a \
                     new store there"
                .into(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
            Err(StoreError::NotFound { path: path_text(path) })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::from_io(path, "read the file", &e)),
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    ///
    /// Fails with [`StoreError::InUse`] if another process or another store of this process
    /// has the file open, [`StoreError::NotAStore`] if the file is not a redb checkpoint store
    /// (an empty file included), [`StoreError::LogDamaged`] if its write-ahead log is missing,
    /// truncated or damaged, and [`StoreError::Io`] if it cannot be created or read.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(path, &OpenOptions::new(durability), None)
    }

    /// [`open`](Self::open) with a hook run on the writer thread after every batch.
    pub fn open_with_hook(
        path: impl AsRef<Path>,
        durability: Durability,
        hook: Option<BatchHook>,
    ) -> Result<Self, StoreError> {
        Self::open_with(path, &OpenOptions::new(durability), hook)
    }

    /// Opens the store at `path` as `options` say.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: &OpenOptions,
        hook: Option<BatchHook>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        check_file(&path, options.create && !options.read_only)?;
        let wal_path = wal::wal_path(&path);
        let panicked = |what: &str, panic: String| StoreError::NotAStore {
            path: path_text(&path),
            reason: format!("redb panicked while {what} (the file is damaged?): {panic}"),
        };
        let (db, wal, overlay, replayed, repair) = if options.read_only {
            // A shared lock: refused while a writer holds the file. Nothing is written.
            let db = contain(|| ReadOnlyDatabase::open(&path))
                .map_err(|p| panicked("opening it", p))?
                .map_err(|e| StoreError::from_redb(&path, e))?;
            let records = contain(|| pending_records(&db, &path, &wal_path))
                .map_err(|p| panicked("reading it", p))??;
            let mut overlay = Overlay::default();
            for op in records.iter().flatten() {
                match op {
                    WalOp::Append { workflow_id, sequence, envelope } => {
                        overlay.insert(workflow_id, *sequence, envelope.clone())
                    }
                    WalOp::Clear { workflow_id } => overlay.clear(workflow_id),
                }
            }
            (Db::Read(db), None, overlay, 0, None)
        } else {
            // Takes the file lock: from here on the log next to the file is ours alone.
            let db = contain(|| Database::create(&path))
                .map_err(|p| panicked("opening it", p))?
                .map_err(|e| StoreError::from_redb(&path, e))?;
            let repair = if options.repair {
                Some(
                    contain(|| repair(&db, &path, &wal_path))
                        .map_err(|p| panicked("repairing it", p))??,
                )
            } else {
                None
            };
            let keep_log = options.durability == Durability::Immediate;
            let opened = contain(|| recover(&db, &path, &wal_path, keep_log))
                .map_err(|p| panicked("opening it", p))??;
            let wal = match options.durability {
                Durability::Immediate => {
                    Some(Wal::open(wal_path, opened.store_id, opened.generation, opened.allocated)?)
                }
                Durability::Eventual => {
                    wal::remove(&wal_path)?;
                    None
                }
            };
            (Db::Write(Arc::new(db)), wal, Overlay::default(), opened.replayed, repair)
        };

        let stats = Arc::new(Stats::default());
        let (sender, receiver) = mpsc::channel();
        let front = Arc::new(Front::new(overlay));
        let writer = Writer::new(db, path.clone(), stats.clone(), hook, wal, front.clone());
        let handle = std::thread::Builder::new()
            .name("cano-checkpoint-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Io { path: path_text(&path), message: e.to_string() })?;
        let writer_id = handle.thread().id();
        Ok(RedbStore {
            path,
            durability: options.durability,
            read_only: options.read_only,
            owner_pid: std::process::id(),
            forks: fork_generation(),
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            writer_id,
            stats,
            replayed,
            repair,
            fences: Mutex::new(HashMap::new()),
            front,
        })
    }

    /// What `repair` did, when the store was opened with it.
    pub fn repair_report(&self) -> Option<&RepairReport> {
        self.repair.as_ref()
    }

    /// True when the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
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

    /// How many rows their appending threads applied themselves, beside the writer thread
    /// (see the module docs); the others went through the writer's channel.
    pub fn staged_row_count(&self) -> u64 {
        self.stats.staged.load(Ordering::Relaxed)
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
        self.append_row(AppendRow::Entry(entry, Box::new(done)))
    }

    /// Queues row `sequence` of the run `run` appends for, encoded by the caller (see
    /// [`codec::encode_fields`], keyed by the run's id): `run` hears how it went (see
    /// [`RunRows`]). An `Err` here means nothing was queued, and `run` hears nothing of it.
    pub fn append_run(
        &self,
        run: &Arc<dyn RunRows>,
        sequence: u64,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.append_row(AppendRow::Run(Arc::clone(run), sequence, envelope))
    }

    /// Applies `row` on this thread when it can without waiting (see [`front`]), otherwise
    /// queues it for the writer.
    fn append_row(&self, row: AppendRow) -> Result<(), StoreError> {
        self.check_process()?;
        let staged = self.front.try_append(row, &self.path);
        if !matches!(staged, Staged::Refused(_)) {
            self.stats.staged.fetch_add(1, Ordering::Relaxed);
        }
        match staged {
            Staged::Done => Ok(()),
            Staged::Wake => {
                // Without a channel the store is closing (the close takes the staged rows) or
                // the writer is gone (it fails what is staged as it stops).
                if let Some(sender) = self.sender.lock().as_ref() {
                    let _ = sender.send(Request::Wake);
                }
                Ok(())
            }
            Staged::Refused(row) => self.submit(Request::Append(row)),
        }
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
            Some(s) => self.send(&s, Request::Close(Box::new(done))),
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

    /// Stores `json` as the value of `name` in `namespace` ([`Namespace::Record`] or
    /// [`Namespace::Queue`]), replacing any earlier one; rides the group commit like a row.
    pub fn put_value(
        &self,
        namespace: Namespace,
        name: &str,
        json: &[u8],
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        debug_assert!(namespace != Namespace::History, "histories are written by end_run");
        let key = namespace.key(name);
        let ops = vec![Op::Clear(key.clone()), Op::Put(value_entry(key, json))];
        self.submit(Request::Write(ops, Box::new(done)))
    }

    /// Stores `json` as the value of `name` in `namespace` unless it already has one; `done`
    /// gets the value found (`None`: stored). One request: check and write are atomic.
    pub fn insert_value(
        &self,
        namespace: Namespace,
        name: &str,
        json: &[u8],
        done: impl FnOnce(Result<Option<Vec<u8>>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        debug_assert!(namespace != Namespace::History, "histories are written by end_run");
        let entry = value_entry(namespace.key(name), json);
        self.submit(Request::Insert(entry, Box::new(done)))
    }

    /// A run ended: stores its record, and with `archive` moves its log into its step history
    /// (the log is cleared), all in one commit.
    pub fn end_run(
        &self,
        workflow_id: &str,
        record: &[u8],
        archive: bool,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let key = Namespace::Record.key(workflow_id);
        let mut ops = vec![Op::Clear(key.clone()), Op::Put(value_entry(key, record))];
        if archive {
            ops.push(Op::Archive(workflow_id.to_owned()));
        }
        self.submit(Request::Write(ops, Box::new(done)))
    }

    /// Forgets a run: its record, its step history, its signals and its log.
    pub fn delete_run(
        &self,
        workflow_id: &str,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let ops = vec![
            Op::Clear(Namespace::Record.key(workflow_id)),
            Op::Clear(Namespace::History.key(workflow_id)),
            Op::Clear(Namespace::Signal.key(workflow_id)),
            Op::Clear(workflow_id.to_owned()),
        ];
        self.submit(Request::Write(ops, Box::new(done)))
    }

    /// Every value of `namespace` as `(name, json)`, ordered by name.
    pub fn values(
        &self,
        namespace: Namespace,
        done: impl FnOnce(Result<Vec<(String, Vec<u8>)>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let strip = namespace.prefix().len();
        let mapped = move |rows: Result<Vec<Timed>, StoreError>| {
            done(rows.map(|rows| {
                rows.into_iter()
                    .map(|(row, _)| {
                        (row.workflow_id[strip..].to_owned(), row.output.unwrap_or_default())
                    })
                    .collect()
            }))
        };
        self.submit(Request::Read(Source::Namespace(namespace), Box::new(mapped)))
    }

    /// The value of `name` in `namespace`, if any.
    pub fn value(
        &self,
        namespace: Namespace,
        name: &str,
        done: impl FnOnce(Result<Option<Vec<u8>>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let mapped = move |rows: Result<Vec<Timed>, StoreError>| {
            done(rows.map(|rows| rows.into_iter().next().and_then(|(row, _)| row.output)))
        };
        self.submit(Request::Read(Source::Run(namespace.key(name)), Box::new(mapped)))
    }

    /// A run's log (or, with `history`, its step history) with each row's time.
    pub fn timed_rows(
        &self,
        workflow_id: &str,
        history: bool,
        done: impl FnOnce(Result<Vec<Timed>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        if !history {
            let id = workflow_id.to_owned();
            return self.submit(Request::Read(Source::Run(id), Box::new(done)));
        }
        let key = Namespace::History.key(workflow_id);
        let unpacked = {
            let key = key.clone();
            move |rows: Result<Vec<Timed>, StoreError>| {
                done(rows.and_then(|rows| unpack(&key, rows)))
            }
        };
        self.submit(Request::Read(Source::Run(key), Box::new(unpacked)))
    }

    /// Records that a worker of this process holds `workflow_id` under lease `(owner, epoch)`
    /// (`None`: nobody does any more). [`fence_holds`](Self::fence_holds) and the
    /// [`Fence`] of [`fence`](Self::fence) check a write against it.
    pub fn set_fence(&self, workflow_id: &str, fence: Option<(String, u64)>) {
        let mut fences = self.fences.lock();
        match fence {
            Some((owner, epoch)) => {
                let held = fences
                    .entry(workflow_id.to_owned())
                    .or_insert_with(|| (String::new(), Arc::new(Fence::not_held())));
                held.0 = owner;
                held.1 .0.store(epoch, Ordering::Release);
            }
            None => {
                if let Some((_, cell)) = fences.remove(workflow_id) {
                    cell.0.store(Fence::NOT_HELD, Ordering::Release);
                }
            }
        }
    }

    /// True while `(owner, epoch)` is the lease `workflow_id` is held under.
    pub fn fence_holds(&self, workflow_id: &str, owner: &str, epoch: u64) -> bool {
        self.fences.lock().get(workflow_id).is_some_and(|(o, f)| o == owner && f.holds(epoch))
    }

    /// The lease cell of `workflow_id`, for a run held under `(owner, epoch)` to check each
    /// of its appends with [`Fence::holds`]`(epoch)`. A lease that does not hold now gets a
    /// cell that never will.
    pub fn fence(&self, workflow_id: &str, owner: &str, epoch: u64) -> Arc<Fence> {
        match self.fences.lock().get(workflow_id) {
            Some((o, cell)) if o == owner && cell.holds(epoch) => cell.clone(),
            _ => Arc::new(Fence::not_held()),
        }
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

    /// [`values`](Self::values), waiting for them.
    pub fn values_blocking(
        &self,
        namespace: Namespace,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.wait(|done| self.values(namespace, done))
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
            Some(s) => self.send(s, request),
        }
    }

    /// Sends `request` to the writer, counted first: from here on no row it concerns is
    /// applied ahead of it (see [`front`]).
    fn send(&self, sender: &Sender<Request>, request: Request) -> Result<(), StoreError> {
        let mut queued = self.front.queued.lock();
        queued.add(&request);
        match sender.send(request) {
            Ok(()) => {
                self.front.sent.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(mpsc::SendError(request)) => {
                queued.remove(&request);
                Err(self.writer_gone())
            }
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

/// A history as stored (one packed value; or, in files of earlier builds, a row per key) as
/// its rows.
fn unpack(key: &str, rows: Vec<Timed>) -> Result<Vec<Timed>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for (row, at) in rows {
        if row.sequence == codec::PACKED {
            out.extend(codec::unpack_rows(key, row.output.as_deref().unwrap_or_default())?);
        } else {
            out.push((row, at));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
