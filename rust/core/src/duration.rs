//! User-supplied durations: float seconds, finite, between 0 and [`MAX_SECONDS`].

use std::time::Duration;

/// The longest duration accepted anywhere: 10⁹ seconds (about 31.7 years). Longer waits,
/// timeouts and periods are almost certainly mistakes (`1e30` for "never"), and refusing
/// them keeps every deadline computation in range.
pub const MAX_SECONDS: f64 = 1e9;

/// A duration that is not a finite number of seconds between 0 and [`MAX_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("duration must be a finite number of seconds between 0 and 1e9 (about 31 years), got {0}")]
pub struct DurationError(pub f64);

/// Checks a duration given in seconds and converts it.
pub fn from_secs(secs: f64) -> Result<Duration, DurationError> {
    check_secs(secs).map(Duration::from_secs_f64)
}

/// Checks a duration in seconds and returns it unchanged.
pub fn check_secs(secs: f64) -> Result<f64, DurationError> {
    if (0.0..=MAX_SECONDS).contains(&secs) {
        Ok(secs)
    } else {
        Err(DurationError(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_zero_and_positive() {
        assert_eq!(from_secs(0.0).unwrap(), Duration::ZERO);
        assert_eq!(from_secs(1.5).unwrap(), Duration::from_millis(1500));
        assert_eq!(from_secs(MAX_SECONDS).unwrap(), Duration::from_secs(1_000_000_000));
    }

    #[test]
    fn rejects_negative_nan_infinite_and_huge() {
        for bad in
            [-0.1, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.9e19, 1e30, MAX_SECONDS * 1.01]
        {
            assert!(matches!(from_secs(bad), Err(DurationError(_))), "{bad} accepted");
        }
    }

    proptest! {
        /// Every f64 is either a duration that round-trips within a nanosecond or an error;
        /// nothing panics.
        #[test]
        fn any_float_is_a_duration_or_an_error(bits in any::<u64>()) {
            let secs = f64::from_bits(bits);
            match from_secs(secs) {
                Ok(d) => prop_assert!((d.as_secs_f64() - secs).abs() <= 1e-9 * secs.max(1.0)),
                Err(DurationError(x)) => prop_assert!(!(0.0..=MAX_SECONDS).contains(&x)),
            }
        }
    }
}
