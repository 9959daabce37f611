//! Cron schedules of the scheduler: six or seven fields with a seconds column, in UTC.
//!
//! Parsing and the calendar arithmetic are the `cron` crate's; this module pins down what
//! cano accepts (`sec min hour day-of-month month day-of-week [year]`, or a shorthand such
//! as `@daily`), words errors so that they quote the expression, and converts between
//! UNIX seconds and calendar time so the bindings only ever see floats.

/// A cron expression or timestamp the scheduler cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CronError {
    #[error("invalid cron expression {expr:?}: {reason}")]
    InvalidCron { expr: String, reason: String },
    #[error("timestamp {0} is not a representable UNIX time in seconds")]
    InvalidTimestamp(f64),
}
use chrono::{DateTime, Utc};
use std::str::FromStr;

/// A parsed cron expression. Immutable; cheap to query.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    schedule: ::cron::Schedule,
}

fn invalid(expr: &str, reason: impl Into<String>) -> CronError {
    CronError::InvalidCron { expr: expr.to_owned(), reason: reason.into() }
}

impl CronSchedule {
    /// Parses `expr`: six fields (seconds first) or seven (a trailing year), or a shorthand
    /// (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    ///
    /// Five-field Unix crontab lines are refused with a hint, rather than being read with
    /// every column shifted by one.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(invalid(expr, "the expression is empty"));
        }
        if !trimmed.starts_with('@') {
            let fields = trimmed.split_whitespace().count();
            if !(6..=7).contains(&fields) {
                return Err(invalid(
                    expr,
                    format!(
                        "expected 6 or 7 fields (sec min hour day month weekday [year], \
                         e.g. \"0 0 9 * * *\"), got {fields}"
                    ),
                ));
            }
        }
        let schedule =
            ::cron::Schedule::from_str(trimmed).map_err(|e| invalid(expr, e.to_string()))?;
        Ok(CronSchedule { expr: expr.to_owned(), schedule })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The first firing strictly after `after`, or `None` when the schedule never fires
    /// again (a year field in the past, or a date that does not exist such as 30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after).next()
    }

    /// [`Self::next_after`] on UNIX seconds. Sub-second instants are allowed: the firing
    /// is still strictly after them.
    pub fn next_after_unix(&self, secs: f64) -> Result<Option<f64>, CronError> {
        let after = from_unix(secs)?;
        Ok(self.next_after(after).map(to_unix))
    }
}

/// Calendar time of UNIX seconds; NaN, infinities and instants outside chrono's range
/// are refused.
pub fn from_unix(secs: f64) -> Result<DateTime<Utc>, CronError> {
    if !secs.is_finite() {
        return Err(CronError::InvalidTimestamp(secs));
    }
    let whole = secs.floor();
    // Beyond ±2^62 the cast saturates, and chrono refuses such instants anyway.
    let nanos = ((secs - whole) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
    DateTime::from_timestamp(whole as i64, nanos).ok_or(CronError::InvalidTimestamp(secs))
}

/// UNIX seconds of a calendar time.
pub fn to_unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("valid test instant")
    }

    #[test]
    fn daily_at_nine_fires_at_nine_utc() {
        let c = CronSchedule::parse("0 0 9 * * *").unwrap();
        assert_eq!(c.next_after(utc(2024, 3, 1, 8, 59, 59)), Some(utc(2024, 3, 1, 9, 0, 0)));
        assert_eq!(c.next_after(utc(2024, 3, 1, 9, 0, 0)), Some(utc(2024, 3, 2, 9, 0, 0)));
    }

    #[test]
    fn next_is_strictly_after_even_on_a_firing() {
        let c = CronSchedule::parse("*/10 * * * * *").unwrap();
        let t = utc(2024, 1, 1, 0, 0, 10);
        assert_eq!(c.next_after(t), Some(utc(2024, 1, 1, 0, 0, 20)));
    }

    #[test]
    fn sub_second_instants_round_up_to_the_next_firing() {
        let c = CronSchedule::parse("* * * * * *").unwrap();
        let base = to_unix(utc(2024, 1, 1, 0, 0, 0));
        assert_eq!(c.next_after_unix(base + 0.25).unwrap(), Some(base + 1.0));
        assert_eq!(c.next_after_unix(base + 0.999).unwrap(), Some(base + 1.0));
    }

    #[test]
    fn seven_fields_take_a_year_and_a_past_year_never_fires() {
        let c = CronSchedule::parse("0 0 0 1 1 * 2020").unwrap();
        assert_eq!(c.next_after(utc(2024, 1, 1, 0, 0, 0)), None);
        let c = CronSchedule::parse("0 30 12 15 6 * 2030").unwrap();
        assert_eq!(c.next_after(utc(2024, 1, 1, 0, 0, 0)), Some(utc(2030, 6, 15, 12, 30, 0)));
    }

    #[test]
    fn a_date_that_never_exists_never_fires() {
        let c = CronSchedule::parse("0 0 0 30 2 *").unwrap();
        assert_eq!(c.next_after(utc(2024, 1, 1, 0, 0, 0)), None);
    }

    #[test]
    fn shorthands_are_accepted() {
        let c = CronSchedule::parse("@hourly").unwrap();
        assert_eq!(c.next_after(utc(2024, 1, 1, 5, 10, 0)), Some(utc(2024, 1, 1, 6, 0, 0)));
    }

    #[test]
    fn ranges_lists_and_weekday_names() {
        let c = CronSchedule::parse("0 15 10 * * Mon-Fri").unwrap();
        // 2024-01-06 is a Saturday: the next firing is Monday the 8th.
        assert_eq!(c.next_after(utc(2024, 1, 6, 0, 0, 0)), Some(utc(2024, 1, 8, 10, 15, 0)));
        let c = CronSchedule::parse("0 0 6,18 * * *").unwrap();
        assert_eq!(c.next_after(utc(2024, 1, 1, 7, 0, 0)), Some(utc(2024, 1, 1, 18, 0, 0)));
    }

    #[test]
    fn five_fields_are_refused_with_a_hint_quoting_the_expression() {
        let err = CronSchedule::parse("0 9 * * *").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"0 9 * * *\""), "{text}");
        assert!(text.contains("6 or 7 fields"), "{text}");
    }

    #[test]
    fn garbage_and_out_of_range_values_are_refused() {
        for expr in ["", "   ", "not a cron", "61 * * * * *", "0 0 25 * * *", "a b c d e f"] {
            let err = CronSchedule::parse(expr).unwrap_err();
            assert!(matches!(&err, CronError::InvalidCron { expr: e, .. } if e == expr), "{err}");
        }
    }

    #[test]
    fn the_expression_is_kept_as_given() {
        let c = CronSchedule::parse(" 0 0 9 * * * ").unwrap();
        assert_eq!(c.expression(), " 0 0 9 * * * ");
    }

    #[test]
    fn bad_timestamps_are_refused() {
        let c = CronSchedule::parse("* * * * * *").unwrap();
        assert!(matches!(c.next_after_unix(f64::NAN), Err(CronError::InvalidTimestamp(_))));
        assert!(matches!(c.next_after_unix(f64::INFINITY), Err(CronError::InvalidTimestamp(_))));
        assert!(matches!(c.next_after_unix(1e300), Err(CronError::InvalidTimestamp(_))));
    }

    #[test]
    fn unix_round_trip() {
        let t = utc(2024, 2, 29, 23, 59, 59);
        assert_eq!(from_unix(to_unix(t)).unwrap(), t);
        assert_eq!(
            from_unix(-0.5).unwrap(),
            utc(1969, 12, 31, 23, 59, 59) + chrono::Duration::milliseconds(500)
        );
    }
}
