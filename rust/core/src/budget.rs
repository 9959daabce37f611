//! The rollback budget of a run after a failure: how long compensations may take.

use std::time::Duration;

/// Upper bound of the default rollback budget.
pub const MAX_DEFAULT_COMPENSATION_BUDGET: Duration = Duration::from_secs(30);

/// The rollback budget once a run failed: the explicit compensation timeout when set,
/// else half the total timeout capped at 30 s, else unbounded (`None`).
pub fn compensation_budget(
    total_limit: Option<Duration>,
    explicit: Option<Duration>,
) -> Option<Duration> {
    match (explicit, total_limit) {
        (Some(e), _) => Some(e),
        (None, Some(total)) => Some((total / 2).min(MAX_DEFAULT_COMPENSATION_BUDGET)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_budget_wins() {
        let b = compensation_budget(Some(Duration::from_secs(10)), Some(Duration::from_secs(1)));
        assert_eq!(b, Some(Duration::from_secs(1)));
    }

    #[test]
    fn half_the_total_capped_at_thirty_seconds() {
        assert_eq!(
            compensation_budget(Some(Duration::from_secs(10)), None),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            compensation_budget(Some(Duration::from_secs(600)), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(compensation_budget(None, None), None);
    }
}
