//! Retry modes and the delay before each retry.
//!
//! Delays follow the Rust crate exactly: whole milliseconds, exponential growth capped at
//! `max_delay`, then a symmetric jitter that may push a delay above the cap, and a 1 ms
//! floor whenever the base delay is non-zero.

use std::time::Duration;

/// How a failing task is retried. `Copy`, so every attempt loop owns its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryMode {
    /// One attempt, no retries.
    None,
    /// `retries` retries after the first attempt, each after the same `delay`.
    Fixed { retries: u32, delay: Duration },
    /// `max_retries` retries, waiting `base_delay * multiplier^k` (capped, jittered).
    Exponential {
        max_retries: u32,
        base_delay: Duration,
        multiplier: f64,
        max_delay: Duration,
        jitter: f64,
    },
}

/// The default of `TaskConfig()`: 3 retries from 100 ms, doubling, capped at 30 s, ±10 %.
impl Default for RetryMode {
    fn default() -> Self {
        RetryMode::exponential(3)
    }
}

/// Why an attempt failed, as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The task raised an exception. `listed` says whether its type is among the task's
    /// `retry_on` types (`None`: the task has no `retry_on` list); `programming` marks the
    /// engine's own "you called it wrong" errors (unknown resource key, wrong resource type,
    /// invalid configuration, unknown next state), which retrying cannot fix.
    Raised { listed: Option<bool>, programming: bool },
    /// The attempt ran past its attempt timeout (`listed` as for `Raised`, for the timeout
    /// error's type).
    TimedOut { listed: Option<bool> },
    /// The run itself is being stopped: its token fired, its total timeout expired, or the
    /// asyncio task awaiting it was cancelled. Never retried, never wrapped.
    Interrupted,
    /// `KeyboardInterrupt`, `SystemExit` and other non-`Exception`s: never retried or wrapped.
    Fatal,
}

/// How a task that gives up reports its failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The error is already the engine's (an attempt timeout): raise it unchanged.
    AsIs,
    /// One attempt (or a failure that is not retried): `TaskError` with the cause.
    TaskError,
    /// Every allowed attempt failed: `RetryExhaustedError(attempts)` with the last cause.
    Exhausted { attempts: u32 },
}

/// The retry loop's decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start the next attempt after this delay.
    RetryAfter(Duration),
    /// The task failed: report it so.
    GiveUp(Report),
    /// End the run with the error exactly as raised.
    Propagate,
}

/// Consecutive failures of a loop that tolerates some (a poll loop's
/// `PollErrorPolicy.retry_on_error(n)`, a stream's `StreamErrorPolicy.retry_on_error(n)`):
/// any success resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorStreak {
    tolerated: u32,
    count: u32,
}

impl ErrorStreak {
    /// Tolerates `tolerated` consecutive failures; the next one gives up (0 = fail fast).
    pub fn new(tolerated: u32) -> Self {
        ErrorStreak { tolerated, count: 0 }
    }

    /// Records a failure; true when the loop must give up.
    pub fn failed(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count > self.tolerated
    }

    /// Records a success: the streak starts over.
    pub fn succeeded(&mut self) {
        self.count = 0;
    }

    /// Consecutive failures so far.
    pub fn count(&self) -> u32 {
        self.count
    }
}

impl RetryMode {
    /// Exponential backoff with the upstream defaults.
    pub fn exponential(max_retries: u32) -> Self {
        Self::exponential_custom(
            max_retries,
            Duration::from_millis(100),
            2.0,
            Duration::from_secs(30),
            0.1,
        )
    }

    /// Exponential backoff with every knob; `jitter` is clamped to `[0, 1]`.
    pub fn exponential_custom(
        max_retries: u32,
        base_delay: Duration,
        multiplier: f64,
        max_delay: Duration,
        jitter: f64,
    ) -> Self {
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        RetryMode::Exponential { max_retries, base_delay, multiplier, max_delay, jitter }
    }

    /// Number of retries after the first attempt.
    pub fn retries(&self) -> u32 {
        match *self {
            RetryMode::None => 0,
            RetryMode::Fixed { retries, .. } => retries,
            RetryMode::Exponential { max_retries, .. } => max_retries,
        }
    }

    /// Total number of attempts allowed (retries + 1).
    pub fn max_attempts(&self) -> u32 {
        self.retries().saturating_add(1)
    }

    /// Delay before the retry that follows the failed attempt with 0-based index `k`, or
    /// `None` when no retry is left. `unit` is a uniform sample in `[-1, 1]` for jitter.
    pub fn delay_with(&self, k: u32, unit: f64) -> Option<Duration> {
        if k >= self.retries() {
            return None;
        }
        match *self {
            RetryMode::None => None,
            RetryMode::Fixed { delay, .. } => Some(delay),
            RetryMode::Exponential { base_delay, multiplier, max_delay, jitter, .. } => {
                let base_ms = base_delay.as_millis() as f64;
                let max_ms = max_delay.as_millis() as f64;
                let multiplier =
                    if multiplier.is_finite() && multiplier > 0.0 { multiplier } else { 1.0 };
                let grown = base_ms * multiplier.powi(k.min(i32::MAX as u32) as i32);
                let capped = if grown.is_finite() { grown.min(max_ms) } else { max_ms };
                let jittered = (capped * (1.0 + jitter * unit.clamp(-1.0, 1.0))).max(0.0);
                let mut ms = if jittered >= u64::MAX as f64 { u64::MAX } else { jittered as u64 };
                if base_ms > 0.0 {
                    ms = ms.max(1);
                }
                Some(Duration::from_millis(ms))
            }
        }
    }

    /// [`Self::delay_with`] with a fresh random jitter sample.
    pub fn delay_for_attempt(&self, k: u32) -> Option<Duration> {
        self.delay_with(k, fastrand::f64() * 2.0 - 1.0)
    }

    /// What the retry loop does after attempt number `attempt` (1-based) failed with
    /// `failure`: the one place where retrying is decided.
    pub fn decide(&self, attempt: u32, failure: Failure) -> Decision {
        self.decide_with(attempt, failure, fastrand::f64() * 2.0 - 1.0)
    }

    /// [`Self::decide`] with a given jitter sample in `[-1, 1]`.
    pub fn decide_with(&self, attempt: u32, failure: Failure, unit: f64) -> Decision {
        let (retryable, engine_made) = match failure {
            Failure::Interrupted | Failure::Fatal => return Decision::Propagate,
            // A listed type is retried even when it is a programming error: the user asked.
            Failure::Raised { listed: Some(listed), .. } => (listed, false),
            Failure::Raised { listed: None, programming } => (!programming, false),
            Failure::TimedOut { listed } => (listed.unwrap_or(true), true),
        };
        if retryable {
            if let Some(delay) = self.delay_with(attempt.saturating_sub(1), unit) {
                return Decision::RetryAfter(delay);
            }
        }
        Decision::GiveUp(if engine_made && (attempt <= 1 || !retryable) {
            Report::AsIs
        } else if attempt > 1 && retryable {
            Report::Exhausted { attempts: attempt }
        } else {
            Report::TaskError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_is_four_attempts_of_exponential_backoff() {
        let m = RetryMode::default();
        assert_eq!(m.max_attempts(), 4);
        assert_eq!(m.delay_with(0, 0.0), Some(ms(100)));
        assert_eq!(m.delay_with(1, 0.0), Some(ms(200)));
        assert_eq!(m.delay_with(2, 0.0), Some(ms(400)));
        assert_eq!(m.delay_with(3, 0.0), None);
    }

    #[test]
    fn none_never_retries() {
        assert_eq!(RetryMode::None.max_attempts(), 1);
        assert_eq!(RetryMode::None.delay_with(0, 0.0), None);
        assert_eq!(RetryMode::None.decide_with(1, USER, 0.0), Decision::GiveUp(Report::TaskError));
    }

    #[test]
    fn fixed_delay_is_constant() {
        let m = RetryMode::Fixed { retries: 2, delay: ms(50) };
        assert_eq!(m.max_attempts(), 3);
        assert_eq!(m.delay_with(0, 1.0), Some(ms(50)));
        assert_eq!(m.delay_with(1, -1.0), Some(ms(50)));
        assert_eq!(m.delay_with(2, 0.0), None);
        assert_eq!(
            m.decide_with(3, USER, 0.0),
            Decision::GiveUp(Report::Exhausted { attempts: 3 })
        );
        assert_eq!(m.decide_with(2, USER, 0.0), Decision::RetryAfter(ms(50)));
    }

    #[test]
    fn exponential_caps_then_jitters_above_the_cap() {
        let m = RetryMode::exponential_custom(10, ms(100), 2.0, ms(1000), 0.1);
        assert_eq!(m.delay_with(5, 0.0), Some(ms(1000)));
        assert_eq!(m.delay_with(5, 1.0), Some(ms(1100)));
        assert_eq!(m.delay_with(5, -1.0), Some(ms(900)));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let m = RetryMode::exponential(3);
        for _ in 0..1000 {
            let d = m.delay_for_attempt(0).unwrap();
            assert!(d >= ms(90) && d <= ms(110), "{d:?}");
        }
    }

    #[test]
    fn sub_millisecond_base_truncates_to_zero() {
        let m = RetryMode::exponential_custom(2, Duration::from_micros(500), 2.0, ms(10), 0.0);
        assert_eq!(m.delay_with(0, 0.0), Some(Duration::ZERO));
    }

    #[test]
    fn one_millisecond_floor_when_base_is_positive() {
        let m = RetryMode::exponential_custom(2, ms(1), 2.0, ms(10), 1.0);
        assert_eq!(m.delay_with(0, -1.0), Some(ms(1)));
    }

    #[test]
    fn bad_multiplier_and_jitter_are_neutralised() {
        let m = RetryMode::exponential_custom(3, ms(100), f64::NAN, ms(1000), f64::NAN);
        assert_eq!(m.delay_with(2, 1.0), Some(ms(100)));
        let m = RetryMode::exponential_custom(3, ms(100), -3.0, ms(1000), 5.0);
        assert_eq!(m.delay_with(1, 1.0), Some(ms(200)));
    }

    const USER: Failure = Failure::Raised { listed: None, programming: false };

    #[test]
    fn decide_retries_then_reports_exhaustion() {
        let m = RetryMode::Fixed { retries: 2, delay: ms(5) };
        assert_eq!(m.decide_with(1, USER, 0.0), Decision::RetryAfter(ms(5)));
        assert_eq!(m.decide_with(2, USER, 0.0), Decision::RetryAfter(ms(5)));
        assert_eq!(
            m.decide_with(3, USER, 0.0),
            Decision::GiveUp(Report::Exhausted { attempts: 3 })
        );
        assert_eq!(RetryMode::None.decide_with(1, USER, 0.0), Decision::GiveUp(Report::TaskError));
    }

    #[test]
    fn decide_never_retries_interruptions_or_fatal_errors() {
        let m = RetryMode::exponential(5);
        assert_eq!(m.decide_with(1, Failure::Interrupted, 0.0), Decision::Propagate);
        assert_eq!(m.decide_with(1, Failure::Fatal, 0.0), Decision::Propagate);
    }

    #[test]
    fn decide_gives_up_on_unlisted_types_and_programming_errors() {
        let m = RetryMode::exponential(5);
        let unlisted = Failure::Raised { listed: Some(false), programming: false };
        assert_eq!(m.decide_with(1, unlisted, 0.0), Decision::GiveUp(Report::TaskError));
        let bug = Failure::Raised { listed: None, programming: true };
        assert_eq!(m.decide_with(1, bug, 0.0), Decision::GiveUp(Report::TaskError));
        // Listing a type retries it, even a programming error's.
        let listed_bug = Failure::Raised { listed: Some(true), programming: true };
        assert!(matches!(m.decide_with(1, listed_bug, 0.0), Decision::RetryAfter(_)));
    }

    #[test]
    fn decide_reports_a_lone_timeout_as_is() {
        let timeout = Failure::TimedOut { listed: None };
        assert_eq!(RetryMode::None.decide_with(1, timeout, 0.0), Decision::GiveUp(Report::AsIs));
        let m = RetryMode::Fixed { retries: 1, delay: ms(1) };
        assert_eq!(m.decide_with(1, timeout, 0.0), Decision::RetryAfter(ms(1)));
        assert_eq!(
            m.decide_with(2, timeout, 0.0),
            Decision::GiveUp(Report::Exhausted { attempts: 2 })
        );
        let unlisted = Failure::TimedOut { listed: Some(false) };
        assert_eq!(m.decide_with(2, unlisted, 0.0), Decision::GiveUp(Report::AsIs));
    }

    #[test]
    fn error_streak_tolerates_then_gives_up_and_resets_on_success() {
        let mut s = ErrorStreak::new(2);
        assert!(!s.failed());
        assert!(!s.failed());
        s.succeeded();
        assert!(!s.failed());
        assert!(!s.failed());
        assert!(s.failed());
        assert!(ErrorStreak::new(0).failed());
    }

    proptest::proptest! {
        /// A retryable failure is retried exactly `retries` times, then reported as
        /// exhausted (or as a TaskError when only one attempt was allowed).
        #[test]
        fn decide_allows_exactly_max_attempts(retries in 0u32..20, unit in -1.0f64..=1.0) {
            let m = RetryMode::Fixed { retries, delay: ms(1) };
            for attempt in 1..=retries {
                proptest::prop_assert!(matches!(m.decide_with(attempt, USER, unit), Decision::RetryAfter(_)));
            }
            let last = m.decide_with(retries + 1, USER, unit);
            if retries == 0 {
                proptest::prop_assert_eq!(last, Decision::GiveUp(Report::TaskError));
            } else {
                proptest::prop_assert_eq!(last, Decision::GiveUp(Report::Exhausted { attempts: retries + 1 }));
            }
        }
    }

    #[test]
    fn huge_attempt_index_saturates_at_the_cap() {
        let m = RetryMode::exponential_custom(u32::MAX, ms(100), 10.0, ms(5000), 0.0);
        assert_eq!(m.delay_with(4000, 0.0), Some(ms(5000)));
        assert_eq!(m.max_attempts(), u32::MAX);
    }
}
