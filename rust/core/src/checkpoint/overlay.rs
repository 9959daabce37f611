//! What a store with a write-ahead log has acknowledged since its last checkpoint, in memory.
//!
//! With [`Durability::Immediate`](super::Durability::Immediate), a batch is durable once its
//! log record is synced; the database only needs the rows at the next checkpoint. Until then
//! they live here, and every read merges them over the database: a run's rows are its rows in
//! redb (unless the run was cleared since the checkpoint) followed by its rows here. A typical
//! run is appended and cleared between two checkpoints, and never costs a B-tree insert.
//!
//! Only the writer thread touches an overlay. [`Overlay`] itself knows nothing of redb; the
//! functions at the end check keys and read runs through it, with `Base` giving read
//! access to redb's committed rows.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase};

use super::codec;
use super::error::StoreError;
use super::reads::{load_run_timed, scan, Timed, FIRST_RUN};
use super::row::{Entry, Row, RunSummary};
use super::schema::{is_hidden, Namespace, TABLE};

/// What redb holds for a run, as far as the overlay knows (redb only changes at checkpoints,
/// which empty the overlay, so what was learnt stays true until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InRedb {
    /// Not looked at yet.
    Unknown,
    /// No row (or the run was cleared: its redb rows do not count any more).
    Nothing,
    /// Some rows.
    Rows,
}

/// One run's changes since the checkpoint.
#[derive(Debug)]
pub struct RunChanges {
    /// The run was cleared: its rows in redb are deleted at the checkpoint.
    pub cleared: bool,
    pub in_redb: InRedb,
    /// Rows appended since the checkpoint (or since the clear), by sequence: envelopes.
    pub rows: BTreeMap<u64, Vec<u8>>,
}

/// The changes of every run since the checkpoint, ordered by workflow id.
#[derive(Debug, Default)]
pub struct Overlay {
    runs: BTreeMap<String, RunChanges>,
    rows: usize,
}

/// What [`Overlay::lookup`] knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The row exists (here).
    Taken,
    /// No such row, here or in redb.
    Free,
    /// Not here; redb decides. `run_known` tells whether redb is known to hold rows of the run.
    AskRedb { run_known: bool },
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// How many rows the overlay holds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn lookup(&self, workflow_id: &str, sequence: u64) -> Lookup {
        match self.runs.get(workflow_id) {
            Some(run) if run.rows.contains_key(&sequence) => Lookup::Taken,
            Some(run) if run.in_redb == InRedb::Nothing => Lookup::Free,
            Some(run) => Lookup::AskRedb { run_known: run.in_redb == InRedb::Rows },
            None => Lookup::AskRedb { run_known: false },
        }
    }

    /// Records what redb holds for a run (learnt while checking a key).
    pub fn learn(&mut self, workflow_id: &str, in_redb: InRedb) {
        self.run_mut(workflow_id).in_redb = in_redb;
    }

    /// Adds a row whose key [`lookup`](Self::lookup) (and redb) found free.
    pub fn insert(&mut self, workflow_id: &str, sequence: u64, envelope: Vec<u8>) {
        if self.run_mut(workflow_id).rows.insert(sequence, envelope).is_none() {
            self.rows += 1;
        }
    }

    /// Removes every row of a run, here and (at the checkpoint) in redb.
    pub fn clear(&mut self, workflow_id: &str) {
        match self.runs.get_mut(workflow_id) {
            // Nothing in redb to delete: forget the run altogether.
            Some(run) if run.in_redb == InRedb::Nothing && !run.cleared => {
                self.rows -= run.rows.len();
                self.runs.remove(workflow_id);
            }
            Some(run) => {
                self.rows -= run.rows.len();
                run.rows.clear();
                run.cleared = true;
                run.in_redb = InRedb::Nothing;
            }
            None => {
                self.runs.insert(
                    workflow_id.to_owned(),
                    RunChanges { cleared: true, in_redb: InRedb::Nothing, rows: BTreeMap::new() },
                );
            }
        }
    }

    /// A run's changes, if it has any.
    pub fn run(&self, workflow_id: &str) -> Option<&RunChanges> {
        self.runs.get(workflow_id)
    }

    /// Every run with changes, ordered by id.
    pub fn runs(&self) -> impl Iterator<Item = (&String, &RunChanges)> {
        self.runs.iter()
    }

    /// Empties the overlay (for a checkpoint), handing over its changes.
    pub fn take(&mut self) -> BTreeMap<String, RunChanges> {
        self.rows = 0;
        std::mem::take(&mut self.runs)
    }

    fn run_mut(&mut self, workflow_id: &str) -> &mut RunChanges {
        if !self.runs.contains_key(workflow_id) {
            self.runs.insert(
                workflow_id.to_owned(),
                RunChanges { cleared: false, in_redb: InRedb::Unknown, rows: BTreeMap::new() },
            );
        }
        self.runs.get_mut(workflow_id).expect("inserted above")
    }
}

/// A database that can be read: the writable one, or one opened read-only.
pub(super) trait ReadSource {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError>;
}

impl ReadSource for Database {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        ReadableDatabase::begin_read(self)
    }
}

impl ReadSource for redb::ReadOnlyDatabase {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        ReadableDatabase::begin_read(self)
    }
}

/// Lazily opened read access to redb's committed rows, for one batch of the logged mode.
pub(super) struct Base<'a> {
    pub(super) db: &'a dyn ReadSource,
    pub(super) path: &'a Path,
    pub(super) table: Option<redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>>,
}

impl Base<'_> {
    fn table(
        &mut self,
    ) -> Result<&redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>, StoreError> {
        if self.table.is_none() {
            let path = self.path;
            let tx = self.db.begin_read().map_err(|e| StoreError::from_redb(path, e))?;
            self.table = Some(tx.open_table(TABLE).map_err(|e| StoreError::from_redb(path, e))?);
        }
        Ok(self.table.as_ref().expect("opened above"))
    }

    fn has_run(&mut self, workflow_id: &str) -> Result<bool, StoreError> {
        let path = self.path;
        let mut range = self
            .table()?
            .range((workflow_id, 0u64)..=(workflow_id, u64::MAX))
            .map_err(|e| StoreError::from_redb(path, e))?;
        Ok(range.next().transpose().map_err(|e| StoreError::from_redb(path, e))?.is_some())
    }

    fn has_row(&mut self, workflow_id: &str, sequence: u64) -> Result<bool, StoreError> {
        let path = self.path;
        Ok(self
            .table()?
            .get((workflow_id, sequence))
            .map_err(|e| StoreError::from_redb(path, e))?
            .is_some())
    }
}

/// Checks that `entry`'s key is free, in the overlay and then in redb.
pub(super) fn append_logged(
    overlay: &mut Overlay,
    base: &mut Base<'_>,
    entry: &Entry,
) -> Result<(), StoreError> {
    let id = entry.workflow_id.as_str();
    let taken = match overlay.lookup(id, entry.sequence) {
        Lookup::Taken => true,
        Lookup::Free => false,
        Lookup::AskRedb { run_known: true } => base.has_row(id, entry.sequence)?,
        Lookup::AskRedb { run_known: false } => {
            // First look at this run since the checkpoint: one range probe tells whether any
            // later key of it needs a lookup at all (a new run's never do).
            if base.has_run(id)? {
                overlay.learn(id, InRedb::Rows);
                base.has_row(id, entry.sequence)?
            } else {
                overlay.learn(id, InRedb::Nothing);
                false
            }
        }
    };
    if taken {
        return Err(StoreError::Conflict {
            workflow_id: entry.workflow_id.clone(),
            sequence: entry.sequence,
        });
    }
    Ok(())
}

/// A run's rows: redb's (unless cleared since the checkpoint), then the overlay's.
pub(super) fn load_run_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
    workflow_id: &str,
) -> Result<Vec<Row>, StoreError> {
    Ok(load_run_timed_logged(overlay, base, workflow_id)?.into_iter().map(|(row, _)| row).collect())
}

/// [`load_run_logged`], with each row's time.
pub(super) fn load_run_timed_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
    workflow_id: &str,
) -> Result<Vec<Timed>, StoreError> {
    let changes = overlay.run(workflow_id);
    let mut rows = match changes {
        Some(run) if run.in_redb == InRedb::Nothing => Vec::new(),
        _ => {
            let path = base.path;
            load_run_timed(base.table()?, workflow_id, path)?
        }
    };
    if let Some(run) = changes {
        for (sequence, envelope) in &run.rows {
            rows.push(codec::decode_timed(workflow_id, *sequence, envelope)?);
        }
        // Overlay keys never collide with redb's (appends check both, and the store's own
        // keys are cleared before they are written again), but may sort before.
        rows.sort_by_key(|(r, _)| r.sequence);
    }
    Ok(rows)
}

/// How many bytes a run's rows take, redb's and the overlay's (to size a log record that
/// moves them).
pub(super) fn run_bytes_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
    workflow_id: &str,
) -> Result<(u64, u64), StoreError> {
    let (mut rows, mut bytes) = (0u64, 0u64);
    let changes = overlay.run(workflow_id);
    if !changes.is_some_and(|run| run.in_redb == InRedb::Nothing) {
        let path = base.path;
        let range = base
            .table()?
            .range((workflow_id, 0u64)..=(workflow_id, u64::MAX))
            .map_err(|e| StoreError::from_redb(path, e))?;
        for entry in range {
            let (_, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
            rows += 1;
            bytes += value.value().len() as u64;
        }
    }
    if let Some(run) = changes {
        rows += run.rows.len() as u64;
        bytes += run.rows.values().map(|e| e.len() as u64).sum::<u64>();
    }
    Ok((rows, bytes))
}

/// Every row of every key of `namespace`, redb's and the overlay's merged, ordered by key.
pub(super) fn scan_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
    namespace: Namespace,
) -> Result<Vec<Timed>, StoreError> {
    let path = base.path;
    let mut rows: BTreeMap<(String, u64), Timed> = BTreeMap::new();
    for (row, at) in scan(base.table()?, namespace, path)? {
        if overlay.run(&row.workflow_id).is_some_and(|run| run.in_redb == InRedb::Nothing) {
            continue; // cleared since the checkpoint
        }
        rows.insert((row.workflow_id.clone(), row.sequence), (row, at));
    }
    for (id, changes) in overlay.runs() {
        if !id.starts_with(namespace.prefix()) {
            continue;
        }
        for (sequence, envelope) in &changes.rows {
            rows.insert((id.clone(), *sequence), codec::decode_timed(id, *sequence, envelope)?);
        }
    }
    Ok(rows.into_values().collect())
}

/// Every run's summary, redb's and the overlay's merged.
pub(super) fn list_runs_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
) -> Result<Vec<RunSummary>, StoreError> {
    let path = base.path;
    // Per run: row count, and the last row (sequence, envelope).
    let mut runs: BTreeMap<String, (u64, u64, Vec<u8>)> = BTreeMap::new();
    for entry in base.table()?.range(FIRST_RUN..).map_err(|e| StoreError::from_redb(path, e))? {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (id, sequence) = key.value();
        if overlay.run(id).is_some_and(|run| run.cleared) {
            continue;
        }
        // Every row is verified, not only the last of each run.
        codec::decode(id, sequence, value.value()).map_err(|e| e.damaged_in(path))?;
        match runs.get_mut(id) {
            Some(run) => {
                run.0 += 1;
                run.1 = sequence;
                run.2.clear();
                run.2.extend_from_slice(value.value());
            }
            None => {
                runs.insert(id.to_owned(), (1, sequence, value.value().to_vec()));
            }
        }
    }
    for (id, changes) in overlay.runs() {
        if is_hidden(id) {
            continue;
        }
        let Some((&sequence, envelope)) = changes.rows.last_key_value() else { continue };
        let run = runs.entry(id.clone()).or_insert_with(|| (0, 0, Vec::new()));
        if run.0 == 0 || sequence > run.1 {
            run.1 = sequence;
            run.2 = envelope.clone();
        }
        run.0 += changes.rows.len() as u64;
    }
    runs.into_iter()
        .map(|(workflow_id, (rows, last_sequence, last))| {
            let last_state = codec::decode_state(&workflow_id, last_sequence, &last)?;
            Ok(RunSummary { workflow_id, rows, last_state, last_sequence })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_follow_appends_learning_and_clears() {
        let mut o = Overlay::default();
        assert_eq!(o.lookup("w", 0), Lookup::AskRedb { run_known: false });
        o.learn("w", InRedb::Nothing);
        assert_eq!(o.lookup("w", 0), Lookup::Free);
        o.insert("w", 0, vec![1]);
        assert_eq!(o.lookup("w", 0), Lookup::Taken);
        assert_eq!(o.rows(), 1);
        // Nothing in redb: a clear forgets the run.
        o.clear("w");
        assert!(o.is_empty());
        assert_eq!(o.rows(), 0);

        o.learn("r", InRedb::Rows);
        assert_eq!(o.lookup("r", 5), Lookup::AskRedb { run_known: true });
        o.insert("r", 5, vec![2]);
        o.clear("r");
        // Cleared: redb's rows no longer count, the clear is kept for the checkpoint.
        assert_eq!(o.lookup("r", 5), Lookup::Free);
        let run = o.run("r").unwrap();
        assert!(run.cleared && run.rows.is_empty());
        o.insert("r", 0, vec![3]);
        let taken = o.take();
        assert_eq!(taken["r"].rows.len(), 1);
        assert!(taken["r"].cleared);
        assert!(o.is_empty() && o.rows() == 0);
    }

    #[test]
    fn clearing_an_unknown_run_is_kept_for_the_checkpoint() {
        let mut o = Overlay::default();
        o.clear("x");
        assert!(o.run("x").unwrap().cleared);
        assert_eq!(o.lookup("x", 0), Lookup::Free);
    }
}
