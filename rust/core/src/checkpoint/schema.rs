//! The tables of a redb checkpoint store: one place for the schema every module reads.

use redb::TableDefinition;

/// The rows of a store: `(workflow_id, sequence)` → envelope (see [`codec`]).
pub const TABLE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("cano_checkpoints");

/// What the write-ahead log needs to know about the database (see [`wal`]).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("cano_meta");
/// A random id, so that a log never replays into another database.
pub const META_STORE_ID: &str = "wal_store_id";
/// The generation of log records the database does not hold yet.
pub const META_GENERATION: &str = "wal_generation";
/// How many bytes the write-ahead log has been grown to, recorded durably before any record
/// in the new space is acknowledged: a log found missing or shorter was deleted or
/// truncated. 0 when the store has no log.
pub const META_WAL_ALLOCATED: &str = "wal_allocated";
/// The record format of the log (absent: 1, written by earlier builds).
pub const META_WAL_FORMAT: &str = "wal_format";
