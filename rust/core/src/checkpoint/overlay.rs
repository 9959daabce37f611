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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::{Database, ReadableDatabase};

use super::codec;
use super::error::StoreError;
use super::reads::{load_run_timed, pack_run, scan, Timed, FIRST_RUN};
use super::row::{Row, RunSummary};
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
    pub rows: Rows,
}

/// A run's rows in the overlay, ordered by sequence. A run appends its rows in order, so
/// adding one is a push at the end (a search only for a row that sorts before the last).
#[derive(Debug, Default)]
pub struct Rows(Vec<(u64, Vec<u8>)>);

impl Rows {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn iter(&self) -> std::slice::Iter<'_, (u64, Vec<u8>)> {
        self.0.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.0.iter().map(|(sequence, _)| sequence)
    }

    pub fn values(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.0.iter().map(|(_, envelope)| envelope)
    }

    pub fn last_key_value(&self) -> Option<(&u64, &Vec<u8>)> {
        self.0.last().map(|(sequence, envelope)| (sequence, envelope))
    }

    /// Where a row `sequence` goes, or `None` if the run has one.
    fn slot(&self, sequence: u64) -> Option<usize> {
        match self.0.last() {
            None => Some(0),
            Some((last, _)) if *last < sequence => Some(self.0.len()),
            _ => self.0.binary_search_by_key(&sequence, |(s, _)| *s).err(),
        }
    }

    /// Adds a row at the `slot` found for it.
    fn insert_at(&mut self, slot: usize, sequence: u64, envelope: Vec<u8>) {
        if slot == self.0.len() {
            self.0.push((sequence, envelope));
        } else {
            self.0.insert(slot, (sequence, envelope));
        }
    }

    /// Adds or replaces row `sequence`; whether it is new.
    fn insert(&mut self, sequence: u64, envelope: Vec<u8>) -> bool {
        match self.slot(sequence) {
            Some(slot) => {
                self.insert_at(slot, sequence, envelope);
                true
            }
            None => {
                let at = self.0.binary_search_by_key(&sequence, |(s, _)| *s).unwrap_or_default();
                self.0[at].1 = envelope;
                false
            }
        }
    }

    fn one(sequence: u64, envelope: Vec<u8>) -> Self {
        Rows(vec![(sequence, envelope)])
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = &'a (u64, Vec<u8>);
    type IntoIter = std::slice::Iter<'a, (u64, Vec<u8>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The changes of every run since the checkpoint, by workflow id (hashed: an append finds its
/// run without comparing ids along a tree; what needs an order sorts).
#[derive(Debug, Default)]
pub struct Overlay {
    runs: HashMap<String, RunChanges>,
    rows: usize,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// How many rows the overlay holds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Records what redb holds for a run (learnt while checking a key).
    pub fn learn(&mut self, workflow_id: &str, in_redb: InRedb) {
        self.run_mut(workflow_id).in_redb = in_redb;
    }

    /// Adds a row whose key [`lookup`](Self::lookup) (and redb) found free.
    pub fn insert(&mut self, workflow_id: &str, sequence: u64, envelope: Vec<u8>) {
        if self.run_mut(workflow_id).rows.insert(sequence, envelope) {
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
                    RunChanges { cleared: true, in_redb: InRedb::Nothing, rows: Rows::default() },
                );
            }
        }
    }

    /// A run's changes, if it has any.
    pub fn run(&self, workflow_id: &str) -> Option<&RunChanges> {
        self.runs.get(workflow_id)
    }

    /// Every run with changes, in no particular order.
    pub fn runs(&self) -> impl Iterator<Item = (&String, &RunChanges)> {
        self.runs.iter()
    }

    /// Empties the overlay (for a checkpoint), handing over its changes ordered by id.
    pub fn take(&mut self) -> Vec<(String, RunChanges)> {
        self.rows = 0;
        let mut runs: Vec<(String, RunChanges)> =
            std::mem::take(&mut self.runs).into_iter().collect();
        runs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        runs
    }

    fn run_mut(&mut self, workflow_id: &str) -> &mut RunChanges {
        if !self.runs.contains_key(workflow_id) {
            self.runs.insert(
                workflow_id.to_owned(),
                RunChanges { cleared: false, in_redb: InRedb::Unknown, rows: Rows::default() },
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

/// Appends row `(id, sequence)` if its key is free, in the overlay and then in redb: `log`
/// gets the envelope first (for the batch's log record), then the envelope moves into the
/// overlay. One lookup of the run and one of the sequence, for a run the overlay already
/// holds.
pub(super) fn append_logged(
    overlay: &mut Overlay,
    base: &mut Base<'_>,
    id: &str,
    sequence: u64,
    envelope: &mut Vec<u8>,
    log: impl FnOnce(&[u8]),
) -> Result<(), StoreError> {
    let conflict = || StoreError::Conflict { workflow_id: id.to_owned(), sequence };
    let Overlay { runs, rows: count } = overlay;
    let Some(run) = runs.get_mut(id) else {
        // First look at this run since the checkpoint: one range probe tells whether any
        // later key of it needs a lookup at all (a new run's never do).
        let in_redb = if base.has_run(id)? { InRedb::Rows } else { InRedb::Nothing };
        if in_redb == InRedb::Rows && base.has_row(id, sequence)? {
            overlay.learn(id, in_redb);
            return Err(conflict());
        }
        log(envelope);
        let rows = Rows::one(sequence, std::mem::take(envelope));
        runs.insert(id.to_owned(), RunChanges { cleared: false, in_redb, rows });
        *count += 1;
        return Ok(());
    };
    let RunChanges { rows, in_redb, .. } = run;
    let Some(slot) = rows.slot(sequence) else {
        return Err(conflict());
    };
    let taken = match *in_redb {
        InRedb::Nothing => false,
        InRedb::Rows => base.has_row(id, sequence)?,
        InRedb::Unknown => {
            if base.has_run(id)? {
                *in_redb = InRedb::Rows;
                base.has_row(id, sequence)?
            } else {
                *in_redb = InRedb::Nothing;
                false
            }
        }
    };
    if taken {
        return Err(conflict());
    }
    log(envelope);
    rows.insert_at(slot, sequence, std::mem::take(envelope));
    *count += 1;
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

/// A run's rows, redb's (unless cleared since the checkpoint) then the overlay's, packed
/// under `key` (see [`codec::pack_row`]): each envelope checked and keyed again, none
/// decoded.
pub(super) fn pack_run_logged(
    overlay: &Overlay,
    base: &mut Base<'_>,
    workflow_id: &str,
    key: &str,
) -> Result<Vec<u8>, StoreError> {
    let changes = overlay.run(workflow_id);
    let mut out = Vec::new();
    let mut last_stored = None;
    let path = base.path;
    if !changes.is_some_and(|run| run.in_redb == InRedb::Nothing) {
        last_stored = pack_run(base.table()?, workflow_id, key, path, &mut out)?;
    }
    if let Some(run) = changes {
        if let (Some(last), Some(first)) = (last_stored, run.rows.keys().next()) {
            if *first < last {
                // Overlay keys never collide with redb's, but may sort before them (the
                // store's own keys are cleared and written again): merge, rarely.
                let rows: Vec<(u64, &[u8])> =
                    run.rows.iter().map(|(s, e)| (*s, e.as_slice())).collect();
                return merge_packed(base.table()?, workflow_id, key, path, &rows);
            }
        }
        for (sequence, envelope) in &run.rows {
            codec::pack_own_row(&mut out, key, workflow_id, *sequence, envelope)?;
        }
    }
    Ok(out)
}

/// [`pack_run_logged`] when overlay rows sort among redb's: every row, merged by sequence.
fn merge_packed(
    table: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    workflow_id: &str,
    key: &str,
    path: &Path,
    overlay_rows: &[(u64, &[u8])],
) -> Result<Vec<u8>, StoreError> {
    let mut stored: Vec<(u64, Vec<u8>)> = Vec::new();
    for entry in table
        .range((workflow_id, 0u64)..=(workflow_id, u64::MAX))
        .map_err(|e| StoreError::from_redb(path, e))?
    {
        let (k, v) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        stored.push((k.value().1, v.value().to_vec()));
    }
    let mut all: Vec<(u64, &[u8])> = stored.iter().map(|(s, v)| (*s, v.as_slice())).collect();
    all.extend_from_slice(overlay_rows);
    all.sort_by_key(|(s, _)| *s);
    let mut out = Vec::new();
    for (sequence, value) in all {
        codec::pack_row(&mut out, key, workflow_id, sequence, value)
            .map_err(|e| e.damaged_in(path))?;
    }
    Ok(out)
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
    use crate::checkpoint::error::StoreError;
    use std::cell::Cell;

    /// Runs `test` against a database whose rows table holds `rows` (deleted afterwards).
    fn with_database(name: &str, rows: &[(&str, u64)], test: impl FnOnce(&mut Base<'_>)) {
        let path =
            std::env::temp_dir().join(format!("cano-overlay-{}-{name}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(TABLE).unwrap();
                for key in rows {
                    table.insert(*key, &[0u8][..]).unwrap();
                }
            }
            tx.commit().unwrap();
            test(&mut Base { db: &db, path: &path, table: None });
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Appends through `append_logged`; whether the row was handed to the log.
    fn append(
        o: &mut Overlay,
        base: &mut Base<'_>,
        id: &str,
        sequence: u64,
    ) -> (Result<(), StoreError>, bool) {
        let logged = Cell::new(false);
        let mut envelope = vec![sequence as u8];
        let result = append_logged(o, base, id, sequence, &mut envelope, |_| logged.set(true));
        (result, logged.get())
    }

    #[test]
    fn appends_check_the_overlay_then_redb_and_clears_free_keys() {
        with_database("appends", &[("r", 5)], |base| {
            let mut o = Overlay::default();

            assert!(matches!(append(&mut o, base, "w", 0), (Ok(()), true)));
            assert!(matches!(
                append(&mut o, base, "w", 0),
                (Err(StoreError::Conflict { sequence: 0, .. }), false)
            ));
            assert_eq!(o.run("w").unwrap().in_redb, InRedb::Nothing);
            assert_eq!(o.rows(), 1);
            // Nothing in redb: a clear forgets the run.
            o.clear("w");
            assert!(o.is_empty() && o.rows() == 0);

            // A key redb holds is taken; the run is then known to have rows there.
            assert!(matches!(
                append(&mut o, base, "r", 5),
                (Err(StoreError::Conflict { sequence: 5, .. }), false)
            ));
            assert_eq!(o.run("r").unwrap().in_redb, InRedb::Rows);
            assert!(matches!(append(&mut o, base, "r", 6), (Ok(()), true)));
            o.clear("r");
            // Cleared: redb's rows no longer count, the clear is kept for the checkpoint.
            let run = o.run("r").unwrap();
            assert!(run.cleared && run.rows.is_empty());
            assert!(matches!(append(&mut o, base, "r", 5), (Ok(()), true)));
            let taken = o.take();
            let (id, r) = &taken[0];
            assert_eq!((id.as_str(), r.rows.keys().copied().collect::<Vec<_>>()), ("r", vec![5]));
            assert!(r.cleared && taken.len() == 1);
            assert!(o.is_empty() && o.rows() == 0);
        });
    }

    #[test]
    fn a_runs_rows_stay_ordered_by_sequence_whatever_order_they_come_in() {
        with_database("order", &[], |base| {
            let mut o = Overlay::default();
            for sequence in [5, 6, 2, 9, 0, 7] {
                assert!(matches!(append(&mut o, base, "w", sequence), (Ok(()), true)));
            }
            for taken in [0, 2, 5, 9] {
                assert!(matches!(
                    append(&mut o, base, "w", taken),
                    (Err(StoreError::Conflict { .. }), false)
                ));
            }
            o.insert("w", 6, vec![66]); // replayed again: replaces, adds nothing
            let rows = &o.run("w").unwrap().rows;
            assert_eq!(rows.keys().copied().collect::<Vec<_>>(), [0, 2, 5, 6, 7, 9]);
            assert_eq!(rows.iter().find(|(s, _)| *s == 6).unwrap().1, [66]);
            assert_eq!(o.rows(), 6);
        });
    }

    #[test]
    fn a_run_learnt_unknown_asks_redb_once_then_knows() {
        with_database("learn", &[("k", 0)], |base| {
            let mut o = Overlay::default();
            o.insert("k", 3, vec![3]); // replayed from the log: what redb holds is not known
            assert_eq!(o.run("k").unwrap().in_redb, InRedb::Unknown);
            assert!(matches!(
                append(&mut o, base, "k", 0),
                (Err(StoreError::Conflict { sequence: 0, .. }), false)
            ));
            assert_eq!(o.run("k").unwrap().in_redb, InRedb::Rows);
            assert!(matches!(
                append(&mut o, base, "k", 3),
                (Err(StoreError::Conflict { sequence: 3, .. }), false)
            ));
            assert!(matches!(append(&mut o, base, "k", 4), (Ok(()), true)));
            assert_eq!(o.rows(), 2);
        });
    }

    #[test]
    fn clearing_an_unknown_run_is_kept_for_the_checkpoint() {
        with_database("unknown", &[("x", 0)], |base| {
            let mut o = Overlay::default();
            o.clear("x");
            assert!(o.run("x").unwrap().cleared);
            // Its redb rows no longer count.
            assert!(matches!(append(&mut o, base, "x", 0), (Ok(()), true)));
        });
    }
}
