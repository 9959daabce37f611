"""The queue of a store that serves the Workers of one process: which runs are due, who holds
which lease, queue caps. The in-memory store keeps all of it here; the redb store keeps it
here and persists every change of a record (leases themselves are never persisted: a
restarted process holds none, so every run a dead worker held can be taken over at once).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cano.errors import CheckpointError, LeaseLostError
from cano.records import FENCE, Claim, Record, RunEnd, RunStatus

__all__ = [
    "CANCELLED_BEFORE_START",
    "LeaseBook",
    "Queued",
    "claim_of",
    "renewal_outcome",
    "take_signal",
]


@dataclass(slots=True)
class Queued:
    """The queue side of a run: how to start it, and its lease."""

    initial: str | None
    priority: int
    not_before: float | None
    lease_until: float = 0.0
    epoch: int = 0
    cancel_requested: bool = False


def claim_of(record: Record, q: Queued, resume: bool) -> Claim:
    """What a Worker gets for a run it just claimed (``resume``: it has a log)."""
    return Claim(
        workflow_id=record.workflow_id,
        workflow_name=record.workflow_name or "",
        initial=q.initial,
        input=record.input,
        epoch=q.epoch,
        resume=resume,
        attempt=record.attempts + 1,
    )


def renewal_outcome(
    worker_id: str,
    held: Iterable[tuple[str, int]],
    found: dict[str, tuple[int, str, str | None, bool]],
) -> tuple[list[str], list[str]]:
    """(lost, cancel requested) of a renewal of ``held`` (id, epoch), from what a store
    found of each run after it: ``(epoch, status, owner, cancel requested)``. A run that
    just ended under its lease is neither; one claimed again (or deleted) is lost."""
    lost, cancelled = [], []
    for workflow_id, epoch in held:
        current = found.get(workflow_id)
        if (
            current is None
            or current[0] != epoch
            or (current[1] == "RUNNING" and current[2] != worker_id)
        ):
            lost.append(workflow_id)
        elif current[1] == "RUNNING" and current[3]:
            cancelled.append(workflow_id)
    return lost, cancelled


def take_signal(kept: list[list[Any]], name: str, token: str) -> tuple[bool, Any]:
    """Among a run's signals (``[name, payload, dedup key, consumed by]``, oldest first):
    the one consumed under ``token``, or else the oldest unconsumed one of ``name``, marked
    consumed by ``token`` now."""
    for signal in kept:
        if signal[3] == token:
            return True, signal[1]
    for signal in kept:
        if signal[0] == name and signal[3] is None:
            signal[3] = token
            return True, signal[1]
    return False, None


CANCELLED_BEFORE_START = RunEnd(
    RunStatus.CANCELLED, None, None, "WorkflowCancelledError", "cancelled before it started"
)


_Bucket = tuple[str | None, str | None]
"""``(workflow name, queue)``: the runs one claim may take are in the buckets it serves."""


class LeaseBook:
    """Queued runs and their leases, over ``records`` (every record the store keeps in
    memory: at least those of runs not ended).

    A claim costs what it takes, not the size of the queue: due PENDING runs wait in one heap
    per bucket (by priority, then age), runs enqueued for later in a heap by due time, and
    the runs RUNNING under a lease in a set (as many as the workers run at once). Entries are
    dropped lazily: a heap entry whose run is no longer PENDING is skipped when met.
    """

    __slots__ = ("_delayed", "_ready", "_running", "caps", "queued", "records")

    def __init__(self, records: dict[str, Record]) -> None:
        self.records = records
        self.queued: dict[str, Queued] = {}
        self.caps: dict[str, int] = {}
        self._ready: dict[_Bucket, list[tuple[int, float, str]]] = {}
        self._delayed: list[tuple[float, str]] = []
        self._running: set[str] = set()

    def add(self, record: Record, q: Queued) -> None:
        """Queues a run (enqueued, or loaded when the store opened)."""
        workflow_id = record.workflow_id
        self.queued[workflow_id] = q
        if record.status is RunStatus.RUNNING:
            self._running.add(workflow_id)
        elif record.status is RunStatus.PENDING:
            self._schedule(record, q, q.not_before)
        elif record.status is RunStatus.WAITING and q.not_before is not None:
            self._schedule(record, q, q.not_before)  # its deadline (or a signal came)

    def _schedule(self, record: Record, q: Queued, due: float | None) -> None:
        if due is None:
            self._push_ready(record, q)
        else:
            heapq.heappush(self._delayed, (due, record.workflow_id))

    def park(
        self,
        workflow_id: str,
        state: str,
        signal: str | None,
        wake_at: float | None,
        now: float,
        *,
        signalled: bool,
    ) -> Record:
        """The run's worker gave it back to wait: WAITING, no lease, due again at
        ``wake_at`` — or now, when a signal it waits for is already there."""
        record, q = self.records[workflow_id], self.queued[workflow_id]
        record.status, record.owner, record.updated_at = RunStatus.WAITING, None, now
        record.state, record.waiting_for, record.wake_at = state, signal, wake_at
        q.lease_until = 0.0
        q.not_before = now if signalled else wake_at
        self._running.discard(workflow_id)
        if q.not_before is not None:
            self._schedule(record, q, q.not_before)
        return record

    def signalled(self, workflow_id: str, name: str, now: float) -> Record | None:
        """A signal arrived: a run WAITING for it is due now (returned, to be persisted)."""
        record, q = self.records.get(workflow_id), self.queued.get(workflow_id)
        if record is None or q is None or record.status is not RunStatus.WAITING:
            return None
        if record.waiting_for != name:
            return None
        q.not_before = now
        self._push_ready(record, q)
        return record

    def forget(self, workflow_id: str) -> None:
        """The run ended or was deleted: it leaves the queue."""
        self.queued.pop(workflow_id, None)
        self._running.discard(workflow_id)

    def _push_ready(self, record: Record, q: Queued) -> None:
        bucket = self._ready.setdefault((record.workflow_name, record.queue), [])
        heapq.heappush(bucket, (q.priority, record.created_at, record.workflow_id))

    def _pending(self, workflow_id: str) -> Record | None:
        """The run, if it is still waiting to be claimed (PENDING, or WAITING and due)."""
        record, q = self.records.get(workflow_id), self.queued.get(workflow_id)
        if record is None or q is None:
            return None
        if record.status is RunStatus.PENDING:
            return record
        if record.status is RunStatus.WAITING and q.not_before is not None:
            return record
        return None

    def owns(self, workflow_id: str, fence: tuple[str, int]) -> bool:
        """True while ``fence`` (owner, epoch) is the lease the run is held under."""
        record, q = self.records.get(workflow_id), self.queued.get(workflow_id)
        return (
            record is not None
            and q is not None
            and record.status is RunStatus.RUNNING
            and record.owner == fence[0]
            and q.epoch == fence[1]
        )

    def check_fence(self, workflow_id: str) -> None:
        """Refuses a write made under a lease (``FENCE``) that is no longer current."""
        fence = FENCE.get()
        if fence is not None and not self.owns(workflow_id, fence):
            raise LeaseLostError.of_run(workflow_id)

    def check_start(self, workflow_id: str, now: float) -> None:
        """Refuses to start or resume, outside a Worker, a run a worker holds a live lease on."""
        record, q = self.records.get(workflow_id), self.queued.get(workflow_id)
        if (
            FENCE.get() is None
            and record is not None
            and record.status is RunStatus.RUNNING
            and record.owner is not None
            and q is not None
            and q.lease_until >= now
        ):
            raise CheckpointError(
                f"run {workflow_id!r} is owned by worker {record.owner!r}, whose lease is "
                "current: it cannot be started or resumed here"
            )

    def claim(
        self,
        worker_id: str,
        workflow_names: tuple[str, ...],
        queues: tuple[str, ...],
        limit: int,
        lease: float,
        now: float,
    ) -> list[tuple[Record, Queued, bool]]:
        """Claims up to ``limit`` due PENDING runs and RUNNING runs whose lease expired, by
        priority then age, within the queues' caps: each becomes RUNNING, owned by
        ``worker_id`` under a new epoch. Returns ``(record, queued, resumes)`` of each:
        ``resumes`` when the run had started before (taken over, or woken from a wait)."""
        while self._delayed and self._delayed[0][0] <= now:
            _, workflow_id = heapq.heappop(self._delayed)
            record = self._pending(workflow_id)
            if record is not None:
                self._push_ready(record, self.queued[workflow_id])
        names, wanted = set(workflow_names), set(queues)
        # Runs whose worker's lease expired, ordered like the rest.
        orphans = sorted(
            (q.priority, record.created_at, workflow_id)
            for workflow_id in self._running
            for record, q in [(self.records[workflow_id], self.queued[workflow_id])]
            if record.workflow_name in names
            and record.queue in wanted
            and record.owner is not None
            and q.lease_until < now
        )
        stack = orphans[::-1]  # taken from its end
        sources: list[list[tuple[int, float, str]]] = [stack]
        heads: list[tuple[tuple[int, float, str], int]] = [(stack[-1], 0)] if stack else []
        for (name, queue_name), bucket in self._ready.items():
            if name in names and queue_name in wanted and bucket:
                sources.append(bucket)
                heads.append((bucket[0], len(sources) - 1))
        heapq.heapify(heads)
        busy: dict[str, int] = {}
        chosen: list[tuple[Record, Queued, bool]] = []
        while heads and len(chosen) < limit:
            entry, source = heads[0]
            workflow_id = entry[2]
            taken_over = source == 0
            record = self.records[workflow_id] if taken_over else self._pending(workflow_id)
            if not taken_over and record is not None and record.status is RunStatus.WAITING:
                q = self.queued[workflow_id]
                if q.not_before is not None and q.not_before > now:
                    record = None  # a stale entry: it parked again since, with a later due
            resumes = taken_over or (record is not None and record.status is RunStatus.WAITING)
            if record is not None:
                queue_name = record.queue or "default"
                cap = self.caps.get(queue_name)
                if cap is not None:
                    if queue_name not in busy:
                        busy[queue_name] = self._busy(queue_name, now)
                    if busy[queue_name] >= cap:
                        if taken_over:
                            self._next(heads, sources, source)
                        else:  # every run of this bucket is in that queue
                            heapq.heappop(heads)
                        continue
                    busy[queue_name] += 1
            self._next(heads, sources, source)
            if record is None:
                continue  # claimed, cancelled or deleted since it was queued
            q = self.queued[workflow_id]
            record.status, record.owner, record.updated_at = RunStatus.RUNNING, worker_id, now
            q.lease_until, q.epoch = now + lease, q.epoch + 1
            self._running.add(workflow_id)
            chosen.append((record, q, resumes))
        return chosen

    @staticmethod
    def _next(
        heads: list[tuple[tuple[int, float, str], int]],
        sources: list[list[tuple[int, float, str]]],
        source: int,
    ) -> None:
        """Takes the head of ``source`` off it and puts its next entry among the heads."""
        items = sources[source]
        if source == 0:
            items.pop()
            following = items[-1] if items else None
        else:
            heapq.heappop(items)
            following = items[0] if items else None
        if following is None:
            heapq.heappop(heads)
        else:
            heapq.heapreplace(heads, (following, source))

    def _busy(self, queue_name: str, now: float) -> int:
        return sum(
            1
            for other in self._running
            if self.records[other].queue == queue_name and self.queued[other].lease_until >= now
        )

    def renew(
        self, worker_id: str, held: Iterable[tuple[str, int]], lease: float, now: float
    ) -> tuple[list[str], list[str]]:
        """Extends the leases of ``held`` (id, epoch); returns (lost, cancel requested). A run
        that just ended (or whose record is gone) is neither."""
        lost, cancelled = [], []
        for workflow_id, epoch in held:
            record = self.records.get(workflow_id)
            if record is None or record.status.terminal:
                continue
            q = self.queued.get(workflow_id)
            if q is None or not self.owns(workflow_id, (worker_id, epoch)):
                lost.append(workflow_id)
                continue
            q.lease_until = now + lease
            if q.cancel_requested:
                cancelled.append(workflow_id)
        return lost, cancelled

    def release(self, worker_id: str, held: Iterable[tuple[str, int]], now: float) -> None:
        """Ends the leases of ``held`` now, so that another worker may take the runs over."""
        for workflow_id, epoch in held:
            if self.owns(workflow_id, (worker_id, epoch)):
                self.queued[workflow_id].lease_until = now - 1

    def cancel(self, workflow_id: str, now: float) -> bool:
        """PENDING/WAITING → CANCELLED now (True: the record changed); RUNNING → cancellation
        requested of its owner."""
        record = self.records.get(workflow_id)
        if record is not None and record.status in (RunStatus.PENDING, RunStatus.WAITING):
            record.ended(CANCELLED_BEFORE_START, now)
            self.forget(workflow_id)
            return True
        if record is not None and record.status is RunStatus.RUNNING:
            q = self.queued.get(workflow_id)
            if q is not None:
                q.cancel_requested = True
        return False

    def set_cap(self, name: str, concurrency: int | None) -> None:
        """Caps the runs of queue ``name`` RUNNING at once (None: no cap)."""
        if concurrency is None:
            self.caps.pop(name, None)
        else:
            self.caps[name] = concurrency
