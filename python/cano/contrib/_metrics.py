"""The observer metric catalogue shared by the OpenTelemetry and Prometheus observers.

The names are the Rust crate's observer-emitted metrics (``cano_state_enters_total`` and
so on), its scheduler metrics (``cano_scheduler_*``, fed here by the ``on_flow_*`` hooks)
and two of its direct-instrumentation run metrics, ``cano_workflow_runs_total{outcome}``
and ``cano_workflow_duration_seconds{outcome}`` (fed by ``on_run_start`` /
``on_run_finish``), so dashboards work whichever backend exports them. One extra metric,
``cano_observed_task_duration_seconds``, times a task from ``on_task_start`` to its
success or failure (retries and their sleeps included).

Three deliberate differences from the Rust crate, all about label values:

- ``task`` is the task's name without a split branch's ``[index]`` suffix, so a split of
  a thousand branches adds one series, not a thousand (spans keep the full id);
- a task that ends with ``asyncio.CancelledError`` (a split branch cancelled because the
  join was already decided, or a cancelled run) has ``outcome="cancelled"``, not
  ``"failed"``, so cancellations do not page anyone;
- likewise a run that ends with ``asyncio.CancelledError`` or
  :class:`cano.WorkflowCancelledError` has ``outcome="cancelled"`` (the Rust crate counts
  it as ``"failed"``); a run that exceeded its total timeout is ``"failed"``, as there.
  The run duration is measured from ``on_run_start`` to ``on_run_finish``: it excludes
  resource setup and teardown.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

from cano.errors import RunParked, WorkflowCancelledError

T = TypeVar("T")

MetricKind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One observer metric: its full name, kind, help text, label names and OTel unit."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...] = ()
    unit: str = ""


STATE_ENTERS = MetricSpec(
    "cano_state_enters_total", "counter", "States entered, by state label.", ("state",), "{state}"
)
TASK_RUNS = MetricSpec(
    "cano_observed_task_runs_total",
    "counter",
    "Task executions that ended, by task and outcome (completed, failed or cancelled).",
    ("task", "outcome"),
    "{run}",
)
TASK_RETRIES = MetricSpec(
    "cano_task_retries_total", "counter", "Failed attempts that were retried.", ("task",), "{retry}"
)
CIRCUIT_OPEN_EVENTS = MetricSpec(
    "cano_circuit_open_events_total",
    "counter",
    "Attempts rejected by an open circuit breaker.",
    ("task",),
    "{event}",
)
CHECKPOINTS = MetricSpec(
    "cano_checkpoints_observed_total", "counter", "Checkpoint rows appended.", (), "{row}"
)
RESUMES = MetricSpec(
    "cano_resumes_total", "counter", "Runs resumed from a checkpoint log.", (), "{run}"
)
WORKFLOW_TIMEOUTS = MetricSpec(
    "cano_observed_workflow_timeouts_total",
    "counter",
    "Runs that exceeded their total timeout.",
    (),
    "{run}",
)
WORKFLOW_TIMEOUT_LIMIT = MetricSpec(
    "cano_observed_workflow_timeout_limit_seconds",
    "histogram",
    "Total-timeout limit of the runs that exceeded it.",
    (),
    "s",
)
WORKFLOW_TIMEOUT_ELAPSED = MetricSpec(
    "cano_observed_workflow_timeout_elapsed_seconds",
    "histogram",
    "Time elapsed when a run's total timeout fired.",
    (),
    "s",
)
UNKNOWN_RESUME_STATES = MetricSpec(
    "cano_observed_unknown_resume_states_total",
    "counter",
    "Checkpoint rows naming a state the resuming workflow no longer has.",
    (),
    "{row}",
)
CANCELLATIONS = MetricSpec(
    "cano_observed_cancellations_total", "counter", "Runs cancelled.", (), "{run}"
)
CHECKPOINT_CLEARS = MetricSpec(
    "cano_checkpoint_clears_total",
    "counter",
    'Checkpoint-log clears; observers see only the failed ones (result="err").',
    ("result",),
    "{clear}",
)
TASK_DURATION = MetricSpec(
    "cano_observed_task_duration_seconds",
    "histogram",
    "Time from a task's start to its success or failure, retries included.",
    ("task", "outcome"),
    "s",
)

# Runs (the on_run_start / on_run_finish hooks): the Rust crate's direct-instrumentation
# names.
WORKFLOW_RUNS = MetricSpec(
    "cano_workflow_runs_total",
    "counter",
    "Runs that ended, by outcome (completed, failed or cancelled).",
    ("outcome",),
    "{run}",
)
WORKFLOW_DURATION = MetricSpec(
    "cano_workflow_duration_seconds",
    "histogram",
    "Duration of runs from their start (after resource setup) to their end, by outcome.",
    ("outcome",),
    "s",
)

# Scheduler flows (the on_flow_* hooks). ``flow`` is a flow id: a scheduler holds a
# fixed, small set of them, so it is a safe label.
FLOW_RUNS = MetricSpec(
    "cano_scheduler_flow_runs_total",
    "counter",
    "Scheduled runs that ended, by flow and outcome (completed, failed or cancelled).",
    ("flow", "outcome"),
    "{run}",
)
FLOW_DURATION = MetricSpec(
    "cano_scheduler_flow_duration_seconds",
    "histogram",
    "Duration of scheduled runs, by flow.",
    ("flow",),
    "s",
)
FLOW_BACKOFFS = MetricSpec(
    "cano_scheduler_flow_backoff_total",
    "counter",
    "Failed scheduled runs after which the flow backed off.",
    ("flow",),
    "{backoff}",
)
FLOW_TRIPS = MetricSpec(
    "cano_scheduler_flow_tripped_total",
    "counter",
    "Flows stopped after too many failures in a row.",
    ("flow",),
    "{trip}",
)
ACTIVE_FLOWS = MetricSpec(
    "cano_scheduler_active_flows",
    "gauge",
    "Scheduled runs in flight.",
    (),
    "{run}",
)

ALL: tuple[MetricSpec, ...] = (
    STATE_ENTERS,
    TASK_RUNS,
    TASK_RETRIES,
    CIRCUIT_OPEN_EVENTS,
    CHECKPOINTS,
    RESUMES,
    WORKFLOW_TIMEOUTS,
    WORKFLOW_TIMEOUT_LIMIT,
    WORKFLOW_TIMEOUT_ELAPSED,
    UNKNOWN_RESUME_STATES,
    CANCELLATIONS,
    CHECKPOINT_CLEARS,
    TASK_DURATION,
    WORKFLOW_RUNS,
    WORKFLOW_DURATION,
    FLOW_RUNS,
    FLOW_DURATION,
    FLOW_BACKOFFS,
    FLOW_TRIPS,
    ACTIVE_FLOWS,
)

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""Histogram buckets in seconds: runs, tasks and timeouts range from milliseconds to an hour."""

_BRANCH_SUFFIX = re.compile(r"\[\d+\]\Z")


@functools.lru_cache(maxsize=4096)
def task_label(task_id: str) -> str:
    """The ``task`` label of a task id: a split branch's ``name[3]`` becomes ``name``."""
    return _BRANCH_SUFFIX.sub("", task_id)


def outcome_of(error: BaseException) -> str:
    """``"cancelled"`` for ``asyncio.CancelledError``, else ``"failed"``."""
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "failed"


def run_outcome(error: BaseException | None) -> str:
    """A run's ``outcome`` label: ``"completed"`` without an error, ``"cancelled"`` for
    ``asyncio.CancelledError`` and :class:`cano.WorkflowCancelledError`, ``"parked"`` for a
    Worker's run that gave itself back to wait (:class:`cano.RunParked`), else ``"failed"``
    (a total timeout included)."""
    if error is None:
        return "completed"
    if isinstance(error, asyncio.CancelledError | WorkflowCancelledError):
        return "cancelled"
    if isinstance(error, RunParked):
        return "parked"  # given back to wait for a signal or a deadline: it will resume
    return "failed"


def current_task() -> asyncio.Task[object] | None:
    """The asyncio task running this hook, or ``None`` outside one."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None


_CURRENT: Final = object()


class OpenTasks(Generic[T]):
    """Per-execution state of the tasks that started and have not ended yet.

    Keyed by the asyncio task the hook runs in and the task id: a run's tasks run one at
    a time in the run's asyncio task, split branches each in their own, and concurrent
    runs in different ones, so the pair is unique while a task is open. The engine fires
    a task's start and end hooks in the same asyncio task; should an end hook arrive from
    elsewhere, the oldest open execution with that task id is taken instead. At most
    ``limit`` executions are remembered (the oldest are dropped), so a missing end hook
    cannot grow memory without bound.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._open: dict[tuple[Hashable, str], T] = {}
        self._limit = limit

    def put(self, task_id: str, value: T, owner: Hashable = _CURRENT) -> None:
        """Remembers ``value`` for ``task_id`` in ``owner`` (default: the current task)."""
        if len(self._open) >= self._limit:
            del self._open[next(iter(self._open))]
        self._open[(current_task() if owner is _CURRENT else owner, task_id)] = value

    def get(self, task_id: str) -> T | None:
        """The value remembered for ``task_id`` (see the class docstring for the lookup)."""
        key = self._find(task_id)
        return None if key is None else self._open[key]

    def pop(self, task_id: str) -> T | None:
        """Like :meth:`get`, and forgets it."""
        key = self._find(task_id)
        return None if key is None else self._open.pop(key)

    def _find(self, task_id: str) -> tuple[Hashable, str] | None:
        key = (current_task(), task_id)
        if key in self._open:
            return key
        return next((k for k in self._open if k[1] == task_id), None)

    def __len__(self) -> int:
        return len(self._open)
