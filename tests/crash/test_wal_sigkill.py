"""Real crashes of the write-ahead log: SIGKILL in the middle of a stream of durable appends.

A child (``child_appends.py``) runs concurrent writers on one
``RedbCheckpointStore(durability="immediate")`` and journals every append and clear only
after its future completed. The parent kills it at a random moment, reopens the store (which
replays the log) and checks every run against the journal: each acknowledged operation is
there, nothing else is, except possibly the one operation each writer had in flight (it may
have become durable just before the kill), and every row reads back byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cano.store import CheckpointRow, RedbCheckpointStore, RowKind

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
    pytest.mark.timeout(120),  # a safety net; every wait below is bounded far lower
]

HERE = Path(__file__).resolve().parent
WAIT = 8.0
WORKFLOWS = 12
ROWS = 6

Op = tuple[str, int, int]  # ("A", round, seq) or ("C", round, -1)


@pytest.fixture
def child() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:  # never leave a child (or its pipes) behind
        reap(proc)


def reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=WAIT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT)
    assert proc.returncode == -signal.SIGKILL
    reap(proc)


def start(started: list[subprocess.Popen[bytes]], store: Path, journal: Path) -> None:
    script = HERE / "child_appends.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store), str(journal), str(WORKFLOWS), str(ROWS)],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    started.append(proc)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], WAIT)
    line = proc.stdout.readline() if readable else b""
    if not line.startswith(b"READY"):
        proc.kill()
        _, err = proc.communicate(timeout=WAIT)
        reap(proc)
        raise AssertionError(f"child not ready: {line!r}, stderr:\n{err.decode()}")


def acknowledged(journal: Path) -> dict[str, list[Op]]:
    """Each writer's acknowledged operations, in order (a torn last line is ignored)."""
    ops: dict[str, list[Op]] = {f"w{i}": [] for i in range(WORKFLOWS)}
    for line in journal.read_text().split("\n")[:-1]:
        _, what, wid, *numbers = line.split(" ")
        if what == "A":
            ops[wid].append(("A", int(numbers[0]), int(numbers[1])))
        else:
            ops[wid].append(("C", int(numbers[0]), -1))
    return ops


def next_op(ops: list[Op]) -> Op:
    """The operation a writer started after its last acknowledged one."""
    if not ops:
        return ("A", 0, 0)
    what, round_, seq = ops[-1]
    if what == "C":
        return ("A", round_ + 1, 0)
    if seq + 1 < ROWS:
        return ("A", round_, seq + 1)
    return ("C", round_, -1)


def expected_rows(wid: str, ops: list[Op]) -> list[CheckpointRow]:
    """The rows a run holds after `ops` (appends add a row, a clear removes them all)."""
    i = int(wid[1:])
    rows: list[CheckpointRow] = []
    for what, round_, seq in ops:
        if what == "C":
            rows = []
            continue
        state = f"r{round_}-s{seq}"
        if i % 2 == 0:
            output = f"{wid}:{round_}:{seq}".encode() * 3 if seq % 2 else None
            kind = RowKind.STEP_CURSOR if output is not None else RowKind.STATE_ENTRY
            rows.append(CheckpointRow(wid, seq, state, "task", kind, output, round_))
        else:
            rows.append(CheckpointRow(wid, seq, state, "task", RowKind.STATE_ENTRY, None, round_))
    return rows


def stored(path: Path) -> dict[str, list[CheckpointRow]]:
    async def read() -> dict[str, list[CheckpointRow]]:
        with RedbCheckpointStore(path) as store:
            return {wid: await store.load_run(wid) for wid in await store.list_runs()}

    return asyncio.run(read())


@pytest.mark.parametrize("seed", range(5))
def test_every_acknowledged_append_survives_sigkill(
    tmp_path: Path, child: list[subprocess.Popen[bytes]], seed: int
) -> None:
    rng = random.Random(seed)
    store, journal = tmp_path / "stream.redb", tmp_path / "journal"
    start(child, store, journal)
    time.sleep(rng.uniform(0.05, 1.5))
    sigkill(child[0])

    ops = acknowledged(journal)
    assert sum(map(len, ops.values())) > 0, "the child acknowledged nothing before the kill"
    after = stored(store)
    for wid, done in ops.items():
        acked = expected_rows(wid, done)
        with_in_flight = expected_rows(wid, [*done, next_op(done)])
        got = after.get(wid, [])
        assert got in (acked, with_in_flight), (
            f"{wid}: stored {[(r.sequence, r.state) for r in got]}, acknowledged "
            f"{[(r.sequence, r.state) for r in acked]} (last ops {done[-3:]})"
        )
    assert set(after) <= set(ops), f"unknown runs {set(after) - set(ops)}"

    # The replayed store is a store like any other: reopening again changes nothing, and
    # the log is gone after the clean close above.
    assert not Path(f"{store}.wal").exists()
    assert stored(store) == after


def test_a_store_killed_twice_keeps_both_lives(
    tmp_path: Path, child: list[subprocess.Popen[bytes]]
) -> None:
    """The second process appends to the replayed store and is killed too."""
    store, journal = tmp_path / "stream.redb", tmp_path / "journal"
    start(child, store, journal)
    time.sleep(0.4)
    sigkill(child[0])
    first = stored(store)

    # The second life restarts every writer at round 0: its first append per run conflicts
    # with the replayed rows unless the run was empty, so clear everything first.
    async def clear() -> None:
        with RedbCheckpointStore(store) as s:
            for wid in await s.list_runs():
                await s.clear(wid)

    asyncio.run(clear())
    assert stored(store) == {}
    journal.unlink()
    start(child, store, journal)
    time.sleep(0.4)
    sigkill(child[1])
    ops = acknowledged(journal)
    after = stored(store)
    for wid, done in ops.items():
        got = after.get(wid, [])
        assert got in (expected_rows(wid, done), expected_rows(wid, [*done, next_op(done)]))
    assert first  # the first life had rows
