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

/// Keys of [`TABLE`] whose workflow id starts with NUL belong to the store itself, not to a
/// run's log (a run's id never holds NUL, see `cano.store.check_workflow_id`): a run's record,
/// its step history, a queue's settings. They sort before every run's rows, and every read
/// of runs' logs skips them. Each is a run-like key: `(NUL, letter, name)` and a sequence.
pub const HIDDEN: char = '\0';

/// What a hidden key holds (the letter after the NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// A run's step history: its log's rows, moved here (with their times) when it completed.
    History,
    /// A run's record (sequence 0): JSON the bindings write and read (`cano.records`).
    Record,
    /// A queue's settings (sequence 0): JSON, as for records.
    Queue,
    /// The signals sent to a run (sequence 0): JSON, as for records.
    Signal,
}

impl Namespace {
    /// The id prefix of the namespace's keys.
    pub const fn prefix(self) -> &'static str {
        match self {
            Namespace::History => "\0h",
            Namespace::Record => "\0r",
            Namespace::Queue => "\0q",
            Namespace::Signal => "\0g",
        }
    }

    /// The key id of `name` in this namespace.
    pub fn key(self, name: &str) -> String {
        let prefix = self.prefix();
        let mut id = String::with_capacity(prefix.len() + name.len());
        id.push_str(prefix);
        id.push_str(name);
        id
    }

    /// The first id past the namespace (an exclusive upper bound of its keys).
    pub(super) const fn end(self) -> &'static str {
        match self {
            Namespace::History => "\0i",
            Namespace::Record => "\0s",
            Namespace::Queue => "\0r",
            Namespace::Signal => "\0h",
        }
    }
}

/// True for the ids of rows that belong to the store, not to a run's log.
pub fn is_hidden(workflow_id: &str) -> bool {
    workflow_id.starts_with(HIDDEN)
}
