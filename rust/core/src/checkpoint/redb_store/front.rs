//! Rows applied by the threads that append them, while the writer thread writes the last
//! batch: the *front* of a store with a write-ahead log.
//!
//! A batch's cycle on the writer thread is its log write (a device round trip or two) and
//! the work around it. The work of applying a row — checking its key in the overlay, adding
//! it there and encoding it for the log — needs nothing the writer alone has, so an appending
//! thread does it itself, under the front's lock, while the writer is busy writing: the
//! writer then only takes the operations staged here, writes them and completes their rows.
//!
//! Order stays what every caller sees. A row is applied here only while no request sent
//! through the channel and still waiting to be applied could see it or conflict with it:
//! one naming the same key (an append, a clear, a read of that run, a write of it), or one
//! that reads or orders everything (a list of runs, a scan of a namespace, a flush, the
//! close). So a row staged here comes after every request sent before it that concerns it,
//! and the writer applies the channel's requests after the rows staged here. Requests on
//! other keys may be applied after a row their caller sent later, but never made durable
//! after it: the writer logs staged rows only in a record that also holds every request sent
//! before the last of them. An appender
//! never waits for the writer: when the lock is busy (the writer applies a batch, or takes
//! a checkpoint), when such a request is queued, or when the log has no room reserved for
//! the row, the row goes through the channel as any request does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redb::Database;

use super::{AppendRow, Op, Request, Source};
use crate::checkpoint::contain::contain;
use crate::checkpoint::error::{path_text, StoreError};
use crate::checkpoint::overlay::{append_logged, Base, Overlay};
use crate::checkpoint::wal;

/// Shared by a store's appending threads and its writer thread.
pub(super) struct Front {
    pub(super) state: Mutex<FrontState>,
    /// Requests sent through the channel and not yet applied, by what they concern.
    pub(super) queued: Mutex<Queued>,
    /// How many requests were sent through the channel (wake-ups aside), counted once sent.
    pub(super) sent: AtomicU64,
}

/// What the requests in the channel concern: keys, and how many concern everything.
#[derive(Default)]
pub(super) struct Queued {
    everything: usize,
    keys: HashMap<String, usize>,
}

impl Queued {
    /// Counts `request`, about to be sent.
    pub(super) fn add(&mut self, request: &Request) {
        if concerns(request, |key| *self.keys.entry(key.to_owned()).or_default() += 1) {
            self.everything += 1;
        }
    }

    /// Uncounts `request`, taken from the channel.
    pub(super) fn remove(&mut self, request: &Request) {
        let keys = &mut self.keys;
        let all = concerns(request, |key| {
            if let Some(n) = keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    keys.remove(key);
                }
            }
        });
        if all {
            self.everything -= 1;
        }
    }

    fn blocks(&self, key: &str) -> bool {
        self.everything > 0 || self.keys.contains_key(key)
    }
}

/// Calls `key` with each key `request` reads or writes; true if it concerns every key.
fn concerns(request: &Request, mut key: impl FnMut(&str)) -> bool {
    match request {
        Request::Append(row) => key(row.workflow_id()),
        Request::Clear(id, _) | Request::LoadRun(id, _) | Request::Read(Source::Run(id), _) => {
            key(id)
        }
        Request::Insert(entry, _) => key(&entry.workflow_id),
        Request::Write(ops, _) => {
            for op in ops {
                match op {
                    Op::Put(entry) => key(&entry.workflow_id),
                    Op::Clear(id) | Op::Archive(id) => key(id),
                }
            }
        }
        Request::Wake => {}
        Request::Read(Source::Namespace(_), _)
        | Request::ListRuns(_)
        | Request::Flush(_)
        | Request::Close(_) => return true,
    }
    false
}

/// What the lock of a [`Front`] guards.
pub(super) struct FrontState {
    /// What the log holds that redb does not (see `overlay`); the writer takes it for the
    /// time it applies a batch.
    pub(super) overlay: Overlay,
    /// The staged operations of rows appended here since the writer last took them...
    pub(super) ops: Vec<u8>,
    pub(super) op_count: usize,
    /// ...and those rows, in order, each with the error that refused it (a taken key).
    pub(super) rows: Vec<(AppendRow, Option<StoreError>)>,
    /// Bytes of operations the log has room for beyond what the writer writes now; zero
    /// turns appending here off (no log, read-only, failed, closing).
    pub(super) room: u64,
    /// The database, for the keys the overlay cannot answer (a run's first row since the
    /// checkpoint); `None` once closed.
    pub(super) db: Option<Arc<Database>>,
    /// True while the writer waits for requests: the next row appended here wakes it.
    pub(super) idle: bool,
    /// How many requests had been sent when the last row was staged: the writer logs the
    /// staged rows only with (or after) all of them, so that whatever a caller sent before a
    /// row, whichever key it concerns, is never less durable than the row.
    pub(super) sent_before: u64,
}

/// What [`Front::try_append`] did with a row.
pub(super) enum Staged {
    /// Applied and staged; the writer was idle and needs a wake-up.
    Wake,
    /// Applied and staged; the writer will find it.
    Done,
    /// Not applied: it goes through the channel.
    Refused(AppendRow),
}

impl Front {
    pub(super) fn new(overlay: Overlay) -> Self {
        Front {
            state: Mutex::new(FrontState {
                overlay,
                ops: Vec::new(),
                op_count: 0,
                rows: Vec::new(),
                room: 0,
                db: None,
                idle: false,
                sent_before: 0,
            }),
            queued: Mutex::new(Queued::default()),
            sent: AtomicU64::new(0),
        }
    }

    /// Applies and stages `row` if it can be done now without waiting (see the module docs).
    pub(super) fn try_append(&self, mut row: AppendRow, path: &Path) -> Staged {
        let Some(mut state) = self.state.try_lock() else { return Staged::Refused(row) };
        let bound = wal::append_bound(row.workflow_id().len(), row.envelope_len());
        // Read under the lock, which the writer holds while it uncounts and applies requests.
        if state.room < bound || self.queued.lock().blocks(row.workflow_id()) {
            return Staged::Refused(row);
        }
        let FrontState { overlay, ops, op_count, rows, room, idle, sent_before, db } = &mut *state;
        // Borrowed, not cloned: no reference count changes per row.
        let Some(db) = db.as_deref() else { return Staged::Refused(row) };
        let (id, sequence, envelope) = row.parts();
        let applied = contain(|| {
            let mut base = Base { db, path, table: None };
            append_logged(overlay, &mut base, id, sequence, envelope, |e| {
                wal::encode_append(ops, id, sequence, e);
                *op_count += 1;
            })
        });
        let refused = match applied {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err),
            // A panic of redb while it looked the key up (a damaged file): nothing was
            // applied.
            Err(panic) => Some(StoreError::WriterFailed {
                path: path_text(path),
                reason: format!(
                    "redb panicked while checking a key (is the file damaged?): {panic}"
                ),
            }),
        };
        *room -= bound;
        rows.push((row, refused));
        *sent_before = self.sent.load(Ordering::Acquire);
        if std::mem::take(idle) {
            Staged::Wake
        } else {
            Staged::Done
        }
    }
}
