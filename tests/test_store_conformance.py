"""Checkpoint store conformance: what every store must do, checked on every store we ship.

The suite is plain data: ``CHECKS`` is a list of ``async def check(store)`` functions, and
:func:`run_conformance` runs them all on a fresh store from any factory. A custom store is
checked by adding its factory to ``FACTORIES`` (or by calling ``run_conformance`` itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.records import RunEnd
from cano.store import (
    CheckpointRow,
    CheckpointStore,
    InMemoryCheckpointStore,
    RedbCheckpointStore,
    RowKind,
    conflict_message,
)
from pg_server import postgres_store
from stores import DictStore

# --------------------------------------------------------------------------------------------
# stores under test


StoreFactory = Callable[[Path], contextlib.AbstractAsyncContextManager[Any]]


@contextlib.asynccontextmanager
async def redb_store(tmp: Path, durability: str = "immediate") -> AsyncIterator[Any]:
    async with RedbCheckpointStore(tmp / "checkpoints.redb", durability=durability) as store:
        yield store


@contextlib.asynccontextmanager
async def plain(store: Any) -> AsyncIterator[Any]:
    yield store


@contextlib.asynccontextmanager
async def plain_closing(store: Any) -> AsyncIterator[Any]:
    async with store:
        yield store


FACTORIES: dict[str, StoreFactory] = {
    "redb": redb_store,
    "redb-eventual": lambda tmp: redb_store(tmp, "eventual"),
    "sqlite": lambda tmp: plain_closing(cano.SqliteCheckpointStore(tmp / "checkpoints.db")),
    "memory": lambda _tmp: plain(InMemoryCheckpointStore()),
    "dict": lambda _tmp: plain(DictStore()),
    "postgres": lambda _tmp: postgres_store(),
}

# --------------------------------------------------------------------------------------------
# the checks


def row(
    workflow_id: str,
    sequence: int,
    state: str = "S",
    *,
    task_id: str = "task",
    kind: RowKind = RowKind.STATE_ENTRY,
    output: bytes | None = None,
    version: int = 0,
) -> CheckpointRow:
    return CheckpointRow(workflow_id, sequence, state, task_id, kind, output, version)


async def check_round_trip_every_field(store: CheckpointStore) -> None:
    rows = [
        row("order-1", 0, "Start"),
        row("order-1", 1, "Charge", task_id="ChargeCard", kind=RowKind.COMPENSATION,
            output=b'{"charge_id": "ch_1"}', version=3),
        row("order-1", 2, "Ship", kind=RowKind.STEP_CURSOR, output=b""),
    ]  # fmt: skip
    for r in rows:
        await store.append(r)
    loaded = await store.load_run("order-1")
    assert loaded == rows
    assert all(type(r) is CheckpointRow and type(r.kind) is RowKind for r in loaded)
    assert loaded[2].output == b""  # empty output is not None


async def check_unknown_run_is_empty(store: CheckpointStore) -> None:
    assert await store.load_run("never-written") == []
    assert await store.list_runs() == []


async def check_load_is_ascending(store: CheckpointStore) -> None:
    for seq in [5, 0, 300, 2, 1, 256]:
        await store.append(row("w", seq, f"S{seq}"))
    assert [r.sequence for r in await store.load_run("w")] == [0, 1, 2, 5, 256, 300]


async def check_duplicate_is_a_conflict_and_keeps_the_row(store: CheckpointStore) -> None:
    await store.append(row("w", 0, "Original"))
    with pytest.raises(cano.CheckpointError) as info:
        await store.append(row("w", 0, "Intruder"))
    assert str(info.value) == conflict_message("w", 0)
    assert "already has a row at sequence 0" in str(info.value)
    assert [r.state for r in await store.load_run("w")] == ["Original"]
    # The same sequence under another id is not a conflict.
    await store.append(row("other", 0))


async def check_clear_removes_only_that_run(store: CheckpointStore) -> None:
    for wid in ["a", "ab", "b"]:
        for seq in range(3):
            await store.append(row(wid, seq))
    await store.clear("a")
    await store.clear("never-existed")
    assert await store.load_run("a") == []
    assert len(await store.load_run("ab")) == 3
    assert len(await store.load_run("b")) == 3
    assert sorted(await store.list_runs()) == ["ab", "b"]
    await store.append(row("a", 0, "Again"))  # a cleared id starts over
    assert [r.state for r in await store.load_run("a")] == ["Again"]


async def check_list_runs(store: CheckpointStore) -> None:
    await store.append(row("b", 0))
    await store.append(row("a", 0))
    await store.append(row("a", 1))
    runs = await store.list_runs()
    assert sorted(runs) == ["a", "b"]
    assert all(isinstance(r, str) for r in runs)


async def check_concurrent_appends(store: CheckpointStore) -> None:
    await asyncio.gather(*(store.append(row(f"run-{i % 5}", i // 5)) for i in range(100)))
    for i in range(5):
        assert [r.sequence for r in await store.load_run(f"run-{i}")] == list(range(20))


async def check_racing_duplicates_one_wins(store: CheckpointStore) -> None:
    results = await asyncio.gather(
        *(store.append(row("race", 0, f"S{i}")) for i in range(10)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, cano.CheckpointError) for r in results if r is not None)
    assert len(await store.load_run("race")) == 1


async def check_unicode_and_large_values(store: CheckpointStore) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    r = row("заказ-🦀", 0, "État", task_id="tâche\n", kind=RowKind.COMPENSATION, output=big,
            version=2**32 - 1)  # fmt: skip
    await store.append(r)
    assert await store.load_run("заказ-🦀") == [r]
    assert await store.load_run("заказ") == []


CHECKS: list[Callable[[CheckpointStore], Awaitable[None]]] = [
    check_round_trip_every_field,
    check_unknown_run_is_empty,
    check_load_is_ascending,
    check_duplicate_is_a_conflict_and_keeps_the_row,
    check_clear_removes_only_that_run,
    check_list_runs,
    check_concurrent_appends,
    check_racing_duplicates_one_wins,
    check_unicode_and_large_values,
]


# --------------------------------------------------------------------------------------------
# run records (cano.runs.RunRegistry) and the queue (cano.worker.RunQueue): what a store
# that keeps records, or serves workers, must do — checked on every store that claims to


def _row(workflow_id: str, sequence: int, state: str) -> CheckpointRow:
    return CheckpointRow(workflow_id, sequence, state, f"t{sequence}", RowKind.STATE_ENTRY, None, 0)


async def check_records_follow_a_run(store: Any) -> None:
    assert await store.get_run("r") is None
    await store.run_started("r", "orders", 3, "A", False)
    await store.append(_row("r", 0, "A"))
    await store.append(_row("r", 1, "B"))
    info = await store.get_run("r")
    assert (info.status, info.state, info.workflow_name, info.workflow_version, info.attempts) == (
        cano.RunStatus.RUNNING,
        "B",  # the current state is the last row's
        "orders",
        3,
        1,
    )
    await store.run_ended("r", RunEnd(cano.RunStatus.FAILED, "B", None, "TaskError", "boom"), False)
    info = await store.get_run("r")
    assert (info.status, info.error_type, info.error, info.state) == (
        cano.RunStatus.FAILED,
        "TaskError",
        "boom",
        "B",
    )
    assert [r.state for r in await store.load_run("r")] == ["A", "B"]  # kept: resumable
    await store.run_started("r", "orders", 3, "B", True)  # resumed
    await store.append(_row("r", 2, "DONE"))
    await store.run_ended("r", RunEnd(cano.RunStatus.COMPLETED, "DONE", "DONE"), True)
    info = await store.get_run("r")
    assert (info.status, info.final_state, info.attempts, info.error) == (
        cano.RunStatus.COMPLETED,
        "DONE",
        2,
        None,
    )
    assert await store.load_run("r") == []  # clear_log: the log is gone...
    steps = await store.run_steps("r")  # ...into the history, in order, with times
    assert [(s.sequence, s.state) for s in steps] == [(0, "A"), (1, "B"), (2, "DONE")]
    assert all(a.finished_at == b.started_at for a, b in itertools.pairwise(steps))
    assert steps[-1].finished_at == info.finished_at


async def check_records_list_and_prune(store: Any) -> None:
    for run_id, name in (("a", "x"), ("b", "y"), ("c", "x")):
        await store.run_started(run_id, name, 0, "A", False)
        await asyncio.sleep(0.002)  # distinct creation times
    await store.run_ended("a", RunEnd(cano.RunStatus.COMPLETED, "A", "A"), True)
    everything = await store.list_run_infos(None, None, None, 10, 0)
    assert [i.workflow_id for i in everything] == ["c", "b", "a"]
    named = await store.list_run_infos(None, "x", None, 10, 0)
    assert [i.workflow_id for i in named] == ["c", "a"]
    done = await store.list_run_infos(frozenset({cano.RunStatus.COMPLETED}), None, None, 10, 0)
    assert [i.workflow_id for i in done] == ["a"]
    assert [i.workflow_id for i in await store.list_run_infos(None, None, None, 1, 1)] == ["b"]
    assert await store.prune_runs(0.0, frozenset({cano.RunStatus.COMPLETED})) == 0
    assert await store.prune_runs(1e12, frozenset({cano.RunStatus.COMPLETED})) == 1
    assert await store.get_run("a") is None and await store.run_steps("a") == []
    await store.delete_run("b")
    assert await store.get_run("b") is None


async def check_queue_claims_fence_and_cancel(store: Any) -> None:
    from cano.records import FENCE

    first = await store.enqueue_run("q", "orders", "A", b'{"n": 1}', "default", None, 0)
    again = await store.enqueue_run("q", "orders", "B", None, "default", None, 0)
    assert first.status is cano.RunStatus.PENDING and again.input == {"n": 1}  # idempotent
    assert await store.claim_runs("w1", ("other",), ("default",), 5, 30) == []
    [claim] = await store.claim_runs("w1", ("orders",), ("default",), 5, 0.5)
    assert (claim.workflow_id, claim.initial, claim.input, claim.resume) == (
        "q",
        "A",
        {"n": 1},
        False,
    )
    assert await store.claim_runs("w2", ("orders",), ("default",), 5, 30) == []  # leased
    await asyncio.sleep(0.6)  # w1's lease expires
    [taken] = await store.claim_runs("w2", ("orders",), ("default",), 5, 30)
    assert taken.epoch > claim.epoch
    lost, cancels = await store.renew_leases("w1", [("q", claim.epoch)], 30)
    assert (lost, cancels) == (["q"], [])

    async def write_as(owner: str, epoch: int) -> None:
        FENCE.set((owner, epoch))
        await store.append(_row("q", 0, "A"))

    with pytest.raises(cano.LeaseLostError):
        await asyncio.create_task(write_as("w1", claim.epoch))
    await asyncio.create_task(write_as("w2", taken.epoch))
    assert [r.state for r in await store.load_run("q")] == ["A"]
    cancelled = await store.cancel_run("q")  # RUNNING: its owner is asked
    assert cancelled.status is cano.RunStatus.RUNNING
    assert await store.renew_leases("w2", [("q", taken.epoch)], 30) == ([], ["q"])
    await store.enqueue_run("p", "orders", "A", None, "default", 1e12, 0)  # far in the future
    assert (await store.cancel_run("p")).status is cano.RunStatus.CANCELLED


async def check_queue_caps_and_release(store: Any) -> None:
    await store.set_queue_cap("slow", 1)
    for run_id in ("s1", "s2"):
        await store.enqueue_run(run_id, "orders", "A", None, "slow", None, 0)
    claims = await store.claim_runs("w", ("orders",), ("slow",), 5, 30)
    assert [c.workflow_id for c in claims] == ["s1"]  # the cap holds
    await store.release_leases("w", [("s1", claims[0].epoch)])
    [again] = await store.claim_runs("v", ("orders",), ("slow",), 5, 30)
    assert again.workflow_id == "s1"  # released: taken over at once, still one at a time
    await store.set_queue_cap("slow", None)
    assert [c.workflow_id for c in await store.claim_runs("v", ("orders",), ("slow",), 5, 30)] == [
        "s2"
    ]


REGISTRY_CHECKS: list[Callable[[Any], Awaitable[None]]] = [
    check_records_follow_a_run,
    check_records_list_and_prune,
]
QUEUE_CHECKS: list[Callable[[Any], Awaitable[None]]] = [
    check_queue_claims_fence_and_cancel,
    check_queue_caps_and_release,
]


async def run_conformance(factory: StoreFactory, tmp: Path) -> None:
    """Runs every check, each on a fresh store from ``factory`` (in its own directory)."""
    for i, check in enumerate(CHECKS):
        directory = tmp / f"{i}-{check.__name__}"
        directory.mkdir()
        async with factory(directory) as store:
            await check(store)


# --------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("store_name", list(FACTORIES))
async def test_conformance(store_name: str, check: Any, tmp_path: Path) -> None:
    async with FACTORIES[store_name](tmp_path) as store:
        assert isinstance(store, CheckpointStore)
        await check(store)


@pytest.mark.parametrize(
    "check", REGISTRY_CHECKS + QUEUE_CHECKS, ids=lambda c: c.__name__.removeprefix("check_")
)
@pytest.mark.parametrize("store_name", list(FACTORIES))
async def test_records_and_queue_conformance(store_name: str, check: Any, tmp_path: Path) -> None:
    from cano.runs import RunRegistry
    from cano.worker import RunQueue

    async with FACTORIES[store_name](tmp_path) as store:
        needs = RunQueue if check in QUEUE_CHECKS else RunRegistry
        if not isinstance(store, needs):
            pytest.skip(f"{store_name} does not implement {needs.__name__}")
        await check(store)


async def test_run_conformance_is_pluggable(tmp_path: Path) -> None:
    await run_conformance(FACTORIES["dict"], tmp_path)
