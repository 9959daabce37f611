//! Cooperative cancellation: a token read by runs, a handle that fires it.
//!
//! Firing is thread-safe. Runs listening on a token are woken through
//! `loop.call_soon_threadsafe`, so the dispatcher only ever reacts on its own loop thread.

use crate::gc::PyGcTraverse;
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

struct Listener {
    id: u64,
    event_loop: Py<PyAny>,
    callback: Py<PyAny>,
}

crate::gc_traverse!(Listener { event_loop, callback });

#[derive(Default)]
struct Shared {
    fired: AtomicBool,
    next_id: AtomicU64,
    listeners: Mutex<Vec<Listener>>,
}

/// The reading half: passed to runs, checked at every state boundary.
#[pyclass(frozen, module = "cano._core", name = "CancellationToken")]
pub struct CancellationToken {
    shared: Arc<Shared>,
}

/// The firing half: `cancel()` is idempotent and may be called from any thread.
#[pyclass(frozen, module = "cano._core", name = "CancellationHandle")]
pub struct CancellationHandle {
    shared: Arc<Shared>,
}

impl CancellationToken {
    /// True once the handle fired.
    #[inline]
    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::Acquire)
    }

    /// Calls `callback()` on `event_loop` when the token fires; returns an id for
    /// [`Self::unlisten`].
    pub fn listen(&self, event_loop: Py<PyAny>, callback: Py<PyAny>) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.listeners.lock().push(Listener { id, event_loop, callback });
        id
    }

    /// Stops listening; the removed references are dropped while attached.
    pub fn unlisten(&self, id: u64) {
        let removed: Vec<Listener> = {
            let mut listeners = self.shared.listeners.lock();
            let (gone, kept): (Vec<_>, Vec<_>) = listeners.drain(..).partition(|l| l.id == id);
            *listeners = kept;
            gone
        };
        drop(removed);
    }
}

#[pymethods]
impl CancellationToken {
    /// A fresh `(token, handle)` pair.
    #[staticmethod]
    fn new() -> (CancellationToken, CancellationHandle) {
        let shared = Arc::new(Shared::default());
        (CancellationToken { shared: shared.clone() }, CancellationHandle { shared })
    }

    /// True once the matching handle's `cancel()` was called.
    fn is_cancelled(&self) -> bool {
        self.fired()
    }

    fn __repr__(&self) -> String {
        format!("CancellationToken(cancelled={})", if self.fired() { "True" } else { "False" })
    }

    /// The listeners live behind an `Arc` shared with the handle: the token alone visits
    /// them (the handle never does), so each reference is visited exactly once.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.shared.listeners.py_gc_traverse(&visit)
    }
}

#[pymethods]
impl CancellationHandle {
    /// Fires the token: every run using it stops at its next chance. Idempotent.
    fn cancel(&self, py: Python<'_>) {
        if self.shared.fired.swap(true, Ordering::AcqRel) {
            return;
        }
        let listeners: Vec<Listener> = std::mem::take(&mut *self.shared.listeners.lock());
        for l in listeners {
            let scheduled = l
                .event_loop
                .bind(py)
                .call_method1(intern!(py, "call_soon_threadsafe"), (l.callback.bind(py),));
            if let Err(e) = scheduled {
                // A closed loop has no run left to wake.
                if !e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
                    e.write_unraisable(py, None);
                }
            }
        }
    }

    /// True once `cancel()` was called.
    fn is_cancelled(&self) -> bool {
        self.shared.fired.load(Ordering::Acquire)
    }

    fn __repr__(&self) -> String {
        let fired = self.shared.fired.load(Ordering::Acquire);
        format!("CancellationHandle(cancelled={})", if fired { "True" } else { "False" })
    }
}
