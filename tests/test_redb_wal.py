"""RedbCheckpointStore internals a user can observe: the write-ahead log file of an
immediate store, and the future-compatible waiter ``_append_raw`` returns.

Crash recovery through the log is tested with real SIGKILLs in tests/crash/test_wal_sigkill.py
and, file image by file image, by the Rust tests of cano-core.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.store import CheckpointRow, RedbCheckpointStore, RowKind


def row(workflow_id: str, sequence: int, state: str = "S") -> CheckpointRow:
    return CheckpointRow(workflow_id, sequence, state, "task", RowKind.STATE_ENTRY, None, 0)


def raw(store: RedbCheckpointStore, workflow_id: str, sequence: int) -> Any:
    return store._append_raw(workflow_id, sequence, "S", "task", 0, None, 0)


# --------------------------------------------------------------------------------------------
# the log file


async def test_an_immediate_store_keeps_a_log_until_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    log = tmp_path / "c.redb.wal"
    store = RedbCheckpointStore(path)
    assert log.exists()
    await store.append(row("w", 0))
    assert log.stat().st_size > 0  # preallocated
    store.close()
    assert not log.exists()
    with RedbCheckpointStore(path, durability="eventual") as again:
        assert not log.exists()
        assert [r.sequence for r in await again.load_run("w")] == [0]


async def test_rows_and_clears_read_back_through_the_log(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    with RedbCheckpointStore(path) as store:
        for seq in range(3):
            await store.append(row("old", seq))
    with RedbCheckpointStore(path) as store:
        await store.append(row("old", 3))  # resumes a run whose rows are in the database
        with pytest.raises(cano.CheckpointError, match="already has a row at sequence 1"):
            await store.append(row("old", 1))
        await store.append(row("new", 0, "N"))
        assert [r.sequence for r in await store.load_run("old")] == [0, 1, 2, 3]
        assert await store.runs_summary() == [
            {"workflow_id": "new", "rows": 1, "last_state": "N", "last_sequence": 0},
            {"workflow_id": "old", "rows": 4, "last_state": "S", "last_sequence": 3},
        ]
        await store.clear("old")
        assert await store.list_runs() == ["new"]
        store.flush()  # immediate: nothing left to do
    with RedbCheckpointStore(path) as store:
        assert await store.list_runs() == ["new"]


# --------------------------------------------------------------------------------------------
# the waiter of _append_raw


async def test_the_waiter_is_a_future_for_asyncio(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        waiter = raw(store, "w", 0)
        assert asyncio.isfuture(waiter)
        assert waiter.get_loop() is asyncio.get_running_loop()
        assert not waiter.done()
        with pytest.raises(asyncio.InvalidStateError):
            waiter.result()
        assert await waiter is None
        assert waiter.done() and not waiter.cancelled()
        assert waiter.result() is None and waiter.exception() is None
        assert "finished" in repr(waiter)
        # Awaiting again returns at once.
        assert await waiter is None


async def test_a_refused_append_raises_from_the_waiter(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        await raw(store, "w", 0)
        waiter = raw(store, "w", 0)
        with pytest.raises(cano.CheckpointError, match="already has a row at sequence 0"):
            await waiter
        assert isinstance(waiter.exception(), cano.CheckpointError)
        with pytest.raises(cano.CheckpointError):
            waiter.result()


async def test_gather_wait_for_and_shield_accept_waiters(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        assert await asyncio.gather(*(raw(store, "g", i) for i in range(20))) == [None] * 20
        assert await asyncio.wait_for(raw(store, "t", 0), timeout=10) is None
        assert await asyncio.shield(raw(store, "s", 0)) is None
        done, _ = await asyncio.wait([raw(store, "x", 0), raw(store, "x", 1)])
        assert all(f.result() is None for f in done)
        assert [r.sequence for r in await store.load_run("g")] == list(range(20))


async def test_cancelling_stops_the_wait_not_the_append(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        waiter = raw(store, "w", 0)
        assert waiter.cancel("not needed")
        assert not waiter.cancel()
        assert waiter.cancelled() and waiter.done()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # A task parked on a waiter is cancelled like on any future.
        task = asyncio.ensure_future(_await(raw(store, "w", 1)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [r.sequence for r in await store.load_run("w")] == [0, 1]


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def test_done_callbacks_run_in_their_context(tmp_path: Path) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")
    seen: list[tuple[str, bool]] = []

    def callback(fut: Any) -> None:
        seen.append((var.get(), fut.done()))

    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        waiter = raw(store, "w", 0)
        ctx = contextvars.copy_context()
        ctx.run(var.set, "inside")
        waiter.add_done_callback(callback, context=ctx)
        waiter.add_done_callback(callback)
        waiter.add_done_callback(print)
        assert waiter.remove_done_callback(print) == 1
        await waiter
        assert seen == [("inside", True), ("outside", True)]
        # Added once done: scheduled, as asyncio.Future does.
        waiter.add_done_callback(callback)
        assert len(seen) == 2
        await asyncio.sleep(0)
        assert len(seen) == 3


async def test_a_failing_callback_goes_to_the_loop_exception_handler(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        with RedbCheckpointStore(tmp_path / "c.redb") as store:
            waiter = raw(store, "w", 0)
            waiter.add_done_callback(lambda _: 1 / 0)
            await asyncio.gather(waiter, raw(store, "w", 1))
    finally:
        loop.set_exception_handler(None)
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], ZeroDivisionError)


async def test_waiters_complete_after_the_store_is_dropped(tmp_path: Path) -> None:
    store = RedbCheckpointStore(tmp_path / "c.redb")
    waiters = [raw(store, "w", i) for i in range(5)]
    future = store.append(row("w", 5))
    del store
    gc.collect()  # closes the store: what was queued is committed, then the loop is woken
    await asyncio.wait_for(asyncio.gather(*waiters, future), timeout=10)
    with RedbCheckpointStore(tmp_path / "c.redb") as again:
        assert len(await again.load_run("w")) == 6


def test_several_loops_use_the_fast_path_at_once(tmp_path: Path) -> None:
    store = RedbCheckpointStore(tmp_path / "c.redb")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def main() -> None:
            for i in range(30):
                await raw(store, f"loop-{n}", i)
            await asyncio.gather(*(raw(store, f"loop-{n}", 30 + i) for i in range(30)))

        try:
            asyncio.run(main())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store.close()
    assert errors == []

    async def count() -> list[int]:
        with RedbCheckpointStore(tmp_path / "c.redb") as again:
            return [len(await again.load_run(f"loop-{n}")) for n in range(4)]

    assert asyncio.run(count()) == [60] * 4


def test_one_store_across_many_short_lived_loops(tmp_path: Path) -> None:
    """Each asyncio.run() is a new loop: the store forgets the closed ones."""
    with RedbCheckpointStore(tmp_path / "c.redb") as store:

        async def append(i: int) -> None:
            await raw(store, "w", i)

        for i in range(50):
            asyncio.run(append(i))

        async def rows() -> int:
            return len(await store.load_run("w"))

        assert asyncio.run(rows()) == 50
