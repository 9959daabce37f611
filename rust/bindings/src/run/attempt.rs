//! One task attempt and the retry loop around it: the rate limiter and circuit breaker
//! before each attempt, the attempt timeout, and the verdict after a failure (retry after
//! a delay from `cano_core::retry`, or fail with the engine error for that task).

use super::signals::{SIG_ATTEMPT, SIG_CANCEL, SIG_TOTAL};
use super::*;

impl Run {
    /// Calls the handler and installs its coroutine as the inner awaitable.
    pub(super) fn start_attempt(&mut self, slf: &Bound<'_, Self>, plan: &Plan, h: &Handler) {
        let py = slf.py();
        if let Some((limiter, cost)) = &h.rate_limiter {
            if !std::mem::take(&mut self.throttled) {
                let wait = limiter.bind(py).call_method1(intern!(py, "acquire"), (*cost,));
                if let Err(e) = wait.and_then(|aw| self.install(py, Phase::Throttle, aw)) {
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
            Ok(value) => match awaitable(value) {
                Ok(it) => self.inner = Some(it.unbind()),
                Err(value) => self.not_awaitable(slf, plan, h, value),
            },
            Err(e) => self.on_raise(slf, e),
        }
    }

    /// The breaker refused the attempt: the task fails at once, no retry consumed.
    #[cold]
    pub(super) fn circuit_rejected(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        h: &Handler,
        r: &Rejection,
    ) {
        let py = slf.py();
        plan.notify(py, Hook::CircuitOpen, (h.name.bind(py),));
        let task = h.name.bind(py).to_string();
        let msg = format!(
            "task '{task}' in state {}: {}",
            plan.label(py, self.cursor.state()),
            r.message(None)
        );
        let e = self.error_at(py, plan, "CircuitOpenError", msg, 0, None, None);
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
    pub(super) fn not_awaitable(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        h: &Handler,
        value: Bound<'_, PyAny>,
    ) {
        let py = slf.py();
        self.disarm_attempt(py);
        let msg = format!(
            "task '{}' for state {} returned {} instead of a coroutine; declare it with \
             `async def`",
            h.name.bind(py),
            plan.label(py, self.cursor.state()),
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        );
        let err = self.error(py, plan, "ConfigurationError", msg, None, None);
        self.task_failed_event(py, plan, &err);
        self.fail(slf, err);
    }

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
        if self.phase == Phase::Throttle && !is_cancel_error(py, &err) {
            // The limiter itself failed (a cost it can never grant): not retried.
            self.task_failed_event(py, plan, &err);
            return self.fail(slf, err);
        }
        self.uninterruptible = false;
        let external = if self.cancel_owed { self.settle_cancel(py) } else { false };
        if is_cancel_error(py, &err) {
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
            return self.failed_attempt(slf, plan, e, true);
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
        self.failed_attempt(slf, plan, err, false)
    }

    /// Decides between retrying and failing after attempt `self.attempt` raised `err`.
    /// `engine_made` marks errors that already are engine errors (attempt timeouts).
    pub(super) fn failed_attempt(
        &mut self,
        slf: &Bound<'_, Self>,
        plan: &Plan,
        err: PyErr,
        engine_made: bool,
    ) {
        let py = slf.py();
        let s = self.cursor.state();
        let Some(handler) = self.handler(plan).map(|h| h.bind(py).clone()) else {
            return self.end(py, Err(err));
        };
        let h = handler.get();
        let retryable = match &h.retry_on {
            Some(types) => err.is_instance(py, types.bind(py)),
            None => true,
        };
        let verdict = if retryable {
            h.retry.after_failure(self.attempt)
        } else {
            Verdict::Exhausted { attempts: self.attempt }
        };
        match verdict {
            Verdict::Retry(delay) => {
                plan.notify(py, Hook::Retry, (h.name.bind(py), self.attempt));
                self.attempt += 1;
                if delay.is_zero() {
                    return self.start_attempt(slf, plan, h);
                }
                let sleep = SLEEP
                    .import(py, "asyncio", "sleep")
                    .and_then(|f| f.call1((delay.as_secs_f64(),)))
                    .and_then(|coro| self.install(py, Phase::Sleep, coro));
                if let Err(e) = sleep {
                    self.end(py, Err(e));
                }
            }
            Verdict::Exhausted { attempts } => {
                let e = if engine_made && (attempts <= 1 || !retryable) {
                    err
                } else if attempts > 1 && retryable {
                    let msg = format!(
                        "task '{}' failed in state {} after {attempts} attempts",
                        h.name.bind(py),
                        plan.label(py, s)
                    );
                    let extra = PyDict::new(py);
                    let _ = extra.set_item("attempts", attempts);
                    self.error(py, plan, "RetryExhaustedError", msg, Some(err), Some(extra))
                } else {
                    let msg = format!(
                        "task '{}' failed in state {} (attempt {})",
                        h.name.bind(py),
                        plan.label(py, s),
                        self.attempt
                    );
                    self.error(py, plan, "TaskError", msg, Some(err), None)
                };
                self.task_failed_event(py, plan, &e);
                self.fail(slf, e);
            }
        }
    }

    // ----- cancellation and timeouts as errors ------------------------------------------
}
