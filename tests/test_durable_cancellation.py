"""Cancelling a run from outside while the engine waits on its checkpoint store."""

from __future__ import annotations

import asyncio
import enum

import cano
import pytest
from cano.records import RunEnd
from cano.store import CheckpointRow, InMemoryCheckpointStore


class Step(enum.Enum):
    VALIDATE = enum.auto()
    CHARGE = enum.auto()
    DONE = enum.auto()


class _SlowStore(InMemoryCheckpointStore):
    """Appends and clears that take a while, to be cancelled in the middle."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_append = asyncio.Event()
        self.slow_clear = asyncio.Event()

    async def append(self, row: CheckpointRow) -> None:
        if row.sequence == 1:
            self.slow_append.set()
            await asyncio.sleep(10)
        await super().append(row)

    async def clear(self, workflow_id: str) -> None:
        if not self.slow_clear.is_set():  # only the first clear is slow
            self.slow_clear.set()
            await asyncio.sleep(10)
        await super().clear(workflow_id)

    async def run_ended(self, workflow_id: str, end: RunEnd, clear_log: bool) -> None:
        # A store keeping run records clears a succeeded run's log here (clear_log=True).
        if clear_log and not self.slow_clear.is_set():
            self.slow_clear.set()
            await asyncio.sleep(10)
        await super().run_ended(workflow_id, end, clear_log)


async def test_asyncio_cancellation_during_a_checkpoint_write_propagates() -> None:
    store = _SlowStore()

    async def first() -> Step:
        return Step.CHARGE

    async def second() -> Step:
        return Step.DONE

    wf = (
        cano.Workflow[Step]
        .bare()
        .register(Step.VALIDATE, first)
        .register(Step.CHARGE, second)
        .add_exit_state(Step.DONE)
        .with_checkpoint_store(store)
    )
    run = asyncio.create_task(wf.orchestrate(Step.VALIDATE, workflow_id="slow-append"))
    await store.slow_append.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [r.state for r in await store.load_run("slow-append")] == ["VALIDATE"]


async def test_a_cancellation_while_clearing_the_log_is_too_late_to_change_the_outcome() -> None:
    # The run reached its exit state (its exit row is durable): a cancellation that lands
    # while the log is being cleared cannot undo that. The run returns its exit state, so the
    # caller learns the outcome, and the clear finishes in the background.
    store = _SlowStore()

    async def only() -> Step:
        return Step.DONE

    wf = (
        cano.Workflow[Step]
        .bare()
        .register(Step.VALIDATE, only)
        .add_exit_state(Step.DONE)
        .with_checkpoint_store(store)
    )
    run = asyncio.create_task(wf.orchestrate(Step.VALIDATE, workflow_id="slow-clear"))
    await store.slow_clear.wait()
    run.cancel()
    assert await run is Step.DONE
    assert not run.cancelled()
    for _ in range(100):
        if await store.load_run("slow-clear") == []:
            break
        await asyncio.sleep(0.01)
    assert await store.load_run("slow-clear") == []
