"""Run records, step history and the queue of :class:`cano.RedbCheckpointStore`.

The file, its rows and its group commit are Rust's (``cano._core.RedbCheckpointStore``); this
class adds what :class:`cano.Client` and :class:`cano.Worker` need (``cano.runs.RunRegistry``
and ``cano.worker.RunQueue``). A redb file belongs to one process (its lock), so:

- the records of runs not ended yet, and the queue's leases, are kept in memory
  (:class:`cano._leases.LeaseBook`) and loaded when the store opens; every change of a record
  is written through the store's writer thread, in the same group commit (one log sync) as
  the rows written at the same time — a record never costs an fsync of its own;
- ended runs' records and step histories are only on disk, read when asked for;
- leases are never written: a store opened again after its process died holds none, so its
  Workers take over every run the dead process was running, at once, from its log.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from cano import _core
from cano._leases import LeaseBook, Queued, claim_of, take_signal
from cano.records import (
    Claim,
    Record,
    RunEnd,
    RunInfo,
    RunStatus,
    StepInfo,
    build_steps,
    matches,
    write_behind,
)

__all__ = ["RedbCheckpointStore"]


def _dump(record: Record, q: Queued | None) -> bytes:
    data: dict[str, Any] = {
        "name": record.workflow_name,
        "version": record.workflow_version,
        "status": record.status.value,
        "state": record.state,
        "created": record.created_at,
        "updated": record.updated_at,
        "attempts": record.attempts,
        "final_state": record.final_state,
        "error": record.error,
        "error_type": record.error_type,
        "input": record.input,
        "queue": record.queue,
        "owner": record.owner,
        "finished": record.finished_at,
        "waiting_for": record.waiting_for,
        "wake_at": record.wake_at,
    }
    if q is not None:
        data["queued"] = [q.initial, q.priority, q.not_before, q.epoch, q.cancel_requested]
    return orjson.dumps(data)


def _load(workflow_id: str, data: bytes) -> tuple[Record, Queued | None]:
    d = orjson.loads(data)
    record = Record(
        workflow_id=workflow_id,
        workflow_name=d["name"],
        workflow_version=d["version"],
        status=RunStatus(d["status"]),
        state=d["state"],
        created_at=d["created"],
        updated_at=d["updated"],
        attempts=d["attempts"],
        final_state=d["final_state"],
        error=d["error"],
        error_type=d["error_type"],
        input=d["input"],
        queue=d["queue"],
        owner=d["owner"],
        finished_at=d["finished"],
        waiting_for=d.get("waiting_for"),
        wake_at=d.get("wake_at"),
    )
    queued = d.get("queued")
    if queued is None:
        return record, None
    initial, priority, not_before, epoch, cancel_requested = queued
    # No lease survives its process: a run held when the store was closed (or its process
    # died) can be taken over at once.
    return record, Queued(initial, priority, not_before, 0.0, epoch, cancel_requested)


class RedbCheckpointStore(_core.RedbCheckpointStore):
    """The embedded, durable checkpoint store: one redb file per process.

    ```python
    async with cano.RedbCheckpointStore("runs.redb") as store:
        wf.with_checkpoint_store(store)
        await wf.orchestrate(Step.START, workflow_id="order-7")
    ```

    It keeps run records and step history (:class:`cano.Client`) and serves the Workers of
    its process (:class:`cano.Worker`); reopened after its process died, its Workers take
    over the runs that process was running.
    """

    __slots__ = ("_active", "_leases", "_signals")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "immediate",
        read_only: bool = False,
        create: bool = True,
        repair: bool = False,
    ) -> None:
        # The file was opened by `_core.RedbCheckpointStore.__new__` with these arguments.
        del path, durability, read_only, create, repair
        self._active: dict[str, Record] = {}
        self._leases = LeaseBook(self._active)
        # Signals of the runs asked about, read once from the file: [name, payload (JSON
        # text or None), dedup key, consumed by], oldest first.
        self._signals: dict[str, list[list[Any]]] = {}
        for workflow_id, data in self._values_now("record"):
            record, q = _load(workflow_id, data)
            if not record.status.terminal:
                self._active[workflow_id] = record
                if q is not None:
                    self._leases.add(record, q)
        for name, data in self._values_now("queue"):
            self._leases.set_cap(name, orjson.loads(data)["concurrency"])

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
        record = self._active.get(workflow_id)
        if record is None and resumed:
            record = await self._stored(workflow_id)  # a failed or cancelled run resumed
            if record is not None:
                self._active[workflow_id] = record
        if record is None:
            record = Record(
                workflow_id, workflow_name, workflow_version, RunStatus.RUNNING, state, now, now
            )
            self._active[workflow_id] = record
        else:
            record.started(workflow_name, workflow_version, state, now)
        # Not waited for: it reaches the disk in order, with or before the run's first row
        # (which the run does wait for), in the same group commit; a failure to write it
        # fails that row too.
        write_behind(self._put_value("record", workflow_id, self._dump(record)))

    async def run_ended(self, workflow_id: str, end: RunEnd, clear_log: bool) -> None:
        """Records how the run ended; with ``clear_log`` moves its log into the history, in
        the same commit."""
        self._leases.check_fence(workflow_id)
        now = time.time()
        record = self._active.pop(workflow_id, None)
        if record is None:
            record = Record(workflow_id, None, 0, RunStatus.RUNNING, end.state, now, now)
        record.ended(end, now)
        record.owner = None
        self._leases.forget(workflow_id)
        self._set_fence(workflow_id, None, 0)
        self._signals.pop(workflow_id, None)  # kept on disk; read again if asked
        await self._end_run(workflow_id, _dump(record, None), clear_log)

    async def get_run(self, workflow_id: str) -> RunInfo | None:
        """The run's record, or None."""
        record = self._active.get(workflow_id)
        if record is None:
            record = await self._stored(workflow_id)
        if record is None:
            return None
        if record.status.terminal:
            return record.info()
        return record.info(await self._last_row(workflow_id))

    async def list_run_infos(
        self,
        statuses: frozenset[RunStatus] | None,
        workflow_name: str | None,
        since: float | None,
        limit: int,
        offset: int,
    ) -> list[RunInfo]:
        """Records passing the filters, newest first (runs not ended are in memory: asking
        only for them reads nothing)."""
        if statuses is not None and not any(s.terminal for s in statuses):
            records = self._active
        else:
            records = await self._all_records()
        chosen = [r for r in records.values() if matches(r, statuses, workflow_name, since)]
        chosen.sort(key=lambda r: (r.created_at, r.workflow_id), reverse=True)
        page = chosen[offset : offset + limit]
        live = [r for r in page if not r.status.terminal]
        last_rows = dict(
            zip(
                (r.workflow_id for r in live),
                await asyncio.gather(*(self._last_row(r.workflow_id) for r in live)),
                strict=True,
            )
        )
        return [r.info(last_rows.get(r.workflow_id)) for r in page]

    async def run_steps(self, workflow_id: str) -> list[StepInfo]:
        """The run's history (then its live log), ascending."""
        history, live = await asyncio.gather(
            self._timed_rows(workflow_id, True), self._timed_rows(workflow_id, False)
        )
        record = self._active.get(workflow_id) or await self._stored(workflow_id)
        finished = record.finished_at if record is not None else None
        return build_steps([*history, *live], finished)

    async def delete_run(self, workflow_id: str) -> None:
        """Forgets the run: its record, its history and its log."""
        self._forget(workflow_id)
        await self._delete_run(workflow_id)

    async def prune_runs(self, finished_before: float, statuses: frozenset[RunStatus]) -> int:
        """Removes the records, history and logs of runs that ended before the cutoff."""
        doomed = [
            r.workflow_id
            for r in (await self._all_records()).values()
            if r.status in statuses
            and r.finished_at is not None
            and r.finished_at < finished_before
        ]
        for workflow_id in doomed:
            self._forget(workflow_id)
        # Queued together: one group commit for all of them.
        await asyncio.gather(*(self._delete_run(workflow_id) for workflow_id in doomed))
        return len(doomed)

    # ----- the queue (cano.worker.RunQueue) ---------------------------------------------

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
        if workflow_id in self._active:
            return await self.get_run(workflow_id)
        now = time.time()
        record = Record.pending(workflow_id, workflow_name, initial, input, queue, now)
        q = Queued(initial, priority, not_before)
        # Known here at once (an enqueue of the same id meanwhile finds it), claimable once
        # stored: the file may hold an ended run of that id, which the insert finds instead.
        self._active[workflow_id] = record
        try:
            found = await self._insert_value("record", workflow_id, _dump(record, q))
        except BaseException:
            self._active.pop(workflow_id, None)
            raise
        if found is not None:
            self._active.pop(workflow_id, None)
            return _load(workflow_id, found)[0].info()
        self._leases.add(record, q)
        return record.info()

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
        claims = []
        for record, q, taken_over in chosen:
            self._set_fence(record.workflow_id, worker_id, q.epoch)
            # A run taken over resumes from its log, if its process got as far as writing one.
            resume = taken_over and bool(await self._timed_rows(record.workflow_id, False))
            claims.append(claim_of(record, q, resume))
        # Nothing is written: a claim lives in this process (no other process can open the
        # file), and the run's start, written next, records it. A crash before that leaves
        # the run PENDING, claimed again when the store is opened.
        return claims

    async def renew_leases(
        self, worker_id: str, held: list[tuple[str, int]], lease: float
    ) -> tuple[list[str], list[str]]:
        """Extends the leases of ``held`` (id, epoch); returns (lost, cancel requested).
        Leases live in this process only: nothing is written."""
        return self._leases.renew(worker_id, held, lease, time.time())

    async def release_leases(self, worker_id: str, held: list[tuple[str, int]]) -> None:
        """Ends the leases of ``held`` now, so that another worker may take the runs over."""
        self._leases.release(worker_id, held, time.time())

    async def cancel_run(self, workflow_id: str) -> RunInfo | None:
        """PENDING/WAITING → CANCELLED now; RUNNING → cancellation requested of its owner."""
        record = self._active.get(workflow_id)
        if record is not None:
            if self._leases.cancel(workflow_id, time.time()):
                del self._active[workflow_id]
                await self._end_run(workflow_id, _dump(record, None), False)
            else:
                await self._put_value("record", workflow_id, self._dump(record))
        return await self.get_run(workflow_id)

    async def set_queue_cap(self, name: str, concurrency: int | None) -> None:
        """Caps the runs of queue ``name`` RUNNING at once (None: no cap)."""
        self._leases.set_cap(name, concurrency)
        await self._put_value("queue", name, orjson.dumps({"concurrency": concurrency}))

    # ----- signals (cano.waits.SignalBox) -----------------------------------------------

    async def send_signal(
        self, workflow_id: str, name: str, payload: bytes | None, dedup_key: str | None
    ) -> bool:
        """Keeps a signal for the run (durably); False when ``dedup_key`` was already sent."""
        kept = await self._signals_of(workflow_id)
        if dedup_key is not None and any(s[0] == name and s[2] == dedup_key for s in kept):
            return False
        kept.append([name, None if payload is None else payload.decode(), dedup_key, None])
        await self._put_value("signal", workflow_id, orjson.dumps(kept))
        woken = self._leases.signalled(workflow_id, name, time.time())
        if woken is not None:  # parked for it: due now, also after a restart
            await self._put_value("record", workflow_id, self._dump(woken))
        return True

    async def park_run(
        self, workflow_id: str, state: str, signal: str | None, wake_at: float | None
    ) -> None:
        """The run's worker gives it back to wait in ``state`` (fenced by its lease):
        WAITING until a signal ``signal`` arrives or ``wake_at`` passes."""
        self._leases.check_fence(workflow_id)
        kept = await self._signals_of(workflow_id)
        self._leases.check_fence(workflow_id)  # still ours after the read
        signalled = any(s[0] == signal and s[3] is None for s in kept)
        record = self._leases.park(
            workflow_id, state, signal, wake_at, time.time(), signalled=signalled
        )
        self._set_fence(workflow_id, None, 0)
        await self._put_value("record", workflow_id, self._dump(record))

    async def take_signal(
        self, workflow_id: str, name: str, token: str
    ) -> tuple[bool, bytes | None]:
        """The signal consumed under ``token``, or the oldest unconsumed one of ``name``,
        consumed now (durably, before the answer)."""
        self._leases.check_fence(workflow_id)
        kept = await self._signals_of(workflow_id)
        was = [s[3] for s in kept]
        found, payload = take_signal(kept, name, token)
        if [s[3] for s in kept] != was:
            await self._put_value("signal", workflow_id, orjson.dumps(kept))
        return found, None if payload is None else payload.encode()

    async def _signals_of(self, workflow_id: str) -> list[list[Any]]:
        kept = self._signals.get(workflow_id)
        if kept is None:
            data = await self._value("signal", workflow_id)
            # Another call may have read them meanwhile: the first one read stands.
            kept = self._signals.setdefault(workflow_id, [] if data is None else orjson.loads(data))
        return kept

    # ----- helpers ------------------------------------------------------------------------

    def _dump(self, record: Record) -> bytes:
        return _dump(record, self._leases.queued.get(record.workflow_id))

    def _forget(self, workflow_id: str) -> None:
        self._active.pop(workflow_id, None)
        self._signals.pop(workflow_id, None)
        self._leases.forget(workflow_id)
        self._set_fence(workflow_id, None, 0)

    async def _stored(self, workflow_id: str) -> Record | None:
        data = await self._value("record", workflow_id)
        return None if data is None else _load(workflow_id, data)[0]

    async def _all_records(self) -> dict[str, Record]:
        records = {
            workflow_id: _load(workflow_id, data)[0]
            for workflow_id, data in await self._values("record")
        }
        records.update(self._active)  # the same, or newer
        return records

    async def _last_row(self, workflow_id: str) -> tuple[str, float] | None:
        rows = await self._timed_rows(workflow_id, False)
        if not rows:
            return None
        _, state, _, _, _, at = rows[-1]
        return state, at if at is not None else 0.0
