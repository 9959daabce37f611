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

    /// Checks the strategy's parameters.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Strategy::Percentage(p) if !(p.is_finite() && p > 0.0 && p <= 1.0) => {
                Err(format!("JoinStrategy.percentage requires a finite value in (0, 1], got {p}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{
        any, prop, prop_assert, prop_assert_eq, prop_assert_ne, prop_assume, prop_oneof, proptest,
        Just,
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
        assert!(Strategy::Percentage(0.0).validate().is_err());
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
        fn pending_means_undecided(s in strategy(), total in 0usize..10, ok in 0usize..10, bad in 0usize..10) {
            prop_assume!(ok + bad <= total);
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
}
