//! Rows and summaries between Python and the core store, and the store's errors.

use cano_core::checkpoint::{Row, RowKind, RunSummary, StoreError, Timed};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors;

static CHECKPOINT_ROW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ROW_KIND: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn rows_to_python(py: Python<'_>, rows: Vec<Row>) -> PyResult<Bound<'_, PyList>> {
    let row_class = CHECKPOINT_ROW.import(py, "cano.store", "CheckpointRow")?;
    let kind_class = ROW_KIND.import(py, "cano.store", "RowKind")?;
    let kinds = [kind_class.call1((0,))?, kind_class.call1((1,))?, kind_class.call1((2,))?];
    let list = PyList::empty(py);
    for r in rows {
        let output = r.output.map(|b| PyBytes::new(py, &b));
        list.append(row_class.call1((
            r.workflow_id,
            r.sequence,
            r.state,
            r.task_id,
            &kinds[r.kind as usize],
            output,
            r.workflow_version,
        ))?)?;
    }
    Ok(list)
}

/// Rows with their times as `(sequence, state, task_id, kind value, output, at)` tuples, `at`
/// in UNIX seconds (`None` for rows of earlier builds, which did not record it): what
/// `cano.records.build_steps` takes.
pub(super) fn timed_to_python(py: Python<'_>, rows: Vec<Timed>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for (r, at) in rows {
        let output = r.output.map(|b| PyBytes::new(py, &b));
        let at = (at > 0).then(|| at as f64 / 1e6);
        list.append((r.sequence, r.state, r.task_id, r.kind as u8, output, at))?;
    }
    Ok(list)
}

pub(super) fn summaries_to_python(
    py: Python<'_>,
    runs: Vec<RunSummary>,
) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for r in runs {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "workflow_id"), r.workflow_id)?;
        d.set_item(intern!(py, "rows"), r.rows)?;
        d.set_item(intern!(py, "last_state"), r.last_state)?;
        d.set_item(intern!(py, "last_sequence"), r.last_sequence)?;
        list.append(d)?;
    }
    Ok(list)
}

pub(super) fn checkpoint_error(py: Python<'_>, err: &StoreError) -> PyErr {
    errors::checkpoint(py, err.to_string())
}

pub(super) fn row_kind(py: Python<'_>, value: u8) -> PyResult<RowKind> {
    RowKind::from_u8(value).ok_or_else(|| {
        errors::checkpoint(
            py,
            format!(
            "unknown checkpoint row kind {value} (0 state entry, 1 compensation, 2 step cursor)"
        ),
        )
    })
}

/// The path a store is opened at: a `str` or an `os.PathLike`, without NUL bytes (which the
/// operating system would cut the name at, silently opening another file).
pub(super) fn store_path(value: &Bound<'_, PyAny>) -> PyResult<std::path::PathBuf> {
    let py = value.py();
    let shown = || value.repr().map(|r| r.to_string()).unwrap_or_default();
    let fspath = py.import("os").and_then(|os| os.call_method1("fspath", (value,)));
    let text: String = match fspath.and_then(|p| p.extract::<String>()) {
        Ok(t) => t,
        Err(_) => {
            return Err(errors::configuration(
                py,
                format!("a store path must be a str or an os.PathLike of str, got {}", shown()),
            ))
        }
    };
    if text.is_empty() || text.contains('\0') {
        return Err(errors::configuration(
            py,
            format!(
                "a store path must be a non-empty file name without NUL bytes, got {}",
                shown()
            ),
        ));
    }
    Ok(std::path::PathBuf::from(text))
}
