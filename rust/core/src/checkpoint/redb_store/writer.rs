//! The writer thread of a [`RedbStore`](super::RedbStore): it takes every queued request,
//! applies them as one batch, makes the batch durable once (a log record and one sync, a
//! checkpoint, or with `Durability::Eventual` one redb commit) and completes the requests
//! in order.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use redb::{Database, WriteTransaction};

use super::{Answer, BatchHook, Request, Stats, CHECKPOINT_ROWS, MAX_BATCH};
use crate::checkpoint::error::{path_text, StoreError};
use crate::checkpoint::overlay::{append_logged, list_runs_logged, load_run_logged, Base, Overlay};
use crate::checkpoint::reads::{list_runs, load_run};
use crate::checkpoint::row::Entry;
use crate::checkpoint::schema::{META, META_GENERATION, TABLE};
use crate::checkpoint::wal::Wal;

/// The state owned by the writer thread.
pub(super) struct Writer {
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
    pub(super) fn new(
        db: Database,
        path: PathBuf,
        stats: Arc<Stats>,
        hook: Option<BatchHook>,
        wal: Option<Wal>,
    ) -> Self {
        Writer {
            db: Some(db),
            path,
            unsynced: false,
            stats,
            hook,
            wal,
            failed: None,
            overlay: Overlay::default(),
        }
    }

    pub(super) fn run(mut self, receiver: Receiver<Request>) {
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
