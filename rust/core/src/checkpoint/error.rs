//! What a checkpoint store can refuse, with messages that name the file, the run and the row.

use std::path::Path;

/// A failure of a checkpoint store. `Clone` because one failed commit fails every request of
/// its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `append` found a row at the same `(workflow_id, sequence)`; the stored row is kept.
    #[error(
        "checkpoint conflict: workflow {workflow_id:?} already has a row at sequence {sequence}; \
         resume the existing run or clear it before starting a new one"
    )]
    Conflict { workflow_id: String, sequence: u64 },

    /// Another process, or another store object of this process, holds the file.
    #[error(
        "checkpoint store {path:?} is already open in another process or by another store in \
         this process; a redb checkpoint store is single-process: close the other one, or use \
         SqliteCheckpointStore or PostgresCheckpointStore to share checkpoints between processes"
    )]
    InUse { path: String },

    /// The file exists but is not a redb database with a cano checkpoint table.
    #[error("checkpoint store {path:?} is not a cano checkpoint store or is corrupted: {reason}")]
    NotAStore { path: String, reason: String },

    /// The operating system refused a read, a write or an fsync.
    #[error("checkpoint store {path:?}: I/O error: {message}")]
    Io { path: String, message: String },

    /// Any other failure reported by redb.
    #[error("checkpoint store {path:?}: redb: {message}")]
    Storage { path: String, message: String },

    /// A stored row cannot be decoded (written by a newer cano, or damaged).
    #[error("decode checkpoint row at workflow_id={workflow_id:?} sequence={sequence}: {reason}")]
    Decode { workflow_id: String, sequence: u64, reason: String },

    /// A stored row failed its checks (checksum, layout): the file is damaged. The row is
    /// never returned as if it were right.
    #[error(
        "checkpoint store {path:?} is damaged: the row of workflow {workflow_id:?} at sequence \
         {sequence} cannot be trusted ({reason}); the file was left as it is for inspection"
    )]
    Damaged { path: String, workflow_id: String, sequence: u64, reason: String },

    /// The write-ahead log is missing, truncated or has a hole: opening refuses, and leaves
    /// every file as it was, until the store is repaired.
    #[error(
        "checkpoint store log {path:?} is damaged: {reason}. Nothing was changed; open the \
         store with repair=True (RedbCheckpointStore(path, repair=True)) to replay what is \
         intact and move the damaged log aside"
    )]
    LogDamaged { path: String, reason: String },

    /// The store was opened read-only and was asked to write.
    #[error("checkpoint store {path:?} was opened read-only: {what} is refused")]
    ReadOnly { path: String, what: String },

    /// A read-only open of a file its last writer did not close (it crashed): redb must
    /// recover it first, which writes.
    #[error(
        "checkpoint store {path:?} was not closed cleanly (its process stopped): it must be \
         opened for writing once to recover, so it cannot be opened read-only now"
    )]
    NeedsRecovery { path: String },

    /// Opened without creating, and there is no file.
    #[error("checkpoint store {path:?} does not exist (nothing was created)")]
    NotFound { path: String },

    /// The store was closed before this request.
    #[error("checkpoint store {path:?} is closed")]
    Closed { path: String },

    /// The store was opened by a parent process; its writer thread does not exist after `fork()`.
    #[error(
        "checkpoint store {path:?} was opened by process {owner_pid} and cannot be used from \
         process {pid} (a fork() child); open a new store in the child"
    )]
    Forked { path: String, owner_pid: u32, pid: u32 },

    /// The writer thread panicked; the store cannot be used any more.
    #[error("checkpoint store {path:?}: the writer thread failed: {reason}")]
    WriterFailed { path: String, reason: String },
}

pub(crate) fn path_text(path: &Path) -> String {
    path.display().to_string()
}

impl StoreError {
    /// An I/O failure of `what` on the file at `path`; a full disk says so plainly.
    pub(crate) fn from_io(path: &Path, what: &str, e: &std::io::Error) -> Self {
        let message = if e.kind() == std::io::ErrorKind::StorageFull {
            format!("{what}: no space left on the device ({e})")
        } else {
            format!("{what}: {e}")
        };
        StoreError::Io { path: path_text(path), message }
    }

    /// A decode error of a row read from the file at `path`: the file is damaged.
    pub(crate) fn damaged_in(self, path: &Path) -> Self {
        match self {
            StoreError::Decode { workflow_id, sequence, reason } => {
                StoreError::Damaged { path: path_text(path), workflow_id, sequence, reason }
            }
            other => other,
        }
    }

    /// Maps any redb error met while using the file at `path`.
    pub(crate) fn from_redb(path: &Path, err: impl Into<redb::Error>) -> Self {
        let path = path_text(path);
        match err.into() {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::InUse { path }
            }
            redb::Error::RepairAborted => StoreError::NeedsRecovery { path },
            redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                StoreError::NotAStore { path, reason: e.to_string() }
            }
            redb::Error::Io(e) => StoreError::Io { path, message: e.to_string() },
            e @ (redb::Error::Corrupted(_)
            | redb::Error::UpgradeRequired(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. }) => {
                StoreError::NotAStore { path, reason: e.to_string() }
            }
            e => StoreError::Storage { path, message: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_message_matches_the_upstream_wording() {
        let e = StoreError::Conflict { workflow_id: "order-7".into(), sequence: 3 };
        assert_eq!(
            e.to_string(),
            "checkpoint conflict: workflow \"order-7\" already has a row at sequence 3; \
             resume the existing run or clear it before starting a new one"
        );
    }

    #[test]
    fn in_use_names_the_file_and_the_alternatives() {
        let e = StoreError::from_redb(Path::new("/tmp/x.redb"), redb::Error::DatabaseAlreadyOpen);
        let text = e.to_string();
        assert!(text.contains("\"/tmp/x.redb\""), "{text}");
        assert!(text.contains("single-process"), "{text}");
        assert!(text.contains("SqliteCheckpointStore"), "{text}");
    }

    #[test]
    fn corrupted_is_not_a_store() {
        let e = StoreError::from_redb(Path::new("f"), redb::Error::Corrupted("bad magic".into()));
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    }
}
