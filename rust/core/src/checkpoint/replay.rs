//! Replaying the write-ahead log when a store opens after a crash: the write-ahead log's records that redb does not hold yet
//! are replayed into it, in one durable commit that also retires them (see [`wal`]).
//!
//! [`wal`]: super::wal

use std::path::Path;

use redb::{Database, ReadableTable};

use super::error::{path_text, StoreError};
use super::schema::{META, META_GENERATION, META_STORE_ID, TABLE};
use super::wal::{self, WalOp};

/// Opens the store's tables in one durable transaction: replays the records a crash left in
/// the write-ahead log at `wal_path` (see [`wal`]), and moves the log to a new generation, so
/// that everything in the file is stale afterwards. Returns the store id, the generation
/// the next records are written with, and how many records were replayed.
pub(super) fn recover(
    db: &Database,
    path: &Path,
    wal_path: &Path,
) -> Result<(u64, u64, usize), StoreError> {
    let redb_err = |e: redb::Error| StoreError::from_redb(path, e);
    let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
    let found = {
        // Materialise the tables now, so a file with an incompatible table fails here.
        let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
        let mut meta = tx.open_table(META).map_err(|e| redb_err(e.into()))?;
        let stored_id = meta.get(META_STORE_ID).map_err(|e| redb_err(e.into()))?.map(|v| v.value());
        let store_id = match stored_id {
            Some(id) => id,
            None => {
                let id = fastrand::u64(..);
                meta.insert(META_STORE_ID, id).map_err(|e| redb_err(e.into()))?;
                id
            }
        };
        let generation =
            meta.get(META_GENERATION).map_err(|e| redb_err(e.into()))?.map_or(0, |v| v.value());
        // A fresh store id matches no record: a log left by another database is ignored.
        let bytes = if stored_id.is_some() { wal::read_file(wal_path)? } else { Vec::new() };
        let (records, _) = wal::read_records(&bytes, store_id, generation).map_err(|reason| {
            StoreError::NotAStore {
                path: path_text(wal_path),
                reason: format!("write-ahead log: {reason}"),
            }
        })?;
        for op in records.iter().flatten() {
            replay(&mut table, op).map_err(redb_err)?;
        }
        meta.insert(META_GENERATION, generation + 1).map_err(|e| redb_err(e.into()))?;
        (store_id, generation + 1, records.len())
    };
    // Durable (redb's default): the replayed rows and the new generation land together.
    tx.commit().map_err(|e| redb_err(e.into()))?;
    Ok(found)
}

/// Applies one logged mutation again. Idempotent over a database that already holds it.
fn replay(
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    op: &WalOp,
) -> Result<(), redb::Error> {
    match op {
        WalOp::Append { workflow_id, sequence, envelope } => {
            table.insert((workflow_id.as_str(), *sequence), envelope.as_slice())?;
        }
        WalOp::Clear { workflow_id } => {
            let id = workflow_id.as_str();
            table.retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        }
    }
    Ok(())
}
