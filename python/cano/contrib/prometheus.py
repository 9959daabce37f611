"""Prometheus metrics for cano runs (``pip install 'cano[prometheus]'``).

::

    from prometheus_client import start_http_server
    from cano.contrib.prometheus import PrometheusObserver

    wf.with_observer(PrometheusObserver())      # the default prometheus_client registry
    start_http_server(9000)

Metrics (``cano`` is the default ``namespace``; counters end in ``_total``, durations are
histograms in seconds, and no label holds a run id or anything else unbounded):

======================================================  ======================================
``cano_state_enters_total{state}``                      states entered
``cano_observed_task_runs_total{task, outcome}``        task executions ended: ``completed``,
                                                        ``failed`` or ``cancelled``
``cano_observed_task_duration_seconds{task, outcome}``  start to success/failure, retries in
``cano_task_retries_total{task}``                       failed attempts that were retried
``cano_circuit_open_events_total{task}``                circuit-breaker rejections
``cano_checkpoints_observed_total``                     checkpoint rows appended
``cano_resumes_total``                                  runs resumed
``cano_observed_workflow_timeouts_total``               total timeouts, plus the histograms
                                                        ``..._timeout_elapsed_seconds`` and
                                                        ``..._timeout_limit_seconds``
``cano_observed_cancellations_total``                   runs cancelled
``cano_observed_unknown_resume_states_total``           resumed rows naming a removed state
``cano_workflow_runs_total{outcome}``                   runs ended: ``completed``, ``failed``
                                                        (timeouts included), ``cancelled``, or
                                                        ``parked`` (given back to wait)
``cano_workflow_duration_seconds{outcome}``             run durations, ``on_run_start`` to
                                                        ``on_run_finish``
``cano_checkpoint_clears_total{result="err"}``          failed checkpoint-log clears
``cano_scheduler_flow_runs_total{flow, outcome}``       scheduled runs ended
``cano_scheduler_flow_duration_seconds{flow}``          scheduled run durations
``cano_scheduler_flow_backoff_total{flow}``             back-offs after a failed run
``cano_scheduler_flow_tripped_total{flow}``             flows stopped by their failure streak
``cano_scheduler_active_flows``                         scheduled runs in flight (gauge)
======================================================  ======================================

These are the Rust crate's observer metric names and, for the two run metrics, its
direct-instrumentation names (the label-value differences are
described in :mod:`cano.contrib._metrics`). ``task`` is a task's name, without a split
branch's ``[index]``.

Observers that share a registry and a namespace share the metrics, so one observer per
workflow is fine: creating a second observer does not raise prometheus_client's
"Duplicated timeseries" error. A task's duration is measured between its
``on_task_start`` and its end hook in the same asyncio task, so concurrent runs and split
branches are timed separately. A run's duration is kept in a context variable of the
asyncio task awaiting it (where the engine fires both run hooks), so concurrent runs and
workflows awaited inside another workflow's task are timed separately too.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from contextvars import ContextVar
from typing import Final, Generic, TypeAlias, TypeVar

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cano.contrib.prometheus needs prometheus-client: pip install 'cano[prometheus]'"
    ) from e

from cano.contrib import _metrics as m
from cano.contrib._metrics import OpenTasks, outcome_of, run_outcome, task_label
from cano.errors import ConfigurationError
from cano.observer import WorkflowObserver

__all__ = ["PrometheusObserver"]

_NAMESPACE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")

# The start times of the runs the current asyncio task is awaiting, innermost first, as an
# immutable linked list: (start, enclosing runs) or None. Never mutated in place, so a
# context copied into a split branch cannot be disturbed by the run that spawned it.
_Runs: TypeAlias = tuple[float, "_Runs"] | None


M = TypeVar("M", Counter, Histogram)


class _Children(Generic[M]):
    """A labelled metric's children by label values.

    ``labels()`` validates its arguments and takes a lock on every call, which made it
    most of this observer's cost; children never change once created (cano never calls
    ``remove`` or ``clear`` on its metrics), so they are looked up in a plain dict.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _Metrics:
    """The collectors of one (registry, namespace) pair."""

    def __init__(self, registry: CollectorRegistry, namespace: str) -> None:
        def counter(spec: m.MetricSpec) -> Counter:
            return Counter(
                _name(spec, namespace),
                spec.description,
                labelnames=spec.labels,
                registry=registry,
            )

        def histogram(spec: m.MetricSpec) -> Histogram:
            return Histogram(
                _name(spec, namespace),
                spec.description,
                labelnames=spec.labels,
                registry=registry,
                buckets=m.DURATION_BUCKETS,
            )

        self.state_enters = _Children(counter(m.STATE_ENTERS))
        self.task_runs = _Children(counter(m.TASK_RUNS))
        self.task_duration = _Children(histogram(m.TASK_DURATION))
        self.task_retries = _Children(counter(m.TASK_RETRIES))
        self.circuit_open = _Children(counter(m.CIRCUIT_OPEN_EVENTS))
        self.checkpoints = counter(m.CHECKPOINTS)
        self.resumes = counter(m.RESUMES)
        self.timeouts = counter(m.WORKFLOW_TIMEOUTS)
        self.timeout_limit = histogram(m.WORKFLOW_TIMEOUT_LIMIT)
        self.timeout_elapsed = histogram(m.WORKFLOW_TIMEOUT_ELAPSED)
        self.unknown_resume_states = counter(m.UNKNOWN_RESUME_STATES)
        self.cancellations = counter(m.CANCELLATIONS)
        self.checkpoint_clears = _Children(counter(m.CHECKPOINT_CLEARS))
        self.workflow_runs = _Children(counter(m.WORKFLOW_RUNS))
        self.workflow_duration = _Children(histogram(m.WORKFLOW_DURATION))
        self.flow_runs = _Children(counter(m.FLOW_RUNS))
        self.flow_duration = _Children(histogram(m.FLOW_DURATION))
        self.flow_backoffs = _Children(counter(m.FLOW_BACKOFFS))
        self.flow_trips = _Children(counter(m.FLOW_TRIPS))
        self.active_flows = Gauge(
            _name(m.ACTIVE_FLOWS, namespace), m.ACTIVE_FLOWS.description, registry=registry
        )


def _name(spec: m.MetricSpec, namespace: str) -> str:
    """``cano_state_enters_total`` → ``{namespace}_state_enters`` (the client adds _total)."""
    base = spec.name.removeprefix("cano_").removesuffix("_total")
    return f"{namespace}_{base}" if namespace else base


_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)
_shared_lock = threading.Lock()


def _metrics_for(registry: CollectorRegistry, namespace: str) -> _Metrics:
    with _shared_lock:
        per_namespace = _shared.setdefault(registry, {})
        found = per_namespace.get(namespace)
        if found is None:
            found = per_namespace[namespace] = _Metrics(registry, namespace)
        return found


class PrometheusObserver(WorkflowObserver):
    """Counts what the workflow's runs do in ``prometheus_client`` metrics.

    ``registry`` defaults to ``prometheus_client.REGISTRY`` (what ``start_http_server``
    and ``generate_latest()`` expose); pass a ``CollectorRegistry`` to keep the metrics
    apart, as tests do. ``namespace`` prefixes every name (``""`` for none) and must be a
    valid Prometheus name, else :class:`cano.ConfigurationError`. The metric names are
    listed in the module docstring.

    Example::

        registry = CollectorRegistry()
        wf.with_observer(PrometheusObserver(registry))
        await wf.orchestrate(Step.FETCH)
        registry.get_sample_value(
            "cano_observed_task_runs_total", {"task": "fetch", "outcome": "completed"}
        )
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "cano"
    ) -> None:
        if namespace and not _NAMESPACE.match(namespace):
            raise ConfigurationError(
                f"PrometheusObserver namespace {namespace!r} is not a valid Prometheus metric "
                "name prefix (letters, digits, '_' and ':', not starting with a digit)"
            )
        self.registry = registry if registry is not None else REGISTRY
        self.namespace = namespace
        self._m = _metrics_for(self.registry, namespace)
        self._started: OpenTasks[float] = OpenTasks()
        self._runs: ContextVar[_Runs] = ContextVar("cano_prometheus_runs", default=None)
        self._active_flows: set[str] = set()

    def __repr__(self) -> str:
        return f"PrometheusObserver(namespace={self.namespace!r})"

    def on_run_start(self, workflow_id: str | None) -> None:
        self._runs.set((time.perf_counter(), self._runs.get()))

    def on_run_finish(self, state: str | None, error: BaseException | None) -> None:
        outcome = run_outcome(error)
        self._m.workflow_runs(outcome).inc()
        runs = self._runs.get()
        if runs is not None:  # None only when the hook is called by hand
            started, enclosing = runs
            self._runs.set(enclosing)
            self._m.workflow_duration(outcome).observe(time.perf_counter() - started)

    def on_state_enter(self, state: str) -> None:
        self._m.state_enters(state).inc()

    def on_task_start(self, task_id: str) -> None:
        self._started.put(task_id, time.perf_counter())

    def on_task_success(self, task_id: str) -> None:
        self._task_ended(task_id, "completed")

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self._task_ended(task_id, outcome_of(error))

    def _task_ended(self, task_id: str, outcome: str) -> None:
        task = task_label(task_id)
        self._m.task_runs(task, outcome).inc()
        started = self._started.pop(task_id)
        if started is not None:
            elapsed = time.perf_counter() - started
            self._m.task_duration(task, outcome).observe(elapsed)

    def on_retry(self, task_id: str, attempt: int) -> None:
        self._m.task_retries(task_label(task_id)).inc()

    def on_circuit_open(self, task_id: str) -> None:
        self._m.circuit_open(task_label(task_id)).inc()

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        self._m.checkpoints.inc()

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        self._m.resumes.inc()

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._m.timeouts.inc()
        self._m.timeout_elapsed.observe(elapsed)
        self._m.timeout_limit.observe(limit)

    def on_cancelled(self, state: str) -> None:
        self._m.cancellations.inc()

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        self._m.checkpoint_clears("err").inc()

    def on_unknown_resume_state(self, workflow_id: str, sequence: int, label: str) -> None:
        self._m.unknown_resume_states.inc()

    def on_flow_start(self, flow_id: str, run: int) -> None:
        if flow_id not in self._active_flows:
            self._active_flows.add(flow_id)
            self._m.active_flows.inc()

    def on_flow_finish(self, flow_id: str, outcome: str, duration: float) -> None:
        self._m.flow_runs(flow_id, outcome).inc()
        if flow_id in self._active_flows:  # a run cancelled before it started never began
            self._active_flows.discard(flow_id)
            self._m.active_flows.dec()
            self._m.flow_duration(flow_id).observe(duration)

    def on_flow_backoff(self, flow_id: str, streak: int, delay: float) -> None:
        self._m.flow_backoffs(flow_id).inc()

    def on_flow_tripped(self, flow_id: str, streak: int) -> None:
        self._m.flow_trips(flow_id).inc()
