//! One task attempt and the retry loop around it: the rate limiter and circuit breaker
//! before each attempt, the attempt timeout, and — after a failure — the one decision
//! `cano_core::RetryMode::decide` makes (retry after a delay, give up, or propagate). This
//! module only classifies the failure for it and carries the decision out.

use super::interrupts::{SIG_ATTEMPT, SIG_CANCEL, SIG_TOTAL};
use super::{Phase, Run};
use crate::errors::{self, EngineError};
use crate::plan::{Handler, Hook, Plan};
use cano_core::{Decision, Failure, HandlerKind, Rejection, Report, SystemClock};
use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

static SLEEP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PROGRAMMING_ERRORS: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// The engine's "called it wrong" errors: retrying cannot fix them, so the default retry
/// policy does not retry them (listing one in `retry_on` does).
fn is_programming_error(py: Python<'_>, err: &PyErr) -> bool {
    let classes = PROGRAMMING_ERRORS.get_or_try_init(py, || -> PyResult<Py<PyTuple>> {
        let m = py.import("cano.errors")?;
        let names =
            ["ConfigurationError", "ResourceNotFoundError", "ResourceTypeError", "WorkflowError"];
        let classes: PyResult<Vec<Bound<'_, PyType>>> =
            names.iter().map(|n| Ok(m.getattr(*n)?.cast_into::<PyType>()?)).collect();
        Ok(PyTuple::new(py, classes?)?.unbind())
    });
    classes.is_ok_and(|c| err.is_instance(py, c.bind(py)))
}

impl Run {
    /// Calls the handler and installs its coroutine as the inner awaitable.
    pub(super) fn start_attempt(&mut self, slf: &Bound<'_, Self>, plan: &Plan, h: &Handler) {
        let py = slf.py();
        if let Some((limiter, cost)) = &h.rate_limiter {
            if !std::mem::take(&mut self.throttled) {
                let wait = limiter.bind(py).call_method1(intern!(py, "acquire"), (*cost,));
                if let Err(e) = wait.and_then(|aw| self.install(Phase::Throttle, aw)) {
                    self.task_failed_event(py, plan, &e);
                    self.fail(slf, e);
                }
                return;
            }
        }
        if let Some(breaker) = &h.breaker {
            match breaker.get().inner.try_acquire(SystemClock) {
                Ok(permit) => self.permit = Some(permit),
                Err(rejection) => return self.circuit_rejected(slf, plan, h, &rejection),
            }
        }
        if let Some(limit) = h.attempt_timeout {
            match self.arm(slf, limit, SIG_ATTEMPT) {
                Ok(t) => self.attempt_timer = Some(t),
                Err(e) => return self.end(py, Err(e)),
            }
        }
        self.uninterruptible = h.kind == HandlerKind::Compensatable;
        let call = h.call.bind(py);
        let overlay = match &self.overlay {
            Some((state, o)) if *state == self.cursor.state() => Some(o.bind(py)),
            _ => None,
        };
        let res = overlay.unwrap_or_else(|| self.resources.bind(py));
        let made = match (h.kind, h.takes_resources) {
            (HandlerKind::Stepped, _) => {
                let cursor =
                    self.step_cursor.as_ref().map_or_else(|| py.None(), |c| c.clone_ref(py));
                call.call1((res, cursor))
            }
            (HandlerKind::Stream, _) => {
                let cursor =
                    self.step_cursor.as_ref().map_or_else(|| py.None(), |c| c.clone_ref(py));
                self.committer(py, plan).and_then(|commit| call.call1((res, cursor, commit)))
            }
            (_, true) if overlay.is_none() => {
                // One `(resources,)` tuple per run: no tuple allocation per transition.
                let args = match &self.res_args {
                    Some(a) => Ok(a.bind(py).clone()),
                    None => PyTuple::new(py, [res])
                        .inspect(|a| self.res_args = Some(a.clone().unbind())),
                };
                args.and_then(|args| call.call(args, None))
            }
            (_, true) => call.call1((res,)),
            (_, false) => call.call0(),
        };
        self.phase = Phase::Attempt;
        match made {
            Ok(value) => match super::protocol::awaitable(value) {
                Ok(it) => self.inner = Some(it.unbind()),
                Err(value) => self.not_awaitable(slf, plan, h, value),
            },
            Err(e) => self.on_raise(slf, e),
        }
    }

    /// The attempt's coroutine returned `value`.
    pub(super) fn attempt_returned(&mut self, slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) {
        let py = slf.py();
        if self.attempt_timer.is_some() {
            self.disarm_attempt(py);
        }
        if self.permit.is_some() {
            let plan_ref = self.plan.bind(py).clone();
            self.record_permit(plan_ref.get(), true);
        }
        if self.cancel_owed {
            self.settle_cancel(py);
        }
        self.signals &= !SIG_ATTEMPT;
        self.uninterruptible = false;
        self.completed(slf, value);
    }

    /// The breaker refused the attempt: the task fails at once, no retry consumed.
    #[cold]
    fn circuit_rejected(&mut self, slf: &Bound<'_, Self>, plan: &Plan, h: &Handler, r: &Rejection) {
        let py = slf.py();
        plan.notify(py, Hook::CircuitOpen, (h.name.bind(py),));
        let msg = format!(
            "task {} in state {}: {}",
            errors::quoted(&h.name.bind(py).to_string()),
            plan.label(py, self.cursor.state()),
            r.message(None)
        );
        let e = self.engine_error_at(py, plan, EngineError::CircuitOpen, msg, 0, None);
        self.task_failed_event(py, plan, &e);
        self.fail(slf, e);
    }

    /// Hands the attempt's outcome to its circuit breaker.
    pub(super) fn record_permit(&mut self, plan: &Plan, success: bool) {
        if let Some(permit) = self.permit.take() {
            if let Some(b) = self.handler(plan).and_then(|h| h.get().breaker.as_ref()) {
                b.get().inner.record(permit, success, SystemClock);
            }
        }
    }

    #[cold]
    fn not_awaitable(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        h: &Handler,
        value: Bound<'_, PyAny>,
    ) {
        let py = slf.py();
        self.disarm_attempt(py);
        let msg = format!(
            "task {} for state {} returned {} instead of a coroutine; declare it with \
             `async def`",
            errors::quoted(&h.name.bind(py).to_string()),
            plan.label(py, self.cursor.state()),
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        );
        let err = self.engine_error(py, plan, EngineError::Configuration, msg, None);
        self.task_failed_event(py, plan, &err);
        self.fail(slf, err);
    }

    /// The attempt (or the retry sleep, or the limiter wait before it) raised `err`:
    /// classify the failure, ask the retry mode, and carry the decision out.
    pub(super) fn attempt_raised(&mut self, slf: &Bound<'_, Self>, err: PyErr) {
        let py = slf.py();
        let plan_ref = self.plan.bind(py).clone();
        let plan = plan_ref.get();
        if self.attempt_timer.is_some() {
            self.disarm_attempt(py);
        }
        if self.permit.is_some() {
            self.record_permit(plan, false);
        }
        let cancelled = super::is_cancel_error(py, &err);
        if self.phase == Phase::Throttle && !cancelled {
            // The limiter itself failed (a cost it can never grant): not retried.
            self.task_failed_event(py, plan, &err);
            return self.fail(slf, err);
        }
        self.uninterruptible = false;
        let external = if self.cancel_owed { self.settle_cancel(py) } else { false };
        if cancelled {
            if external || self.signals & (SIG_CANCEL | SIG_TOTAL | SIG_ATTEMPT) == 0 {
                return self.cancelled_by_asyncio(slf, plan, err);
            }
            if self.signals & SIG_CANCEL != 0 {
                let e = self.cancel_error(py, plan);
                self.task_failed_event(py, plan, &e);
                self.notify_cancelled(py, plan);
                return self.fail(slf, e);
            }
            if self.signals & SIG_TOTAL != 0 {
                let e = self.total_timeout_error(py, plan, true);
                return self.fail(slf, e);
            }
            // Our attempt timer fired.
            self.signals &= !SIG_ATTEMPT;
            let e = self.attempt_timeout_error(py, plan);
            let listed = self.listed(py, plan, &e);
            return self.decide(slf, plan, e, Failure::TimedOut { listed });
        }
        self.signals &= !SIG_ATTEMPT;
        if !err.is_instance_of::<PyException>(py) {
            // KeyboardInterrupt, SystemExit: never retried, never wrapped, no cleanup awaits.
            self.disarm(py);
            if std::mem::take(&mut self.began) {
                self.finished_event(py, Err(&err));
            }
            self.phase = Phase::Done;
            self.outcome = Some(Err(err.into_value(py).into_any()));
            return;
        }
        if errors::is_lease_lost(py, &err) {
            // The task found the run is no longer this worker's (or gave it back to wait:
            // `cano.errors.RunParked`): not a failure — no retry, no compensation, no record.
            return self.abandon(py, plan, err);
        }
        let listed = self.listed(py, plan, &err);
        let programming = is_programming_error(py, &err);
        self.decide(slf, plan, err, Failure::Raised { listed, programming })
    }

    /// Whether `err` is among the task's `retry_on` types (`None` without a list).
    fn listed(&self, py: Python<'_>, plan: &Plan, err: &PyErr) -> Option<bool> {
        let types = self.handler(plan)?.get().retry_on.as_ref()?;
        Some(err.is_instance(py, types.bind(py)))
    }

    /// Carries out the retry mode's decision after attempt `self.attempt` failed.
    fn decide(&mut self, slf: &Bound<'_, Self>, plan: &Plan, err: PyErr, failure: Failure) {
        let py = slf.py();
        // An engine error a task driver raised (a stream item timeout, ...) gets the run's
        // state and path before it is reported or wrapped.
        let err = self.contextualise(py, plan, err);
        let Some(handler) = self.handler(plan).map(|h| h.bind(py).clone()) else {
            return self.end(py, Err(err));
        };
        let h = handler.get();
        match h.retry.decide(self.attempt, failure) {
            Decision::RetryAfter(delay) => {
                plan.notify(py, Hook::Retry, (h.name.bind(py), self.attempt));
                let label = plan.label(py, self.cursor.state());
                let id = self.workflow_id.as_ref().map(|i| i.bind(py).clone().into_any());
                crate::log::record(
                    py,
                    crate::log::DEBUG,
                    id.as_ref(),
                    label.as_any(),
                    self.attempt,
                    || {
                        format!(
                            "task {} failed in state {label} (attempt {}), retrying in {:.3}s: {}",
                            errors::quoted(&h.name.bind(py).to_string()),
                            self.attempt,
                            delay.as_secs_f64(),
                            err.value(py)
                        )
                    },
                );
                self.attempt += 1;
                if delay.is_zero() {
                    // Even a zero delay yields to the loop: a task that fails without
                    // suspending must not starve it (or its own timeouts).
                    return self.yield_then(super::Resume::Attempt);
                }
                let sleep = SLEEP
                    .import(py, "asyncio", "sleep")
                    .and_then(|f| f.call1((delay.as_secs_f64(),)))
                    .and_then(|coro| self.install(Phase::Sleep, coro));
                if let Err(e) = sleep {
                    self.end(py, Err(e));
                }
            }
            Decision::GiveUp(report) => {
                let name = errors::quoted(&h.name.bind(py).to_string());
                let label = plan.label(py, self.cursor.state());
                let cause = Some(err.clone_ref(py));
                let e = match report {
                    Report::AsIs => err,
                    Report::Exhausted { attempts } => {
                        let msg = format!(
                            "task {name} failed in state {label} after {attempts} attempts"
                        );
                        self.engine_error(
                            py,
                            plan,
                            EngineError::RetryExhausted { attempts },
                            msg,
                            cause,
                        )
                    }
                    Report::TaskError => {
                        let msg = format!(
                            "task {name} failed in state {label} (attempt {})",
                            self.attempt
                        );
                        self.engine_error(py, plan, EngineError::Task, msg, cause)
                    }
                };
                self.task_failed_event(py, plan, &e);
                self.fail(slf, e);
            }
            Decision::Propagate => self.fail(slf, err),
        }
    }
}
