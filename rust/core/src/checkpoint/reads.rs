//! Reading a run, or a summary of every run, from the rows redb holds.

use std::path::Path;

use redb::ReadableTable;

use super::codec;
use super::error::StoreError;
use super::row::{Row, RunSummary};

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
        rows.push(
            codec::decode(workflow_id, sequence, value.value()).map_err(|e| e.damaged_in(path))?,
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
    for entry in table.iter().map_err(|e| StoreError::from_redb(path, e))? {
        let (key, value) = entry.map_err(|e| StoreError::from_redb(path, e))?;
        let (id, sequence) = key.value();
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
