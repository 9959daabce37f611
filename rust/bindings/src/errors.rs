//! The one place where engine failures become Python exceptions.
//!
//! [`EngineError`] names every failure the engine raises; [`EngineError::into_py`] is its
//! one mapping to the exception classes of `cano/errors.py` (real Python classes, so that
//! they carry attributes and can be raised by user code and custom stores too). A user's
//! exception becomes the engine error's `__cause__`, and its description ends the message.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyType};

/// Where in a run an error happened: state label, attempt and path of labels.
pub struct Context<'py> {
    pub state: Option<Bound<'py, PyAny>>,
    pub attempt: Option<u32>,
    pub path: Option<Bound<'py, PyList>>,
}

impl Context<'_> {
    /// No run: configuration and store errors raised outside a run.
    pub fn none() -> Self {
        Context { state: None, attempt: None, path: None }
    }
}

/// Every kind of failure the engine raises, with the attributes its class carries.
pub enum EngineError<'py> {
    /// `ConfigurationError`: an invalid workflow, task or value.
    Configuration,
    /// `WorkflowError`: the run cannot continue; `exceptions` lists a failed split's errors.
    Workflow { exceptions: Option<Bound<'py, PyList>> },
    /// `TaskError`: a task raised (no retries, or a failure that is not retried).
    Task,
    /// `RetryExhaustedError`: every allowed attempt failed.
    RetryExhausted { attempts: u32 },
    /// `TaskTimeoutError`: an attempt ran past its attempt timeout.
    TaskTimeout,
    /// `WorkflowTimeoutError`: the run ran past its total timeout.
    WorkflowTimeout { elapsed: f64, limit: f64 },
    /// `WorkflowCancelledError`: the run's token fired.
    Cancelled,
    /// `CircuitOpenError`: a breaker refused the attempt.
    CircuitOpen,
    /// `RateLimitedError`: a limiter tier refused.
    RateLimited { tier: String, retry_after: f64 },
    /// `CheckpointError`: the store failed or its log cannot be used.
    Checkpoint,
    /// `WorkflowVersionMismatchError`: the log was written by another version.
    VersionMismatch { stored: u32, expected: u32 },
    /// `CompensationFailedError`: the rollback failed; `errors` = original, then each.
    CompensationFailed { errors: Bound<'py, PyList> },
}

const CLASS_COUNT: usize = 12;
static CLASSES: [PyOnceLock<Py<PyType>>; CLASS_COUNT] = [const { PyOnceLock::new() }; CLASS_COUNT];

impl<'py> EngineError<'py> {
    fn class_index(&self) -> (usize, &'static str) {
        match self {
            EngineError::Configuration => (0, "ConfigurationError"),
            EngineError::Workflow { .. } => (1, "WorkflowError"),
            EngineError::Task => (2, "TaskError"),
            EngineError::RetryExhausted { .. } => (3, "RetryExhaustedError"),
            EngineError::TaskTimeout => (4, "TaskTimeoutError"),
            EngineError::WorkflowTimeout { .. } => (5, "WorkflowTimeoutError"),
            EngineError::Cancelled => (6, "WorkflowCancelledError"),
            EngineError::CircuitOpen => (7, "CircuitOpenError"),
            EngineError::RateLimited { .. } => (8, "RateLimitedError"),
            EngineError::Checkpoint => (9, "CheckpointError"),
            EngineError::VersionMismatch { .. } => (10, "WorkflowVersionMismatchError"),
            EngineError::CompensationFailed { .. } => (11, "CompensationFailedError"),
        }
    }

    /// The Python class of this kind of failure.
    pub fn class(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyType>> {
        let (i, name) = self.class_index();
        CLASSES[i].import(py, "cano.errors", name)
    }

    /// Builds the exception: `message` (followed by the cause's description), the context,
    /// this kind's attributes, and `cause` as `__cause__`.
    pub fn into_py(
        self,
        py: Python<'py>,
        message: String,
        ctx: Context<'py>,
        cause: Option<Bound<'py, PyAny>>,
    ) -> PyErr {
        match self.build(py, message, ctx, cause) {
            Ok(e) => e,
            Err(e) => e,
        }
    }

    fn build(
        self,
        py: Python<'py>,
        mut message: String,
        ctx: Context<'py>,
        cause: Option<Bound<'py, PyAny>>,
    ) -> PyResult<PyErr> {
        let class = self.class(py)?.clone();
        let kwargs = PyDict::new(py);
        kwargs.set_item("state", ctx.state)?;
        kwargs.set_item("attempt", ctx.attempt)?;
        kwargs.set_item("path", ctx.path)?;
        match self {
            EngineError::Workflow { exceptions: Some(list) } => {
                kwargs.set_item("exceptions", list)?
            }
            EngineError::RetryExhausted { attempts } => kwargs.set_item("attempts", attempts)?,
            EngineError::WorkflowTimeout { elapsed, limit } => {
                kwargs.set_item("elapsed", elapsed)?;
                kwargs.set_item("limit", limit)?;
            }
            EngineError::RateLimited { tier, retry_after } => {
                kwargs.set_item("tier", tier)?;
                kwargs.set_item("retry_after", retry_after)?;
            }
            EngineError::VersionMismatch { stored, expected } => {
                kwargs.set_item("stored", stored)?;
                kwargs.set_item("expected", expected)?;
            }
            EngineError::CompensationFailed { errors } => kwargs.set_item("errors", errors)?,
            _ => {}
        }
        if let Some(cause) = &cause {
            message.push_str(": ");
            message.push_str(&describe(cause));
        }
        let exc = class.call((message,), Some(&kwargs))?;
        if let Some(cause) = cause {
            exc.setattr(pyo3::intern!(py, "__cause__"), cause)?;
        }
        Ok(PyErr::from_value(exc))
    }
}

/// `"TypeName: text"`, or the type name alone when the text is empty.
pub fn describe(exc: &Bound<'_, PyAny>) -> String {
    let name =
        exc.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "exception".to_owned());
    match exc.str().map(|s| s.to_string()) {
        Ok(text) if !text.is_empty() => format!("{name}: {text}"),
        _ => name,
    }
}

static CANO_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static LEASE_LOST: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// True for instances of `cano.CanoError`.
pub fn is_cano_error(py: Python<'_>, value: &Bound<'_, pyo3::exceptions::PyBaseException>) -> bool {
    CANO_ERROR
        .import(py, "cano.errors", "CanoError")
        .is_ok_and(|c| value.is_instance(c).unwrap_or(false))
}

/// True for `cano.errors.LeaseLostError`: the run's lease went to another worker.
pub fn is_lease_lost(py: Python<'_>, err: &PyErr) -> bool {
    LEASE_LOST.import(py, "cano.errors", "LeaseLostError").is_ok_and(|c| err.is_instance(py, c))
}

static RUN_PARKED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// True for `cano.errors.RunParked`: a Worker's run gave itself back to wait.
pub fn is_parked(py: Python<'_>, err: &PyErr) -> bool {
    RUN_PARKED.import(py, "cano.errors", "RunParked").is_ok_and(|c| err.is_instance(py, c))
}

/// True for an instance of `cano.errors.LeaseLostError` (as a value).
pub fn is_lease_lost_value(py: Python<'_>, value: &Bound<'_, PyAny>) -> bool {
    LEASE_LOST
        .import(py, "cano.errors", "LeaseLostError")
        .is_ok_and(|c| value.is_instance(c).unwrap_or(false))
}

/// A `cano.errors.LeaseLostError`: a write of a run whose lease went to another worker.
pub fn lease_lost(py: Python<'_>, workflow_id: &str) -> PyErr {
    // The wording is `LeaseLostError.of_run`'s, the one every store uses.
    let made = LEASE_LOST
        .import(py, "cano.errors", "LeaseLostError")
        .and_then(|c| c.call_method1("of_run", (workflow_id,)));
    match made {
        Ok(value) => PyErr::from_value(value),
        Err(e) => e,
    }
}

/// A `ConfigurationError` with no run context.
pub fn configuration(py: Python<'_>, message: String) -> PyErr {
    EngineError::Configuration.into_py(py, message, Context::none(), None)
}

/// A `CheckpointError` with no run context.
pub fn checkpoint(py: Python<'_>, message: String) -> PyErr {
    EngineError::Checkpoint.into_py(py, message, Context::none(), None)
}

/// Maps an invalid duration to `ConfigurationError`, naming what the duration was for.
pub fn duration(py: Python<'_>, what: &str, err: impl std::fmt::Display) -> PyErr {
    configuration(py, format!("{what}: {err}"))
}

/// How messages show task names and workflow ids (labels appear bare): in single quotes,
/// escaped as Python's `repr` of a `str` would be.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
