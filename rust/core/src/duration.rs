//! User-supplied durations: float seconds, never negative or NaN.

/// A duration that is not a number of seconds >= 0.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("duration must be a finite number of seconds >= 0, got {0}")]
pub struct DurationError(pub f64);
use std::time::Duration;

/// Checks a duration given in seconds and converts it.
///
/// Infinite values are accepted as "no limit in practice" and saturate.
pub fn from_secs(secs: f64) -> Result<Duration, DurationError> {
    if secs.is_nan() || secs < 0.0 {
        return Err(DurationError(secs));
    }
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// Checks a duration in seconds and returns it unchanged.
pub fn check_secs(secs: f64) -> Result<f64, DurationError> {
    from_secs(secs).map(|_| secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_zero_and_positive() {
        assert_eq!(from_secs(0.0).unwrap(), Duration::ZERO);
        assert_eq!(from_secs(1.5).unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_negative_and_nan() {
        assert!(matches!(from_secs(-0.1), Err(DurationError(_))));
        assert!(matches!(from_secs(f64::NAN), Err(DurationError(_))));
    }

    #[test]
    fn infinity_saturates() {
        assert_eq!(from_secs(f64::INFINITY).unwrap(), Duration::MAX);
    }
}
