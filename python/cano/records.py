"""Run records and step history: the values a store keeps about every run.

:class:`RunInfo` and :class:`StepInfo` are what :class:`cano.Client` answers; :class:`Record`
and :func:`build_steps` are what the built-in stores use to keep and answer them. The store
side is :class:`cano.runs.RunRegistry`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from cano.store import RowKind

__all__ = [
    "FENCE",
    "LEASE_CHECK",
    "PARK_AFTER",
    "RUN_ID",
    "Claim",
    "Record",
    "RunEnd",
    "RunInfo",
    "RunStatus",
    "StepInfo",
    "build_steps",
    "matches",
    "run_json",
    "step_json",
    "utc",
    "write_behind",
]

LEASE_CHECK: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "cano_lease_check", default=None
)
"""Set by a Worker around each run it owns: confirms with the store that the run's lease is
still this worker's (raising :class:`cano.LeaseLostError` otherwise). The compensation drain
awaits it before undoing anything, so that a worker that lost a run never compensates it."""

PARK_AFTER: ContextVar[float | None] = ContextVar("cano_park_after", default=None)
"""Set by a Worker around each run it owns (its lease): a timer that would sleep longer
parks the run instead (None: the run is not a Worker's, timers sleep in the process)."""

RUN_ID: ContextVar[str | None] = ContextVar("cano_run_id", default=None)
"""The workflow id of the durable run the current task belongs to, set by the engine when
the run starts (None outside a run with a checkpoint store)."""

FENCE: ContextVar[tuple[str, int] | None] = ContextVar("cano_fence", default=None)
"""``(owner, lease epoch)`` of the lease the current run is held under, set by a Worker
around each run it owns. A store checks it on every write of that run and refuses a write
from a lease that is no longer current with :class:`cano.LeaseLostError`."""


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ended, as the engine tells a store (``RunRegistry.run_ended``)."""

    status: RunStatus
    state: str | None
    """Label of the state the run ended in (failed in, or the exit state)."""
    final_state: str | None = None
    """The exit state's label, when COMPLETED."""
    error_type: str | None = None
    error: str | None = None

    @classmethod
    def _from_engine(
        cls,
        status: str,
        state: str | None,
        final_state: str | None,
        error_type: str | None,
        error: str | None,
    ) -> RunEnd:
        return cls(RunStatus(status), state, final_state, error_type, error)


@dataclass(frozen=True, slots=True)
class Claim:
    """A run a Worker just claimed: what it needs to start or resume it."""

    workflow_id: str
    workflow_name: str
    initial: str | None
    input: Any
    epoch: int
    resume: bool
    """The run has a log (it was taken over, or resumed after a failure): resume it."""
    attempt: int


class RunStatus(enum.Enum):
    """Where a run is in its life."""

    PENDING = "PENDING"
    """Enqueued, not started yet."""
    RUNNING = "RUNNING"
    """Started, not ended (or its process died: a Worker or ``resume_from`` finishes it)."""
    WAITING = "WAITING"
    """Parked on a durable wait."""
    COMPLETED = "COMPLETED"
    """Reached an exit state (``final_state``)."""
    FAILED = "FAILED"
    """Raised; ``error``, ``error_type`` and ``state`` say what and where."""
    CANCELLED = "CANCELLED"
    """Stopped by its cancellation token (or ``Client.cancel``)."""

    @property
    def terminal(self) -> bool:
        """True once the run has ended for good."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The record of one run."""

    workflow_id: str
    workflow_name: str | None
    workflow_version: int
    status: RunStatus
    state: str | None
    """Label of the current (or last) state."""
    final_state: str | None
    """Label of the exit state, once COMPLETED."""
    error: str | None
    """``str(exc)`` of what the run raised, once FAILED or CANCELLED."""
    error_type: str | None
    """``type(exc).__name__`` of what the run raised."""
    input: Any
    queue: str | None
    owner: str | None
    attempts: int
    """Times the run was started or resumed."""
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    waiting_for: str | None = None
    """WAITING: the signal the run waits for."""
    wake_at: datetime | None = None
    """WAITING: when its deadline passes (None: it waits for the signal only)."""


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One row of a run's history: a state entered, or a stepped cursor."""

    sequence: int
    state: str
    task_id: str
    kind: RowKind
    started_at: datetime
    finished_at: datetime | None
    output: Any
    """The decoded JSON of a cursor or saga output; ``None`` for a state entry."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def run_json(info: RunInfo) -> dict[str, Any]:
    """A record as JSON-ready values (``status`` as its name, datetimes ISO 8601): what
    ``cano runs get --json`` prints and ``cano ui``'s ``/api/runs`` answers."""
    return {
        "workflow_id": info.workflow_id,
        "workflow_name": info.workflow_name,
        "workflow_version": info.workflow_version,
        "status": info.status.name,
        "state": info.state,
        "final_state": info.final_state,
        "error": info.error,
        "error_type": info.error_type,
        "input": info.input,
        "queue": info.queue,
        "owner": info.owner,
        "attempts": info.attempts,
        "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
        "finished_at": _iso(info.finished_at),
        "waiting_for": info.waiting_for,
        "wake_at": _iso(info.wake_at),
    }


def step_json(step: StepInfo) -> dict[str, Any]:
    """A step as JSON-ready values (``kind`` as its name, datetimes ISO 8601)."""
    return {
        "sequence": step.sequence,
        "state": step.state,
        "task_id": step.task_id,
        "kind": step.kind.name,
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
        "output": step.output,
    }


def write_behind(write: asyncio.Future[None]) -> None:
    """Lets a record write complete without anyone waiting for it, logging a failure (at
    WARNING, on ``cano``). For a write that reaches the disk with or before a later one that
    is waited for and fails with it (a run's start, before its first row)."""
    write.add_done_callback(_report_failure)


def _report_failure(write: asyncio.Future[None]) -> None:
    if not write.cancelled() and (err := write.exception()) is not None:
        logging.getLogger("cano").warning("a run record could not be written: %s", err)


def utc(ts: float) -> datetime:
    """An aware UTC datetime from UNIX seconds."""
    return datetime.fromtimestamp(ts, UTC)


# ----- for stores --------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """A store's mutable run record (UNIX-second times), turned into a :class:`RunInfo` by
    :meth:`info`."""

    workflow_id: str
    workflow_name: str | None
    workflow_version: int
    status: RunStatus
    state: str | None
    created_at: float
    updated_at: float
    attempts: int = 1
    final_state: str | None = None
    error: str | None = None
    error_type: str | None = None
    input: Any = None
    queue: str | None = None
    owner: str | None = None
    finished_at: float | None = None
    waiting_for: str | None = None
    wake_at: float | None = None

    @classmethod
    def pending(
        cls,
        workflow_id: str,
        workflow_name: str,
        initial: str,
        input: bytes | None,
        queue: str,
        now: float,
    ) -> Record:
        """The record of a run just enqueued: PENDING in ``initial``, never attempted, with
        its JSON ``input`` decoded."""
        return cls(
            workflow_id,
            workflow_name,
            0,
            RunStatus.PENDING,
            initial,
            now,
            now,
            attempts=0,
            input=None if input is None else orjson.loads(input),
            queue=queue,
        )

    @classmethod
    def from_columns(cls, row: Sequence[Any]) -> Record:
        """A record from the columns the SQL stores select, in this order: workflow_id,
        workflow_name, workflow_version, status, state, final_state, error, error_type,
        input (JSON bytes), queue, owner, attempts, created_at, updated_at, finished_at,
        waiting_for, wake_at."""
        return cls(
            workflow_id=row[0],
            workflow_name=row[1],
            workflow_version=row[2],
            status=RunStatus(row[3]),
            state=row[4],
            final_state=row[5],
            error=row[6],
            error_type=row[7],
            input=None if row[8] is None else orjson.loads(row[8]),
            queue=row[9],
            owner=row[10],
            attempts=row[11],
            created_at=row[12],
            updated_at=row[13],
            finished_at=row[14],
            waiting_for=row[15],
            wake_at=row[16],
        )

    def started(self, name: str | None, version: int, state: str, now: float) -> None:
        """The run starts again (a resume): RUNNING, one more attempt."""
        self.workflow_name = name if name is not None else self.workflow_name
        self.workflow_version = version
        self.status = RunStatus.RUNNING
        self.state = state
        self.attempts += 1
        self.updated_at = now
        self.final_state = self.error = self.error_type = None
        self.finished_at = None
        self.waiting_for = self.wake_at = None

    def ended(self, end: RunEnd, now: float) -> None:
        """The run ended as ``end`` says."""
        self.status = end.status
        self.state = end.state if end.state is not None else self.state
        self.final_state = end.final_state
        self.error_type = end.error_type
        self.error = end.error
        self.updated_at = self.finished_at = now

    def info(self, last_row: tuple[str, float] | None = None) -> RunInfo:
        """The record as a :class:`RunInfo`; ``last_row`` (label, time) of the log of a run
        still in flight gives its current state."""
        state, updated = self.state, self.updated_at
        if last_row is not None and not self.status.terminal and last_row[1] >= updated:
            state, updated = last_row
        return RunInfo(
            workflow_id=self.workflow_id,
            workflow_name=self.workflow_name,
            workflow_version=self.workflow_version,
            status=self.status,
            state=state,
            final_state=self.final_state,
            error=self.error,
            error_type=self.error_type,
            input=self.input,
            queue=self.queue,
            owner=self.owner,
            attempts=self.attempts,
            created_at=utc(self.created_at),
            updated_at=utc(updated),
            finished_at=None if self.finished_at is None else utc(self.finished_at),
            waiting_for=self.waiting_for,
            wake_at=None if self.wake_at is None else utc(self.wake_at),
        )


def build_steps(
    rows: Iterable[tuple[int, str, str, int, bytes | None, float | None]],
    finished_at: float | None,
) -> list[StepInfo]:
    """Steps from ``(sequence, state, task_id, kind, output, at)`` rows in ascending order:
    each ends when the next starts; the last one when the run finished (if it did)."""
    from cano.store import RowKind  # noqa: PLC0415 - cano.store imports this module

    rows = list(rows)
    steps = []
    for i, (sequence, state, task_id, kind, output, at) in enumerate(rows):
        end = rows[i + 1][5] if i + 1 < len(rows) else finished_at
        started = at if at is not None else 0.0
        steps.append(
            StepInfo(
                sequence=sequence,
                state=state,
                task_id=task_id,
                kind=RowKind(kind),
                started_at=utc(started),
                finished_at=None if end is None else utc(end),
                output=None if output is None else orjson.loads(output),
            )
        )
    return steps


def matches(
    record: Record,
    statuses: frozenset[RunStatus] | None,
    workflow_name: str | None,
    since: float | None,
) -> bool:
    """True when ``record`` passes the filters of :meth:`Client.list`."""
    return (
        (statuses is None or record.status in statuses)
        and (workflow_name is None or record.workflow_name == workflow_name)
        and (since is None or record.created_at >= since)
    )
