//! Checkpoint logs: the rows a run writes so it can be resumed, and the embedded redb store.
//!
//! - [`row`]: [`Row`], [`RowKind`] and [`RunSummary`];
//! - [`codec`]: the versioned binary envelope a row's value is stored as;
//! - [`error`]: [`StoreError`], what a store can refuse;
//! - [`redb_store`]: [`RedbStore`], one file, one writer thread, group commit.

pub mod codec;
pub mod error;
pub mod redb_store;
pub mod row;

pub use error::StoreError;
pub use redb_store::{BatchHook, Completion, Durability, RedbStore};
pub use row::{Row, RowKind, RunSummary};
