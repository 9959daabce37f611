//! The writer thread of a [`RedbStore`](super::RedbStore): it takes every queued request,
//! applies them as one batch, makes the batch durable once (a log record and one sync, a
//! checkpoint, or with `Durability::Eventual` one redb commit) and completes the requests
//! in order.
//!
//! Every call into redb runs inside [`contain`]: a panic of the storage engine (a damaged file
//! can cause one) fails the batch with an error naming the file, and prints nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, ReadOnlyDatabase, WriteTransaction};

use super::front::Front;
use super::{Answer, BatchHook, Op, Request, Source, Stats, CHECKPOINT_ROWS, MAX_BATCH};
use crate::checkpoint::codec;
use crate::checkpoint::contain::contain;
use crate::checkpoint::error::{path_text, StoreError};
use crate::checkpoint::overlay::{
    append_logged, list_runs_logged, load_run_logged, load_run_timed_logged, pack_run_logged,
    run_bytes_logged, scan_logged, Base, InRedb, Overlay, ReadSource,
};
use crate::checkpoint::reads::{list_runs, load_run, load_run_timed, pack_run, scan, Timed};
use crate::checkpoint::row::{Entry, RowKind};
use crate::checkpoint::schema::{Namespace, META, META_GENERATION, META_WAL_ALLOCATED, TABLE};
use crate::checkpoint::wal::Wal;

type RedbTable<'t> = redb::Table<'t, (&'static str, u64), &'static [u8]>;

/// `Durability::Eventual`: commits made without fsync are made durable at the latest this
/// long after the first of them...
pub const EVENTUAL_WINDOW: Duration = Duration::from_secs(1);
/// ...or once this many rows are waiting, whichever comes first.
pub const EVENTUAL_ROWS: usize = 10_000;

/// At most this many bytes of operations are staged by appending threads for one record.
const MAX_STAGED: u64 = 4 << 20;

/// The database, as the writer holds it.
pub(super) enum Db {
    /// Shared with the [`Front`], which looks keys up in it.
    Write(Arc<Database>),
    /// Opened read-only: reads only, served through the overlay (which holds what the log
    /// held), nothing ever written.
    Read(ReadOnlyDatabase),
}

impl Db {
    fn source(&self) -> &dyn ReadSource {
        match self {
            Db::Write(db) => &**db,
            Db::Read(db) => db,
        }
    }
}

/// The state owned by the writer thread.
pub(super) struct Writer {
    /// `None` after `Close`: the file is released before the close completes.
    db: Option<Db>,
    path: PathBuf,
    /// `Durability::Eventual`: when the oldest commit not yet durable was made, and how many
    /// rows have been committed without fsync since the last durable commit.
    unsynced_since: Option<Instant>,
    unsynced_rows: usize,
    stats: Arc<Stats>,
    hook: Option<BatchHook>,
    /// The write-ahead log (`Durability::Immediate` only).
    wal: Option<Wal>,
    /// Set when the store can no longer guarantee what it acknowledges (a log write or sync,
    /// or a checkpoint, failed): every later request fails with it.
    failed: Option<StoreError>,
    /// The first I/O error met: redb answers later calls with "Previous I/O error occurred",
    /// which says nothing of the cause (a full disk, say); this does.
    first_io: Option<StoreError>,
    /// With a write-ahead log (or read-only): what the log holds that redb does not (see
    /// `overlay`). Batches need no redb write at all until the next checkpoint. It lives in
    /// the [`Front`], and is here only while a batch is applied.
    overlay: Overlay,
    /// Where appending threads stage rows they applied themselves (see [`super::front`]).
    front: Arc<Front>,
    /// The staged operations of the batch being applied (the front's buffer, swapped).
    staged_ops: Vec<u8>,
    staged_count: usize,
    /// How many requests (wake-ups aside) the writer took from the channel.
    taken: u64,
}

impl Drop for Writer {
    /// The writer stops — closed, or its thread unwinding from a panic: no row is staged
    /// from now on, and the rows staged and never taken fail rather than wait for ever.
    fn drop(&mut self) {
        let mut state = self.front.state.lock();
        state.room = 0;
        state.db = None;
        let staged = std::mem::take(&mut state.rows);
        drop(state);
        let err = StoreError::WriterFailed {
            path: path_text(&self.path),
            reason: "it stopped before answering".into(),
        };
        for (row, _) in staged {
            row.complete(Err(err.clone()));
        }
    }
}

/// What applying a batch left to do before its requests may complete.
enum Durable {
    /// Nothing: no mutation, or the batch's commit was durable itself.
    Now,
    /// The batch's log record is staged; it is durable once written (and synced).
    Log,
    /// The batch did not become durable: every row and request that succeeded fails so.
    Lost(StoreError),
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

fn mutates(request: &Request) -> bool {
    matches!(
        request,
        Request::Append(..) | Request::Clear(..) | Request::Write(..) | Request::Insert(..)
    )
}

/// The output (a value of the store's own) of the first of `rows`.
fn found(rows: Vec<Timed>) -> Option<Vec<u8>> {
    rows.into_iter().next().map(|(row, _)| row.output.unwrap_or_default())
}

/// A run's log, packed under its history key by `pack` (see [`codec::pack_row`]), as its
/// step history: one value.
fn history_entry(key: String, packed: &[u8]) -> Entry {
    let mut envelope = Vec::with_capacity(packed.len() + 24);
    codec::encode_fields(
        &key,
        codec::PACKED,
        RowKind::StateEntry,
        0,
        "",
        "",
        Some(packed),
        codec::now_micros(),
        &mut envelope,
    );
    Entry { workflow_id: key, sequence: codec::PACKED, envelope }
}

/// A write's changes with every `Archive` spelled out as the clears and puts it makes:
/// `pack` packs a run's log under a key (only reads can fail, so nothing is applied before
/// they are done).
fn expand(
    ops: &mut Vec<Op>,
    mut pack: impl FnMut(&str, &str) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    if !ops.iter().any(|op| matches!(op, Op::Archive(_))) {
        return Ok(());
    }
    let mut out = Vec::with_capacity(ops.len() + 8);
    for op in ops.drain(..) {
        match op {
            Op::Archive(id) => {
                let key = Namespace::History.key(&id);
                let packed = pack(&id, &key)?;
                out.push(Op::Clear(key.clone()));
                out.push(Op::Put(history_entry(key, &packed)));
                out.push(Op::Clear(id));
            }
            other => out.push(other),
        }
    }
    *ops = out;
    Ok(())
}

impl Writer {
    pub(super) fn new(
        db: Db,
        path: PathBuf,
        stats: Arc<Stats>,
        hook: Option<BatchHook>,
        wal: Option<Wal>,
        front: Arc<Front>,
    ) -> Self {
        if let (Db::Write(db), Some(_)) = (&db, &wal) {
            // Rows are applied by their threads only with a log (no redb write per batch).
            front.state.lock().db = Some(db.clone());
        }
        Writer {
            db: Some(db),
            path,
            unsynced_since: None,
            unsynced_rows: 0,
            stats,
            hook,
            wal,
            failed: None,
            first_io: None,
            overlay: Overlay::default(),
            front,
            staged_ops: Vec::new(),
            staged_count: 0,
            taken: 0,
        }
    }

    /// True when rows are staged in the front; otherwise the writer is about to wait for
    /// requests, and the next staged row wakes it.
    fn rows_staged(&self) -> bool {
        let mut state = self.front.state.lock();
        if state.rows.is_empty() {
            state.idle = true;
            false
        } else {
            true
        }
    }

    pub(super) fn run(mut self, receiver: Receiver<Request>) {
        let mut batch = Vec::new();
        loop {
            let first = match self.unsynced_since {
                // Rows staged by their threads are work: only look at the channel.
                None if self.rows_staged() => receiver.try_recv().ok(),
                // Eventual commits are waiting: wait for work at most until they are due.
                Some(since) => {
                    let due = EVENTUAL_WINDOW.saturating_sub(since.elapsed());
                    match receiver.recv_timeout(due) {
                        Ok(request) => Some(request),
                        Err(RecvTimeoutError::Timeout) => {
                            self.make_eventual_durable();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match receiver.recv() {
                    Ok(request) => Some(request),
                    Err(_) => break,
                },
            };
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            // A wake-up only says that rows are staged.
            batch.retain(|r| !matches!(r, Request::Wake));
            // The batch's vector is kept, emptied, for the next one.
            let closing = self.process(&mut batch, &receiver);
            if self.unsynced_rows >= EVENTUAL_ROWS
                || self.unsynced_since.is_some_and(|t| t.elapsed() >= EVENTUAL_WINDOW)
            {
                self.make_eventual_durable();
            }
            if let Some(hook) = self.hook.as_mut() {
                hook();
            }
            if closing {
                return;
            }
        }
        // Every sender is gone without a `Close` (cannot happen through `RedbStore`, whose
        // drop closes): still make what was acknowledged durable in redb.
        let front = self.front.clone();
        let mut state = front.state.lock();
        std::mem::swap(&mut self.overlay, &mut state.overlay);
        state.room = 0;
        if self.db.is_some() && self.failed.is_none() && contain(|| self.sync()).is_ok() {
            if let Some(wal) = self.wal.take() {
                let _ = wal.remove();
            }
        }
        std::mem::swap(&mut self.overlay, &mut state.overlay);
        state.db = None;
    }

    /// The eventual loss window ends: one durable (empty) commit persists every commit made
    /// without fsync before it. A failure is kept for the next request to report.
    fn make_eventual_durable(&mut self) {
        match contain(|| self.sync()) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                self.first_io.get_or_insert(err);
            }
            Err(panic) => {
                self.first_io.get_or_insert(StoreError::WriterFailed {
                    path: path_text(&self.path),
                    reason: format!("redb panicked while flushing: {panic}"),
                });
            }
        }
        // Tried once per window: a full disk is reported by the next write, not retried here
        // in a loop.
        self.unsynced_since = None;
        self.unsynced_rows = 0;
    }

    /// Applies a batch — the rows staged in the front, then `requests` — makes it durable
    /// (one log record, a checkpoint, or with `Durability::Eventual` one redb commit), then
    /// completes its rows and requests in order. True when the batch closed the store.
    fn process(&mut self, requests: &mut Vec<Request>, receiver: &Receiver<Request>) -> bool {
        let front = self.front.clone();
        let mut state = front.state.lock();
        state.idle = false;
        if requests.is_empty() && state.rows.is_empty() {
            return false;
        }
        // Every request sent before the last staged row joins this batch (they are in the
        // channel: each is counted once sent), so that the record never holds a row without
        // what its caller sent before it.
        self.taken += requests.len() as u64;
        while self.taken < state.sent_before {
            match receiver.recv() {
                Ok(Request::Wake) => {}
                Ok(request) => {
                    requests.push(request);
                    self.taken += 1;
                }
                Err(_) => break,
            }
        }
        let closing = requests.iter().any(|r| matches!(r, Request::Close(_)));
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        // Rows appended from here on come after the requests of this batch: their threads
        // wait for the front, which is the writer's until it applied them.
        {
            let mut queued = front.queued.lock();
            for request in requests.iter() {
                queued.remove(request);
            }
        }
        // The overlay, the staged rows and their operations are the writer's until the lock
        // is released; appending threads send their rows through the channel meanwhile.
        std::mem::swap(&mut self.overlay, &mut state.overlay);
        std::mem::swap(&mut self.staged_ops, &mut state.ops);
        self.staged_count = std::mem::take(&mut state.op_count);
        let staged = std::mem::take(&mut state.rows);
        let mut staged_answers: Vec<Answer> = staged
            .iter()
            .map(|(_, refused)| Answer::Unit(refused.clone().map_or(Ok(()), Err)))
            .collect();
        let mut staged: Vec<Request> =
            staged.into_iter().map(|(row, _)| Request::Append(row)).collect();

        let applied = contain(|| self.apply(requests, closing));
        self.staged_ops.clear();
        self.staged_count = 0;
        let (mut answers, durable) = match applied {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => {
                // The store failed (or closed): even a refusal, which may have been made
                // against a row that never became durable, answers with why.
                staged_answers.fill_with(|| Answer::Unit(Err(err.clone())));
                let answers = requests.iter().map(|r| Answer::failed(r, err.clone())).collect();
                (answers, Durable::Now)
            }
            Err(panic) => {
                let err = StoreError::WriterFailed {
                    path: path_text(&self.path),
                    reason: format!(
                        "redb panicked while applying a batch (is the file damaged?): {panic}"
                    ),
                };
                if self.wal.is_some() {
                    // The overlay may hold part of the batch.
                    poison(&mut self.failed, &self.path, &err);
                }
                staged_answers.fill_with(|| Answer::Unit(Err(err.clone())));
                let answers = requests.iter().map(|r| Answer::failed(r, err.clone())).collect();
                (answers, Durable::Now)
            }
        };
        if let Durable::Lost(err) = &durable {
            fail_succeeded(&mut staged_answers, &staged, err);
            fail_succeeded(&mut answers, requests, err);
        }
        self.explain_io_errors(&mut staged_answers);
        self.explain_io_errors(&mut answers);
        if closing {
            // The closing batch ended with a checkpoint that also recorded "no log": delete it
            // while the file lock is still ours. If anything failed, the log keeps the rows for
            // the next open.
            if let Some(wal) = self.wal.take() {
                if wal.records() == 0 && self.overlay.is_empty() && self.failed.is_none() {
                    let _ = wal.remove();
                }
            }
            // Release the file before anyone hears that the store is closed.
            self.db = None;
            state.db = None;
        }
        state.room = self.room_for_staging(&durable, closing);
        std::mem::swap(&mut self.overlay, &mut state.overlay);
        drop(state);

        if let (Durable::Log, Some(wal)) = (&durable, self.wal.as_mut()) {
            // The batch's one durable write. Rows applied meanwhile wait in the front (and
            // requests in the channel), without waking anybody, and form the next batch.
            match wal.write().and_then(|()| wal.sync()) {
                Ok(()) => {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    // The batch is in the overlay, but whether its record reached the disk is
                    // unknown (the kernel may have dropped the dirty pages): stop here; the
                    // log still holds every batch acknowledged before.
                    poison(&mut self.failed, &self.path, &err);
                    front.state.lock().room = 0;
                    fail_succeeded(&mut staged_answers, &staged, &err);
                    fail_succeeded(&mut answers, requests, &err);
                }
            }
        }
        for (request, answer) in staged.drain(..).zip(staged_answers) {
            complete(request, answer);
        }
        for (request, answer) in requests.drain(..).zip(answers) {
            complete(request, answer);
        }
        closing
    }

    /// How many bytes of operations appending threads may stage for the next record: none
    /// without a log (or writable database), once failed or closing.
    fn room_for_staging(&self, durable: &Durable, closing: bool) -> u64 {
        match (&self.wal, &self.db, &self.failed) {
            (Some(wal), Some(Db::Write(_)), None) if !closing => {
                wal.room_after(matches!(durable, Durable::Log)).min(MAX_STAGED)
            }
            _ => 0,
        }
    }

    /// redb answers every call after a failed write with "Previous I/O error occurred": the
    /// first I/O error is kept, and reported in their place (it says what went wrong — a full
    /// disk, say).
    fn explain_io_errors(&mut self, answers: &mut [Answer]) {
        for answer in answers.iter_mut() {
            let err = match answer {
                Answer::Unit(Err(e)) => e,
                Answer::Rows(Err(e)) => e,
                Answer::Timed(Err(e)) => e,
                Answer::Found(Err(e)) => e,
                Answer::Runs(Err(e)) => e,
                _ => continue,
            };
            match err {
                StoreError::Io { .. } => {
                    self.first_io.get_or_insert_with(|| err.clone());
                }
                StoreError::Storage { message, .. } if message.contains("Previous I/O error") => {
                    if let Some(first) = &self.first_io {
                        *err = first.clone();
                    }
                }
                _ => {}
            }
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
        match &self.db {
            None => Err(StoreError::Closed { path: path_text(&self.path) }),
            Some(Db::Read(_)) => Ok((self.apply_read_only(requests), Durable::Now)),
            Some(Db::Write(_)) if self.wal.is_some() => self.apply_logged(requests, closing),
            Some(Db::Write(_)) => self.apply_eventual(requests, closing),
        }
    }

    /// A read-only store: reads through the overlay, writes refused.
    fn apply_read_only(&mut self, requests: &[Request]) -> Vec<Answer> {
        let path = self.path.clone();
        let Some(db) = self.db.as_ref() else { return Vec::new() };
        let mut base = Base { db: db.source(), path: &path, table: None };
        let overlay = &self.overlay;
        let refuse =
            |what: &str| StoreError::ReadOnly { path: path_text(&path), what: what.into() };
        requests
            .iter()
            .map(|request| match request {
                Request::Append(..) => Answer::Unit(Err(refuse("append"))),
                Request::Clear(..) => Answer::Unit(Err(refuse("clear"))),
                Request::Write(..) => Answer::Unit(Err(refuse("run records"))),
                Request::Insert(..) => Answer::Found(Err(refuse("run records"))),
                Request::LoadRun(id, _) => Answer::Rows(load_run_logged(overlay, &mut base, id)),
                Request::Read(source, _) => Answer::Timed(read_logged(overlay, &mut base, source)),
                Request::ListRuns(_) => Answer::Runs(list_runs_logged(overlay, &mut base)),
                Request::Flush(_) | Request::Close(_) | Request::Wake => Answer::Unit(Ok(())),
            })
            .collect()
    }

    fn write_db(&self) -> Result<&Database, StoreError> {
        match &self.db {
            Some(Db::Write(db)) => Ok(db),
            Some(Db::Read(_)) => {
                Err(StoreError::ReadOnly { path: path_text(&self.path), what: "a write".into() })
            }
            None => Err(StoreError::Closed { path: path_text(&self.path) }),
        }
    }

    /// `Durability::Eventual`: one redb write transaction per batch, committed without fsync
    /// unless the batch flushes or closes (the loss window bounds the rest).
    fn apply_eventual(
        &mut self,
        requests: &mut [Request],
        closing: bool,
    ) -> Result<(Vec<Answer>, Durable), StoreError> {
        if let Some(err) = &self.first_io {
            // A failed commit or flush: redb would only answer "Previous I/O error occurred".
            if requests.iter().any(mutates) {
                return Err(err.clone());
            }
        }
        let path = self.path.clone();
        let redb_err = |e: redb::Error| StoreError::from_redb(&path, e);
        let db = self.write_db()?;
        let appended = requests
            .iter()
            .filter(|r| matches!(r, Request::Append(..) | Request::Write(..) | Request::Insert(..)))
            .count();
        let mutating = requests.iter().any(mutates);
        let durable = closing || requests.iter().any(|r| matches!(r, Request::Flush(_)));

        let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
        let mut answers = Vec::with_capacity(requests.len());
        {
            let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
            for request in requests.iter_mut() {
                answers.push(match request {
                    Request::Append(row) => {
                        let (id, sequence, envelope) = row.parts();
                        Answer::Unit(append(&mut table, id, sequence, envelope, &path))
                    }
                    Request::Clear(id, _) => {
                        let id = id.as_str();
                        Answer::Unit(
                            table
                                .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
                                .map_err(|e| redb_err(e.into())),
                        )
                    }
                    Request::Write(ops, _) => Answer::Unit(write_eventual(&mut table, ops, &path)),
                    Request::Insert(entry, _) => {
                        Answer::Found(insert_eventual(&mut table, entry, &path))
                    }
                    Request::LoadRun(id, _) => Answer::Rows(load_run(&table, id, &path)),
                    Request::Read(Source::Run(id), _) => {
                        Answer::Timed(load_run_timed(&table, id, &path))
                    }
                    Request::Read(Source::Namespace(ns), _) => {
                        Answer::Timed(scan(&table, *ns, &path))
                    }
                    Request::ListRuns(_) => Answer::Runs(list_runs(&table, &path)),
                    Request::Flush(_) | Request::Close(_) | Request::Wake => Answer::Unit(Ok(())),
                });
            }
        }
        let pending = self.unsynced_since.is_some();
        if !(mutating || (durable && pending)) {
            // Reads only, or a flush with nothing pending: no commit, no fsync.
            tx.abort().map_err(|e| redb_err(e.into()))?;
            return Ok((answers, Durable::Now));
        }
        match self.commit(tx, durable, false, false) {
            Ok(()) if durable => {
                self.unsynced_since = None;
                self.unsynced_rows = 0;
            }
            Ok(()) => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                self.unsynced_rows += appended;
            }
            // Nothing of the batch was committed.
            Err(err) => fail_succeeded(&mut answers, requests, &err),
        }
        Ok((answers, Durable::Now))
    }

    /// `Durability::Immediate`: the batch goes to the overlay and into one log record; a
    /// checkpoint (when due, and at close) writes the overlay to redb durably instead.
    fn apply_logged(
        &mut self,
        requests: &mut [Request],
        closing: bool,
    ) -> Result<(Vec<Answer>, Durable), StoreError> {
        let path = self.path.clone();
        // Refuses the batch's requests (the rows staged in the front are logged all the same:
        // they were given room when they were staged).
        let mut refused = None;
        if self.staged_count > 0 || requests.iter().any(mutates) {
            // Room for the record first (a read never needs any): a batch in the overlay that
            // cannot be logged would be rows nobody acknowledged. A log that grew has its new
            // size recorded durably before any record lands in the new space.
            let staged = self.staged_ops.len() as u64;
            let mut reserve = || {
                let mut bound: u64 = requests.iter().map(record_bound).sum();
                bound += self.archive_bound(requests)?;
                let wal = self.wal.as_mut().expect("checked by apply");
                if let Some(allocated) = wal.reserve(bound + staged)? {
                    self.record_log_size(allocated)?;
                }
                Ok::<(), StoreError>(())
            };
            match reserve() {
                Ok(()) => {}
                Err(err) if self.staged_count == 0 => return Err(err),
                Err(err) => refused = Some(err),
            }
        }
        let db: &Database = match &self.db {
            Some(Db::Write(db)) => db,
            _ => return Err(StoreError::Closed { path: path_text(&self.path) }),
        };
        let wal = self.wal.as_mut().expect("checked by apply");
        wal.begin();
        // The rows staged in the front were applied before every request of the batch.
        wal.push_ops(&self.staged_ops, self.staged_count);
        let mut base = Base { db, path: &path, table: None };
        let overlay = &mut self.overlay;
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests.iter_mut() {
            if let Some(err) = &refused {
                answers.push(Answer::failed(request, err.clone()));
                continue;
            }
            answers.push(match request {
                Request::Append(row) => {
                    // The request only needs its completion from here on: the envelope moves
                    // into the overlay.
                    let (id, sequence, envelope) = row.parts();
                    Answer::Unit(append_logged(overlay, &mut base, id, sequence, envelope, |e| {
                        wal.push_append(id, sequence, e)
                    }))
                }
                Request::Clear(id, _) => {
                    wal.push_clear(id);
                    overlay.clear(id);
                    Answer::Unit(Ok(()))
                }
                Request::Write(ops, _) => {
                    let expanded =
                        expand(ops, |id, key| pack_run_logged(overlay, &mut base, id, key));
                    if expanded.is_ok() {
                        for op in ops.drain(..) {
                            match op {
                                Op::Put(entry) => {
                                    wal.push_append(
                                        &entry.workflow_id,
                                        entry.sequence,
                                        &entry.envelope,
                                    );
                                    overlay.insert(
                                        &entry.workflow_id,
                                        entry.sequence,
                                        entry.envelope,
                                    );
                                }
                                Op::Clear(id) => {
                                    wal.push_clear(&id);
                                    overlay.clear(&id);
                                }
                                Op::Archive(_) => unreachable!("expanded above"),
                            }
                        }
                    }
                    Answer::Unit(expanded)
                }
                Request::Insert(entry, _) => {
                    let key = entry.workflow_id.as_str();
                    let existing = load_run_timed_logged(overlay, &mut base, key).map(found);
                    if let Ok(None) = existing {
                        wal.push_append(key, entry.sequence, &entry.envelope);
                        // Nothing in redb either (just read): later lookups need not ask.
                        overlay.learn(key, InRedb::Nothing);
                        let envelope = std::mem::take(&mut entry.envelope);
                        overlay.insert(key, entry.sequence, envelope);
                    }
                    Answer::Found(existing)
                }
                Request::LoadRun(id, _) => Answer::Rows(load_run_logged(overlay, &mut base, id)),
                Request::Read(source, _) => Answer::Timed(read_logged(overlay, &mut base, source)),
                Request::ListRuns(_) => Answer::Runs(list_runs_logged(overlay, &mut base)),
                Request::Flush(_) | Request::Close(_) | Request::Wake => Answer::Unit(Ok(())),
            });
        }
        drop(base);

        let logged = !wal.is_empty();
        let due = wal.checkpoint_due() || self.overlay.rows() >= CHECKPOINT_ROWS;
        if closing {
            // The last checkpoint also records that the store has no log any more. If it
            // fails (a full disk), the log still holds everything: nothing is lost, the next
            // open replays it, and the store closes all the same.
            if logged {
                let wal = self.wal.as_mut().expect("checked by apply");
                if let Err(err) = wal.write().and_then(|()| wal.sync()) {
                    poison(&mut self.failed, &self.path, &err);
                    return Ok((answers, Durable::Lost(err)));
                }
            }
            // A failed checkpoint poisons the writer, so the log is kept, not removed.
            let _ = self.checkpoint(true);
            return Ok((answers, Durable::Now));
        }
        if logged && due {
            // A checkpoint makes this batch durable together with everything before it.
            if let Err(err) = self.checkpoint(false) {
                return Ok((answers, Durable::Lost(err)));
            }
            return Ok((answers, Durable::Now));
        }
        if !logged {
            // Reads, flushes, or appends that all conflicted. Reads may have seen rows still
            // being synced: they complete after them, in order.
            return Ok((answers, Durable::Now));
        }
        // One group commit, written once the front is released: the batch is durable once
        // its record is written and synced.
        Ok((answers, Durable::Log))
    }

    /// At most the bytes the `Archive`s of a batch add to its log record: the rows each run
    /// has now, and those the batch appends to it before.
    fn archive_bound(&self, requests: &[Request]) -> Result<u64, StoreError> {
        let archived: Vec<&str> = requests
            .iter()
            .filter_map(|r| match r {
                Request::Write(ops, _) => Some(ops),
                _ => None,
            })
            .flatten()
            .filter_map(|op| match op {
                Op::Archive(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        if archived.is_empty() {
            return Ok(0);
        }
        let Some(db) = &self.db else { return Ok(0) };
        let mut base = Base { db: db.source(), path: &self.path, table: None };
        let mut bound = 0;
        for id in archived {
            let (rows, bytes) = run_bytes_logged(&self.overlay, &mut base, id)?;
            let batch: u64 = requests
                .iter()
                .filter(|r| matches!(r, Request::Append(row) if row.workflow_id() == id))
                .map(record_bound)
                .sum();
            // Each row again under the history's key, plus the two clears.
            bound += 2 * (bytes + batch) + (rows + 1) * (32 + 2 * id.len() as u64) + 64;
        }
        Ok(bound)
    }

    /// Records durably how large the log has been grown (see `replay`): a log found shorter
    /// later was truncated.
    fn record_log_size(&mut self, allocated: u64) -> Result<(), StoreError> {
        let path = self.path.clone();
        let redb_err = |e: redb::Error| StoreError::from_redb(&path, e);
        let tx = self.write_db()?.begin_write().map_err(|e| redb_err(e.into()))?;
        tx.open_table(META)
            .map_err(|e| redb_err(e.into()))?
            .insert(META_WAL_ALLOCATED, allocated)
            .map_err(|e| redb_err(e.into()))?;
        // Durable (redb's default); not a checkpoint: the log's rows stay where they are.
        tx.commit().map_err(|e| redb_err(e.into()))
    }

    /// Writes the overlay to redb in one durable commit that also moves the log to its next
    /// generation (and, when `closing`, records that the store has no log); the log then
    /// starts over. A failure leaves the store poisoned (the log keeps every acknowledged
    /// batch for the next open).
    fn checkpoint(&mut self, closing: bool) -> Result<(), StoreError> {
        let Some(wal) = self.wal.as_ref() else { return self.sync() };
        if !closing && wal.records() == 0 && self.overlay.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let redb_err = |e: redb::Error| StoreError::from_redb(&path, e);
        let changes = self.overlay.take();
        let written = (|| {
            let db = self.write_db()?;
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
        let result = written.and_then(|tx| self.commit(tx, true, true, closing));
        if let Err(err) = &result {
            poison(&mut self.failed, &self.path, err);
        }
        result
    }

    /// Commits `tx`; a durable commit with a write-ahead log (`checkpoint`) also moves the log
    /// to its next generation in the same transaction (and with `drop_log` records that the
    /// store has no log), and the log starts over.
    fn commit(
        &mut self,
        mut tx: WriteTransaction,
        durable: bool,
        checkpoint: bool,
        drop_log: bool,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let next_generation = match (&self.wal, checkpoint) {
            (Some(wal), true) => {
                let generation = wal.generation() + 1;
                let mut meta = tx.open_table(META).map_err(|e| StoreError::from_redb(&path, e))?;
                meta.insert(META_GENERATION, generation)
                    .map_err(|e| StoreError::from_redb(&path, e))?;
                if drop_log {
                    meta.insert(META_WAL_ALLOCATED, 0)
                        .map_err(|e| StoreError::from_redb(&path, e))?;
                }
                Some(generation)
            }
            _ => None,
        };
        let level = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        tx.set_durability(level).map_err(|e| StoreError::from_redb(&path, e))?;
        if let Err(e) = tx.commit() {
            let err = StoreError::from_redb(&path, e);
            // redb reports every later failure as "Previous I/O error occurred": keep the
            // first one, which says what went wrong.
            let err = match (&self.first_io, &err) {
                (Some(first), StoreError::Storage { message, .. })
                    if message.contains("Previous I/O error") =>
                {
                    first.clone()
                }
                _ => err,
            };
            if matches!(err, StoreError::Io { .. }) {
                self.first_io.get_or_insert_with(|| err.clone());
            }
            return Err(err);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if durable {
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(generation), Some(wal)) = (next_generation, self.wal.as_mut()) {
            wal.reset(generation);
        }
        Ok(())
    }

    /// Makes everything applied so far durable in redb: a checkpoint with a log, otherwise a
    /// durable empty commit after eventual ones.
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.wal.is_some() {
            return self.checkpoint(false);
        }
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        let Some(Db::Write(db)) = self.db.as_ref() else { return Ok(()) };
        let tx = db.begin_write().map_err(|e| StoreError::from_redb(&self.path, e))?;
        self.commit(tx, true, false, false)?;
        self.unsynced_since = None;
        self.unsynced_rows = 0;
        Ok(())
    }
}

/// At most the bytes `request` adds to a log record (an `Archive`'s rows aside, see
/// `archive_bound`).
fn record_bound(request: &Request) -> u64 {
    let append = |entry: &Entry| 1 + 10 + entry.workflow_id.len() + 10 + 10 + entry.envelope.len();
    let bytes = match request {
        Request::Append(row) => 1 + 10 + row.bytes() + 10 + 10,
        Request::Insert(entry, _) => append(entry),
        Request::Clear(id, _) => 1 + 10 + id.len(),
        Request::Write(ops, _) => ops
            .iter()
            .map(|op| match op {
                Op::Put(entry) => append(entry),
                Op::Clear(id) | Op::Archive(id) => 1 + 10 + id.len(),
            })
            .sum(),
        _ => 0,
    };
    bytes as u64
}

/// A [`Request::Read`] through the overlay.
fn read_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
    source: &Source,
) -> Result<Vec<Timed>, StoreError> {
    match source {
        Source::Run(id) => load_run_timed_logged(overlay, base, id),
        Source::Namespace(ns) => scan_logged(overlay, base, *ns),
    }
}

/// A [`Request::Insert`] in a redb transaction (`Durability::Eventual`).
fn insert_eventual(
    table: &mut RedbTable<'_>,
    entry: &Entry,
    path: &Path,
) -> Result<Option<Vec<u8>>, StoreError> {
    let existing = found(load_run_timed(&*table, &entry.workflow_id, path)?);
    if existing.is_none() {
        table
            .insert((entry.workflow_id.as_str(), entry.sequence), entry.envelope.as_slice())
            .map_err(|e| StoreError::from_redb(path, e))?;
    }
    Ok(existing)
}

/// A [`Request::Write`] in one redb transaction (`Durability::Eventual`).
fn write_eventual(
    table: &mut RedbTable<'_>,
    ops: &mut Vec<Op>,
    path: &Path,
) -> Result<(), StoreError> {
    expand(ops, |id, key| {
        let mut out = Vec::new();
        pack_run(&*table, id, key, path, &mut out)?;
        Ok(out)
    })?;
    for op in ops.drain(..) {
        match op {
            Op::Put(entry) => {
                table
                    .insert((entry.workflow_id.as_str(), entry.sequence), entry.envelope.as_slice())
                    .map_err(|e| StoreError::from_redb(path, e))?;
            }
            Op::Clear(id) => {
                let id = id.as_str();
                table
                    .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
                    .map_err(|e| StoreError::from_redb(path, e))?;
            }
            Op::Archive(_) => unreachable!("expanded above"),
        }
    }
    Ok(())
}

/// Inserts `entry` unless its key is taken.
fn append(
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    workflow_id: &str,
    sequence: u64,
    envelope: &[u8],
    path: &Path,
) -> Result<(), StoreError> {
    let key = (workflow_id, sequence);
    // One lookup: insert, and in the rare case the key was taken, put the stored row back
    // (nobody can see the transaction in between).
    let previous = table
        .insert(key, envelope)
        .map_err(|e| StoreError::from_redb(path, e))?
        .map(|old| old.value().to_vec());
    if let Some(old) = previous {
        table.insert(key, old.as_slice()).map_err(|e| StoreError::from_redb(path, e))?;
        return Err(StoreError::Conflict { workflow_id: workflow_id.to_owned(), sequence });
    }
    Ok(())
}

fn complete(request: Request, answer: Answer) {
    match (request, answer) {
        (Request::Append(row), Answer::Unit(r)) => row.complete(r),
        (Request::Clear(_, done), Answer::Unit(r))
        | (Request::Write(_, done), Answer::Unit(r))
        | (Request::Flush(done), Answer::Unit(r))
        | (Request::Close(done), Answer::Unit(r)) => done(r),
        (Request::LoadRun(_, done), Answer::Rows(r)) => done(r),
        (Request::Read(_, done), Answer::Timed(r)) => done(r),
        (Request::Insert(_, done), Answer::Found(r)) => done(r),
        (Request::ListRuns(done), Answer::Runs(r)) => done(r),
        (Request::Wake, _) => {}
        // `apply` answers each request with its own variant.
        _ => unreachable!("checkpoint writer answered a request with the wrong kind"),
    }
}
