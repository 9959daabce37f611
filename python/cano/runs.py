"""Run records: what happened to every run of a store, kept after its log is cleared.

Every run on a store that keeps records (``SqliteCheckpointStore``,
``InMemoryCheckpointStore``) gets one: RUNNING while it runs, then COMPLETED (with its
``final_state``), FAILED (with ``error``, ``error_type`` and ``state``, where it failed) or
CANCELLED. A run whose process died stays RUNNING. The step history (``steps``) has one
entry per row of the run's log — each state entered and each stepped cursor — with the time
it started and, once the next one exists, the time it ended; it outlives the log, which is
still cleared when a run succeeds::

    client = cano.Client(store)
    info = await client.get("order-7")        # RunInfo | None
    await client.list(status=cano.RunStatus.FAILED)
    for step in await client.steps("order-7"):
        print(step.state, step.started_at, step.finished_at)

The records ride the store's own writes: a run's record is written when it starts and when
it ends; a transition writes nothing but its log row (which carries its time).
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Awaitable, Iterable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import orjson

from cano._cancel import stop_if_cancelled
from cano._codec import same
from cano._registration import state_label
from cano._values import Duration, count, seconds
from cano.errors import ConfigurationError, WorkflowError
from cano.records import _TERMINAL, RunEnd, RunInfo, RunStatus, StepInfo
from cano.store import check_workflow_id
from cano.waits import SignalBox, notify

__all__ = ["Client", "RunInfo", "RunRegistry", "RunStatus", "StepInfo"]


@runtime_checkable
class RunRegistry(Protocol):
    """What a checkpoint store implements to keep run records (every built-in store does).
    Times are UNIX seconds (UTC); statuses are :class:`RunStatus` values.

    The engine calls ``run_started`` before a run (or a resumed run) sets its resources up,
    and ``run_ended`` once it ends — with ``clear_log=True`` instead of ``clear`` when the
    run succeeded or rolled back cleanly, so that the store moves the log into the history
    and clears it in one transaction. ``append`` stamps each row with the time it was made.
    """

    def run_started(
        self,
        workflow_id: str,
        workflow_name: str | None,
        workflow_version: int,
        state: str,
        resumed: bool,
    ) -> Awaitable[None]: ...

    def run_ended(self, workflow_id: str, end: RunEnd, clear_log: bool) -> Awaitable[None]: ...

    def get_run(self, workflow_id: str) -> Awaitable[RunInfo | None]: ...

    def list_run_infos(
        self,
        statuses: frozenset[RunStatus] | None,
        workflow_name: str | None,
        since: float | None,
        limit: int,
        offset: int,
    ) -> Awaitable[list[RunInfo]]: ...

    def run_steps(self, workflow_id: str) -> Awaitable[list[StepInfo]]: ...

    def prune_runs(
        self, finished_before: float, statuses: frozenset[RunStatus]
    ) -> Awaitable[int]: ...

    def delete_run(self, workflow_id: str) -> Awaitable[None]: ...


class Client:
    """Questions about the runs of one store (all coroutines)."""

    __slots__ = ("_store",)

    def __init__(self, store: object) -> None:
        if not isinstance(store, RunRegistry):
            raise ConfigurationError(
                f"Client(store): {type(store).__name__} keeps no run records; use a built-in "
                "store (RedbCheckpointStore, SqliteCheckpointStore, InMemoryCheckpointStore) "
                "or implement cano.runs.RunRegistry"
            )
        self._store: RunRegistry = store

    @property
    def store(self) -> object:
        """The store asked."""
        return self._store

    async def enqueue(
        self,
        workflow_name: str,
        initial: Any,
        *,
        workflow_id: str | None = None,
        input: Any = None,
        queue: str = "default",
        at: datetime | None = None,
        priority: int = 0,
    ) -> RunInfo:
        """Stores a PENDING run of ``workflow_name`` starting at ``initial`` (a state or its
        label) and returns at once; a :class:`cano.Worker` serving that name and queue runs
        it. Idempotent per ``workflow_id``: enqueuing an id that exists returns the existing
        record and starts nothing twice. ``at`` delays it; a lower ``priority`` is claimed
        first; ``input`` (JSON) reaches the tasks as ``cano.current_run().input``."""
        store = self._queue("enqueue")
        if not isinstance(workflow_name, str) or not workflow_name:
            raise ConfigurationError(
                f"enqueue(workflow_name): expected a non-empty str, got {workflow_name!r:.80}"
            )
        label = initial if isinstance(initial, str) else state_label(initial)
        run_id = uuid.uuid4().hex if workflow_id is None else workflow_id
        check_workflow_id(run_id, "enqueue(workflow_id)")
        if not run_id:
            raise ConfigurationError("enqueue(workflow_id): expected a non-empty str, got ''")
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"enqueue(queue): expected a non-empty str, got {queue!r:.80}")
        if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
            raise ConfigurationError(f"enqueue(at): expected an aware datetime, got {at!r:.80}")
        rank = count(priority, "enqueue(priority)", -(2**62))
        data = None if input is None else _json(input)
        info = await store.enqueue_run(
            run_id,
            workflow_name,
            label,
            data,
            queue,
            None if at is None else at.timestamp(),
            rank,
        )
        assert info is not None
        return info  # type: ignore[no-any-return]

    async def cancel(self, workflow_id: str) -> RunInfo:
        """A PENDING (or WAITING) run is CANCELLED at once; a RUNNING one is stopped by its
        worker within one ``poll_interval``, exactly as by a ``CancellationToken``."""
        info = await self._queue("cancel").cancel_run(
            check_workflow_id(workflow_id, "cancel(workflow_id)")
        )
        if info is None:
            raise WorkflowError(f"cancel: no run {workflow_id!r} in this store")
        return info  # type: ignore[no-any-return]

    async def signal(
        self, workflow_id: str, name: str, payload: Any = None, *, dedup_key: str | None = None
    ) -> None:
        """Sends signal ``name`` with ``payload`` (JSON) to a run: its wait state for that
        name consumes it (now, or when the run gets there: it is kept). With ``dedup_key``,
        sending the same key again is a no-op. A run that is unknown or has ended is a
        :class:`cano.WorkflowError`."""
        store = self._store
        if not isinstance(store, SignalBox):
            raise ConfigurationError(
                f"Client.signal: {type(store).__name__} keeps no signals; use a built-in store "
                "or implement cano.waits.SignalBox"
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"signal(name): expected a non-empty str, got {name!r:.80}")
        if dedup_key is not None and not isinstance(dedup_key, str):
            raise ConfigurationError(
                f"signal(dedup_key): expected a str or None, got {dedup_key!r:.80}"
            )
        data = None if payload is None else _json(payload, "signal(payload)")
        info = await self.get(workflow_id)
        if info is None:
            raise WorkflowError(f"signal {name!r}: there is no run {workflow_id!r}")
        if info.status.terminal:
            raise WorkflowError(
                f"signal {name!r}: run {workflow_id!r} has ended ({info.status.name})"
            )
        if await store.send_signal(workflow_id, name, data, dedup_key):
            notify(workflow_id)

    async def set_queue(self, name: str, *, concurrency: int | None) -> None:
        """Caps how many runs of queue ``name`` run at once over every worker of the store
        (``None`` removes the cap)."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"set_queue(name): expected a non-empty str, got {name!r:.80}")
        cap = None if concurrency is None else count(concurrency, "set_queue(concurrency)", 1)
        await self._queue("set_queue").set_queue_cap(name, cap)

    def _queue(self, what: str) -> Any:
        store = self._store
        if not callable(getattr(store, "enqueue_run", None)):
            raise ConfigurationError(
                f"Client.{what}: {type(store).__name__} has no run queue; use a built-in "
                "store or implement cano.worker.RunQueue"
            )
        return store

    async def get(self, workflow_id: str) -> RunInfo | None:
        """The record of ``workflow_id``, or ``None`` when the store has none."""
        return await self._store.get_run(check_workflow_id(workflow_id, "get(workflow_id)"))

    async def list(
        self,
        *,
        status: RunStatus | Iterable[RunStatus] | None = None,
        workflow_name: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Records, newest first; ``since`` compares ``created_at``."""
        statuses = _statuses(status, "list(status)")
        if workflow_name is not None and not isinstance(workflow_name, str):
            raise ConfigurationError(
                f"list(workflow_name): expected a str or None, got {workflow_name!r:.80}"
            )
        if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise ConfigurationError(
                f"list(since): expected an aware datetime (e.g. in UTC), got {since!r:.80}"
            )
        return await self._store.list_run_infos(
            statuses,
            workflow_name,
            # Half a microsecond of slack: datetimes keep microseconds, stores keep floats.
            None if since is None else since.timestamp() - 5e-7,
            count(limit, "list(limit)", 1),
            count(offset, "list(offset)"),
        )

    async def steps(self, workflow_id: str) -> builtins.list[StepInfo]:
        """The run's history, ascending; ``[]`` for an unknown run."""
        return await self._store.run_steps(check_workflow_id(workflow_id, "steps(workflow_id)"))

    async def wait(
        self,
        workflow_id: str,
        *,
        timeout: Duration | None = None,  # noqa: ASYNC109 - the API's name for it
    ) -> RunInfo:
        """The record once the run is COMPLETED, FAILED or CANCELLED; ``TimeoutError``
        after ``timeout`` seconds. Polls the store (every 50 ms, then up to every 1 s)."""
        limit = None if timeout is None else seconds(timeout, "wait(timeout)")
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.05
        while True:
            info = await self.get(workflow_id)
            stop_if_cancelled()  # a cancellation the store's driver swallowed
            if info is not None and info.status.terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {workflow_id!r} did not end within {limit:g} s")
            wait = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
            pause = min(pause * 2, 1.0)

    async def prune(
        self,
        *,
        older_than: Duration,
        statuses: Iterable[RunStatus] = (
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        ),
    ) -> int:
        """Removes the records, steps and logs of runs that ended more than ``older_than``
        seconds ago with one of ``statuses``; returns how many runs were removed."""
        age = seconds(older_than, "prune(older_than)")
        chosen = _statuses(statuses, "prune(statuses)") or frozenset()
        unended = chosen - _TERMINAL
        if unended:
            names = ", ".join(sorted(s.name for s in unended))
            raise ConfigurationError(f"prune(statuses): only ended runs can be pruned, not {names}")
        return await self._store.prune_runs(time.time() - age, chosen)


def _statuses(value: object, what: str) -> frozenset[RunStatus] | None:
    if value is None:
        return None
    items: object = [value] if isinstance(value, RunStatus) else value
    chosen: frozenset[object] = frozenset()
    if isinstance(items, Iterable) and not isinstance(items, str | bytes):
        chosen = frozenset(items)
    if not chosen or not all(isinstance(s, RunStatus) for s in chosen):
        raise ConfigurationError(
            f"{what}: expected a RunStatus or an iterable of them, got {value!r:.80}"
        )
    return frozenset(s for s in chosen if isinstance(s, RunStatus))


def _json(value: object, what: str = "enqueue(input)") -> bytes:
    try:
        blob = orjson.dumps(value)
    except TypeError as err:
        raise ConfigurationError(f"{what}: not JSON-serialisable: {err}") from None
    if not same(value, orjson.loads(blob)):  # the exactness rule of persisted cursors
        raise ConfigurationError(
            f"{what}: {value!r:.80} would not come back unchanged from JSON; "
            "use plain JSON values (dict, list, str, int, float, bool, None)"
        )
    return blob
