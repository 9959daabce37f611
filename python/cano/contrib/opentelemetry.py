"""OpenTelemetry traces and metrics for cano runs (``pip install 'cano[otel]'``).

Depends only on ``opentelemetry-api``: the application owns the SDK, the exporters and
the global providers, as with any instrumented library::

    from cano.contrib.opentelemetry import OpenTelemetryObserver

    wf.with_observer(OpenTelemetryObserver(workflow_name="orders"))

Traces
    One ``invoke_workflow {workflow_name}`` span per run (kind INTERNAL), from
    ``on_run_start`` (after resource setup) to ``on_run_finish`` (before teardown), a
    child of whatever span is current when the run starts: the caller's span, the span of
    the task a nested workflow is awaited in, or a scheduler's ``execute_flow`` span. The
    run span is the current span while the run goes on. One ``execute_task {task}`` span
    per task execution, from ``on_task_start`` to its success or failure; it covers every
    attempt, and each retry is a ``cano.task.retry`` span event (attribute
    ``cano.task.attempt``: the failed attempt). While a task runs, its span is the
    current span, so spans your task code creates (HTTP clients, databases, a nested
    workflow's run) become its children. Split branches are ``execute_task`` children of
    the run span, each in its own asyncio task.

    Attributes are namespaced: ``cano.workflow.name``, ``cano.workflow.id`` (when the run
    has one), ``cano.state`` (on a run span: the exit state, or the state the run failed
    in), ``cano.task`` (the full id, ``name[i]`` for a branch), ``cano.task.attempts``,
    ``cano.task.outcome`` and ``cano.run.outcome`` (``completed``, ``failed``,
    ``cancelled``, ``timed_out``), ``cano.run.resumed``. The run span has
    ``cano.state.enter`` and ``cano.checkpoint`` events. A run that completes has status
    OK. A failure (of a task, or of a run: whatever error the run raises, including
    ``asyncio.CancelledError``, a failed join, ``with_max_transitions`` or a checkpoint
    store error) sets status ERROR and ``error.type`` (the exception class's
    ``__qualname__``, e.g. ``RetryExhaustedError``) and records the exception (once: a
    run that fails with its task's error leaves it on the task span). A branch cancelled
    because its join was already decided ends with ``cano.task.outcome = "cancelled"`` and
    no error. A run started by a :class:`cano.Scheduler` is the child of an
    ``execute_flow {flow_id}`` span (``cano.flow.id``, ``cano.flow.run``,
    ``cano.flow.outcome``).

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
    ``cano_scheduler_flow_tripped_total{flow}`` and ``cano_scheduler_active_flows``, the
    run metrics ``cano_workflow_runs_total{outcome}`` and
    ``cano_workflow_duration_seconds{outcome}`` (``completed``, ``failed`` or
    ``cancelled``), plus the histogram ``cano_observed_task_duration_seconds{task,
    outcome}``. OpenTelemetry's own convention would drop ``_total`` from counter names
    (exporters add it back); keeping the names verbatim means the same dashboard works for
    the Rust crate, for :class:`cano.contrib.prometheus.PrometheusObserver` and for this
    observer behind the OTel Prometheus exporter, which does not add a second ``_total``.

How runs are told apart
    The engine fires ``on_run_start`` and exactly one ``on_run_finish`` per run, both in
    the asyncio task that awaits the run. The run is kept in a context variable of that
    task, which split branches inherit, so concurrent runs (each in its own asyncio task)
    never mix, and a workflow awaited inside a task of another run, observed by this
    observer or another one, gets its own run span, restored to the enclosing run's when
    it ends.
"""

from __future__ import annotations

import asyncio
import time
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
from cano.contrib._metrics import OpenTasks, current_task, outcome_of, run_outcome, task_label
from cano.errors import RunParked, WorkflowCancelledError, WorkflowTimeoutError
from cano.observer import WorkflowObserver

__all__ = ["OpenTelemetryObserver"]

_SCOPE = "cano"
_OK = Status(StatusCode.OK)
# One attribute mapping per run outcome, shared by every data point.
_OUTCOMES: dict[str, dict[str, str]] = {
    o: {"outcome": o} for o in ("completed", "failed", "cancelled", "parked")
}


class _RunTrace:
    """One run in flight: its span, and the run it is nested in (for the same observer)."""

    __slots__ = (
        "enclosing",
        "owner",
        "recorded",
        "span",
        "started",
        "state",
        "token",
        "workflow_id",
    )

    def __init__(
        self,
        span: Span,
        token: Token[Context],
        enclosing: _RunTrace | None,
        workflow_id: str | None,
    ) -> None:
        self.span = span
        self.token = token
        self.enclosing = enclosing
        self.workflow_id = workflow_id
        self.owner = current_task()
        self.state: str | None = None
        # The last error recorded on a task span of this run: not recorded again on the
        # run span when the run fails with it.
        self.recorded: BaseException | None = None
        self.started = time.perf_counter()


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


class _FlowTrace:
    """One scheduled run in flight: its span, and what its run failed with."""

    __slots__ = ("enclosing", "error_type", "owner", "span", "token")

    def __init__(self, span: Span, token: Token[Context], enclosing: _FlowTrace | None) -> None:
        self.span = span
        self.token = token
        self.enclosing = enclosing
        self.owner = current_task()
        self.error_type: str | None = None


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
        self.workflow_runs = _counter(meter, m.WORKFLOW_RUNS)
        self.workflow_duration = _histogram(meter, m.WORKFLOW_DURATION)
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
    low-cardinality (a workflow's kind, never a run id): give each kind of workflow its
    own observer. See the module docstring for the spans, attributes, metric names and
    how runs are told apart.

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
        self._run_name = f"invoke_workflow {workflow_name}"
        self._run: ContextVar[_RunTrace | None] = ContextVar("cano_otel_run", default=None)
        self._flow: ContextVar[_FlowTrace | None] = ContextVar("cano_otel_flow", default=None)
        self._tasks: OpenTasks[_TaskTrace] = OpenTasks()
        # Scheduled runs in flight, by flow id (a flow runs once at a time).
        self._flows: dict[str, _FlowTrace] = {}

    def __repr__(self) -> str:
        return f"OpenTelemetryObserver(workflow_name={self.workflow_name!r})"

    # ----- hooks: runs ---------------------------------------------------------------------

    def on_run_start(self, workflow_id: str | None) -> None:
        attributes: dict[str, Any] = {"cano.workflow.name": self.workflow_name}
        if workflow_id is not None:
            attributes["cano.workflow.id"] = workflow_id
        span = self._tracer.start_span(
            self._run_name, kind=SpanKind.INTERNAL, attributes=attributes
        )
        # Current while the run goes on: spans created outside its tasks (compensations,
        # say) become its children.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._run.set(_RunTrace(span, token, self._run.get(), workflow_id))

    def on_run_finish(self, state: str | None, error: BaseException | None) -> None:
        outcome = run_outcome(error)
        labels = _OUTCOMES[outcome]
        self._metrics.workflow_runs.add(1, labels)
        run = self._run.get()
        if run is None:
            return  # called by hand, without on_run_start
        self._run.set(run.enclosing)
        self._metrics.workflow_duration.record(time.perf_counter() - run.started, labels)
        span = run.span
        if isinstance(error, RunParked):  # a wait, not a failure: the run resumes later
            waits: dict[str, Any] = {"cano.run.outcome": outcome, "cano.state": error.state}
            if error.signal is not None:
                waits["cano.wait.signal"] = error.signal
            if error.wake_at is not None:
                waits["cano.wait.until"] = error.wake_at
            span.set_attributes(waits)
            span.set_status(_OK)
        elif error is None:
            attributes: dict[str, Any] = {"cano.run.outcome": outcome}
            if state is not None:
                attributes["cano.state"] = state
            span.set_attributes(attributes)
            span.set_status(_OK)
        else:
            error_type = type(error).__qualname__
            attributes = {"cano.run.outcome": _span_outcome(error), "error.type": error_type}
            if run.state is not None:
                attributes["cano.state"] = run.state
            span.set_attributes(attributes)
            if error is not run.recorded:
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
            if run.enclosing is None and (flow := self._flow.get()) is not None:
                flow.error_type = error_type
        span.end()
        self._detach(run.owner, run.token)

    # ----- hooks: states -------------------------------------------------------------------

    def on_state_enter(self, state: str) -> None:
        self._metrics.state_enters.add(1, {"state": state})
        run = self._run.get()
        if run is not None:
            run.state = state
            run.span.add_event("cano.state.enter", {"cano.state": state})

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        self._metrics.resumes.add(1)
        run = self._run.get()
        if run is not None:
            run.span.set_attributes({"cano.run.resumed": True, "cano.resume.sequence": sequence})

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        self._metrics.checkpoints.add(1)
        run = self._run.get()
        if run is not None:
            run.span.add_event("cano.checkpoint", {"cano.checkpoint.sequence": sequence})

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._metrics.timeouts.add(1)
        self._metrics.timeout_elapsed.record(elapsed)
        self._metrics.timeout_limit.record(limit)
        run = self._run.get()
        if run is not None:
            run.span.add_event(
                "cano.workflow.timeout",
                {"cano.timeout.elapsed": elapsed, "cano.timeout.limit": limit},
            )

    def on_cancelled(self, state: str) -> None:
        self._metrics.cancellations.add(1)

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        self._metrics.checkpoint_clears.add(1, {"result": "err"})
        run = self._run.get()
        if run is not None:
            run.span.add_event(
                "cano.checkpoint.clear_failed",
                {"error.type": type(error).__qualname__, "cano.workflow.id": workflow_id},
            )

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
        flow = self._flows[flow_id] = _FlowTrace(span, token, self._flow.get())
        self._flow.set(flow)

    def on_flow_finish(self, flow_id: str, outcome: str, duration: float) -> None:
        self._metrics.flow_runs.add(1, {"flow": flow_id, "outcome": outcome})
        flow = self._flows.pop(flow_id, None)
        if flow is None:
            return  # cancelled before it started: no span, not counted as active
        self._metrics.active_flows.add(-1)
        self._metrics.flow_duration.record(duration, {"flow": flow_id})
        span = flow.span
        span.set_attribute("cano.flow.outcome", outcome)
        if outcome == "failed":
            span.set_attribute("error.type", flow.error_type or "_OTHER")
            span.set_status(Status(StatusCode.ERROR, f"scheduled run of {flow_id} failed"))
        span.end()
        if self._detach(flow.owner, flow.token):
            self._flow.set(flow.enclosing)

    def on_flow_backoff(self, flow_id: str, streak: int, delay: float) -> None:
        self._metrics.flow_backoffs.add(1, {"flow": flow_id})

    def on_flow_tripped(self, flow_id: str, streak: int) -> None:
        self._metrics.flow_trips.add(1, {"flow": flow_id})

    # ----- hooks: tasks --------------------------------------------------------------------

    def on_task_start(self, task_id: str) -> None:
        run = self._run.get()
        attributes: dict[str, Any] = {
            "cano.task": task_id,
            "cano.workflow.name": self.workflow_name,
        }
        parent = None
        if run is not None:
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
        owner = current_task()
        self._tasks.put(task_id, _TaskTrace(span, token, owner, run), owner)

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
            t.span.set_attributes(
                {"cano.task.attempts": t.attempts, "cano.task.outcome": "completed"}
            )
            self._finish(t)

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        outcome = outcome_of(error)
        t = self._tasks.pop(task_id)
        self._task_ended(task_id, t, outcome)
        if t is None:
            return
        span = t.span
        span.set_attributes({"cano.task.attempts": t.attempts, "cano.task.outcome": outcome})
        if outcome == "failed":
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
            if t.run is not None:
                t.run.recorded = error
        self._finish(t)

    def _task_ended(self, task_id: str, t: _TaskTrace | None, outcome: str) -> None:
        labels = {"task": task_label(task_id), "outcome": outcome}
        self._metrics.task_runs.add(1, labels)
        if t is not None:
            self._metrics.task_duration.record(time.perf_counter() - t.started, labels)

    def _finish(self, t: _TaskTrace) -> None:
        t.span.end()
        self._detach(t.owner, t.token)

    @staticmethod
    def _detach(owner: asyncio.Task[object] | None, token: Token[Context]) -> bool:
        """Restores the context ``token`` replaced, if this runs where it was attached.

        The token belongs to the context of the asyncio task that attached it; detaching
        from anywhere else would raise inside OpenTelemetry.
        """
        if owner is not current_task():
            return False
        otel_context.detach(token)
        return True


def _span_outcome(error: BaseException) -> str:
    if isinstance(error, WorkflowTimeoutError):
        return "timed_out"
    if isinstance(error, WorkflowCancelledError | asyncio.CancelledError):
        return "cancelled"
    return "failed"


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__qualname__
    return f"{name}: {text}" if text else name
