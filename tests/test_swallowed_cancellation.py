"""Loops that are stopped by cancelling them stop even when a store's driver swallowed the
cancellation: psycopg waits with ``asyncio.wait_for``, which on Python 3.11 drops a
``CancelledError`` that lands as its wait ends (see ``cano/_cancel.py``). The stores here
swallow it on purpose, every time, without ``uncancel()``, as that race does."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import cano
import pytest


class S(enum.Enum):
    GO = enum.auto()
    DONE = enum.auto()


async def go() -> S:
    return S.DONE


def flow() -> cano.Workflow[S]:
    return (
        cano.Workflow[S](cano.Resources.empty(), name="sync")
        .register(S.GO, go)
        .add_exit_state(S.DONE)
    )


class SwallowingStore(cano.InMemoryCheckpointStore):
    """Enqueues and reads records slowly, swallowing a cancellation that lands meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = asyncio.Event()
        self.swallowed = 0

    async def _slowly(self) -> None:
        self.inside.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.swallowed += 1

    async def enqueue_run(self, *args: Any) -> Any:
        await self._slowly()
        return await super().enqueue_run(*args)

    async def get_run(self, workflow_id: str) -> Any:
        await self._slowly()
        return await super().get_run(workflow_id)


async def test_the_scheduler_stops_when_the_store_swallowed_its_cancellation() -> None:
    store = SwallowingStore()
    running = (
        await cano.Scheduler(client=cano.Client(store)).every("sync", flow(), S.GO, 0.01).start()
    )
    await store.inside.wait()  # the loop is inside the store: stop() cancels it there
    stop = asyncio.ensure_future(running.stop())
    done, _ = await asyncio.wait({stop}, timeout=10)
    assert done, "stop() waited for a loop whose cancellation the store swallowed"
    assert store.swallowed == 1


async def test_a_cancelled_client_wait_ends_when_the_store_swallowed_the_cancellation() -> None:
    store = SwallowingStore()
    client = cano.Client(store)
    await client.enqueue("sync", S.GO, workflow_id="never-runs")  # no Worker serves it
    store.inside.clear()
    waiting = asyncio.ensure_future(client.wait("never-runs"))  # no timeout of its own
    await store.inside.wait()
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=10)
    assert done, "Client.wait went on polling after it was cancelled"
    with pytest.raises(asyncio.CancelledError):
        waiting.result()
    assert store.swallowed == 1
