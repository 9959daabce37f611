//! The rows of a run's checkpoint log.

use super::codec;

/// Why a row was written. The discriminants are the stored bytes and the Python
/// `cano.store.RowKind` values: never renumber them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RowKind {
    /// The run entered `state`; written before the state's task runs.
    #[default]
    StateEntry = 0,
    /// A compensatable task succeeded; `output` is its JSON output.
    Compensation = 1,
    /// A stepped or stream task committed a cursor; `output` is the JSON cursor.
    StepCursor = 2,
}

impl RowKind {
    /// The kind stored as `value`, or `None` for a value this version does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(RowKind::StateEntry),
            1 => Some(RowKind::Compensation),
            2 => Some(RowKind::StepCursor),
            _ => None,
        }
    }
}

/// One row of a run's log. `(workflow_id, sequence)` is the key: unique, dense from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub workflow_id: String,
    pub sequence: u64,
    /// The label of the state the row belongs to.
    pub state: String,
    pub task_id: String,
    pub kind: RowKind,
    /// Compensation output or cursor (JSON bytes); `None` for state-entry rows.
    pub output: Option<Vec<u8>>,
    pub workflow_version: u32,
}

impl Row {
    /// A state-entry row with no output and workflow version 0.
    pub fn state_entry(workflow_id: &str, sequence: u64, state: &str, task_id: &str) -> Self {
        Row {
            workflow_id: workflow_id.to_owned(),
            sequence,
            state: state.to_owned(),
            task_id: task_id.to_owned(),
            kind: RowKind::StateEntry,
            output: None,
            workflow_version: 0,
        }
    }
}

/// One run of a store, as `cano runs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub workflow_id: String,
    /// How many rows the run's log holds.
    pub rows: u64,
    /// The state label and sequence of the run's last row.
    pub last_state: String,
    pub last_sequence: u64,
}

/// A row ready to be stored: its key, and its value already encoded (see [`codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub workflow_id: String,
    pub sequence: u64,
    pub envelope: Vec<u8>,
}

impl Entry {
    /// Encodes `row`.
    pub fn from_row(row: Row) -> Self {
        let envelope = codec::encode(&row);
        Entry { workflow_id: row.workflow_id, sequence: row.sequence, envelope }
    }
}
