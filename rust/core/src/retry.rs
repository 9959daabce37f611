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

/// What the attempt loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Try again after this delay (possibly zero).
    Retry(Duration),
    /// No attempts left: the task failed after `attempts` attempts.
    Exhausted { attempts: u32 },
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

    /// The verdict after attempt number `attempt` (1-based) failed.
    pub fn after_failure(&self, attempt: u32) -> Verdict {
        match self.delay_for_attempt(attempt.saturating_sub(1)) {
            Some(d) => Verdict::Retry(d),
            None => Verdict::Exhausted { attempts: attempt },
        }
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
        assert_eq!(RetryMode::None.after_failure(1), Verdict::Exhausted { attempts: 1 });
    }

    #[test]
    fn fixed_delay_is_constant() {
        let m = RetryMode::Fixed { retries: 2, delay: ms(50) };
        assert_eq!(m.max_attempts(), 3);
        assert_eq!(m.delay_with(0, 1.0), Some(ms(50)));
        assert_eq!(m.delay_with(1, -1.0), Some(ms(50)));
        assert_eq!(m.delay_with(2, 0.0), None);
        assert_eq!(m.after_failure(3), Verdict::Exhausted { attempts: 3 });
        assert_eq!(m.after_failure(2), Verdict::Retry(ms(50)));
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

    #[test]
    fn huge_attempt_index_saturates_at_the_cap() {
        let m = RetryMode::exponential_custom(u32::MAX, ms(100), 10.0, ms(5000), 0.0);
        assert_eq!(m.delay_with(4000, 0.0), Some(ms(5000)));
        assert_eq!(m.max_attempts(), u32::MAX);
    }
}
