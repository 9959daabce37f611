//! The coroutine protocol at the edges of a run: resuming an inner awaitable with a value
//! or an exception, and normalising what `throw()` receives.

use pyo3::exceptions::{PyBaseException, PyStopIteration, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

/// How the awaiting task resumes us.
pub enum Input {
    Send(Option<Py<PyAny>>),
    Throw(PyErr),
}

/// What the inner awaitable did.
pub enum Sent<'py> {
    Yield(Bound<'py, PyAny>),
    Return(Bound<'py, PyAny>),
    Raise(PyErr),
}

static COROUTINE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Resumes `inner` with a value or an exception.
#[inline]
pub fn resume<'py>(py: Python<'py>, inner: &Bound<'py, PyAny>, input: Input) -> Sent<'py> {
    match input {
        Input::Send(value) => {
            let mut out: *mut ffi::PyObject = std::ptr::null_mut();
            let arg = value.as_ref().map_or_else(|| unsafe { ffi::Py_None() }, |v| v.as_ptr());
            // SAFETY: `inner` and `arg` are live for the call; `out` receives a new reference
            // on NEXT/RETURN; on ERROR an exception is set and fetched right away.
            let result = unsafe { ffi::PyIter_Send(inner.as_ptr(), arg, &mut out) };
            match result {
                ffi::PySendResult::PYGEN_NEXT => {
                    Sent::Yield(unsafe { Bound::from_owned_ptr(py, out) })
                }
                ffi::PySendResult::PYGEN_RETURN => {
                    Sent::Return(unsafe { Bound::from_owned_ptr(py, out) })
                }
                ffi::PySendResult::PYGEN_ERROR => Sent::Raise(PyErr::fetch(py)),
            }
        }
        Input::Throw(err) => throw_into(py, inner, err),
    }
}

#[cold]
fn throw_into<'py>(py: Python<'py>, inner: &Bound<'py, PyAny>, err: PyErr) -> Sent<'py> {
    let Ok(throw) = inner.getattr(intern!(py, "throw")) else {
        // A plain iterator cannot receive exceptions: it is raised where it waits.
        return Sent::Raise(err);
    };
    match throw.call1((err.into_value(py),)) {
        Ok(y) => Sent::Yield(y),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            let value = e
                .value(py)
                .getattr(intern!(py, "value"))
                .unwrap_or_else(|_| py.None().into_bound(py));
            Sent::Return(value)
        }
        Err(e) => Sent::Raise(e),
    }
}

/// The object to drive for `value`: a native coroutine itself, otherwise the iterator its
/// `__await__` returns. `Err(value)` when it is not awaitable.
#[inline]
pub fn awaitable<'py>(value: Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>, Bound<'py, PyAny>> {
    let py = value.py();
    if let Ok(t) = COROUTINE_TYPE.import(py, "types", "CoroutineType") {
        if value.get_type().is(t) {
            return Ok(value);
        }
    }
    match value.call_method0(intern!(py, "__await__")) {
        Ok(it) => Ok(it),
        Err(_) => Err(value),
    }
}

/// `throw(typ, val, tb)` → an exception instance, as generators do.
pub fn normalise_exception<'py>(
    py: Python<'py>,
    typ: &Bound<'py, PyAny>,
    val: Option<&Bound<'py, PyAny>>,
    tb: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let exc = if typ.is_instance_of::<PyBaseException>() {
        typ.clone()
    } else if let Ok(t) = typ.cast::<PyType>() {
        match val {
            Some(v) if v.is_instance(t)? => v.clone(),
            Some(v) if v.is_instance_of::<PyTuple>() => t.call1(v.cast::<PyTuple>()?)?,
            Some(v) if !v.is_none() => t.call1((v,))?,
            _ => t.call0()?,
        }
    } else {
        return Err(PyTypeError::new_err(
            "exceptions must be classes or instances deriving from BaseException",
        ));
    };
    if !exc.is_instance_of::<PyBaseException>() {
        return Err(PyTypeError::new_err(
            "exceptions must be classes or instances deriving from BaseException",
        ));
    }
    if let Some(tb) = tb.filter(|t| !t.is_none()) {
        exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    Ok(exc)
}
