//! Values given by users to constructors and configuration methods: durations, counts,
//! real numbers and instances of cano's classes.
//!
//! Every reader takes the raw Python object and names what it is for (`what`, e.g.
//! `"RetryMode.fixed(retries)"`), so a wrong value is a `ConfigurationError` naming the
//! parameter and the value, never a bare `TypeError`/`OverflowError` or a panic.

use crate::errors;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};
use std::time::Duration;

/// `repr(value)`, cut to a readable length.
pub fn shown(value: &Bound<'_, PyAny>) -> String {
    let text = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "<unprintable>".into());
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn refuse(value: &Bound<'_, PyAny>, what: &str, expected: &str) -> PyErr {
    errors::configuration(value.py(), format!("{what}: expected {expected}, got {}", shown(value)))
}

fn is_int(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>()
}

/// A real number (int or float, not bool) as `f64`; ints too large for a float are refused.
fn real(value: &Bound<'_, PyAny>, what: &str, expected: &str) -> PyResult<f64> {
    if value.is_instance_of::<PyFloat>() || is_int(value) {
        if let Ok(x) = value.extract::<f64>() {
            return Ok(x);
        }
    }
    Err(refuse(value, what, expected))
}

/// Reads a duration in seconds (int, float or `datetime.timedelta`): finite, between 0 and
/// [`cano_core::MAX_SECONDS`].
pub fn seconds(value: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    const EXPECTED: &str = "seconds (int or float) or a timedelta";
    let py = value.py();
    let secs = if value.is_instance_of::<PyFloat>() || is_int(value) {
        real(value, what, EXPECTED)?
    } else if value.is_instance(&py.import(intern!(py, "datetime"))?.getattr("timedelta")?)? {
        value.call_method0(intern!(py, "total_seconds"))?.extract()?
    } else {
        return Err(refuse(value, what, EXPECTED));
    };
    cano_core::check_secs(secs).map_err(|e| errors::duration(py, what, e))
}

/// [`seconds`] for an optional value (`None` stays `None`).
pub fn optional_seconds(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<f64>> {
    match value {
        Some(v) if !v.is_none() => seconds(v, what).map(Some),
        _ => Ok(None),
    }
}

/// [`seconds`] as a `Duration`.
pub fn duration(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    let secs = seconds(value, what)?;
    cano_core::duration_from_secs(secs).map_err(|e| errors::duration(value.py(), what, e))
}

/// An int (not bool) between `min` and `T::MAX`.
pub fn count<T>(value: &Bound<'_, PyAny>, what: &str, min: T) -> PyResult<T>
where
    T: for<'a, 'py> FromPyObject<'a, 'py> + PartialOrd + Copy + std::fmt::Display + Bounded,
{
    if is_int(value) {
        if let Ok(n) = value.extract::<T>() {
            if n >= min {
                return Ok(n);
            }
        }
    }
    Err(refuse(value, what, &format!("an int between {min} and {}", T::MAX_VALUE)))
}

/// [`count`] for an optional value (`None` stays `None`).
pub fn optional_count<T>(
    value: Option<&Bound<'_, PyAny>>,
    what: &str,
    min: T,
) -> PyResult<Option<T>>
where
    T: for<'a, 'py> FromPyObject<'a, 'py> + PartialOrd + Copy + std::fmt::Display + Bounded,
{
    match value {
        Some(v) if !v.is_none() => count(v, what, min).map(Some),
        _ => Ok(None),
    }
}

/// The largest value of an integer type, for messages.
pub trait Bounded {
    const MAX_VALUE: Self;
}

macro_rules! bounded {
    ($($t:ty),*) => { $(impl Bounded for $t { const MAX_VALUE: Self = <$t>::MAX; })* };
}
bounded!(u32, u64, i64);

/// A finite real number (int or float, not bool) within `[min, max]`.
pub fn number(value: &Bound<'_, PyAny>, what: &str, min: f64, max: f64) -> PyResult<f64> {
    let expected = if min == f64::MIN && max == f64::MAX {
        "a finite number".to_string()
    } else if max == f64::MAX {
        format!("a finite number >= {min}")
    } else {
        format!("a number between {min} and {max}")
    };
    match real(value, what, &expected) {
        Ok(x) if x.is_finite() && x >= min && x <= max => Ok(x),
        _ => Err(refuse(value, what, &expected)),
    }
}

/// An instance of the pyclass `T` (named `class` in the message).
pub fn instance<'py, T: pyo3::PyTypeCheck>(
    value: &Bound<'py, PyAny>,
    what: &str,
    class: &str,
) -> PyResult<Bound<'py, T>> {
    value.cast::<T>().cloned().map_err(|_| refuse(value, what, &format!("a {class}")))
}

/// A `str` (any content; callers check what they need of it).
pub fn text(value: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    if let Ok(s) = value.cast::<pyo3::types::PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    Err(refuse(value, what, "a str"))
}

/// [`seconds`] for Python code: `cano._values.seconds`.
#[pyfunction]
#[pyo3(name = "_seconds")]
pub fn py_seconds(value: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    seconds(value, what)
}

/// [`count`] for Python code: an int between `min` and 2⁶³ − 1 (`cano._values.count`).
#[pyfunction]
#[pyo3(name = "_count")]
pub fn py_count(value: &Bound<'_, PyAny>, what: &str, min: i64) -> PyResult<i64> {
    count::<i64>(value, what, min)
}

/// [`number`] for Python code (`cano._values.number`).
#[pyfunction]
#[pyo3(name = "_number")]
pub fn py_number(value: &Bound<'_, PyAny>, what: &str, min: f64, max: f64) -> PyResult<f64> {
    number(value, what, min, max)
}
