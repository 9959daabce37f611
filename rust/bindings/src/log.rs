//! The engine's records on Python's `logging.getLogger("cano")`: what an operator needs,
//! each with `workflow_id`, `state` and `attempt` in `extra=`. A level that is not enabled
//! costs one `isEnabledFor` call; the message is only built when it is.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub const DEBUG: u8 = 10;
pub const INFO: u8 = 20;
pub const WARNING: u8 = 30;

/// Logs `message()` at `level` with `extra={workflow_id, state, attempt}`; never raises
/// (a broken logging setup must not break a run).
pub fn record(
    py: Python<'_>,
    level: u8,
    workflow_id: Option<&Bound<'_, PyAny>>,
    state: &Bound<'_, PyAny>,
    attempt: u32,
    message: impl FnOnce() -> String,
) {
    let logged = (|| -> PyResult<()> {
        let logger = LOGGER
            .get_or_try_init(py, || {
                py.import("logging")?.call_method1("getLogger", ("cano",)).map(Bound::unbind)
            })?
            .bind(py);
        if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            return Ok(());
        }
        let extra = PyDict::new(py);
        extra.set_item("workflow_id", workflow_id)?;
        extra.set_item("state", state)?;
        extra.set_item("attempt", attempt)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("extra", extra)?;
        logger.call_method("log", (level, message()), Some(&kwargs))?;
        Ok(())
    })();
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}
