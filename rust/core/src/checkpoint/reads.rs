//! Reading a run, or a summary of every run, from the rows redb holds; and the store's own
//! keys of a namespace (see [`Namespace`]).

use std::path::Path;

use redb::ReadableTable;

use super::codec;
use super::error::StoreError;
use super::row::{Row, RunSummary};
use super::schema::{Namespace, HIDDEN};

/// A row and when it was written (microseconds since the UNIX epoch; 0: unknown).
pub type Timed = (Row, u64);

/// The first key of runs' logs: every id that sorts before it starts with NUL (is hidden).
pub(super) const FIRST_RUN: (&str, u64) = ("\u{1}", 0);

pub(super) fn load_run(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    workflow_id: &str,
    path: &Path,
) -> Result<Vec<Row>, StoreError> {
    Ok(load_run_timed(table, workflow_id, path)?.into_iter().map(|(row, _)| row).collect())
}

pub(super) fn load_run_timed(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    workflow_id: &str,
    path: &Path,
) -> Result<Vec<Timed>, StoreError> {
    let range = table
        .range((workflow_id, 0u64)..=(workflow_id, u64::MAX))
        .map_err(|e| StoreError::from_redb(path, e))?;
    let mut rows = Vec::new();
    for entry in range {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (_, sequence) = key.value();
        rows.push(
            codec::decode_timed(workflow_id, sequence, value.value())
                .map_err(|e| e.damaged_in(path))?,
        );
    }
    Ok(rows)
}

/// The rows redb holds for `workflow_id`, packed under `key` (see [`codec::pack_row`]) onto
/// `out`, ascending by sequence; the last sequence packed.
pub(super) fn pack_run(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    workflow_id: &str,
    key: &str,
    path: &Path,
    out: &mut Vec<u8>,
) -> Result<Option<u64>, StoreError> {
    let range = table
        .range((workflow_id, 0u64)..=(workflow_id, u64::MAX))
        .map_err(|e| StoreError::from_redb(path, e))?;
    let mut last = None;
    for entry in range {
        let (stored, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let sequence = stored.value().1;
        codec::pack_row(out, key, workflow_id, sequence, value.value())
            .map_err(|e| e.damaged_in(path))?;
        last = Some(sequence);
    }
    Ok(last)
}

/// Every row of every key in `namespace`, ordered by key.
pub(super) fn scan(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    namespace: Namespace,
    path: &Path,
) -> Result<Vec<Timed>, StoreError> {
    let range = table
        .range((namespace.prefix(), 0u64)..(namespace.end(), 0u64))
        .map_err(|e| StoreError::from_redb(path, e))?;
    let mut rows = Vec::new();
    for entry in range {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (id, sequence) = key.value();
        rows.push(
            codec::decode_timed(id, sequence, value.value()).map_err(|e| e.damaged_in(path))?,
        );
    }
    Ok(rows)
}

pub(super) fn list_runs(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    path: &Path,
) -> Result<Vec<RunSummary>, StoreError> {
    // Keys are ordered by (workflow id, sequence): a run's rows are contiguous and its last
    // row is the one just before the next id starts.
    let mut runs: Vec<RunSummary> = Vec::new();
    let mut last_value: Vec<u8> = Vec::new();
    let finish = |runs: &mut Vec<RunSummary>, last_value: &[u8]| -> Result<(), StoreError> {
        if let Some(run) = runs.last_mut() {
            run.last_state = codec::decode_state(&run.workflow_id, run.last_sequence, last_value)
                .map_err(|e| e.damaged_in(path))?;
        }
        Ok(())
    };
    for entry in table.range(FIRST_RUN..).map_err(|e| StoreError::from_redb(path, e))? {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (id, sequence) = key.value();
        debug_assert!(!id.starts_with(HIDDEN));
        // Every row is verified, not only the last of each run.
        codec::decode(id, sequence, value.value()).map_err(|e| e.damaged_in(path))?;
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
