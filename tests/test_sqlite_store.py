"""SqliteCheckpointStore: conformance, opening, closing, faults, and several processes on one
file (concurrent writers and a reader, a writer killed with SIGKILL).

What every store must do (conflicts, ordering, clearing) is in test_store_conformance.py;
it runs here on this store through ``CHECKS`` / ``run_conformance``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.store import CheckpointRow, CheckpointStore, RowKind, conflict_message
from cano.stores import SqliteCheckpointStore
from test_store_conformance import CHECKS, run_conformance

SUBPROCESS_TIMEOUT = 30  # a hang is a failure, not a slow test


def row(workflow_id: str, sequence: int, state: str = "S") -> CheckpointRow:
    return CheckpointRow(workflow_id, sequence, state, "task", RowKind.STATE_ENTRY, None, 0)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def start_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def aload(path: Path, workflow_id: str) -> list[CheckpointRow]:
    async with SqliteCheckpointStore(path) as store:
        return await store.load_run(workflow_id)


def load(path: Path, workflow_id: str) -> list[CheckpointRow]:
    return asyncio.run(aload(path, workflow_id))


# --------------------------------------------------------------------------------------------
# conformance


@contextlib.asynccontextmanager
async def sqlite_store(tmp: Path, durability: str = "immediate") -> AsyncIterator[Any]:
    async with SqliteCheckpointStore(tmp / "checkpoints.db", durability=durability) as store:
        yield store


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("durability", ["immediate", "eventual"])
async def test_conformance(durability: str, check: Any, tmp_path: Path) -> None:
    async with sqlite_store(tmp_path, durability) as store:
        assert isinstance(store, CheckpointStore)
        await check(store)


async def test_conformance_in_memory(tmp_path: Path) -> None:
    @contextlib.asynccontextmanager
    async def in_memory(_tmp: Path) -> AsyncIterator[Any]:
        async with SqliteCheckpointStore(":memory:") as store:
            yield store

    await run_conformance(in_memory, tmp_path)


# --------------------------------------------------------------------------------------------
# opening


def test_opens_at_construction_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SqliteCheckpointStore(path)
    try:
        assert path.exists()
        assert store.path == str(path)
        assert store.durability == "immediate"
        assert store.busy_timeout == 5.0
        assert not store.closed
        assert repr(store) == f"SqliteCheckpointStore({str(path)!r}, durability='immediate')"
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            columns = [r[1] for r in other.execute("PRAGMA table_info(cano_checkpoints)")]
            assert columns == [
                "workflow_id",
                "sequence",
                "state",
                "task_id",
                "kind",
                "output",
                "workflow_version",
                "at",  # when the row was appended (the run's step history)
            ]
    finally:
        store.close()
    assert store.closed
    assert repr(store).endswith(", closed)")


def test_accepts_str_pathlike_and_options(tmp_path: Path) -> None:
    with SqliteCheckpointStore(
        str(tmp_path / "a.db"), durability="eventual", busy_timeout=0.25
    ) as a:
        assert (a.durability, a.busy_timeout) == ("eventual", 0.25)
    with SqliteCheckpointStore(tmp_path / "b.sqlite") as b:
        assert b.path == str(tmp_path / "b.sqlite")


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(cano.ConfigurationError, match=r"immediate.*eventual.*later"):
        SqliteCheckpointStore(tmp_path / "c.db", durability="later")
    for bad in (-1, float("inf"), float("nan"), "5", True):
        with pytest.raises(cano.ConfigurationError, match="busy_timeout"):
            SqliteCheckpointStore(tmp_path / "c.db", busy_timeout=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "c.db").exists()


def test_garbage_file_names_the_file_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 500
    path.write_bytes(content)
    with pytest.raises(cano.CheckpointError) as info:
        SqliteCheckpointStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "not a cano checkpoint store" in message
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_missing_directory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "c.db"
    with pytest.raises(cano.CheckpointError, match="cannot open") as info:
        SqliteCheckpointStore(path)
    assert str(path) in str(info.value)


def test_create_false_opens_only_an_existing_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(cano.CheckpointError, match="does not exist") as info:
        SqliteCheckpointStore(missing, create=False)
    assert str(missing) in str(info.value)
    assert not missing.exists()

    foreign = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(cano.CheckpointError, match="no cano_checkpoints table"):
        SqliteCheckpointStore(foreign, create=False)
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        assert tables == ["users"]

    SqliteCheckpointStore(tmp_path / "c.db").close()
    SqliteCheckpointStore(tmp_path / "c.db", create=False).close()


async def test_lives_beside_an_applications_own_tables(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
        conn.commit()
    async with SqliteCheckpointStore(path) as store:
        await store.append(row("w", 0))
        assert len(await store.load_run("w")) == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]


def test_a_foreign_table_of_the_same_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE cano_checkpoints (id INTEGER PRIMARY KEY, payload BLOB)")
    with pytest.raises(cano.CheckpointError, match="columns") as info:
        SqliteCheckpointStore(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# closing and context managers


async def test_close_is_idempotent_and_flushes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SqliteCheckpointStore(path, durability="eventual")
    await store.append(row("w", 0))
    store.close()
    store.close()
    async with store:  # entering a closed store is allowed; leaving it again is a no-op
        pass
    with SqliteCheckpointStore(path) as again:
        assert len(await again.load_run("w")) == 1


async def test_use_after_close_raises_checkpoint_error(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "c.db")
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
        assert str(tmp_path / "c.db") in str(info.value)


async def test_with_and_async_with_close(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SqliteCheckpointStore(path) as store:
        await store.append(row("w", 0))
    assert store.closed
    async with SqliteCheckpointStore(path, durability="eventual") as store:
        assert isinstance(store, SqliteCheckpointStore)
        pending = store.append(row("w", 1))  # still answered: close comes after it
    assert store.closed
    await pending
    assert [r.sequence for r in await aload(path, "w")] == [0, 1]


async def test_with_block_closes_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with SqliteCheckpointStore(tmp_path / "c.db") as store:
            raise RuntimeError("boom")
    assert store.closed


def test_open_store_is_flushed_when_the_interpreter_exits(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    result = run_python(
        f"""
        import asyncio
        from cano.store import CheckpointRow, RowKind
        from cano.stores import SqliteCheckpointStore
        STORE = SqliteCheckpointStore({str(path)!r}, durability="eventual")  # never closed
        async def main():
            for seq in range(5):
                await STORE.append(CheckpointRow("w", seq, "S", "t", RowKind.STATE_ENTRY, None, 0))
        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    assert [r.sequence for r in load(path, "w")] == [0, 1, 2, 3, 4]


async def test_dropping_the_store_closes_it(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SqliteCheckpointStore(path, durability="eventual")
    await store.append(row("w", 0))
    writers = [t for t in threading.enumerate() if t.name == f"cano-sqlite-writer({path})"]
    assert len(writers) == 1
    del store
    gc.collect()
    for t in writers:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in writers)
    assert len(await aload(path, "w")) == 1


# --------------------------------------------------------------------------------------------
# behaviour


async def test_rows_are_visible_to_load_run_at_once(tmp_path: Path) -> None:
    with SqliteCheckpointStore(tmp_path / "c.db", durability="eventual") as store:
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
    path = tmp_path / "c.db"
    store = SqliteCheckpointStore(path, durability=durability)

    async def appender(i: int) -> None:
        for seq in range(3):
            await store.append(row(f"run-{i:03}", seq, f"S{seq}"))

    await asyncio.gather(*(appender(i) for i in range(100)))
    store.close()
    with SqliteCheckpointStore(path) as again:
        runs = await again.list_runs()
        assert runs == [f"run-{i:03}" for i in range(100)]
        for wid in runs:
            assert [r.state for r in await again.load_run(wid)] == ["S0", "S1", "S2"]


async def test_runs_summary(tmp_path: Path) -> None:
    with SqliteCheckpointStore(tmp_path / "c.db") as store:
        assert await store.runs_summary() == []
        await store.append(row("b", 0, "Start"))
        await store._append_raw("a", 1, "Pay", "PayTask", 1, b"{}", 2)
        await store.append(row("a", 0, "Start"))
        assert await store.runs_summary() == [
            {"workflow_id": "a", "rows": 2, "last_state": "Pay", "last_sequence": 1},
            {"workflow_id": "b", "rows": 1, "last_state": "Start", "last_sequence": 0},
        ]


async def test_append_raw_is_append(tmp_path: Path) -> None:
    with SqliteCheckpointStore(tmp_path / "c.db") as store:
        await store._append_raw("w", 0, "S", "t", 2, b"[1]", 7)
        assert await store.load_run("w") == [
            CheckpointRow("w", 0, "S", "t", RowKind.STEP_CURSOR, b"[1]", 7)
        ]
        with pytest.raises(cano.CheckpointError) as info:
            await store._append_raw("w", 0, "S", "t", 0, None, 0)
        assert str(info.value) == conflict_message("w", 0)
        with pytest.raises(cano.CheckpointError, match="row kind 9"):
            store._append_raw("w", 1, "S", "t", 9, None, 0)


async def test_bad_rows_are_checkpoint_errors(tmp_path: Path) -> None:
    with SqliteCheckpointStore(tmp_path / "c.db") as store:
        with pytest.raises(cano.CheckpointError, match="CheckpointRow"):
            store.append("not a row")  # type: ignore[arg-type]
        bad: list[tuple[str, CheckpointRow]] = [
            ("sequence", CheckpointRow("w", -1, "S", "t", RowKind.STATE_ENTRY, None, 0)),
            ("sequence", CheckpointRow("w", 2**63, "S", "t", RowKind.STATE_ENTRY, None, 0)),
            ("workflow_id", CheckpointRow(7, 0, "S", "t", RowKind.STATE_ENTRY, None, 0)),  # type: ignore[arg-type]
            ("output must be bytes", CheckpointRow("w", 0, "S", "t", RowKind.STATE_ENTRY, "x", 0)),  # type: ignore[arg-type]
            ("kind", CheckpointRow("w", 0, "S", "t", 9, None, 0)),  # type: ignore[arg-type]
            ("workflow_version", CheckpointRow("w", 0, "S", "t", RowKind.STATE_ENTRY, None, -1)),
        ]  # fmt: skip
        for field, bad_row in bad:
            with pytest.raises(cano.CheckpointError, match=field):
                store.append(bad_row)
        with pytest.raises(cano.CheckpointError, match="workflow_id must be a str"):
            store.load_run(None)  # type: ignore[arg-type]
        # A value no store can encode is refused with that append only.
        with pytest.raises(cano.CheckpointError, match="state must be encodable as UTF-8"):
            store.append(row("w", 0, "\ud800"))
        await store.append(CheckpointRow("w", 0, "S", "t", 0, bytearray(b"ab"), 0))  # type: ignore[arg-type]
        assert [r.output for r in await store.load_run("w")] == [b"ab"]


async def test_undecodable_row_fails_that_load_only(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SqliteCheckpointStore(path) as store:
        await store.append(row("good", 0))
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("INSERT INTO cano_checkpoints VALUES ('bad', 3, 'S', 't', 9, NULL, 0, 0)")
            conn.commit()
        with pytest.raises(cano.CheckpointError) as info:
            await store.load_run("bad")
        assert str(info.value) == (
            'decode checkpoint row at workflow_id="bad" sequence=3: unknown row kind 9'
        )
        assert len(await store.load_run("good")) == 1


async def test_a_conflict_fails_that_append_only(tmp_path: Path) -> None:
    with SqliteCheckpointStore(tmp_path / "c.db") as store:
        # Issued together, so committed in one transaction: the duplicate alone fails.
        results = await asyncio.gather(
            store.append(row("w", 0, "First")),
            store.append(row("w", 0, "Duplicate")),
            store.append(row("w", 1, "Second")),
            store.clear("other"),
            store.append(row("w", 2, "Third")),
            return_exceptions=True,
        )
        assert results[0] is None and results[2:] == [None, None, None]
        assert isinstance(results[1], cano.CheckpointError)
        assert str(results[1]) == conflict_message("w", 0)
        assert [r.state for r in await store.load_run("w")] == ["First", "Second", "Third"]


async def test_cancelled_waiter_does_not_disturb_the_others(tmp_path: Path) -> None:
    with SqliteCheckpointStore(tmp_path / "c.db") as store:
        first = store.append(row("w", 0))
        second = store.append(row("w", 1))
        first.cancel()
        await second
        # The cancelled append still happened: cancelling only stops waiting for it.
        assert len(await store.load_run("w")) == 2


def test_calls_need_a_running_loop(tmp_path: Path) -> None:
    with (
        SqliteCheckpointStore(tmp_path / "c.db") as store,
        pytest.raises(RuntimeError, match="no running event loop"),
    ):
        store.load_run("w")


def test_several_event_loops_share_one_store(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "c.db")
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
    store = SqliteCheckpointStore(tmp_path / "c.db")
    loop = asyncio.new_event_loop()

    async def start() -> None:
        store.append(row("w", 0))  # never awaited

    loop.run_until_complete(start())
    loop.close()
    store.close()  # the writer's wake-up finds the loop closed: ignored
    assert [r.sequence for r in load(tmp_path / "c.db", "w")] == [0]


async def test_two_stores_in_one_process_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SqliteCheckpointStore(path) as a, SqliteCheckpointStore(path) as b:
        await asyncio.gather(
            *(a.append(row("a", i)) for i in range(30)),
            *(b.append(row("b", i)) for i in range(30)),
        )
        assert len(await b.load_run("a")) == 30
        with pytest.raises(cano.CheckpointError, match="already has a row at sequence 0"):
            await b.append(row("a", 0))


async def test_a_held_write_lock_is_waited_for_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with (
        SqliteCheckpointStore(path, busy_timeout=0.2) as store,
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other,
    ):
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        started = time.monotonic()
        ticks = 0
        append = asyncio.ensure_future(store.append(row("w", 0)))
        while not append.done():  # the loop keeps running while the writer waits
            await asyncio.sleep(0.01)
            ticks += 1
        with pytest.raises(cano.CheckpointError, match="database is locked") as info:
            append.result()
        assert "busy_timeout=0.2s" in str(info.value) and str(path) in str(info.value)
        assert time.monotonic() - started >= 0.15 and ticks >= 5

        # A lock released within busy_timeout is simply waited for.
        late = asyncio.ensure_future(store.append(row("w", 0)))
        await asyncio.sleep(0.05)
        assert not late.done()
        other.execute("COMMIT")
        await late
        assert len(await store.load_run("w")) == 1


# --------------------------------------------------------------------------------------------
# the engine on this store


class Step(enum.Enum):
    FETCH = enum.auto()
    PARSE = enum.auto()
    DONE = enum.auto()


async def test_a_failed_run_keeps_its_log_and_resumes(tmp_path: Path) -> None:
    ran: list[str] = []
    fail = True

    async def fetch() -> Step:
        ran.append("fetch")
        return Step.PARSE

    async def parse() -> Step:
        ran.append("parse")
        if fail:
            raise RuntimeError("parser crashed")
        return Step.DONE

    def build(store: SqliteCheckpointStore) -> cano.Workflow[Step]:
        return (
            cano.Workflow.bare()
            .register(Step.FETCH, fetch)
            .register(Step.PARSE, cano.task(parse, config=cano.TaskConfig.minimal()))
            .add_exit_state(Step.DONE)
            .with_checkpoint_store(store)
        )

    path = tmp_path / "c.db"
    async with SqliteCheckpointStore(path) as store:
        with pytest.raises(cano.TaskError):
            await build(store).orchestrate(Step.FETCH, workflow_id="run-7")
    assert [r.state for r in await aload(path, "run-7")] == ["FETCH", "PARSE"]

    fail = False
    async with SqliteCheckpointStore(path) as store:
        assert await build(store).resume_from("run-7") is Step.DONE
        assert await store.list_runs() == []
    assert ran == ["fetch", "parse", "parse"]


# --------------------------------------------------------------------------------------------
# several processes on one file

WRITER = """
import asyncio, json, sys
from cano import CheckpointError
from cano.store import CheckpointRow, RowKind
from cano.stores import SqliteCheckpointStore

path, name, other = sys.argv[1:4]
runs, rows = int(sys.argv[4]), int(sys.argv[5])
STATE_ENTRY = RowKind.STATE_ENTRY

async def main():
    async with SqliteCheckpointStore(path) as store:
        other_started = asyncio.Event()

        async def watch():  # the two writers overlap for sure: each waits for the other
            for _ in range(4000):
                if any(wid.startswith(other) for wid in await store.list_runs()):
                    other_started.set()
                    return
                await asyncio.sleep(0.005)
            raise SystemExit(f"{name} never saw {other} write")

        async def run(i):
            for seq in range(rows):
                if seq == rows // 2:
                    await other_started.wait()
                r = CheckpointRow(f"{name}-{i}", seq, f"S{seq}", "t", STATE_ENTRY, None, 0)
                await store.append(r)

        async def race(seq):  # both writers append the same rows: one wins each
            await other_started.wait()
            try:
                await store.append(CheckpointRow("shared", seq, name, "t", STATE_ENTRY, None, 0))
                return seq
            except CheckpointError as e:
                assert "already has a row at sequence" in str(e), e
                return None

        results = await asyncio.gather(
            watch(), *(run(i) for i in range(runs)), *(race(s) for s in range(rows))
        )
        print(json.dumps([s for s in results[1 + runs:] if s is not None]))

asyncio.run(main())
"""

READER = """
import asyncio, sys, time
from cano.stores import SqliteCheckpointStore

path, expected = sys.argv[1], int(sys.argv[2])

async def main():
    reads = 0
    deadline = time.monotonic() + 20
    async with SqliteCheckpointStore(path) as store:
        while time.monotonic() < deadline:
            total = 0
            for wid in await store.list_runs():
                rows = await store.load_run(wid)
                reads += 1
                if wid != "shared":  # each run appends in order: a snapshot is a prefix
                    assert [r.sequence for r in rows] == list(range(len(rows))), (wid, rows)
                    total += len(rows)
            if total == expected:
                print(reads)
                return
    raise SystemExit(f"saw {total} rows of {expected} after {reads} reads")

asyncio.run(main())
"""


def test_two_writer_processes_and_a_reader_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SqliteCheckpointStore(path).close()  # created (and WAL set) before the race
    runs, rows = 20, 25
    procs = [
        start_python(WRITER, str(path), "alpha", "beta", str(runs), str(rows)),
        start_python(WRITER, str(path), "beta", "alpha", str(runs), str(rows)),
        start_python(READER, str(path), str(2 * runs * rows)),
    ]
    outputs = [p.communicate(timeout=SUBPROCESS_TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "database is locked" not in err
    won_alpha, won_beta = (json.loads(out) for out, _ in outputs[:2])
    assert int(outputs[2][0]) > 0  # the reader read while the writers wrote

    async def check() -> None:
        async with SqliteCheckpointStore(path) as store:
            for name in ("alpha", "beta"):
                for i in range(runs):
                    stored = await store.load_run(f"{name}-{i}")
                    assert [r.state for r in stored] == [f"S{s}" for s in range(rows)]
            # Every contested row has exactly one winner, the one the store kept.
            assert sorted(won_alpha + won_beta) == list(range(rows))
            shared = await store.load_run("shared")
            assert {r.sequence: r.state for r in shared} == {
                **{s: "alpha" for s in won_alpha},
                **{s: "beta" for s in won_beta},
            }

    asyncio.run(check())


CRASHER = """
import asyncio, os, sys
from cano.store import CheckpointRow, RowKind
from cano.stores import SqliteCheckpointStore

async def main():
    store = SqliteCheckpointStore(sys.argv[1])
    async def run(i):
        seq = 0
        while True:
            r = CheckpointRow(f"run-{i}", seq, "S", "t", RowKind.STATE_ENTRY, None, 0)
            await store.append(r)
            os.write(1, f"run-{i} {seq}\\n".encode())  # acknowledged: the append completed
            seq += 1
    await asyncio.gather(*(run(i) for i in range(8)))

asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_appends_loses_no_acknowledged_row(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASHER), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while buffer.count(b"\n") < 400:  # well into the appends
        assert time.monotonic() < deadline, "the child did not acknowledge 400 appends"
        readable, _, _ = select.select([fd], [], [], 1.0)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, proc.stderr.read() if proc.stderr else "child ended"
            buffer += chunk
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    lines = (buffer + rest).decode().splitlines()
    acked: dict[str, int] = {}
    for line in lines:
        if line.endswith(tuple("0123456789")):  # a line cut by the kill has no newline yet
            wid, seq = line.split()
            acked[wid] = max(acked.get(wid, -1), int(seq))

    async def check() -> None:
        async with SqliteCheckpointStore(path) as store:
            for wid, last in acked.items():
                stored = [r.sequence for r in await store.load_run(wid)]
                assert stored[: last + 1] == list(range(last + 1)), wid
                # Nothing but the acknowledged rows and those in flight at the kill.
                assert stored == list(range(len(stored)))

    assert len(acked) == 8
    asyncio.run(check())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_is_refused(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import asyncio, os, cano
        from cano.store import CheckpointRow, RowKind
        from cano.stores import SqliteCheckpointStore
        store = SqliteCheckpointStore({str(tmp_path / "c.db")!r})
        pid = os.fork()
        if pid == 0:
            async def child():
                try:
                    row = CheckpointRow("w", 0, "S", "t", RowKind.STATE_ENTRY, None, 0)
                    store.append(row)
                except cano.CheckpointError as e:
                    print(e, flush=True)
                    store.close()  # forgets the parent's connection, touches nothing
                    os._exit(3)
                os._exit(0)
            asyncio.run(child())
        _, status = os.waitpid(pid, 0)
        async def parent():
            await store.append(CheckpointRow("w", 0, "S", "t", RowKind.STATE_ENTRY, None, 0))
        asyncio.run(parent())
        store.close()
        raise SystemExit(os.waitstatus_to_exitcode(status))
        """
    )
    assert result.returncode == 3, result.stderr
    assert "fork()" in result.stdout
    assert len(load(tmp_path / "c.db", "w")) == 1
