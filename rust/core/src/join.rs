//! Join strategies of a split state: when is the join decided, and how.
//!
//! Branches report one by one; after each report [`Strategy::evaluate`] says whether the
//! outcome is already decided. Strategies stop as early as they can: `All` fails on the
//! first failure, the counting strategies succeed as soon as enough branches succeeded and
//! fail as soon as success has become impossible. Deciding early never contradicts what
//! waiting for every branch would have decided.

/// How the branches of a split are joined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// Every branch must succeed.
    All,
    /// One success is enough.
    Any,
    /// At least `n` successes.
    Quorum(usize),
    /// At least `ceil(total * p)` successes, `p` in (0, 1].
    Percentage(f64),
    /// At least `min` successes; the rest are cancelled once reached.
    PartialResults(usize),
    /// Wait for the timeout; succeed if at least one branch finished before it.
    PartialTimeout,
}

/// Branch outcomes counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
}

impl Tally {
    /// Branches that have not reported yet.
    pub fn remaining(&self) -> usize {
        self.total.saturating_sub(self.succeeded + self.failed)
    }

    /// Branches that finished, successfully or not.
    pub fn finished(&self) -> usize {
        self.succeeded + self.failed
    }

    /// Counts a finished branch. Once the join is `decided`, the branches it cancels count
    /// as cancelled; before that, a branch whose task was cancelled cancelled itself (it
    /// raised `CancelledError`), which is a failure — never a branch the join waits on for
    /// ever.
    pub fn record(&mut self, end: BranchEnd, decided: bool) -> Counted {
        match end {
            BranchEnd::Cancelled if decided => Counted::Cancelled,
            BranchEnd::Returned => {
                self.succeeded += 1;
                Counted::Success
            }
            BranchEnd::Raised | BranchEnd::Cancelled => {
                self.failed += 1;
                Counted::Failure
            }
        }
    }
}

/// How one branch's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchEnd {
    /// It returned a value.
    Returned,
    /// It raised an exception.
    Raised,
    /// Its asyncio task was cancelled.
    Cancelled,
}

/// What a finished branch counts as in the split's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Success,
    Failure,
    /// Cancelled by the join once decided: neither a success nor a failure.
    Cancelled,
}

/// Why a split configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinError {
    #[error("JoinStrategy.percentage requires a finite value in (0, 1], got {0}")]
    Percentage(f64),
    #[error("a split needs at least one branch task")]
    NoBranches,
    #[error("{strategy} can never succeed with {branches} branch(es): it needs {required}")]
    Unreachable { strategy: String, required: usize, branches: usize },
    #[error("JoinStrategy.PARTIAL_TIMEOUT requires a timeout")]
    PartialTimeoutWithoutTimeout,
    #[error("bulkhead requires a positive number of branches, got 0")]
    ZeroBulkhead,
}

/// The state of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting.
    Pending,
    /// Move to the join state.
    Succeeded,
    /// The split failed.
    Failed,
}

impl Strategy {
    /// Successes needed out of `total`, for the counting strategies.
    pub fn required(&self, total: usize) -> Option<usize> {
        match *self {
            Strategy::All => Some(total),
            Strategy::Any => Some(1),
            Strategy::Quorum(n) | Strategy::PartialResults(n) => Some(n),
            Strategy::Percentage(p) => {
                let need = (total as f64 * p).ceil();
                Some(if need >= usize::MAX as f64 { usize::MAX } else { need.max(0.0) as usize })
            }
            Strategy::PartialTimeout => None,
        }
    }

    /// Whether `tally` already decides the join (before any timeout).
    pub fn evaluate(&self, tally: Tally) -> Verdict {
        match self.required(tally.total) {
            Some(need) => {
                if tally.succeeded >= need {
                    Verdict::Succeeded
                } else if tally.succeeded + tally.remaining() < need {
                    Verdict::Failed
                } else {
                    Verdict::Pending
                }
            }
            None => {
                if tally.remaining() > 0 {
                    Verdict::Pending
                } else if tally.finished() > 0 {
                    Verdict::Succeeded
                } else {
                    Verdict::Failed
                }
            }
        }
    }

    /// The verdict when the join timeout expires with `tally` reported.
    pub fn on_timeout(&self, tally: Tally) -> Verdict {
        match self {
            Strategy::PartialTimeout if tally.finished() > 0 => Verdict::Succeeded,
            _ => Verdict::Failed,
        }
    }

    /// The join's verdict once the branches reported so far are counted in `tally`, with
    /// `timed_out` set when the join timeout expired meanwhile. Outcomes seen in the same
    /// loop turn as the deadline are judged first: the timeout decides only a join they
    /// left undecided.
    pub fn decide(&self, tally: Tally, timed_out: bool) -> Verdict {
        match self.evaluate(tally) {
            Verdict::Pending if timed_out => self.on_timeout(tally),
            v => v,
        }
    }

    /// Checks the strategy's own parameters.
    pub fn validate(&self) -> Result<(), JoinError> {
        match *self {
            Strategy::Percentage(p) if !(p.is_finite() && p > 0.0 && p <= 1.0) => {
                Err(JoinError::Percentage(p))
            }
            _ => Ok(()),
        }
    }

    /// Checks a whole split: the strategy, its branches, timeout and bulkhead. A split that
    /// could never succeed is refused before any run.
    pub fn validate_split(
        &self,
        branches: usize,
        has_timeout: bool,
        bulkhead: Option<usize>,
    ) -> Result<(), JoinError> {
        self.validate()?;
        if branches == 0 {
            return Err(JoinError::NoBranches);
        }
        if *self == Strategy::PartialTimeout && !has_timeout {
            return Err(JoinError::PartialTimeoutWithoutTimeout);
        }
        if bulkhead == Some(0) {
            return Err(JoinError::ZeroBulkhead);
        }
        if let Some(required) = self.required(branches) {
            if required > branches {
                return Err(JoinError::Unreachable { strategy: self.name(), required, branches });
            }
        }
        Ok(())
    }

    /// The strategy as users write it.
    pub fn name(&self) -> String {
        match *self {
            Strategy::All => "JoinStrategy.ALL".into(),
            Strategy::Any => "JoinStrategy.ANY".into(),
            Strategy::Quorum(n) => format!("JoinStrategy.quorum({n})"),
            Strategy::Percentage(p) => format!("JoinStrategy.percentage({p})"),
            Strategy::PartialResults(n) => format!("JoinStrategy.partial_results({n})"),
            Strategy::PartialTimeout => "JoinStrategy.PARTIAL_TIMEOUT".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{
        any, prop, prop_assert, prop_assert_eq, prop_assert_ne, prop_oneof, proptest, Just,
    };
    use proptest::strategy::Strategy as _;

    fn t(total: usize, succeeded: usize, failed: usize) -> Tally {
        Tally { total, succeeded, failed }
    }

    #[test]
    fn all_fails_fast_and_succeeds_when_everything_did() {
        assert_eq!(Strategy::All.evaluate(t(3, 2, 0)), Verdict::Pending);
        assert_eq!(Strategy::All.evaluate(t(3, 0, 1)), Verdict::Failed);
        assert_eq!(Strategy::All.evaluate(t(3, 3, 0)), Verdict::Succeeded);
        assert_eq!(Strategy::All.evaluate(t(0, 0, 0)), Verdict::Succeeded);
    }

    #[test]
    fn any_needs_one_success() {
        assert_eq!(Strategy::Any.evaluate(t(3, 1, 0)), Verdict::Succeeded);
        assert_eq!(Strategy::Any.evaluate(t(3, 0, 2)), Verdict::Pending);
        assert_eq!(Strategy::Any.evaluate(t(3, 0, 3)), Verdict::Failed);
        assert_eq!(Strategy::Any.evaluate(t(0, 0, 0)), Verdict::Failed);
    }

    #[test]
    fn quorum_decides_as_soon_as_possible() {
        let q = Strategy::Quorum(2);
        assert_eq!(q.evaluate(t(4, 2, 0)), Verdict::Succeeded);
        assert_eq!(q.evaluate(t(4, 0, 2)), Verdict::Pending);
        assert_eq!(q.evaluate(t(4, 0, 3)), Verdict::Failed);
        assert_eq!(Strategy::Quorum(0).evaluate(t(2, 0, 0)), Verdict::Succeeded);
        assert_eq!(Strategy::Quorum(3).evaluate(t(2, 0, 0)), Verdict::Failed);
    }

    #[test]
    fn percentage_rounds_up() {
        let p = Strategy::Percentage(0.5);
        assert_eq!(p.required(5), Some(3));
        assert_eq!(p.evaluate(t(5, 2, 0)), Verdict::Pending);
        assert_eq!(p.evaluate(t(5, 3, 0)), Verdict::Succeeded);
        assert_eq!(Strategy::Percentage(1.0).required(4), Some(4));
        assert_eq!(Strategy::Percentage(0.0).validate(), Err(JoinError::Percentage(0.0)));
        assert!(Strategy::Percentage(1.5).validate().is_err());
        assert!(Strategy::Percentage(f64::NAN).validate().is_err());
        assert!(Strategy::Percentage(0.25).validate().is_ok());
    }

    #[test]
    fn partial_timeout_waits_and_accepts_any_finished_branch() {
        let s = Strategy::PartialTimeout;
        assert_eq!(s.evaluate(t(3, 1, 1)), Verdict::Pending);
        assert_eq!(s.evaluate(t(3, 0, 3)), Verdict::Succeeded);
        assert_eq!(s.on_timeout(t(3, 0, 1)), Verdict::Succeeded);
        assert_eq!(s.on_timeout(t(3, 0, 0)), Verdict::Failed);
        assert_eq!(Strategy::Quorum(1).on_timeout(t(3, 1, 0)), Verdict::Failed);
    }

    #[test]
    fn a_timeout_decides_only_an_undecided_join() {
        let q = Strategy::Quorum(2);
        assert_eq!(q.decide(t(3, 2, 0), true), Verdict::Succeeded);
        assert_eq!(q.decide(t(3, 1, 0), true), Verdict::Failed);
        assert_eq!(q.decide(t(3, 1, 0), false), Verdict::Pending);
        assert_eq!(Strategy::PartialTimeout.decide(t(3, 1, 0), true), Verdict::Succeeded);
    }

    #[test]
    fn a_branch_that_cancelled_itself_fails_a_cancelled_one_after_the_verdict_does_not() {
        let mut tally = t(3, 0, 0);
        assert_eq!(tally.record(BranchEnd::Cancelled, false), Counted::Failure);
        assert_eq!(tally.record(BranchEnd::Returned, false), Counted::Success);
        assert_eq!(tally.record(BranchEnd::Cancelled, true), Counted::Cancelled);
        assert_eq!(tally, t(3, 1, 1));
        assert_eq!(tally.record(BranchEnd::Raised, true), Counted::Failure);
    }

    #[test]
    fn splits_that_can_never_succeed_are_refused() {
        assert_eq!(Strategy::All.validate_split(0, false, None), Err(JoinError::NoBranches));
        assert!(matches!(
            Strategy::Quorum(4).validate_split(3, false, None),
            Err(JoinError::Unreachable { required: 4, branches: 3, .. })
        ));
        assert!(Strategy::PartialResults(4).validate_split(3, false, None).is_err());
        assert!(Strategy::Quorum(3).validate_split(3, false, None).is_ok());
        assert_eq!(
            Strategy::PartialTimeout.validate_split(2, false, None),
            Err(JoinError::PartialTimeoutWithoutTimeout)
        );
        assert_eq!(Strategy::Any.validate_split(2, false, Some(0)), Err(JoinError::ZeroBulkhead));
        let msg = Strategy::Quorum(4).validate_split(3, false, None).unwrap_err().to_string();
        assert_eq!(msg, "JoinStrategy.quorum(4) can never succeed with 3 branch(es): it needs 4");
    }

    fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
        prop_oneof![
            Just(Strategy::All),
            Just(Strategy::Any),
            (0usize..8).prop_map(Strategy::Quorum),
            (1u32..=100).prop_map(|p| Strategy::Percentage(f64::from(p) / 100.0)),
            (0usize..8).prop_map(Strategy::PartialResults),
            Just(Strategy::PartialTimeout),
        ]
    }

    proptest! {
        /// Whatever order branches report in, an early verdict is final and equals the
        /// verdict after every branch reported.
        #[test]
        fn early_verdicts_are_final(s in strategy(), outcomes in prop::collection::vec(any::<bool>(), 0..12)) {
            let total = outcomes.len();
            let mut tally = Tally { total, ..Tally::default() };
            let mut decided = s.evaluate(tally);
            for ok in &outcomes {
                if *ok { tally.succeeded += 1 } else { tally.failed += 1 }
                let now = s.evaluate(tally);
                if decided != Verdict::Pending {
                    prop_assert_eq!(now, decided);
                }
                decided = now;
            }
            prop_assert_ne!(decided, Verdict::Pending);
            let successes = outcomes.iter().filter(|o| **o).count();
            let expected = match s.required(total) {
                Some(need) => if successes >= need { Verdict::Succeeded } else { Verdict::Failed },
                None => if total > 0 { Verdict::Succeeded } else { Verdict::Failed },
            };
            prop_assert_eq!(decided, expected);
        }

        /// A pending verdict always leaves both outcomes reachable.
        #[test]
        fn pending_means_undecided(
            s in strategy(),
            (total, ok, bad) in (0usize..10)
                .prop_flat_map(|t| (Just(t), 0..=t))
                .prop_flat_map(|(t, ok)| (Just(t), Just(ok), 0..=t - ok)),
        ) {
            let tally = Tally { total, succeeded: ok, failed: bad };
            if s.evaluate(tally) == Verdict::Pending {
                let rest = tally.remaining();
                let all_ok = s.evaluate(Tally { succeeded: ok + rest, ..tally });
                let all_bad = s.evaluate(Tally { failed: bad + rest, ..tally });
                prop_assert!(rest > 0);
                if s != Strategy::PartialTimeout {
                    prop_assert_eq!(all_ok, Verdict::Succeeded);
                    prop_assert_eq!(all_bad, Verdict::Failed);
                }
            }
        }
    }

    proptest! {
        /// A split that passes validation can succeed: when every branch succeeds, it does.
        #[test]
        fn valid_splits_are_satisfiable(s in strategy(), branches in 0usize..10) {
            if s.validate_split(branches, true, None).is_ok() {
                let all_ok = Tally { total: branches, succeeded: branches, failed: 0 };
                prop_assert_eq!(s.decide(all_ok, false), Verdict::Succeeded);
            } else {
                let need = s.required(branches).unwrap_or(0);
                prop_assert!(branches == 0 || need > branches);
            }
        }
    }
}
