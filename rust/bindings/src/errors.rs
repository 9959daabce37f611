//! The one place where engine failures become Python exceptions.
//!
//! The exception classes are real Python classes (`cano/errors.py`) so that they carry
//! attributes and can be raised by user code too; the dispatcher builds them through
//! `cano.errors._make`, which also links the user's exception as `__cause__`.

use cano_core::CoreError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

static MAKE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Where in a run an error happened: state label, attempt and path of labels.
pub struct Context<'py> {
    pub state: Option<Bound<'py, PyAny>>,
    pub attempt: Option<u32>,
    pub path: Option<Bound<'py, PyList>>,
}

impl<'py> Context<'py> {
    pub fn none() -> Self {
        Context { state: None, attempt: None, path: None }
    }
}

/// Builds the Python exception `kind` (a class name in `cano.errors`).
pub fn make<'py>(
    py: Python<'py>,
    kind: &str,
    message: String,
    ctx: Context<'py>,
    cause: Option<Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyErr {
    let built = MAKE
        .import(py, "cano.errors", "_make")
        .and_then(|f| f.call1((kind, message, ctx.state, ctx.attempt, ctx.path, cause, extra)));
    match built {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

static CANO_ERROR: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();

/// True for instances of `cano.CanoError`.
pub fn is_cano_error(py: Python<'_>, value: &Bound<'_, pyo3::exceptions::PyBaseException>) -> bool {
    CANO_ERROR
        .import(py, "cano.errors", "CanoError")
        .is_ok_and(|c| value.is_instance(c).unwrap_or(false))
}

/// A `ConfigurationError` with no run context.
pub fn configuration(py: Python<'_>, message: String) -> PyErr {
    make(py, "ConfigurationError", message, Context::none(), None, None)
}

/// Maps a duration error to `ConfigurationError`, naming what the duration was for.
pub fn duration(py: Python<'_>, what: &str, err: CoreError) -> PyErr {
    configuration(py, format!("{what}: {err}"))
}
