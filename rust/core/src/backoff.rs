//! The scheduler's backoff after failed runs, and when a flow trips.
//!
//! After the `streak`-th consecutive failure a scheduled flow waits
//! `initial · multiplier^(streak − 1)` seconds, capped at `max_delay`, jittered by
//! ± `jitter` (a fraction) and capped again, so jitter never pushes a delay past the cap
//! (unlike task retries, see [`crate::retry`]). With a `streak_limit`, a streak that reaches
//! it trips the flow instead: no more scheduled runs until it is reset.

use crate::duration::check_secs;

/// An invalid backoff policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid backoff policy: {0}")]
pub struct BackoffError(pub String);

/// How long a failing flow rests before its next scheduled run, and when it gives up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    initial: f64,
    multiplier: f64,
    max_delay: f64,
    jitter: f64,
    streak_limit: Option<u32>,
}

/// 1 s, doubling, capped at 5 minutes, ± 10 %, never trips.
impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: 1.0,
            multiplier: 2.0,
            max_delay: 300.0,
            jitter: 0.1,
            streak_limit: None,
        }
    }
}

impl BackoffPolicy {
    /// A validated policy. Delays are seconds (finite, between 0 and
    /// [`crate::MAX_SECONDS`]); `multiplier` must be finite and `>= 1`; `jitter` a fraction
    /// in `[0, 1]`; `streak_limit`, when given, at least 1 (1 trips on the first failure).
    pub fn new(
        initial: f64,
        multiplier: f64,
        max_delay: f64,
        jitter: f64,
        streak_limit: Option<u32>,
    ) -> Result<Self, BackoffError> {
        let bad = |what: String| BackoffError(what);
        check_secs(initial).map_err(|e| bad(format!("initial: {e}")))?;
        check_secs(max_delay).map_err(|e| bad(format!("max_delay: {e}")))?;
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(bad(format!("multiplier must be a finite number >= 1, got {multiplier}")));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(bad(format!("jitter must be a fraction between 0 and 1, got {jitter}")));
        }
        if streak_limit == Some(0) {
            return Err(bad("streak_limit must be at least 1 (1 trips on the first failure), \
                            got 0"
                .into()));
        }
        Ok(BackoffPolicy { initial, multiplier, max_delay, jitter, streak_limit })
    }

    /// The default policy, tripping once `limit` (at least 1) consecutive failures happened.
    pub fn with_trip(limit: u32) -> Result<Self, BackoffError> {
        let d = Self::default();
        Self::new(d.initial, d.multiplier, d.max_delay, d.jitter, Some(limit))
    }

    /// Delay in seconds after the first failure.
    pub fn initial(&self) -> f64 {
        self.initial
    }

    /// Growth factor per further failure.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Cap in seconds, applied before and after jitter.
    pub fn max_delay(&self) -> f64 {
        self.max_delay
    }

    /// Jitter as a fraction of the capped delay.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Consecutive failures after which the flow trips (`None`: never).
    pub fn streak_limit(&self) -> Option<u32> {
        self.streak_limit
    }

    /// The delay after `streak` consecutive failures, with `unit` a jitter sample in
    /// `[-1, 1]` (clamped; NaN counts as 0). A streak of 0 is treated as 1.
    pub fn delay_with(&self, streak: u32, unit: f64) -> f64 {
        let exponent = streak.max(1) - 1;
        let grown = self.initial * self.multiplier.powi(exponent.min(i32::MAX as u32) as i32);
        let capped = if grown.is_nan() { self.max_delay } else { grown.min(self.max_delay) };
        let unit = if unit.is_nan() { 0.0 } else { unit.clamp(-1.0, 1.0) };
        let jittered = capped * (1.0 + self.jitter * unit);
        jittered.clamp(0.0, self.max_delay)
    }

    /// [`Self::delay_with`] with a fresh random jitter sample.
    pub fn compute_delay(&self, streak: u32) -> f64 {
        self.delay_with(streak, fastrand::f64() * 2.0 - 1.0)
    }

    /// True when a flow with `streak` consecutive failures must stop running.
    pub fn is_tripped(&self, streak: u32) -> bool {
        self.streak_limit.is_some_and(|limit| streak >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: f64, multiplier: f64, max_delay: f64, jitter: f64) -> BackoffPolicy {
        BackoffPolicy::new(initial, multiplier, max_delay, jitter, None).unwrap()
    }

    #[test]
    fn defaults_match_upstream() {
        let p = BackoffPolicy::default();
        assert_eq!(p.initial(), 1.0);
        assert_eq!(p.multiplier(), 2.0);
        assert_eq!(p.max_delay(), 300.0);
        assert_eq!(p.jitter(), 0.1);
        assert_eq!(p.streak_limit(), None);
        assert!(!p.is_tripped(u32::MAX));
    }

    #[test]
    fn grows_geometrically_from_the_first_failure() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delay_with(1, 0.0), 1.0);
        assert_eq!(p.delay_with(2, 0.0), 2.0);
        assert_eq!(p.delay_with(3, 0.0), 4.0);
        assert_eq!(p.delay_with(9, 0.0), 256.0);
    }

    #[test]
    fn streak_zero_counts_as_one() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delay_with(0, 0.0), p.delay_with(1, 0.0));
    }

    #[test]
    fn capped_before_and_after_jitter() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delay_with(10, 0.0), 300.0);
        // +10 % jitter on a capped delay is cut back to the cap ...
        assert_eq!(p.delay_with(10, 1.0), 300.0);
        // ... while -10 % goes below it.
        assert!((p.delay_with(10, -1.0) - 270.0).abs() < 1e-9);
    }

    #[test]
    fn jitter_is_symmetric_below_the_cap() {
        let p = policy(10.0, 2.0, 1000.0, 0.5);
        assert!((p.delay_with(1, 1.0) - 15.0).abs() < 1e-9);
        assert!((p.delay_with(1, -1.0) - 5.0).abs() < 1e-9);
        assert!((p.delay_with(1, 0.5) - 12.5).abs() < 1e-9);
        // Out-of-range and NaN samples are clamped / neutral.
        assert!((p.delay_with(1, 7.0) - 15.0).abs() < 1e-9);
        assert_eq!(p.delay_with(1, f64::NAN), 10.0);
    }

    #[test]
    fn random_jitter_stays_in_its_band() {
        let p = BackoffPolicy::default();
        for _ in 0..1000 {
            let d = p.compute_delay(3);
            assert!((3.6..=4.4).contains(&d), "{d}");
        }
    }

    #[test]
    fn huge_streaks_saturate_at_the_cap() {
        let p = policy(1.0, 10.0, 60.0, 0.0);
        assert_eq!(p.delay_with(u32::MAX, 0.0), 60.0);
        let longest = policy(1.0, 10.0, crate::MAX_SECONDS, 0.0);
        assert_eq!(longest.delay_with(u32::MAX, 0.0), crate::MAX_SECONDS);
        assert_eq!(longest.delay_with(3, 0.0), 100.0);
    }

    #[test]
    fn zero_initial_means_no_delay() {
        let p = policy(0.0, 2.0, 300.0, 0.1);
        assert_eq!(p.delay_with(5, 1.0), 0.0);
    }

    #[test]
    fn trips_when_the_streak_reaches_the_limit() {
        let p = BackoffPolicy::with_trip(3).unwrap();
        assert!(!p.is_tripped(2));
        assert!(p.is_tripped(3));
        assert!(p.is_tripped(4));
        assert!(BackoffPolicy::with_trip(1).unwrap().is_tripped(1));
        assert!(BackoffPolicy::with_trip(0).unwrap_err().to_string().contains("streak_limit"));
    }

    #[test]
    fn invalid_values_are_refused_with_the_value() {
        let cases = [
            (-1.0, 2.0, 300.0, 0.1, "initial"),
            (f64::NAN, 2.0, 300.0, 0.1, "initial"),
            (f64::INFINITY, 2.0, 300.0, 0.1, "initial"),
            (1.0, 0.5, 300.0, 0.1, "multiplier"),
            (1.0, f64::INFINITY, 300.0, 0.1, "multiplier"),
            (1.0, 2.0, -3.0, 0.1, "max_delay"),
            (1.0, 2.0, f64::INFINITY, 0.1, "max_delay"),
            (1e30, 2.0, 300.0, 0.1, "initial"),
            (1.0, 2.0, 300.0, 1.5, "jitter"),
            (1.0, 2.0, 300.0, -0.1, "jitter"),
            (1.0, 2.0, 300.0, f64::NAN, "jitter"),
        ];
        for (initial, multiplier, max_delay, jitter, what) in cases {
            let err = BackoffPolicy::new(initial, multiplier, max_delay, jitter, None).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(what), "{text}");
        }
    }
}
