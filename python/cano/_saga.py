"""The compensation drain: undoing finished saga steps after a failure.

The dispatcher calls :func:`drain` when a run fails with compensations on its stack. Steps
are undone last-first; the drain never stops early, never retries, and is not interrupted
by the run's cancellation token or total timeout. Each ``compensate`` is bounded by its
task's ``attempt_timeout`` and by the run's compensation budget; once the budget is spent,
every remaining step is reported as an :class:`OrphanedCompensationError` (its output kept
as raw JSON so it can be compensated by hand).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from cano._codec import decode
from cano.errors import CheckpointError, OrphanedCompensationError, TaskTimeoutError
from cano.records import LEASE_CHECK

__all__ = ["drain"]


async def drain(
    stack: Sequence[tuple[str, bytes]],
    compensators: Mapping[str, tuple[Any, float | None]],
    resources: object,
    budget: float | None,
) -> list[BaseException]:
    """Runs the compensations of ``stack`` (``(task name, output JSON)``) in LIFO order and
    returns the errors met, in drain order (empty when everything was undone)."""
    check = LEASE_CHECK.get()
    if check is not None:
        await check()  # a worker that lost the run undoes nothing (LeaseLostError)
    loop = asyncio.get_running_loop()
    deadline = None if budget is None else loop.time() + budget
    errors: list[BaseException] = []
    pending = list(reversed(stack))
    while pending:
        name, blob = pending[0]
        if deadline is not None and loop.time() >= deadline:
            errors.extend(_orphan(n, b, "the compensation deadline elapsed") for n, b in pending)
            errors.append(
                TaskTimeoutError(
                    f"compensation deadline elapsed; {len(pending)} entries left unprocessed"
                )
            )
            break
        pending.pop(0)
        found = compensators.get(name)
        if found is None:
            errors.append(_orphan(name, blob, "no compensator is registered under that name"))
            continue
        task, attempt_timeout = found
        try:
            output = decode(
                blob, getattr(task, "output_type", None), task=name, what="compensation output"
            )
        except CheckpointError as err:
            errors.append(err)
            continue
        limit = attempt_timeout
        if deadline is not None:
            left = max(deadline - loop.time(), 0.0)
            limit = left if limit is None else min(limit, left)
        try:
            async with asyncio.timeout(limit):
                await task.compensate(resources, output)
        except TimeoutError as err:
            timeout = TaskTimeoutError(
                f"compensate for {name!r} exceeded its time limit of {limit:.3f}s"
            )
            timeout.__cause__ = err
            errors.append(timeout)
        except Exception as err:
            errors.append(err)
    return errors


def _orphan(name: str, blob: bytes, why: str) -> OrphanedCompensationError:
    return OrphanedCompensationError(
        f"compensation of task {name!r} was not run: {why}", task_id=name, output=blob
    )
