//! Interrupting a run: attempt timeouts, the total timeout and token cancellation.
//!
//! Each works like `asyncio.timeout`: a loop callback records why ([`Run::signal`]) and
//! cancels the asyncio task stepping the run; the `CancelledError` travels through the
//! user's coroutine (its `finally` blocks run) and comes back out to the dispatcher, which
//! balances the task's cancel count with `uncancel()` ([`Run::settle_cancel`]) and turns
//! the error into the engine error for that reason. A cancellation that also came from
//! elsewhere (the task's count stays above where it started) is let through unchanged.

use super::{Phase, Run};
use crate::cancel::CancellationToken;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// The token fired.
pub(super) const SIG_CANCEL: u8 = 1;
/// The total timeout expired.
pub(super) const SIG_TOTAL: u8 = 2;
/// The attempt timeout expired.
pub(super) const SIG_ATTEMPT: u8 = 4;
/// The join timeout of a split expired.
pub(super) const SIG_JOIN: u8 = 8;

static CURRENT_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()
}

impl Run {
    /// Schedules `_signal(kind)` on the running loop after `delay` seconds.
    pub(super) fn arm(
        &mut self,
        slf: &Bound<'_, Self>,
        delay: f64,
        kind: u8,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        self.capture_task(py)?;
        let callback = slf.getattr(intern!(py, "_signal"))?;
        let handle =
            running_loop(py)?.call_method1(intern!(py, "call_later"), (delay, callback, kind))?;
        Ok(handle.unbind())
    }

    /// Registers with the token so that firing it reaches this run on its loop.
    pub(super) fn listen(
        &mut self,
        slf: &Bound<'_, Self>,
        token: &CancellationToken,
    ) -> PyResult<()> {
        let py = slf.py();
        self.capture_task(py)?;
        let callback = slf.getattr(intern!(py, "_on_cancel"))?;
        self.listener = Some(token.listen(running_loop(py)?.unbind(), callback.unbind()));
        Ok(())
    }

    /// Remembers the asyncio task stepping us, to interrupt it later.
    fn capture_task(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let task = CURRENT_TASK.import(py, "asyncio", "current_task")?.call0()?;
        if !task.is_none() {
            self.cancel_base = task.call_method0(intern!(py, "cancelling"))?.extract()?;
            self.task = Some(task.unbind());
        }
        Ok(())
    }

    /// A loop callback: record the reason and interrupt what is in flight, if that may be
    /// interrupted (task attempts and retry sleeps; never setup, checkpoints, compensating
    /// steps, the drain or teardown — those are honoured at the next state boundary).
    pub(super) fn signal(&mut self, py: Python<'_>, kind: u8) {
        match kind {
            SIG_ATTEMPT => self.attempt_timer = None,
            SIG_TOTAL => self.total_timer = None,
            SIG_JOIN => return self.split_timed_out(py),
            _ => {}
        }
        let interruptible = match self.phase {
            Phase::Attempt => kind == SIG_ATTEMPT || !self.uninterruptible,
            // Waiting on the store is interruptible too: a store that never answers must not
            // outlive the run's total timeout or its token.
            Phase::Sleep
            | Phase::Split
            | Phase::Throttle
            | Phase::Saving(_)
            | Phase::Clearing
            | Phase::Recording
            | Phase::Yield(_) => kind != SIG_ATTEMPT,
            Phase::Teardown | Phase::Done => return,
            _ => false,
        };
        if kind == SIG_ATTEMPT && self.phase != Phase::Attempt {
            return;
        }
        self.signals |= kind;
        if interruptible && !self.cancel_owed {
            if let Some(task) = &self.task {
                let cancelled =
                    task.bind(py).call_method0(intern!(py, "cancel")).and_then(|r| r.extract());
                if let Ok(true) = cancelled {
                    self.cancel_owed = true;
                }
            }
        }
    }

    /// Balances our `task.cancel()`; true when someone else cancelled the task too.
    pub(super) fn settle_cancel(&mut self, py: Python<'_>) -> bool {
        self.cancel_owed = false;
        let Some(task) = &self.task else { return false };
        match task.bind(py).call_method0(intern!(py, "uncancel")).and_then(|r| r.extract::<i64>()) {
            Ok(left) => left > self.cancel_base,
            Err(_) => false,
        }
    }

    pub(super) fn disarm_attempt(&mut self, py: Python<'_>) {
        if let Some(t) = self.attempt_timer.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
    }

    /// Cancels timers, stops listening to the token, balances any cancel we owe.
    pub(super) fn disarm(&mut self, py: Python<'_>) {
        self.disarm_attempt(py);
        if let Some(t) = self.total_timer.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
        if let (Some(id), Some(token)) = (self.listener.take(), &self.token) {
            token.get().unlisten(id);
        }
        if self.cancel_owed {
            self.settle_cancel(py);
        }
        self.task = None;
    }
}
