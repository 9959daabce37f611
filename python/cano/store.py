"""Checkpoint logs: the rows a run writes so that it can be resumed after a crash.

A run with a checkpoint store and a workflow id appends one :class:`CheckpointRow` when it
enters each state (before the state's task runs), one after each compensatable task and one
per stepped/stream cursor. ``(workflow_id, sequence)`` is unique: appending a second row at
the same key fails with :class:`cano.CheckpointError` and leaves the stored row alone.

Three stores ship with cano:

- :class:`RedbCheckpointStore` (Rust, embedded, ACID): the durable default, one file per
  process (and, while a ``durability="immediate"`` store is open, its write-ahead log
  ``<file>.wal`` beside it);
- :class:`InMemoryCheckpointStore`: for tests and for runs that need no durability;
- ``SqliteCheckpointStore`` / ``PostgresCheckpointStore`` in :mod:`cano.stores`.

Any object with the four coroutine methods of :class:`CheckpointStore` is a store too::

    class MyStore:
        async def append(self, row: CheckpointRow) -> None: ...
        async def load_run(self, workflow_id: str) -> list[CheckpointRow]: ...
        async def clear(self, workflow_id: str) -> None: ...
        async def list_runs(self) -> list[str]: ...
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, runtime_checkable

from cano._leases import LeaseBook, Queued, claim_of, take_signal
from cano._redb import RedbCheckpointStore
from cano.errors import CheckpointError
from cano.records import (
    Claim,
    Record,
    RunEnd,
    RunInfo,
    RunStatus,
    StepInfo,
    build_steps,
    matches,
)

__all__ = [
    "CheckpointRow",
    "CheckpointStore",
    "InMemoryCheckpointStore",
    "RedbCheckpointStore",
    "RowKind",
    "RunSummary",
    "check_workflow_id",
    "conflict_message",
    "row_fields",
]


class RowKind(enum.Enum):
    """Why a row was written. The values are what stores persist: never renumber them."""

    STATE_ENTRY = 0
    """The run entered ``state``; written before the state's task runs."""
    COMPENSATION = 1
    """A compensatable task succeeded; ``output`` is its output as JSON bytes."""
    STEP_CURSOR = 2
    """A stepped or stream task committed a cursor; ``output`` is the cursor as JSON bytes."""


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """One row of a run's checkpoint log.

    ``state`` is the state's label, ``task_id`` the name of the task registered for it,
    ``output`` the JSON bytes of a compensation output or cursor (``None`` for state-entry
    rows) and ``workflow_version`` the version the workflow had when the row was written.
    """

    workflow_id: str
    sequence: int
    state: str
    task_id: str
    kind: RowKind
    output: bytes | None
    workflow_version: int


MAX_SEQUENCE = 2**63 - 1
"""The largest sequence any built-in store accepts (SQLite's INTEGER is signed 64-bit)."""
MAX_VERSION = 2**32 - 1
"""The largest workflow version any built-in store accepts."""

RowFields = tuple[str, int, str, str, int, bytes | None, int]
"""``(workflow_id, sequence, state, task_id, kind value, output, workflow_version)``."""


def row_fields(row: object) -> RowFields:
    """The fields of a row given to ``append``, checked by the one rule every built-in store
    applies: a non-empty ``workflow_id`` without NUL, ``0 <= sequence < 2**63``, str
    ``state`` and ``task_id``, a :class:`RowKind`, ``bytes`` or ``None`` output and
    ``0 <= workflow_version < 2**32``. Anything else is a :class:`cano.CheckpointError`
    naming the field and the value."""
    try:
        workflow_id, sequence, state = row.workflow_id, row.sequence, row.state  # type: ignore[attr-defined]
        task_id, kind, output = row.task_id, row.kind, row.output  # type: ignore[attr-defined]
        version = row.workflow_version  # type: ignore[attr-defined]
    except AttributeError as e:
        raise CheckpointError(
            f"append() expects a cano.CheckpointRow; {type(row).__name__} has no "
            f"attribute {e.name!r}"
        ) from None
    check_workflow_id(workflow_id, "CheckpointRow.workflow_id")
    if not workflow_id:
        raise CheckpointError("CheckpointRow.workflow_id must be a non-empty str, got ''")
    _field("state", state, "a str", isinstance(state, str))
    _field("task_id", task_id, "a str", isinstance(task_id, str))
    for name, text in (("workflow_id", workflow_id), ("state", state), ("task_id", task_id)):
        _field(name, text, "encodable as UTF-8 (no lone surrogates)", _utf8(text))
    _field("sequence", sequence, "an int in [0, 2**63)", _int_in(sequence, MAX_SEQUENCE))
    _field("workflow_version", version, "an int in [0, 2**32)", _int_in(version, MAX_VERSION))
    kind_value = kind.value if isinstance(kind, RowKind) else kind
    _field(
        "kind",
        kind,
        "a RowKind (0 state entry, 1 compensation, 2 step cursor)",
        type(kind_value) is int and kind_value in _KIND_VALUES,
    )
    if output is not None and type(output) is not bytes:
        _field("output", output, "bytes or None", isinstance(output, bytearray | memoryview))
        output = bytes(output)
    return workflow_id, sequence, state, task_id, kind_value, output, version


def check_workflow_id(value: object, what: str = "workflow_id") -> str:
    """A workflow id given to a store: a str without NUL characters."""
    if not isinstance(value, str) or "\x00" in value or not _utf8(value):
        raise CheckpointError(
            f"{what} must be a str without NUL characters or lone surrogates, got {value!r:.80}"
        )
    return value


_KIND_VALUES = frozenset(kind.value for kind in RowKind)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _int_in(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def _field(name: str, value: object, expected: str, ok: bool) -> None:
    if not ok:
        raise CheckpointError(f"CheckpointRow.{name} must be {expected}, got {value!r:.80}")


class RunSummary(TypedDict):
    """One run of a store, as ``cano runs list`` shows it."""

    workflow_id: str
    rows: int
    last_state: str
    last_sequence: int


def conflict_message(workflow_id: str, sequence: int) -> str:
    """The message every store uses for a duplicate ``(workflow_id, sequence)``."""
    return (
        f"checkpoint conflict: workflow {_quoted(workflow_id)} already has a row at sequence "
        f"{sequence}; resume the existing run or clear it before starting a new one"
    )


def _quoted(text: str) -> str:
    # The wording of the Rust stores, which quote with Rust's `{:?}`.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@runtime_checkable
class CheckpointStore(Protocol):
    """What the engine needs from a checkpoint store.

    Each method returns an awaitable: ``async def`` methods qualify, and so do methods
    returning an ``asyncio.Future`` (as :class:`RedbCheckpointStore` does). Calls may be
    concurrent.
    """

    def append(self, row: CheckpointRow, /) -> Awaitable[None]:
        """Persist ``row``; a duplicate ``(workflow_id, sequence)`` raises CheckpointError."""
        ...

    def load_run(self, workflow_id: str, /) -> Awaitable[list[CheckpointRow]]:
        """Every row of ``workflow_id``, ascending by sequence; ``[]`` for an unknown id."""
        ...

    def clear(self, workflow_id: str, /) -> Awaitable[None]:
        """Remove every row of ``workflow_id``; an unknown id is not an error."""
        ...

    def list_runs(self) -> Awaitable[list[str]]:
        """The workflow ids that have rows."""
        ...


class InMemoryCheckpointStore:
    """A checkpoint store in a dict: for tests and for runs that need no durability.

    It behaves like the durable stores (conflicts, ordering, clearing, run records and step
    history for :class:`cano.Client`) but forgets everything when the process ends::

        store = InMemoryCheckpointStore()
        wf.with_checkpoint_store(store)
    """

    __slots__ = ("_history", "_leases", "_records", "_runs", "_signals", "_times")

    def __init__(self) -> None:
        self._runs: dict[str, dict[int, CheckpointRow]] = {}
        self._times: dict[tuple[str, int], float] = {}
        self._records: dict[str, Record] = {}
        self._history: dict[str, list[tuple[CheckpointRow, float | None]]] = {}
        self._leases = LeaseBook(self._records)
        # Per run: [name, payload, dedup key, consumed by], in the order sent.
        self._signals: dict[str, list[list[Any]]] = {}

    async def append(self, row: CheckpointRow) -> None:
        """Store ``row``; a row already at ``(workflow_id, sequence)`` raises CheckpointError,
        and so does a row the other built-in stores would refuse (see :func:`row_fields`)."""
        workflow_id, sequence, state, task_id, kind, output, version = row_fields(row)
        self._leases.check_fence(workflow_id)
        rows = self._runs.setdefault(workflow_id, {})
        if sequence in rows:
            raise CheckpointError(conflict_message(workflow_id, sequence))
        rows[sequence] = CheckpointRow(
            workflow_id, sequence, state, task_id, RowKind(kind), output, version
        )
        self._times[workflow_id, sequence] = time.time()

    async def load_run(self, workflow_id: str) -> list[CheckpointRow]:
        """Every row of ``workflow_id``, ascending by sequence."""
        rows = self._runs.get(check_workflow_id(workflow_id, "load_run(workflow_id)"), {})
        return [rows[seq] for seq in sorted(rows)]

    async def clear(self, workflow_id: str) -> None:
        """Forget ``workflow_id``'s rows (a no-op for an unknown id)."""
        self._drop_log(check_workflow_id(workflow_id, "clear(workflow_id)"))

    async def list_runs(self) -> list[str]:
        """The workflow ids that have rows, sorted."""
        return sorted(self._runs)

    def _drop_log(self, workflow_id: str) -> list[tuple[CheckpointRow, float | None]]:
        rows = self._runs.pop(workflow_id, {})
        return [(rows[q], self._times.pop((workflow_id, q), None)) for q in sorted(rows)]

    # ----- run records (cano.runs.RunRegistry) ------------------------------------------

    async def run_started(
        self,
        workflow_id: str,
        workflow_name: str | None,
        workflow_version: int,
        state: str,
        resumed: bool,
    ) -> None:
        """Records that the run starts (RUNNING), or starts again after a resume."""
        self._leases.check_fence(workflow_id)
        now = time.time()
        self._leases.check_start(workflow_id, now)
        record = self._records.get(workflow_id)
        if record is None:
            self._records[workflow_id] = Record(
                workflow_id, workflow_name, workflow_version, RunStatus.RUNNING, state, now, now
            )
        else:
            record.started(workflow_name, workflow_version, state, now)

    async def run_ended(self, workflow_id: str, end: RunEnd, clear_log: bool) -> None:
        """Records how the run ended; with ``clear_log`` moves its log into the history."""
        self._leases.check_fence(workflow_id)
        now = time.time()
        record = self._records.get(workflow_id)
        if record is None:
            record = Record(workflow_id, None, 0, RunStatus.RUNNING, end.state, now, now)
            self._records[workflow_id] = record
        record.ended(end, now)
        record.owner = None
        self._leases.forget(workflow_id)
        if clear_log:
            self._history.setdefault(workflow_id, []).extend(self._drop_log(workflow_id))

    async def get_run(self, workflow_id: str) -> RunInfo | None:
        """The run's record, or None."""
        record = self._records.get(workflow_id)
        return None if record is None else record.info(self._last_row(workflow_id))

    async def list_run_infos(
        self,
        statuses: frozenset[RunStatus] | None,
        workflow_name: str | None,
        since: float | None,
        limit: int,
        offset: int,
    ) -> list[RunInfo]:
        """Records passing the filters, newest first."""
        chosen = [r for r in self._records.values() if matches(r, statuses, workflow_name, since)]
        chosen.sort(key=lambda r: (r.created_at, r.workflow_id), reverse=True)
        return [r.info(self._last_row(r.workflow_id)) for r in chosen[offset : offset + limit]]

    async def run_steps(self, workflow_id: str) -> list[StepInfo]:
        """The run's history (then its live log), ascending."""
        rows = list(self._history.get(workflow_id, []))
        live = self._runs.get(workflow_id, {})
        rows += [(live[q], self._times.get((workflow_id, q))) for q in sorted(live)]
        record = self._records.get(workflow_id)
        finished = record.finished_at if record is not None else None
        return build_steps(
            ((r.sequence, r.state, r.task_id, r.kind.value, r.output, at) for r, at in rows),
            finished,
        )

    async def delete_run(self, workflow_id: str) -> None:
        """Forgets the run: its record, its history and its log."""
        self._records.pop(workflow_id, None)
        self._history.pop(workflow_id, None)
        self._signals.pop(workflow_id, None)
        self._leases.forget(workflow_id)
        self._drop_log(workflow_id)

    async def prune_runs(self, finished_before: float, statuses: frozenset[RunStatus]) -> int:
        """Removes the records, history and logs of runs that ended before the cutoff."""
        doomed = [
            r.workflow_id
            for r in self._records.values()
            if r.status in statuses
            and r.finished_at is not None
            and r.finished_at < finished_before
        ]
        for workflow_id in doomed:
            del self._records[workflow_id]
            self._history.pop(workflow_id, None)
            self._signals.pop(workflow_id, None)
            self._drop_log(workflow_id)
        return len(doomed)

    # ----- the queue (cano.runs.RunQueue) ----------------------------------------------

    async def enqueue_run(
        self,
        workflow_id: str,
        workflow_name: str,
        initial: str,
        input: bytes | None,
        queue: str,
        not_before: float | None,
        priority: int,
    ) -> RunInfo | None:
        """Stores a PENDING run unless ``workflow_id`` exists; returns the record."""
        if workflow_id not in self._records:
            now = time.time()
            record = Record.pending(workflow_id, workflow_name, initial, input, queue, now)
            self._records[workflow_id] = record
            self._leases.add(record, Queued(initial, priority, not_before))
        return await self.get_run(workflow_id)

    async def claim_runs(
        self,
        worker_id: str,
        workflow_names: tuple[str, ...],
        queues: tuple[str, ...],
        limit: int,
        lease: float,
    ) -> list[Claim]:
        """Claims up to ``limit`` due PENDING runs and RUNNING runs whose lease expired."""
        chosen = self._leases.claim(worker_id, workflow_names, queues, limit, lease, time.time())
        return [
            claim_of(record, q, bool(self._runs.get(record.workflow_id))) for record, q, _ in chosen
        ]

    async def renew_leases(
        self, worker_id: str, held: list[tuple[str, int]], lease: float
    ) -> tuple[list[str], list[str]]:
        """Extends the leases of ``held`` (id, epoch); returns (lost, cancel requested)."""
        return self._leases.renew(worker_id, held, lease, time.time())

    async def release_leases(self, worker_id: str, held: list[tuple[str, int]]) -> None:
        """Ends the leases of ``held`` now, so that another worker may take the runs over."""
        self._leases.release(worker_id, held, time.time())

    async def cancel_run(self, workflow_id: str) -> RunInfo | None:
        """PENDING/WAITING → CANCELLED now; RUNNING → cancellation requested of its owner."""
        self._leases.cancel(workflow_id, time.time())
        return await self.get_run(workflow_id)

    async def set_queue_cap(self, name: str, concurrency: int | None) -> None:
        """Caps the runs of queue ``name`` RUNNING at once (None: no cap)."""
        self._leases.set_cap(name, concurrency)

    async def park_run(
        self, workflow_id: str, state: str, signal: str | None, wake_at: float | None
    ) -> None:
        """The run's worker gives it back to wait in ``state`` (fenced by its lease):
        WAITING until a signal ``signal`` arrives or ``wake_at`` passes."""
        self._leases.check_fence(workflow_id)
        kept = self._signals.get(workflow_id, [])
        signalled = any(s[0] == signal and s[3] is None for s in kept)
        self._leases.park(workflow_id, state, signal, wake_at, time.time(), signalled=signalled)

    # ----- signals (cano.waits.SignalBox) -----------------------------------------------

    async def send_signal(
        self, workflow_id: str, name: str, payload: bytes | None, dedup_key: str | None
    ) -> bool:
        """Keeps a signal for the run; False when ``dedup_key`` was already sent."""
        kept = self._signals.setdefault(workflow_id, [])
        if dedup_key is not None and any(s[0] == name and s[2] == dedup_key for s in kept):
            return False
        kept.append([name, payload, dedup_key, None])
        self._leases.signalled(workflow_id, name, time.time())
        return True

    async def take_signal(
        self, workflow_id: str, name: str, token: str
    ) -> tuple[bool, bytes | None]:
        """The signal consumed under ``token``, or the oldest unconsumed one of ``name``."""
        self._leases.check_fence(workflow_id)
        return take_signal(self._signals.get(workflow_id, []), name, token)

    def _last_row(self, workflow_id: str) -> tuple[str, float] | None:
        rows = self._runs.get(workflow_id)
        if not rows:
            return None
        last = max(rows)
        return rows[last].state, self._times.get((workflow_id, last), 0.0)

    def __len__(self) -> int:
        """How many rows the store holds, over all runs."""
        return sum(len(rows) for rows in self._runs.values())

    def __repr__(self) -> str:
        return f"InMemoryCheckpointStore(runs={len(self._runs)}, rows={len(self)})"
