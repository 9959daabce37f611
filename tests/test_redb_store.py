"""RedbCheckpointStore: opening, closing, durability modes and the faults a user can meet.

What every store must do (conflicts, ordering, clearing) is in test_store_conformance.py.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import cano
import pytest
from cano.store import CheckpointRow, RedbCheckpointStore, RowKind

SUBPROCESS_TIMEOUT = 60  # a hang is a failure, not a slow test


def row(workflow_id: str, sequence: int, state: str = "S") -> CheckpointRow:
    return CheckpointRow(workflow_id, sequence, state, "task", RowKind.STATE_ENTRY, None, 0)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


# --------------------------------------------------------------------------------------------
# opening


def test_opens_at_construction_and_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    store = RedbCheckpointStore(path)
    try:
        assert path.exists()
        assert store.path == str(path)
        assert store.durability == "immediate"
        assert not store.closed
        assert repr(store) == f"RedbCheckpointStore({str(path)!r}, durability='immediate')"
    finally:
        store.close()
    assert store.closed
    assert repr(store).endswith(", closed)")


def test_accepts_str_and_pathlike(tmp_path: Path) -> None:
    with RedbCheckpointStore(str(tmp_path / "a.redb"), durability="eventual") as a:
        assert a.durability == "eventual"
    with RedbCheckpointStore(tmp_path / "b.redb") as b:
        assert b.path == str(tmp_path / "b.redb")


def test_bad_durability_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(cano.ConfigurationError, match=r"immediate.*eventual.*later"):
        RedbCheckpointStore(tmp_path / "c.redb", durability="later")
    assert not (tmp_path / "c.redb").exists()


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 500)
    with pytest.raises(cano.CheckpointError) as info:
        RedbCheckpointStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "not a cano checkpoint store" in message
    assert path.read_bytes().startswith(b"these are my notes")  # left alone


def test_missing_directory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "c.redb"
    with pytest.raises(cano.CheckpointError, match="I/O error") as info:
        RedbCheckpointStore(path)
    assert str(path) in str(info.value)


def test_second_store_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    with RedbCheckpointStore(path):
        with pytest.raises(cano.CheckpointError, match="already open") as info:
            RedbCheckpointStore(path)
        assert str(path) in str(info.value)
    # Released on close: opening again works.
    RedbCheckpointStore(path).close()


def test_file_in_use_by_another_process_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    with RedbCheckpointStore(path):
        result = run_python(
            f"""
            import cano
            from cano.store import RedbCheckpointStore
            try:
                RedbCheckpointStore({str(path)!r})
            except cano.CheckpointError as e:
                print(e)
                raise SystemExit(3)
            """
        )
    assert result.returncode == 3, result.stderr
    message = result.stdout
    assert str(path) in message
    assert "single-process" in message
    assert "SqliteCheckpointStore" in message


def test_open_store_is_flushed_when_the_interpreter_exits(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    result = run_python(
        f"""
        import asyncio
        from cano.store import CheckpointRow, RedbCheckpointStore, RowKind
        STORE = RedbCheckpointStore({str(path)!r}, durability="eventual")  # never closed
        async def main():
            for seq in range(5):
                await STORE.append(CheckpointRow("w", seq, "S", "t", RowKind.STATE_ENTRY, None, 0))
        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    with RedbCheckpointStore(path) as store:
        assert [r.sequence for r in asyncio.run(_load(store, "w"))] == [0, 1, 2, 3, 4]


async def _load(store: RedbCheckpointStore, workflow_id: str) -> list[CheckpointRow]:
    return await store.load_run(workflow_id)


def test_dropping_the_store_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    store = RedbCheckpointStore(path)
    del store
    gc.collect()
    RedbCheckpointStore(path).close()


# --------------------------------------------------------------------------------------------
# closing and context managers


async def test_close_is_idempotent_and_flushes(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    store = RedbCheckpointStore(path, durability="eventual")
    await store.append(row("w", 0))
    store.close()
    store.close()
    async with store:  # entering a closed store is allowed; leaving it again is a no-op
        pass
    with RedbCheckpointStore(path) as again:
        assert len(await again.load_run("w")) == 1


async def test_use_after_close_raises_checkpoint_error(tmp_path: Path) -> None:
    store = RedbCheckpointStore(tmp_path / "c.redb")
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.append(row("w", 0)),
        lambda: store._append_raw("w", 0, "S", "t", 0, None, 0),
        lambda: store.load_run("w"),
        lambda: store.clear("w"),
        store.list_runs,
        store.runs_summary,
        store.flush,
    ]
    for call in calls:
        # Refused at the call: there is nothing to await.
        with pytest.raises(cano.CheckpointError, match="is closed") as info:
            call()
        assert str(tmp_path / "c.redb") in str(info.value)


async def test_with_block_closes(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    with RedbCheckpointStore(path) as store:
        await store.append(row("w", 0))
    assert store.closed
    with RedbCheckpointStore(path) as store:
        assert [r.sequence for r in await store.load_run("w")] == [0]


async def test_async_with_closes_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    async with RedbCheckpointStore(path, durability="eventual") as store:
        assert isinstance(store, RedbCheckpointStore)
        await store.append(row("w", 0))
    assert store.closed
    async with RedbCheckpointStore(path) as store:
        assert len(await store.load_run("w")) == 1


async def test_with_block_closes_on_error(tmp_path: Path) -> None:
    path = tmp_path / "c.redb"
    with pytest.raises(RuntimeError, match="boom"):
        async with RedbCheckpointStore(path) as store:
            raise RuntimeError("boom")
    assert store.closed
    RedbCheckpointStore(path).close()


# --------------------------------------------------------------------------------------------
# durability and concurrency


async def test_eventual_rows_are_visible_to_load_run_at_once(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb", durability="eventual") as store:
        pending = [store.append(row("w", i)) for i in range(50)]  # not awaited yet
        rows = await store.load_run("w")
        assert [r.sequence for r in rows] == list(range(50))
        await asyncio.gather(*pending)
        await store.clear("w")
        assert await store.load_run("w") == []
        store.flush()


@pytest.mark.parametrize("durability", ["immediate", "eventual"])
async def test_concurrent_appenders_are_durable_after_reopen(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "c.redb"
    store = RedbCheckpointStore(path, durability=durability)

    async def appender(i: int) -> None:
        for seq in range(3):
            await store.append(row(f"run-{i:03}", seq, f"S{seq}"))

    await asyncio.gather(*(appender(i) for i in range(100)))
    store.close()
    with RedbCheckpointStore(path) as again:
        runs = await again.list_runs()
        assert runs == [f"run-{i:03}" for i in range(100)]
        for wid in runs:
            assert [r.state for r in await again.load_run(wid)] == ["S0", "S1", "S2"]


async def test_runs_summary(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        assert await store.runs_summary() == []
        await store.append(row("b", 0, "Start"))
        await store.append(row("a", 0, "Start"))
        await store._append_raw("a", 1, "Pay", "PayTask", 1, b"{}", 2)
        assert await store.runs_summary() == [
            {"workflow_id": "a", "rows": 2, "last_state": "Pay", "last_sequence": 1},
            {"workflow_id": "b", "rows": 1, "last_state": "Start", "last_sequence": 0},
        ]


async def test_append_raw_is_append(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        await store._append_raw("w", 0, "S", "t", 2, b"[1]", 7)
        assert await store.load_run("w") == [
            CheckpointRow("w", 0, "S", "t", RowKind.STEP_CURSOR, b"[1]", 7)
        ]
        with pytest.raises(cano.CheckpointError, match="already has a row at sequence 0"):
            await store._append_raw("w", 0, "S", "t", 0, None, 0)
        with pytest.raises(cano.CheckpointError, match="row kind 9"):
            store._append_raw("w", 1, "S", "t", 9, None, 0)


async def test_bad_rows_are_checkpoint_errors(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        with pytest.raises(cano.CheckpointError, match="CheckpointRow"):
            store.append("not a row")  # type: ignore[arg-type]
        bad_seq = CheckpointRow("w", -1, "S", "t", RowKind.STATE_ENTRY, None, 0)
        with pytest.raises(cano.CheckpointError, match="sequence"):
            store.append(bad_seq)
        bad_output = CheckpointRow("w", 0, "S", "t", RowKind.STATE_ENTRY, "text", 0)  # type: ignore[arg-type]
        with pytest.raises(cano.CheckpointError, match="output must be bytes"):
            store.append(bad_output)
        assert await store.list_runs() == []


async def test_cancelled_waiter_does_not_disturb_the_others(tmp_path: Path) -> None:
    with RedbCheckpointStore(tmp_path / "c.redb") as store:
        first = store.append(row("w", 0))
        second = store.append(row("w", 1))
        first.cancel()
        await second
        # The cancelled append still happened: cancelling only stops waiting for it.
        assert len(await store.load_run("w")) == 2


def test_calls_need_a_running_loop(tmp_path: Path) -> None:
    with (
        RedbCheckpointStore(tmp_path / "c.redb") as store,
        pytest.raises(RuntimeError, match="no running event loop"),
    ):
        store.load_run("w")


def test_several_event_loops_share_one_store(tmp_path: Path) -> None:
    store = RedbCheckpointStore(tmp_path / "c.redb")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(store.append(row(f"loop-{n}", i)) for i in range(50)))
            assert len(await store.load_run(f"loop-{n}")) == 50

        try:
            asyncio.run(main())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SUBPROCESS_TIMEOUT)
    store.close()
    assert errors == []
    assert not any(t.is_alive() for t in threads)


def test_loop_closed_with_requests_in_flight(tmp_path: Path) -> None:
    store = RedbCheckpointStore(tmp_path / "c.redb")
    loop = asyncio.new_event_loop()

    async def start() -> None:
        store.append(row("w", 0))  # never awaited

    loop.run_until_complete(start())
    loop.close()
    store.close()  # the writer's wake-up finds the loop closed: ignored

    async def runs() -> list[str]:
        with RedbCheckpointStore(tmp_path / "c.redb") as again:
            return await again.list_runs()

    assert asyncio.run(runs()) == ["w"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_is_refused(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import asyncio, os, cano
        from cano.store import CheckpointRow, RedbCheckpointStore, RowKind
        store = RedbCheckpointStore({str(tmp_path / "c.redb")!r})
        pid = os.fork()
        if pid == 0:
            async def child():
                try:
                    row = CheckpointRow("w", 0, "S", "t", RowKind.STATE_ENTRY, None, 0)
                    await store.append(row)
                except cano.CheckpointError as e:
                    print(e, flush=True)
                    os._exit(3)
                os._exit(0)
            asyncio.run(child())
        _, status = os.waitpid(pid, 0)
        store.close()
        raise SystemExit(os.waitstatus_to_exitcode(status))
        """
    )
    assert result.returncode == 3, result.stderr
    assert "fork()" in result.stdout
