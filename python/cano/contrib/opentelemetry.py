"""OpenTelemetry traces and metrics for cano runs (``pip install 'cano[otel]'``).

Depends only on ``opentelemetry-api``: the application owns the SDK, the exporters and
the global providers, as with any instrumented library::

    from cano.contrib.opentelemetry import OpenTelemetryObserver

    wf.with_observer(OpenTelemetryObserver(workflow_name="orders"))

Traces
    One ``invoke_workflow {workflow_name}`` span per run (kind INTERNAL), a child of
    whatever span is current when the run starts. One ``execute_task {task}`` span per
    task execution, from ``on_task_start`` to its success or failure; it covers every
    attempt, and each retry is a ``cano.task.retry`` span event (attribute
    ``cano.task.attempt``: the failed attempt). While a task runs, its span is the
    current span, so spans your task code creates (HTTP clients, databases, a nested
    workflow) become its children. Split branches are ``execute_task`` children of the
    run span, each in its own asyncio task.

    Attributes are namespaced: ``cano.workflow.name``, ``cano.workflow.id`` (once a
    checkpoint or a resume made it known), ``cano.state``, ``cano.task`` (the full id,
    ``name[i]`` for a branch), ``cano.task.attempts``, ``cano.task.outcome`` and
    ``cano.run.outcome`` (``completed``, ``failed``, ``cancelled``, ``timed_out``),
    ``cano.run.resumed``. The run span has ``cano.state.enter`` and ``cano.checkpoint``
    events. A failure sets status ERROR and ``error.type`` (the exception class's
    ``__qualname__``, e.g. ``RetryExhaustedError``) and records the exception on the task
    span. A branch cancelled because its join was already decided ends with
    ``cano.task.outcome = "cancelled"`` and no error. A run started by a
    :class:`cano.Scheduler` is the child of an ``execute_flow {flow_id}`` span
    (``cano.flow.id``, ``cano.flow.run``, ``cano.flow.outcome``).

Metrics
    The Rust crate's observer metric names, verbatim (see :mod:`cano.contrib._metrics`):
    ``cano_state_enters_total{state}``, ``cano_observed_task_runs_total{task, outcome}``,
    ``cano_task_retries_total{task}``, ``cano_circuit_open_events_total{task}``,
    ``cano_checkpoints_observed_total``, ``cano_resumes_total``,
    ``cano_observed_workflow_timeouts_total``, the two
    ``cano_observed_workflow_timeout_*_seconds`` histograms,
    ``cano_observed_unknown_resume_states_total``, ``cano_observed_cancellations_total``,
    ``cano_checkpoint_clears_total{result="err"}``, the scheduler's
    ``cano_scheduler_flow_runs_total{flow, outcome}``,
    ``cano_scheduler_flow_duration_seconds{flow}``, ``cano_scheduler_flow_backoff_total{flow}``,
    ``cano_scheduler_flow_tripped_total{flow}`` and ``cano_scheduler_active_flows``, plus the
    histogram ``cano_observed_task_duration_seconds{task, outcome}``. OpenTelemetry's own convention
    would drop ``_total`` from counter names (exporters add it back); keeping the names
    verbatim means the same dashboard works for the Rust crate, for
    :class:`cano.contrib.prometheus.PrometheusObserver` and for this observer behind the
    OTel Prometheus exporter, which does not add a second ``_total``.

How runs are told apart
    Observer hooks carry no run id and there is no "run started/finished" hook, so the
    observer infers run boundaries:

    - a run starts at its first ``on_state_enter`` (or ``on_resume``), in the asyncio task
      that awaits it; the run is remembered in a context variable of that task, which
      split branches inherit, so concurrent runs (each in its own asyncio task) never mix;
    - a run fails when a task of its own (not a branch) fails, or on
      ``on_workflow_timeout`` / ``on_cancelled``;
    - otherwise the observer checks, one event-loop iteration after each hook (and then
      at growing intervals up to a second while no task of the run is in flight),
      whether the run is still being awaited (``cano.contrib._run_watch``). Once it is
      not, the run completed if its last state started no task (an exit state), else it
      failed in a way no hook reports (a split whose join failed,
      ``with_max_transitions``, a checkpoint-store error: status ERROR, ``error.type``
      ``"_OTHER"``). The span ends at the time of the run's last hook.

    Limits: when the awaiter cannot be inspected (a workflow awaited inline inside a task
    of another workflow's run), the run span ends when the next run starts in the same
    asyncio task or when that task finishes. A workflow run inline inside a task of a
    run observed by the *same* observer instance is taken for part of the outer run: use
    one observer per workflow, which is the intended use. Run spans start at the first
    state, after resource setup.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from contextvars import ContextVar, Token
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.context import Context
    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cano.contrib.opentelemetry needs opentelemetry-api: pip install 'cano[otel]'"
    ) from e

from cano._core import __version__
from cano.contrib import _metrics as m
from cano.contrib._metrics import OpenTasks, current_task, outcome_of, task_label
from cano.contrib._run_watch import RunWatch
from cano.errors import WorkflowCancelledError, WorkflowTimeoutError
from cano.observer import WorkflowObserver

__all__ = ["OpenTelemetryObserver"]

_SCOPE = "cano"
# Callers of the hooks that are not the code awaiting the run (see RunWatch.capture).
_HOOK_CALLERS = ("cano.contrib", "cano.observer")
_FIRST_RECHECK = 0.01
_MAX_RECHECK = 1.0


class _RunTrace:
    """What the observer knows about one run in flight."""

    __slots__ = (
        "awaiting_task",
        "check",
        "checkpointed_here",
        "checkpointing",
        "ended",
        "error_type",
        "last_ns",
        "owner",
        "owner_busy",
        "recheck",
        "span",
        "state",
        "watch",
        "workflow_id",
    )

    def __init__(self, span: Span, owner: asyncio.Task[object] | None, watch: RunWatch | None):
        self.span = span
        self.owner = owner
        self.watch = watch
        self.state: str | None = None
        self.workflow_id: str | None = None
        # True between entering a state and that state's first task start: if the run
        # then ends, the state had no task, so it was an exit state.
        self.awaiting_task = False
        # An exit state's row is written before the run returns: a run that writes rows
        # and stopped in a state without one failed to write it.
        self.checkpointing = False
        self.checkpointed_here = False
        # True while a task of the run itself (not a branch) is in flight: its end hook
        # is bound to come, so no periodic check is needed meanwhile.
        self.owner_busy = False
        self.ended = False
        self.error_type: str | None = None
        self.last_ns = time.time_ns()
        self.check: asyncio.TimerHandle | asyncio.Handle | None = None
        self.recheck = _FIRST_RECHECK


class _TaskTrace:
    """One task execution in flight: its span and how to restore the context after it."""

    __slots__ = ("attempts", "owner", "run", "span", "started", "token")

    def __init__(
        self,
        span: Span,
        token: Token[Context],
        owner: asyncio.Task[object] | None,
        run: _RunTrace | None,
    ) -> None:
        self.span = span
        self.token = token
        self.owner = owner
        self.run = run
        self.attempts = 1
        self.started = time.perf_counter()


class _Instruments:
    def __init__(self, meter: Meter) -> None:
        self.state_enters = _counter(meter, m.STATE_ENTERS)
        self.task_runs = _counter(meter, m.TASK_RUNS)
        self.task_retries = _counter(meter, m.TASK_RETRIES)
        self.circuit_open = _counter(meter, m.CIRCUIT_OPEN_EVENTS)
        self.checkpoints = _counter(meter, m.CHECKPOINTS)
        self.resumes = _counter(meter, m.RESUMES)
        self.timeouts = _counter(meter, m.WORKFLOW_TIMEOUTS)
        self.timeout_limit = _histogram(meter, m.WORKFLOW_TIMEOUT_LIMIT)
        self.timeout_elapsed = _histogram(meter, m.WORKFLOW_TIMEOUT_ELAPSED)
        self.unknown_resume_states = _counter(meter, m.UNKNOWN_RESUME_STATES)
        self.cancellations = _counter(meter, m.CANCELLATIONS)
        self.checkpoint_clears = _counter(meter, m.CHECKPOINT_CLEARS)
        self.task_duration = _histogram(meter, m.TASK_DURATION)
        self.flow_runs = _counter(meter, m.FLOW_RUNS)
        self.flow_duration = _histogram(meter, m.FLOW_DURATION)
        self.flow_backoffs = _counter(meter, m.FLOW_BACKOFFS)
        self.flow_trips = _counter(meter, m.FLOW_TRIPS)
        self.active_flows = meter.create_up_down_counter(
            m.ACTIVE_FLOWS.name, unit=m.ACTIVE_FLOWS.unit, description=m.ACTIVE_FLOWS.description
        )


def _counter(meter: Meter, spec: m.MetricSpec) -> Counter:
    return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)


def _histogram(meter: Meter, spec: m.MetricSpec) -> Histogram:
    buckets: Sequence[float] = m.DURATION_BUCKETS
    try:
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=buckets,
        )
    except TypeError:  # opentelemetry-api < 1.23 has no bucket advisory
        return meter.create_histogram(spec.name, unit=spec.unit, description=spec.description)


class OpenTelemetryObserver(WorkflowObserver):
    """Emits OpenTelemetry spans and metrics for every run of the workflow it observes.

    ``tracer_provider`` and ``meter_provider`` default to the global providers (no-ops
    until the application installs an SDK). ``workflow_name`` names the run spans
    (``invoke_workflow {workflow_name}``) and fills ``cano.workflow.name``; keep it
    low-cardinality (a workflow's kind, never a run id). Attach one observer per
    workflow. See the module docstring for the spans, attributes, metric names and how
    runs are told apart.

    Example::

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        wf.with_observer(OpenTelemetryObserver(provider, workflow_name="orders"))
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        workflow_name: str = "workflow",
    ) -> None:
        self.workflow_name = workflow_name
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        self._metrics = _Instruments(metrics.get_meter(_SCOPE, __version__, meter_provider))
        self._run: ContextVar[_RunTrace | None] = ContextVar("cano_otel_run", default=None)
        self._tasks: OpenTasks[_TaskTrace] = OpenTasks()
        # The open run of each asyncio task awaiting one, closed at the latest when the
        # task finishes; each task gets one done-callback however many runs it awaits.
        self._open_runs: weakref.WeakKeyDictionary[asyncio.Task[object], _RunTrace] = (
            weakref.WeakKeyDictionary()
        )
        self._watched: weakref.WeakSet[asyncio.Task[object]] = weakref.WeakSet()
        # Scheduled runs in flight, by flow id (a flow runs once at a time).
        self._flows: dict[str, _TaskTrace] = {}

    def __repr__(self) -> str:
        return f"OpenTelemetryObserver(workflow_name={self.workflow_name!r})"

    # ----- run spans: start ----------------------------------------------------------------

    def _this_run(self) -> _RunTrace | None:
        """The open run awaited by the current asyncio task, if any."""
        run = self._run.get()
        if run is None or run.ended or run.owner is not current_task():
            return None
        return run

    def _start_run(self, *, resumed: bool) -> _RunTrace:
        owner = current_task()
        previous = self._run.get()
        if previous is not None and not previous.ended and previous.owner is owner:
            self._close(previous)  # a task awaits one run at a time: that one is over
        attributes: dict[str, Any] = {"cano.workflow.name": self.workflow_name}
        if resumed:
            attributes["cano.run.resumed"] = True
        span = self._tracer.start_span(
            f"invoke_workflow {self.workflow_name}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        run = _RunTrace(span, owner, RunWatch.capture(owner, _HOOK_CALLERS))
        self._run.set(run)
        if owner is not None:
            if owner not in self._watched:
                self._watched.add(owner)
                owner.add_done_callback(self._owner_done)
            self._open_runs[owner] = run
        return run

    # ----- run spans: noticing the end -----------------------------------------------------

    def _note(self, run: _RunTrace | None) -> None:
        """Records that ``run`` just fired a hook, and checks on it after this iteration."""
        if run is None or run.ended:
            return
        run.last_ns = time.time_ns()
        run.recheck = _FIRST_RECHECK
        if run.watch is None or run.owner_busy:
            return  # nothing to check, or the task in flight will fire a hook
        check = run.check
        if check is not None:
            if not isinstance(check, asyncio.TimerHandle):
                return  # a check already runs after this iteration
            check.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            run.check = None
            return
        run.check = loop.call_soon(self._check, run)

    def _check(self, run: _RunTrace) -> None:
        run.check = None
        if run.ended or run.watch is None:
            return
        state = run.watch.state()
        if state == "ended":
            self._close(run)
        elif state == "running" and not run.owner_busy:
            loop = asyncio.get_running_loop()
            run.check = loop.call_later(run.recheck, self._check, run)
            run.recheck = min(run.recheck * 2, _MAX_RECHECK)

    def _close(self, run: _RunTrace) -> None:
        """Ends a run nobody reported the end of: completed if it stopped in an exit state."""
        if run.awaiting_task and (run.checkpointed_here or not run.checkpointing):
            self._end_run(run, "completed", end_ns=run.last_ns)
        else:
            self._end_run(
                run,
                "failed",
                error_type="_OTHER",
                message="run ended without reaching an exit state",
                end_ns=run.last_ns,
            )

    def _owner_done(self, task: asyncio.Task[object]) -> None:
        run = self._open_runs.pop(task, None)
        if run is None or run.ended:
            return
        if not run.awaiting_task and task.cancelled():
            self._end_run(run, "cancelled", error_type="CancelledError", message="run cancelled")
            return
        # task.exception() would mark the exception as retrieved and silence asyncio's
        # "never retrieved" warning, so the error stays anonymous here.
        self._close(run)

    def _end_run(
        self,
        run: _RunTrace,
        outcome: str,
        *,
        error_type: str | None = None,
        message: str | None = None,
        end_ns: int | None = None,
    ) -> None:
        if run.ended:
            return
        run.ended = True
        if run.check is not None:
            run.check.cancel()
            run.check = None
        if run.watch is not None:
            run.watch.release()
        span = run.span
        span.set_attribute("cano.run.outcome", outcome)
        if run.state is not None:
            span.set_attribute("cano.state", run.state)
        if outcome != "completed":
            run.error_type = error_type or "_OTHER"
            span.set_attribute("error.type", run.error_type)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=end_ns)
        if run.owner is not None and self._open_runs.get(run.owner) is run:
            del self._open_runs[run.owner]

    def _learn_workflow_id(self, run: _RunTrace | None, workflow_id: str) -> None:
        if run is not None and run.workflow_id is None:
            run.workflow_id = workflow_id
            if not run.ended:
                run.span.set_attribute("cano.workflow.id", workflow_id)

    # ----- hooks: states and runs ----------------------------------------------------------

    def on_state_enter(self, state: str) -> None:
        self._metrics.state_enters.add(1, {"state": state})
        run = self._this_run()
        if run is None or run.awaiting_task:
            run = self._start_run(resumed=False)
        run.state = state
        run.awaiting_task = True
        run.checkpointed_here = False
        run.span.add_event("cano.state.enter", {"cano.state": state})
        self._note(run)

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        self._metrics.resumes.add(1)
        run = self._start_run(resumed=True)
        run.checkpointing = True
        run.span.set_attribute("cano.resume.sequence", sequence)
        self._learn_workflow_id(run, workflow_id)
        self._note(run)

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        self._metrics.checkpoints.add(1)
        run = self._run.get()
        self._learn_workflow_id(run, workflow_id)
        if run is not None and not run.ended:
            run.checkpointing = run.checkpointed_here = True
            run.span.add_event("cano.checkpoint", {"cano.checkpoint.sequence": sequence})
            self._note(run)

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._metrics.timeouts.add(1)
        self._metrics.timeout_elapsed.record(elapsed)
        self._metrics.timeout_limit.record(limit)
        run = self._run.get()
        if run is not None and not run.ended:
            run.span.add_event(
                "cano.workflow.timeout",
                {"cano.timeout.elapsed": elapsed, "cano.timeout.limit": limit},
            )
            self._end_run(
                run,
                "timed_out",
                error_type="WorkflowTimeoutError",
                message=f"total timeout of {limit:g}s exceeded after {elapsed:.3f}s",
            )

    def on_cancelled(self, state: str) -> None:
        self._metrics.cancellations.add(1)
        run = self._run.get()
        if run is not None and not run.ended:
            self._end_run(
                run,
                "cancelled",
                error_type="WorkflowCancelledError",
                message=f"cancelled in state {state}",
            )

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        self._metrics.checkpoint_clears.add(1, {"result": "err"})
        run = self._run.get()
        if run is not None and not run.ended:
            run.span.add_event(
                "cano.checkpoint.clear_failed",
                {"error.type": type(error).__qualname__, "cano.workflow.id": workflow_id},
            )
            self._note(run)

    def on_unknown_resume_state(self, workflow_id: str, sequence: int, label: str) -> None:
        # Fires while the resume is being prepared, before the run span exists.
        self._metrics.unknown_resume_states.add(1)

    # ----- hooks: scheduler flows ---------------------------------------------------------

    def on_flow_start(self, flow_id: str, run: int) -> None:
        self._metrics.active_flows.add(1)
        span = self._tracer.start_span(
            f"execute_flow {flow_id}",
            kind=SpanKind.INTERNAL,
            attributes={
                "cano.flow.id": flow_id,
                "cano.flow.run": run,
                "cano.workflow.name": self.workflow_name,
            },
        )
        # Current while the run goes on, so the run span becomes its child.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._flows[flow_id] = _TaskTrace(span, token, current_task(), None)

    def on_flow_finish(self, flow_id: str, outcome: str, duration: float) -> None:
        self._metrics.flow_runs.add(1, {"flow": flow_id, "outcome": outcome})
        flow = self._flows.pop(flow_id, None)
        if flow is None:
            return  # cancelled before it started: no span, not counted as active
        self._metrics.active_flows.add(-1)
        self._metrics.flow_duration.record(duration, {"flow": flow_id})
        # The scheduler reports the end of the run it awaited: no need to wait for the
        # run watch to notice it.
        run = self._this_run()
        error_type = None
        if run is not None:
            self._close(run)
            error_type = run.error_type
        elif (last := self._run.get()) is not None and last.owner is flow.owner:
            error_type = last.error_type
        span = flow.span
        span.set_attribute("cano.flow.outcome", outcome)
        if outcome == "failed":
            span.set_attribute("error.type", error_type or "_OTHER")
            span.set_status(Status(StatusCode.ERROR, f"scheduled run of {flow_id} failed"))
        self._finish(flow)

    def on_flow_backoff(self, flow_id: str, streak: int, delay: float) -> None:
        self._metrics.flow_backoffs.add(1, {"flow": flow_id})

    def on_flow_tripped(self, flow_id: str, streak: int) -> None:
        self._metrics.flow_trips.add(1, {"flow": flow_id})

    # ----- hooks: tasks --------------------------------------------------------------------

    def on_task_start(self, task_id: str) -> None:
        run = self._run.get()
        owner = current_task()
        attributes: dict[str, Any] = {
            "cano.task": task_id,
            "cano.workflow.name": self.workflow_name,
        }
        parent = None
        if run is not None:
            run.awaiting_task = False
            if run.owner is owner:
                run.owner_busy = True
            parent = trace.set_span_in_context(run.span)
            if run.state is not None:
                attributes["cano.state"] = run.state
            if run.workflow_id is not None:
                attributes["cano.workflow.id"] = run.workflow_id
        span = self._tracer.start_span(
            f"execute_task {task_label(task_id)}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._tasks.put(task_id, _TaskTrace(span, token, owner, run), owner)
        self._note(run)

    def on_retry(self, task_id: str, attempt: int) -> None:
        self._metrics.task_retries.add(1, {"task": task_label(task_id)})
        t = self._tasks.get(task_id)
        if t is not None:
            t.attempts = attempt + 1
            t.span.add_event("cano.task.retry", {"cano.task.attempt": attempt})

    def on_circuit_open(self, task_id: str) -> None:
        self._metrics.circuit_open.add(1, {"task": task_label(task_id)})
        t = self._tasks.get(task_id)
        if t is not None:
            t.span.add_event("cano.circuit_open", {"cano.task": task_id})

    def on_task_success(self, task_id: str) -> None:
        t = self._tasks.pop(task_id)
        self._task_ended(task_id, t, "completed")
        if t is not None:
            t.span.set_attribute("cano.task.attempts", t.attempts)
            t.span.set_attribute("cano.task.outcome", "completed")
            self._finish(t)

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        outcome = outcome_of(error)
        t = self._tasks.pop(task_id)
        self._task_ended(task_id, t, outcome)
        if t is None:
            return
        span = t.span
        span.set_attribute("cano.task.attempts", t.attempts)
        span.set_attribute("cano.task.outcome", outcome)
        if outcome == "failed":
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
        self._finish(t)
        run = t.run
        # A failure of the run's own task ends the run; a branch failure only ends the
        # run through its join, which the run reports (or the run watch notices).
        if run is not None and not run.ended and t.owner is run.owner:
            self._end_run(
                run,
                _run_outcome(error),
                error_type=type(error).__qualname__,
                message=_describe(error),
            )

    def _task_ended(self, task_id: str, t: _TaskTrace | None, outcome: str) -> None:
        labels = {"task": task_label(task_id), "outcome": outcome}
        self._metrics.task_runs.add(1, labels)
        if t is None:
            return
        self._metrics.task_duration.record(time.perf_counter() - t.started, labels)
        run = t.run
        if run is not None:
            if t.owner is run.owner:
                run.owner_busy = False
            self._note(run)

    def _finish(self, t: _TaskTrace) -> None:
        t.span.end()
        # The token belongs to the context of the asyncio task that started the span;
        # detaching from anywhere else would raise inside OpenTelemetry.
        if t.owner is current_task():
            otel_context.detach(t.token)


def _run_outcome(error: BaseException) -> str:
    if isinstance(error, WorkflowTimeoutError):
        return "timed_out"
    if isinstance(error, WorkflowCancelledError | asyncio.CancelledError):
        return "cancelled"
    return "failed"


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__qualname__
    return f"{name}: {text}" if text else name
