"""The queue of a store that serves the Workers of one process: which runs are due, who holds
which lease, queue caps. The in-memory store keeps all of it here; the redb store keeps it
here and persists every change of a record (leases themselves are never persisted: a
restarted process holds none, so every run a dead worker held can be taken over at once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cano.errors import CheckpointError, LeaseLostError
from cano.records import FENCE, Record, RunEnd, RunStatus

__all__ = ["CANCELLED_BEFORE_START", "LeaseBook", "Queued"]


@dataclass(slots=True)
class Queued:
    """The queue side of a run: how to start it, and its lease."""

    initial: str | None
    priority: int
    not_before: float | None
    lease_until: float = 0.0
    epoch: int = 0
    cancel_requested: bool = False


CANCELLED_BEFORE_START = RunEnd(
    RunStatus.CANCELLED, None, None, "WorkflowCancelledError", "cancelled before it started"
)


class LeaseBook:
    """Queued runs and their leases, over ``records`` (every record the store keeps in
    memory: at least those of runs not ended)."""

    __slots__ = ("caps", "queued", "records")

    def __init__(self, records: dict[str, Record]) -> None:
        self.records = records
        self.queued: dict[str, Queued] = {}
        self.caps: dict[str, int] = {}

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
            raise LeaseLostError(
                f"the lease on run {workflow_id!r} is no longer this worker's (another worker "
                "took the run over)"
            )

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
        ``worker_id`` under a new epoch. Returns ``(record, queued, taken over)`` of each."""
        candidates = []
        for workflow_id, q in self.queued.items():
            record = self.records[workflow_id]
            if record.workflow_name not in workflow_names or record.queue not in queues:
                continue
            due = record.status is RunStatus.PENDING and (
                q.not_before is None or q.not_before <= now
            )
            orphaned = (
                record.status is RunStatus.RUNNING
                and record.owner is not None
                and q.lease_until < now
            )
            if due or orphaned:
                candidates.append((q.priority, record.created_at, workflow_id))
        candidates.sort()
        busy: dict[str, int] = {}
        chosen: list[tuple[Record, Queued, bool]] = []
        for _, _, workflow_id in candidates:
            if len(chosen) >= limit:
                break
            record, q = self.records[workflow_id], self.queued[workflow_id]
            queue_name = record.queue or "default"
            cap = self.caps.get(queue_name)
            if cap is not None:
                if queue_name not in busy:
                    busy[queue_name] = self._running(queue_name, now)
                if busy[queue_name] >= cap:
                    continue
                busy[queue_name] += 1
            taken_over = record.status is RunStatus.RUNNING
            record.status, record.owner, record.updated_at = RunStatus.RUNNING, worker_id, now
            q.lease_until, q.epoch = now + lease, q.epoch + 1
            chosen.append((record, q, taken_over))
        return chosen

    def _running(self, queue_name: str, now: float) -> int:
        return sum(
            1
            for other, q in self.queued.items()
            if self.records[other].queue == queue_name
            and self.records[other].status is RunStatus.RUNNING
            and q.lease_until >= now
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
            self.queued.pop(workflow_id, None)
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
