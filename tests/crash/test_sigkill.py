"""Real crashes: a child process is killed with SIGKILL mid-state or mid-loop, then a new
process resumes the run from the same ``RedbCheckpointStore`` file.

The children (``child_*.py`` beside this file) record every side effect in a journal file
(one ``os.write`` per line, so nothing written before the kill is lost) and print a
``READY`` line when they reach the point where they should die. The parent waits for that
line (bounded), kills, reads the store, starts the resuming process and compares journals:
the interrupted state ran again in the new process and nothing before it did.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cano
import orjson
import pytest
from cano.store import CheckpointRow, RedbCheckpointStore, RowKind

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
    pytest.mark.timeout(60),  # a safety net; every wait below is bounded far lower
]

HERE = Path(__file__).resolve().parent
WAIT = 8.0  # seconds: the longest a child may take to reach READY or to finish


class Child:
    """A child process whose stdout is read line by line with bounded waits."""

    def __init__(self, script: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *map(str, args)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buffer = b""
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float = WAIT) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise AssertionError(f"no {prefix!r} line within {timeout}s; {self.describe()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=WAIT)
                    raise AssertionError(f"child ended before {prefix!r}; {self.describe()}")
                self.buffer += chunk

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT)
        assert self.proc.returncode == -signal.SIGKILL, self.describe()
        self.rest = self._drain()

    def finish(self) -> str:
        """Waits for a normal exit (status 0) and returns the RESULT line's text."""
        line = self.wait_for("RESULT")
        self.proc.wait(timeout=WAIT)
        self._drain()
        assert self.proc.returncode == 0, self.describe()
        return line.removeprefix("RESULT ")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self._drain()

    def _drain(self) -> str:
        out = b""
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            out = self.proc.stdout.read()
            self.proc.stdout.close()
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()
        return (self.buffer + out).decode(errors="replace")

    def describe(self) -> str:
        err = getattr(self, "stderr", None)
        stream = self.proc.stderr
        if err is None and self.proc.poll() is not None and stream and not stream.closed:
            err = stream.read().decode(errors="replace")
        return f"exit status {self.proc.returncode}, stdout {self.lines!r}, stderr:\n{err}"


def spawn(children: list[Child], script: str, *args: object) -> Child:
    child = Child(script, *args)
    children.append(child)
    return child


def journal(path: Path) -> list[list[str]]:
    """The journal's lines grouped by process, in the order the processes first wrote."""
    by_pid: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        pid, _, event = line.partition(" ")
        by_pid.setdefault(pid, []).append(event)
    return list(by_pid.values())


def load(path: Path, workflow_id: str | None = None) -> Any:
    """The rows of one run (or ``{id: rows}`` for every run), read after the child died."""

    async def read() -> Any:
        with RedbCheckpointStore(path) as store:
            if workflow_id is not None:
                return await store.load_run(workflow_id)
            return {wid: await store.load_run(wid) for wid in await store.list_runs()}

    return asyncio.run(read())


def shape(rows: list[CheckpointRow]) -> list[tuple[int, str, str, str]]:
    return [(r.sequence, r.state, r.task_id, r.kind.name) for r in rows]


# --------------------------------------------------------------------------------------------
# killed in the middle of a state


@pytest.mark.parametrize("victim", ["VALIDATE", "CHARGE", "EMAIL"])
def test_killed_mid_state_resumes_at_that_state(
    tmp_path: Path, children: list[Child], victim: str
) -> None:
    store, log = tmp_path / "orders.redb", tmp_path / "journal"
    order = ["VALIDATE", "RESERVE", "CHARGE", "EMAIL"]
    k = order.index(victim)

    first = spawn(children, "child_states.py", "crash", store, log, victim)
    assert first.wait_for("READY") == f"READY {victim}"
    first.sigkill()

    # Every state entered so far has its row, written before its task started.
    assert shape(load(store, "order-7")) == [
        (i, s, f"do_{s.lower()}", "STATE_ENTRY") for i, s in enumerate(order[: k + 1])
    ]

    second = spawn(children, "child_states.py", "resume", store, log)
    assert second.finish() == "DONE"

    before, after = journal(log)
    done_before = [e for s in order[:k] for e in (f"start {s}", f"end {s}")]
    assert before == [*done_before, f"start {victim}"]
    # The new process ran the interrupted state again, then the rest; nothing before it.
    assert after == [e for s in order[k:] for e in (f"start {s}", f"end {s}")]
    assert load(store, "order-7") == []  # cleared on success


def test_a_killed_run_s_record_stays_running_and_its_resume_completes_it(
    tmp_path: Path, children: list[Child]
) -> None:
    # SQLite keeps run records: the record and the step history tell what happened.
    store, log = tmp_path / "orders.db", tmp_path / "journal"
    first = spawn(children, "child_states.py", "crash", store, log, "CHARGE")
    assert first.wait_for("READY") == "READY CHARGE"
    first.sigkill()

    async def ask() -> tuple[Any, list[Any]]:
        async with cano.SqliteCheckpointStore(store) as s:
            client = cano.Client(s)
            return await client.get("order-7"), await client.steps("order-7")

    info, steps = asyncio.run(ask())
    assert info.status is cano.RunStatus.RUNNING  # its process died: nobody finished it
    assert (info.workflow_name, info.state, info.attempts) == ("orders", "CHARGE", 1)
    assert info.finished_at is None and info.error is None
    assert [s.state for s in steps] == ["VALIDATE", "RESERVE", "CHARGE"]
    assert steps[-1].finished_at is None  # CHARGE was in flight
    assert all(s.finished_at == n.started_at for s, n in itertools.pairwise(steps))

    second = spawn(children, "child_states.py", "resume", store, log)
    assert second.finish() == "DONE"
    info, steps = asyncio.run(ask())
    assert info.status is cano.RunStatus.COMPLETED
    assert (info.final_state, info.attempts) == ("DONE", 2)
    assert info.finished_at is not None and info.finished_at >= info.created_at
    # One step per state entered, in order, kept after the log was cleared on success.
    assert [s.state for s in steps] == ["VALIDATE", "RESERVE", "CHARGE", "EMAIL", "DONE"]
    assert all(s.finished_at is not None for s in steps)
    assert all(a.started_at <= b.started_at for a, b in itertools.pairwise(steps))


# --------------------------------------------------------------------------------------------
# killed in the middle of a stepped loop


def cursors(rows: list[CheckpointRow]) -> list[dict[str, Any]]:
    return [orjson.loads(r.output or b"") for r in rows if r.kind is RowKind.STEP_CURSOR]


def test_killed_mid_loop_resumes_with_the_last_persisted_cursor(
    tmp_path: Path, children: list[Child]
) -> None:
    store, log = tmp_path / "walk.redb", tmp_path / "journal"
    first = spawn(children, "child_stepped.py", "crash", store, log, 8, 5)
    first.wait_for("READY step 5")
    first.sigkill()

    rows = load(store, "walk-1")
    assert [(r.state, r.kind.name) for r in rows[:2]] == [
        ("PREP", "STATE_ENTRY"),
        ("WALK", "STATE_ENTRY"),
    ]
    assert cursors(rows) == [{"n": n, "digest": f"d{n}"} for n in range(1, 6)]
    assert [r.sequence for r in rows] == list(range(len(rows)))

    second = spawn(children, "child_stepped.py", "resume", store, log, 8, -2)
    assert second.finish() == "DONE"

    before, after = journal(log)
    assert before == [
        "prep",
        "first 0 None",
        *[e for n in range(5) for e in (f"start {n}", f"end {n}")],
        "start 5",
    ]
    # Exactly the last persisted cursor, rebuilt as the dataclass cursor_type.
    assert after == [
        "first 5 Cursor:d5",
        *[e for n in range(5, 9) for e in (f"start {n}", f"end {n}")],
        "after",
    ]
    assert load(store, "walk-1") == []


def test_killed_at_a_random_moment_mid_loop(tmp_path: Path, children: list[Child]) -> None:
    store, log = tmp_path / "walk.redb", tmp_path / "journal"
    delay = random.uniform(0.02, 0.2)
    first = spawn(children, "child_stepped.py", "crash", store, log, 10**9, -1)
    first.wait_for("READY looping")
    time.sleep(delay)
    first.sigkill()
    context = f"(killed {delay:.3f}s into the loop)"

    persisted = cursors(load(store, "walk-1"))
    last = persisted[-1]["n"] if persisted else 0
    assert [c["n"] for c in persisted] == list(range(1, last + 1)), context
    (before,) = journal(log)
    started = [int(e.split()[1]) for e in before if e.startswith("start ")]
    # A step starts only once its cursor is durable, and every durable cursor came from a
    # step that finished: so the last step started is the last persisted cursor or the
    # step that produced it.
    assert started == list(range(len(started))), context
    assert started[-1] in (last - 1, last), context
    if last > 0:
        assert f"end {last - 1}" in before, context

    second = spawn(children, "child_stepped.py", "resume", store, log, last + 3, -2)
    assert second.finish() == "DONE", context
    _, after = journal(log)
    expected_first = f"first {last} Cursor:d{last}" if last > 0 else "first 0 None"
    assert after[0] == expected_first, context
    assert after[1] == f"start {last}", context
    assert after[-1] == "after", context


# --------------------------------------------------------------------------------------------
# sagas


def test_saga_killed_in_a_later_state_compensates_on_resume(
    tmp_path: Path, children: list[Child]
) -> None:
    store, log = tmp_path / "saga.redb", tmp_path / "journal"
    first = spawn(children, "child_saga.py", "crash-ship", store, log)
    first.wait_for("READY ship")
    first.sigkill()
    pid = first.proc.pid

    rows = load(store, "order-9")
    assert [(r.state, r.kind.name, r.output) for r in rows] == [
        ("RESERVE", "STATE_ENTRY", None),
        ("RESERVE", "COMPENSATION", orjson.dumps({"ref": f"reserve-{pid}"})),
        ("CHARGE", "STATE_ENTRY", None),
        ("CHARGE", "COMPENSATION", orjson.dumps({"ref": f"charge-{pid}"})),
        ("SHIP", "STATE_ENTRY", None),
    ]

    second = spawn(children, "child_saga.py", "resume", store, log)
    assert second.finish() == "TaskError SHIP"  # a clean rollback raises the original error

    before, after = journal(log)
    assert before == [f"do reserve reserve-{pid}", f"do charge charge-{pid}", "do ship"]
    # The outputs the dead process persisted are compensated, last first.
    assert after == ["do ship", f"undo charge charge-{pid}", f"undo reserve reserve-{pid}"]
    assert load(store, "order-9") == []


def test_saga_killed_right_after_a_completion_row(tmp_path: Path, children: list[Child]) -> None:
    store, log = tmp_path / "saga.redb", tmp_path / "journal"
    first = spawn(children, "child_saga.py", "crash-row", store, log, 3)
    first.wait_for("READY row 3")
    first.sigkill()
    pid1 = first.proc.pid

    rows = load(store, "order-9")
    assert [(r.sequence, r.state, r.kind.name) for r in rows] == [
        (0, "RESERVE", "STATE_ENTRY"),
        (1, "RESERVE", "COMPENSATION"),
        (2, "CHARGE", "STATE_ENTRY"),
        (3, "CHARGE", "COMPENSATION"),  # the last thing the dead process did
    ]

    second = spawn(children, "child_saga.py", "resume", store, log)
    assert second.finish() == "TaskError SHIP"
    pid2 = second.proc.pid

    before, after = journal(log)
    assert before == [f"do reserve reserve-{pid1}", f"do charge charge-{pid1}"]
    # The log ends in charge: like any resumed state, charge runs again. Its first output
    # was durable, so it stays on the saga stack: the later failure undoes both charges
    # (last first) and reserve — never "charge twice, refund once".
    assert after == [
        f"do charge charge-{pid2}",
        "do ship",
        f"undo charge charge-{pid2}",
        f"undo charge charge-{pid1}",
        f"undo reserve reserve-{pid1}",
    ]


# --------------------------------------------------------------------------------------------
# many runs, one store (group commit), killed at a random moment


def test_many_concurrent_runs_killed_at_random_all_resume(
    tmp_path: Path, children: list[Child]
) -> None:
    store, log = tmp_path / "many.redb", tmp_path / "journal"
    runs, states = 40, 150
    delay = random.uniform(0.03, 0.12)  # the runs need >= 0.15 s: killed mid-flight
    first = spawn(children, "child_states.py", "many-crash", store, log, runs, states)
    first.wait_for("READY running")
    time.sleep(delay)
    first.sigkill()
    context = f"(killed {delay:.3f}s after READY)"
    assert "READY finished" not in first.rest, f"every run ended before the kill {context}"

    logs = load(store)
    (before,) = journal(log)
    started: dict[str, list[int]] = {}
    for event in before:
        _, wid, label = event.split()
        started.setdefault(wid, []).append(int(label[1:]))
    assert logs, context
    for wid, rows in logs.items():
        assert [r.sequence for r in rows] == list(range(len(rows))), (wid, context)
        assert [r.state for r in rows] == [f"S{i}" for i in range(len(rows))], (wid, context)
        ran = started.get(wid, [])
        # A task never starts before its row is durable; the next row waits for the task.
        assert ran == list(range(len(ran))), (wid, context)
        assert len(ran) in (len(rows) - 1, len(rows)), (wid, len(ran), len(rows), context)
    for wid, ran in started.items():
        if wid not in logs:  # finished before the kill: the log was cleared
            assert ran == list(range(states)), (wid, context)

    second = spawn(children, "child_states.py", "many-resume", store, log, runs, states)
    assert second.finish() == f"resumed {len(logs)}", context
    _, after = journal(log)
    resumed: dict[str, list[int]] = {}
    for event in after:
        _, wid, label = event.split()
        resumed.setdefault(wid, []).append(int(label[1:]))
    for wid, rows in logs.items():
        last = len(rows) - 1
        assert resumed[wid] == list(range(last, states)), (wid, context)
    assert load(store) == {}
