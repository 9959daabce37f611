"""A Scheduler with a client enqueues each tick once, whoever fires it (API.md §14.6)."""

from __future__ import annotations

import asyncio
import enum
from datetime import datetime
from pathlib import Path
from typing import Any

import cano
import pytest


class S(enum.Enum):
    GO = enum.auto()
    DONE = enum.auto()


async def test_two_schedulers_on_one_store_fire_each_tick_once(record_store: Any) -> None:
    ran: list[str] = []

    async def go() -> S:
        ran.append(cano.current_run().workflow_id)
        return S.DONE

    def flow() -> cano.Workflow[S]:
        return (
            cano.Workflow[S](cano.Resources.empty(), name="sync")
            .register(S.GO, go)
            .add_exit_state(S.DONE)
        )

    store = record_store
    client = cano.Client(store)
    schedulers = [cano.Scheduler(client=client).every("sync", flow(), S.GO, 0.2) for _ in range(2)]
    running = [await s.start() for s in schedulers]
    for _ in range(3000):  # until five ticks were enqueued (no assumption on speed)
        if len(await client.list(limit=1000)) >= 5:
            break
        await asyncio.sleep(0.01)
    for r in running:
        await r.stop()
    fired = [r.status("sync").run_count for r in running]  # type: ignore[union-attr]
    infos = await client.list(limit=1000)
    ids = sorted(i.workflow_id for i in infos)
    # Both fired (nearly) every tick — the one stopped first may miss the last — and a
    # tick fired by both is still one run.
    assert len(ids) >= 5 and sum(fired) > len(ids)
    assert all(len(ids) - 1 <= f <= len(ids) for f in fired)
    for run_id in ids:  # ...on the epoch-aligned grid, named by the fire time
        flow_id, _, when = run_id.partition(":")
        assert flow_id == "sync"
        stamp = datetime.fromisoformat(when).timestamp()
        assert abs(stamp / 0.2 - round(stamp / 0.2)) < 1e-4
    async with cano.Worker(store, [flow()], poll_interval=0.05, lease=5):
        for run_id in ids:
            info = await client.wait(run_id, timeout=30)
            assert info.status is cano.RunStatus.COMPLETED
    assert sorted(ran) == ids  # ...and each tick ran once


async def test_a_scheduler_with_a_client_needs_named_workflows(tmp_path: Path) -> None:
    async def go() -> S:
        return S.DONE

    unnamed = cano.Workflow[S].bare().register(S.GO, go).add_exit_state(S.DONE)
    client = cano.Client(cano.InMemoryCheckpointStore())
    with pytest.raises(cano.ConfigurationError, match="name"):
        await cano.Scheduler(client=client).manual("m", unnamed, S.GO).start()
    with pytest.raises(cano.ConfigurationError, match="client"):
        cano.Scheduler(client="not a client")  # type: ignore[arg-type]
    named = unnamed.with_name("m")
    running = await cano.Scheduler(client=client).manual("m", named, S.GO).start()
    await running.trigger("m")
    [info] = await client.list()
    assert info.status is cano.RunStatus.PENDING and info.workflow_id.startswith("m:")
    await running.stop()
