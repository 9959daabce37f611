//! The one error type of the core crate. The bindings map each variant to a Python
//! exception class and render state ids as labels.

use crate::fsm::StateId;

/// Everything the core can refuse. State ids are rendered as labels by the bindings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("workflow has no registered state handlers")]
    NoHandlers,
    #[error("workflow has no exit states; orchestration could loop forever")]
    NoExitStates,
    #[error("initial state {0} is neither registered nor an exit state")]
    InitialNotRegistered(StateId),
    #[error("state {from} declares target {to}, which is neither registered nor an exit state")]
    UnknownDeclaredTarget { from: StateId, to: StateId },
    #[error("state {from} returned {to}, which is not among its declared targets")]
    UndeclaredTransition { from: StateId, to: StateId },
    #[error("state {0} is neither registered nor an exit state")]
    UnknownState(StateId),
    #[error("the run exceeded its limit of {limit} transitions")]
    TooManyTransitions { limit: u64 },
    #[error("duration must be a finite number of seconds >= 0, got {0}")]
    InvalidDuration(f64),
    #[error("invalid cron expression {expr:?}: {reason}")]
    InvalidCron { expr: String, reason: String },
    #[error("timestamp {0} is not a representable UNIX time in seconds")]
    InvalidTimestamp(f64),
    #[error("invalid backoff policy: {0}")]
    InvalidBackoff(String),
}
