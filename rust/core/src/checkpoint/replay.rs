//! Opening a store: reading what the database says about its write-ahead log, checking the
//! log is whole, and replaying the records a crash left in it (see [`wal`]).
//!
//! A store that closed cleanly has no log, and opening it writes nothing (so that a full disk
//! can still be read). After a crash, the intact records of the current generation are
//! replayed in one durable commit that also moves the log to the next generation. A log that
//! was deleted, truncated, or has a hole is never replayed around nor retired: the store
//! refuses to open with [`StoreError::LogDamaged`], leaving every file as it was, until
//! [`repair`] replays what is intact and moves the damaged log aside.
//!
//! [`wal`]: super::wal

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableError};

use super::error::{path_text, StoreError};
use super::schema::{
    META, META_GENERATION, META_STORE_ID, META_WAL_ALLOCATED, META_WAL_FORMAT, TABLE,
};
use super::wal::{self, LogScan, WalOp};

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Opened {
    pub store_id: u64,
    /// The generation the next log records are written with.
    pub generation: u64,
    /// How many log records were replayed into the database.
    pub replayed: usize,
    /// How many bytes of the log the database has recorded as allocated.
    pub allocated: u64,
}

/// What the database says about its log.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    store_id: Option<u64>,
    generation: u64,
    allocated: u64,
    format: u64,
}

fn read_meta(db: &impl ReadableDatabase, path: &Path) -> Result<Meta, StoreError> {
    let redb_err = |e: redb::Error| StoreError::from_redb(path, e);
    let tx = db.begin_read().map_err(|e| redb_err(e.into()))?;
    // A table of the wrong type fails here; a missing one is a new store.
    match tx.open_table(TABLE) {
        Ok(_) | Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(redb_err(e.into())),
    }
    let meta = match tx.open_table(META) {
        Ok(m) => m,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Meta::default()),
        Err(e) => return Err(redb_err(e.into())),
    };
    let get = |key: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta.get(key).map_err(|e| redb_err(e.into()))?.map(|v| v.value()))
    };
    Ok(Meta {
        store_id: get(META_STORE_ID)?,
        generation: get(META_GENERATION)?.unwrap_or(0),
        allocated: get(META_WAL_ALLOCATED)?.unwrap_or(0),
        format: get(META_WAL_FORMAT)?.unwrap_or(1),
    })
}

/// The log's records, after checking it is whole: not missing or shorter than the database
/// recorded, and without a hole.
fn checked_log(meta: &Meta, wal_path: &Path) -> Result<Option<LogScan>, StoreError> {
    let Some(store_id) = meta.store_id else { return Ok(None) };
    let damaged = |reason: String| StoreError::LogDamaged { path: path_text(wal_path), reason };
    let bytes = match wal::read_file(wal_path)? {
        Some(bytes) => bytes,
        None if meta.allocated > 0 => {
            return Err(damaged(format!(
                "the write-ahead log is missing (the database expects {} bytes of it): it was \
                 deleted or moved, and the rows it held since the last checkpoint with it",
                meta.allocated
            )))
        }
        None => return Ok(None),
    };
    if (bytes.len() as u64) < meta.allocated {
        return Err(damaged(format!(
            "the write-ahead log was truncated to {} bytes (the database expects {})",
            bytes.len(),
            meta.allocated
        )));
    }
    let scan = if meta.format >= 2 {
        wal::scan(&bytes, store_id, meta.generation)
    } else {
        wal::scan_format1(&bytes, store_id, meta.generation)
    };
    let scan = scan.map_err(|reason| damaged(format!("write-ahead log: {reason}")))?;
    if let Some(hole) = &scan.damage {
        let after: Vec<String> = hole.after.iter().map(|(n, _)| n.to_string()).collect();
        return Err(damaged(format!(
            "record {} of the write-ahead log is damaged in both of its copies, and records {} \
             follow it; {} records before it are intact",
            hole.missing,
            after.join(", "),
            scan.records.len()
        )));
    }
    Ok(Some(scan))
}

/// Opens the store's tables: creates them in a new file, replays the records a crash left
/// in the log (in one durable commit that also moves the log to a new generation) and, with
/// `keep_log == false`, records that the store has no log any more. Writes nothing when
/// there is nothing to create or replay.
pub(super) fn recover(
    db: &Database,
    path: &Path,
    wal_path: &Path,
    keep_log: bool,
) -> Result<Opened, StoreError> {
    let redb_err = |e: redb::Error| StoreError::from_redb(path, e);
    let meta = read_meta(db, path)?;
    let scan = checked_log(&meta, wal_path)?;
    let records = scan.map(|s| s.records).unwrap_or_default();
    let new_store = meta.store_id.is_none();
    let drop_log = !keep_log && (meta.allocated > 0 || wal_path.exists());
    if !new_store && records.is_empty() && !drop_log {
        return Ok(Opened {
            store_id: meta.store_id.unwrap_or_default(),
            generation: meta.generation,
            replayed: 0,
            allocated: meta.allocated,
        });
    }
    let store_id = meta.store_id.unwrap_or_else(|| fastrand::u64(..));
    let generation = if records.is_empty() { meta.generation } else { meta.generation + 1 };
    let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
    {
        let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
        for op in records.iter().flatten() {
            replay(&mut table, op).map_err(redb_err)?;
        }
        let mut m = tx.open_table(META).map_err(|e| redb_err(e.into()))?;
        let mut put = |key: &str, value: u64| -> Result<(), StoreError> {
            m.insert(key, value).map_err(|e| redb_err(e.into())).map(|_| ())
        };
        put(META_STORE_ID, store_id)?;
        put(META_GENERATION, generation)?;
        put(META_WAL_FORMAT, wal::FORMAT)?;
        put(META_WAL_ALLOCATED, if keep_log { meta.allocated } else { 0 })?;
    }
    // Durable (redb's default): the replayed rows and the new generation land together.
    tx.commit().map_err(|e| redb_err(e.into()))?;
    let allocated = if keep_log { meta.allocated } else { 0 };
    Ok(Opened { store_id, generation, replayed: records.len(), allocated })
}

/// The records a read-only open must serve on top of the database (it writes nothing), after
/// the same checks as [`recover`].
pub(super) fn pending_records(
    db: &impl ReadableDatabase,
    path: &Path,
    wal_path: &Path,
) -> Result<Vec<Vec<WalOp>>, StoreError> {
    let meta = read_meta(db, path)?;
    if meta.store_id.is_none() {
        return Err(StoreError::NotAStore {
            path: path_text(path),
            reason: "it has no cano checkpoint tables".into(),
        });
    }
    Ok(checked_log(&meta, wal_path)?.map(|s| s.records).unwrap_or_default())
}

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairReport {
    /// Log records replayed into the database.
    pub replayed: usize,
    /// Numbers of the records no intact copy of which was found, before intact ones.
    pub missing: Vec<u64>,
    /// Where the damaged log was moved (it is kept for inspection).
    pub moved_to: Option<PathBuf>,
    /// What was wrong, in words; empty when the log was whole.
    pub problems: Vec<String>,
}

/// Salvages a store whose log is damaged: replays every intact record (in order, including
/// those after a hole), moves the log aside (never deleting it) and records that the store
/// has no log. Says what was lost.
pub(super) fn repair(
    db: &Database,
    path: &Path,
    wal_path: &Path,
) -> Result<RepairReport, StoreError> {
    let redb_err = |e: redb::Error| StoreError::from_redb(path, e);
    let meta = read_meta(db, path)?;
    let mut report = RepairReport::default();
    let Some(store_id) = meta.store_id else {
        return Err(StoreError::NotAStore {
            path: path_text(path),
            reason: "it has no cano checkpoint tables".into(),
        });
    };
    let bytes = wal::read_file(wal_path)?;
    let mut ops: Vec<Vec<WalOp>> = Vec::new();
    match &bytes {
        None if meta.allocated > 0 => report.problems.push(format!(
            "the write-ahead log was missing: rows it held since the last checkpoint are lost \
             (it had been grown to {} bytes)",
            meta.allocated
        )),
        None => {}
        Some(bytes) => {
            if (bytes.len() as u64) < meta.allocated {
                report.problems.push(format!(
                    "the write-ahead log was truncated to {} of {} bytes: records past the cut are \
                     lost",
                    bytes.len(),
                    meta.allocated
                ));
            }
            let scan = if meta.format >= 2 {
                wal::scan(bytes, store_id, meta.generation)
            } else {
                wal::scan_format1(bytes, store_id, meta.generation)
            };
            match scan {
                Ok(scan) => {
                    ops.extend(scan.records);
                    if let Some(hole) = scan.damage {
                        let mut expected = hole.missing;
                        for (number, record) in hole.after {
                            report.missing.extend(expected..number);
                            expected = number + 1;
                            ops.push(record);
                        }
                        report.problems.push(format!(
                            "records {:?} of the write-ahead log were damaged beyond recovery; the \
                             intact records after them were replayed",
                            report.missing
                        ));
                    }
                }
                Err(reason) => report.problems.push(format!("write-ahead log: {reason}")),
            }
        }
    }
    let tx = db.begin_write().map_err(|e| redb_err(e.into()))?;
    {
        let mut table = tx.open_table(TABLE).map_err(|e| redb_err(e.into()))?;
        for op in ops.iter().flatten() {
            replay(&mut table, op).map_err(redb_err)?;
        }
        let mut m = tx.open_table(META).map_err(|e| redb_err(e.into()))?;
        let mut put = |key: &str, value: u64| -> Result<(), StoreError> {
            m.insert(key, value).map_err(|e| redb_err(e.into())).map(|_| ())
        };
        put(META_GENERATION, meta.generation + 1)?;
        put(META_WAL_FORMAT, wal::FORMAT)?;
        put(META_WAL_ALLOCATED, 0)?;
    }
    tx.commit().map_err(|e| redb_err(e.into()))?;
    report.replayed = ops.len();
    if bytes.is_some() {
        if report.problems.is_empty() {
            wal::remove(wal_path)?;
        } else {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut aside = wal_path.as_os_str().to_owned();
            aside.push(format!(".damaged-{secs}"));
            let aside = PathBuf::from(aside);
            std::fs::rename(wal_path, &aside)
                .map_err(|e| StoreError::from_io(wal_path, "move the damaged log aside", &e))?;
            report.moved_to = Some(aside);
        }
    }
    Ok(report)
}

/// Applies one logged mutation again. Idempotent over a database that already holds it.
pub(super) fn replay(
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
