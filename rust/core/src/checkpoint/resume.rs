//! Where a run resumes: one pure function from the rows of its checkpoint log to the point
//! the dispatcher continues from.
//!
//! The rules, in the order [`resume_point`] applies them:
//! - rows are taken in sequence order; a log with no rows cannot be resumed, and a log whose
//!   sequences repeat or that holds another run's rows is refused;
//! - the last row decides: its workflow version must match the workflow's, and its state is
//!   the state the run resumes in (its task runs again);
//! - the *current visit* of that state starts at its last state-entry row (the cutoff); the
//!   path walked before the crash is every state-entry row before the cutoff;
//! - a stepped or stream task continues from the last cursor written during the current
//!   visit (cursors of earlier visits, or of other states, are stale);
//! - every compensation row is on the saga stack, the last one included: a step whose output
//!   became durable is compensated on a later failure even when the crash came before the
//!   next state's row, so the step's re-run (it runs again, like any resumed task) cannot
//!   leave its first output undone.

use super::row::{Row, RowKind};

/// What a resumed run starts from. State names are labels; the bindings map them to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The state the run resumes in: its task runs again.
    pub state: String,
    /// The sequence number of the next row the run writes.
    pub next_sequence: u64,
    /// `(sequence, label)` of every state entered before the resumed state's current visit.
    pub path: Vec<(u64, String)>,
    /// The saga stack, oldest first: `(task id, output JSON)`.
    pub stack: Vec<(String, Vec<u8>)>,
    /// The last cursor the resumed state committed during its current visit (JSON).
    pub cursor: Option<Vec<u8>>,
}

/// Why a log cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("no checkpoint rows for workflow id {workflow_id:?}")]
    NoRows { workflow_id: String },
    #[error(
        "checkpoint log of {workflow_id:?} was written by workflow version {stored}, this \
         workflow is version {expected}"
    )]
    VersionMismatch { workflow_id: String, stored: u32, expected: u32 },
    #[error("checkpoint log of {workflow_id:?} has two rows at sequence {sequence}")]
    DuplicateSequence { workflow_id: String, sequence: u64 },
    #[error(
        "checkpoint log of {workflow_id:?} holds a row of another run ({other:?}) at sequence \
         {sequence}"
    )]
    ForeignRow { workflow_id: String, other: String, sequence: u64 },
}

/// Decides where the run `workflow_id` resumes, from its rows in any order.
pub fn resume_point(
    workflow_id: &str,
    rows: &mut [Row],
    version: u32,
) -> Result<ResumePoint, ResumeError> {
    rows.sort_by_key(|r| r.sequence);
    if let Some(r) = rows.iter().find(|r| r.workflow_id != workflow_id) {
        return Err(ResumeError::ForeignRow {
            workflow_id: workflow_id.to_owned(),
            other: r.workflow_id.clone(),
            sequence: r.sequence,
        });
    }
    if let Some(w) = rows.windows(2).find(|w| w[0].sequence == w[1].sequence) {
        return Err(ResumeError::DuplicateSequence {
            workflow_id: workflow_id.to_owned(),
            sequence: w[0].sequence,
        });
    }
    let Some(last) = rows.last() else {
        return Err(ResumeError::NoRows { workflow_id: workflow_id.to_owned() });
    };
    if last.workflow_version != version {
        return Err(ResumeError::VersionMismatch {
            workflow_id: workflow_id.to_owned(),
            stored: last.workflow_version,
            expected: version,
        });
    }
    let entry_of_last = rows
        .iter()
        .rev()
        .find(|r| r.kind == RowKind::StateEntry && r.state == last.state)
        .map(|r| r.sequence);
    // Without an entry row for it (a log that starts mid-state), the whole log is the past.
    let cutoff = entry_of_last.unwrap_or(last.sequence.saturating_add(1));
    let path = rows
        .iter()
        .filter(|r| r.kind == RowKind::StateEntry && r.sequence < cutoff)
        .map(|r| (r.sequence, r.state.clone()))
        .collect();
    let stack = rows
        .iter()
        .filter(|r| r.kind == RowKind::Compensation)
        .map(|r| (r.task_id.clone(), r.output.clone().unwrap_or_else(|| b"null".to_vec())))
        .collect();
    let cursor = rows
        .iter()
        .rev()
        .take_while(|r| entry_of_last.is_none_or(|c| r.sequence > c))
        .find(|r| r.kind == RowKind::StepCursor && r.state == last.state)
        .and_then(|r| r.output.clone());
    Ok(ResumePoint {
        state: last.state.clone(),
        next_sequence: last.sequence.saturating_add(1),
        path,
        stack,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(seq: u64, state: &str, kind: RowKind, output: Option<&str>) -> Row {
        Row {
            workflow_id: "run".into(),
            sequence: seq,
            state: state.into(),
            task_id: format!("t-{state}"),
            kind,
            output: output.map(|o| o.as_bytes().to_vec()),
            workflow_version: 0,
        }
    }
    fn entry(seq: u64, state: &str) -> Row {
        row(seq, state, RowKind::StateEntry, None)
    }
    fn labels(p: &ResumePoint) -> Vec<&str> {
        p.path.iter().map(|(_, l)| l.as_str()).collect()
    }

    #[test]
    fn resumes_in_the_last_state_after_the_states_before_it() {
        let mut rows = vec![entry(2, "C"), entry(0, "A"), entry(1, "B")];
        let p = resume_point("run", &mut rows, 0).unwrap();
        assert_eq!(p.state, "C");
        assert_eq!(p.next_sequence, 3);
        assert_eq!(labels(&p), ["A", "B"]);
        assert_eq!(p.path[1].0, 1);
        assert!(p.stack.is_empty() && p.cursor.is_none());
    }

    #[test]
    fn no_rows_version_duplicates_and_foreign_rows_are_refused() {
        assert_eq!(
            resume_point("run", &mut [], 0),
            Err(ResumeError::NoRows { workflow_id: "run".into() })
        );
        let mut rows = vec![entry(0, "A")];
        rows[0].workflow_version = 2;
        assert_eq!(
            resume_point("run", &mut rows, 3),
            Err(ResumeError::VersionMismatch { workflow_id: "run".into(), stored: 2, expected: 3 })
        );
        let mut rows = vec![entry(0, "A"), entry(0, "B")];
        assert!(matches!(
            resume_point("run", &mut rows, 0),
            Err(ResumeError::DuplicateSequence { sequence: 0, .. })
        ));
        let mut rows = vec![entry(0, "A")];
        rows[0].workflow_id = "other".into();
        assert!(matches!(resume_point("run", &mut rows, 0), Err(ResumeError::ForeignRow { .. })));
    }

    #[test]
    fn a_looping_state_resumes_its_last_visit_with_that_visit_s_cursor() {
        let mut rows = vec![
            entry(0, "S"),
            row(1, "S", RowKind::StepCursor, Some("1")),
            row(2, "S", RowKind::StepCursor, Some("2")),
            entry(3, "T"),
            entry(4, "S"),
            row(5, "S", RowKind::StepCursor, Some("7")),
        ];
        let p = resume_point("run", &mut rows, 0).unwrap();
        assert_eq!(p.state, "S");
        assert_eq!(labels(&p), ["S", "T"]);
        assert_eq!(p.cursor.as_deref(), Some(&b"7"[..]));
    }

    #[test]
    fn a_cursor_of_an_earlier_visit_is_stale() {
        let mut rows = vec![
            entry(0, "S"),
            row(1, "S", RowKind::StepCursor, Some("9")),
            entry(2, "T"),
            entry(3, "S"),
        ];
        let p = resume_point("run", &mut rows, 0).unwrap();
        assert_eq!(p.cursor, None);
    }

    #[test]
    fn every_durable_compensation_output_is_on_the_stack() {
        let mut rows = vec![
            entry(0, "Charge"),
            row(1, "Charge", RowKind::Compensation, Some("{\"id\":1}")),
            entry(2, "Ship"),
            row(3, "Ship", RowKind::Compensation, Some("2")),
        ];
        let p = resume_point("run", &mut rows, 0).unwrap();
        // Crashed after Ship's output became durable, before the next state's row: Ship runs
        // again, and its first output stays on the stack to be undone on a later failure.
        assert_eq!(p.state, "Ship");
        assert_eq!(
            p.stack,
            vec![("t-Charge".to_owned(), b"{\"id\":1}".to_vec()), ("t-Ship".into(), b"2".to_vec())]
        );
        assert_eq!(labels(&p), ["Charge"]);
    }

    #[test]
    fn a_compensation_row_without_output_is_null() {
        let mut rows = vec![entry(0, "A"), row(1, "A", RowKind::Compensation, None), entry(2, "B")];
        let p = resume_point("run", &mut rows, 0).unwrap();
        assert_eq!(p.stack, vec![("t-A".to_owned(), b"null".to_vec())]);
    }

    fn kind() -> impl Strategy<Value = RowKind> {
        prop_oneof![
            Just(RowKind::StateEntry),
            Just(RowKind::Compensation),
            Just(RowKind::StepCursor)
        ]
    }

    proptest! {
        /// For any log: the resumed state is the last row's, the next sequence follows it,
        /// the path is in order and strictly before the resumed visit, the stack holds every
        /// compensation row, and the row order given does not matter.
        #[test]
        fn invariants(spec in prop::collection::vec((0u8..4, kind()), 1..40), seed in any::<u64>()) {
            let rows: Vec<Row> = spec
                .iter()
                .enumerate()
                .map(|(i, (s, k))| row(i as u64, ["A", "B", "C", "D"][*s as usize], *k, Some("1")))
                .collect();
            let mut shuffled = rows.clone();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut shuffled);
            let mut sorted = rows.clone();
            let p = resume_point("run", &mut shuffled, 0).unwrap();
            prop_assert_eq!(&p, &resume_point("run", &mut sorted, 0).unwrap());
            let last = rows.last().unwrap();
            prop_assert_eq!(&p.state, &last.state);
            prop_assert_eq!(p.next_sequence, last.sequence + 1);
            prop_assert!(p.path.windows(2).all(|w| w[0].0 < w[1].0));
            let compensations = rows.iter().filter(|r| r.kind == RowKind::Compensation).count();
            prop_assert_eq!(p.stack.len(), compensations);
            if let Some(c) = rows.iter().rev().find(|r| r.kind == RowKind::StateEntry && r.state == last.state) {
                prop_assert!(p.path.iter().all(|(s, _)| *s < c.sequence));
                let entries_before = rows.iter().filter(|r| r.kind == RowKind::StateEntry && r.sequence < c.sequence).count();
                prop_assert_eq!(p.path.len(), entries_before);
            }
            if p.cursor.is_some() {
                prop_assert!(rows.iter().any(|r| r.kind == RowKind::StepCursor && r.state == last.state));
            }
        }
    }
}
