//! Checkpoint logs: the rows a run writes so it can be resumed, and the embedded redb store.
//!
//! - [`Row`], [`RowKind`], [`RunSummary`] (`row`) and the value envelope ([`codec`]);
//! - [`resume_point`]: where a crashed run resumes, from its rows (`resume`);
//! - [`RedbStore`]: one file, one writer thread, group commit (`redb_store`: the API, its
//!   writer thread, fork detection);
//! - [`wal`]: the write-ahead log that makes an immediate group commit one sequential sync;
//! - `overlay`: the rows the log holds and redb does not yet, merged into every read;
//! - `replay`: replaying the log when a store is opened after a crash;
//! - `schema`, `reads`: the tables (and the store's own keys in them: run records, step
//!   histories, queue settings, see [`Namespace`]), and reading runs from them;
//! - [`StoreError`] (`error`): what a store can refuse; `contain`: redb panics as errors.

pub mod codec;
mod contain;
mod error;
mod overlay;
mod reads;
mod redb_store;
mod replay;
mod resume;
mod row;
mod schema;
pub mod wal;

pub use error::StoreError;
pub use reads::Timed;
pub use redb_store::{BatchHook, Completion, Durability, Fence, OpenOptions, RedbStore, RunRows};
pub use replay::RepairReport;
pub use resume::{resume_point, ResumeError, ResumePoint};
pub use row::{Entry, Row, RowKind, RunSummary};
pub use schema::{is_hidden, Namespace};
