//! Durations given by users: `float`/`int` seconds or `datetime.timedelta`.

use crate::errors;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

/// Reads a duration in seconds, refusing negative, NaN and non-duration values with a
/// `ConfigurationError` that names `what`.
pub fn seconds(value: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    let py = value.py();
    let secs: f64 = if value.is_instance_of::<PyFloat>()
        || (value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>())
    {
        value.extract()?
    } else if let Ok(total) = value.call_method0(intern!(py, "total_seconds")) {
        total.extract()?
    } else {
        let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
        return Err(errors::configuration(
            py,
            format!("{what}: expected seconds (int or float) or a timedelta, got {shown}"),
        ));
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
