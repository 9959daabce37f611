//! Garbage-collector support, done once: every pyclass that holds Python objects lists its
//! fields with [`gc_traverse!`], and each field type says how to visit what it holds.
//!
//! Python's cycle collector asks each container for the objects it references
//! (`__traverse__`). A reference that is not visited keeps a cycle alive for ever; one that
//! is visited twice (from two owners of one `Arc`) makes the collector free live objects.
//! So: objects behind an `Arc` are visited by exactly one owner (documented where the
//! `Arc` is shared), and locks are taken, not tried — a traversal skipped because a lock
//! was busy would leak the cycle. No lock in this crate is held while calling into Python
//! or waiting for the interpreter, so taking one here cannot deadlock.

use pyo3::{Py, PyTraverseError, PyVisit};

/// Visits every Python object a value holds.
pub trait PyGcTraverse {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError>;
}

impl<T> PyGcTraverse for Py<T> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self)
    }
}

impl<T: PyGcTraverse> PyGcTraverse for Option<T> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Some(v) => v.py_gc_traverse(visit),
            None => Ok(()),
        }
    }
}

impl<T: PyGcTraverse> PyGcTraverse for Vec<T> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.iter().try_for_each(|v| v.py_gc_traverse(visit))
    }
}

impl<T: PyGcTraverse> PyGcTraverse for Box<T> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (**self).py_gc_traverse(visit)
    }
}

impl<T: PyGcTraverse> PyGcTraverse for parking_lot::Mutex<T> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.lock().py_gc_traverse(visit)
    }
}

impl<A: PyGcTraverse, B: PyGcTraverse> PyGcTraverse for (A, B) {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.0.py_gc_traverse(visit)?;
        self.1.py_gc_traverse(visit)
    }
}

impl<T: PyGcTraverse, E: PyGcTraverse> PyGcTraverse for Result<T, E> {
    fn py_gc_traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ok(v) => v.py_gc_traverse(visit),
            Err(e) => e.py_gc_traverse(visit),
        }
    }
}

/// Plain data holds no Python object.
macro_rules! no_python {
    ($($t:ty),*) => {
        $(impl PyGcTraverse for $t {
            fn py_gc_traverse(&self, _: &PyVisit<'_>) -> Result<(), PyTraverseError> { Ok(()) }
        })*
    };
}
no_python!(bool, u8, u32, u64, i64, usize, f64, String);

/// Implements [`PyGcTraverse`] for a struct by visiting the listed fields, and (with
/// `pyclass`) the `__traverse__` of a `#[pymethods]` block through it:
///
/// ```ignore
/// gc_traverse!(Handler { call, retry_on, split, breaker, rate_limiter });
/// ```
#[macro_export]
macro_rules! gc_traverse {
    ($t:ty { $($field:ident),* $(,)? }) => {
        impl $crate::gc::PyGcTraverse for $t {
            fn py_gc_traverse(
                &self,
                visit: &pyo3::PyVisit<'_>,
            ) -> Result<(), pyo3::PyTraverseError> {
                $($crate::gc::PyGcTraverse::py_gc_traverse(&self.$field, visit)?;)*
                Ok(())
            }
        }
    };
}
