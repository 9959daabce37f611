//! Checkpoint logs: the rows a run writes so it can be resumed, and the embedded redb store.
//!
//! - [`row`]: [`Row`], [`RowKind`] and [`RunSummary`];
//! - [`codec`]: the versioned binary envelope a row's value is stored as;
//! - [`error`]: [`StoreError`], what a store can refuse;
//! - [`redb_store`]: [`RedbStore`], one file, one writer thread, group commit;
//! - [`wal`]: the write-ahead log that makes an immediate group commit one sequential fsync;
//! - [`overlay`]: the rows the log holds and redb does not yet, merged into every read;
//! - `recovery`: replaying the log when a store is opened after a crash;
//! - [`resume_point`]: where a crashed run resumes, from its rows.

pub mod codec;
pub mod error;
pub mod overlay;
mod recovery;
pub mod redb_store;
mod resume;
pub mod row;
pub mod wal;

pub use error::StoreError;
pub use redb_store::{BatchHook, Completion, Durability, Entry, RedbStore};
pub use resume::{resume_point, ResumeError, ResumePoint};
pub use row::{Row, RowKind, RunSummary};
