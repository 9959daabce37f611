"""Workers in real processes on one SQLite store: killed with SIGKILL, frozen with SIGSTOP;
and a redb store's process killed and started again.

Each worker process (``child_worker.py``) notes in a shared journal when each state's task
starts and ends, so the tests can prove what ran where: no completed state runs twice, and
a worker that lost its lease writes nothing more.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import cano
import pytest
from child_common import open_store
from test_sigkill import Child, spawn

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGKILL and SIGSTOP"),
    pytest.mark.timeout(90),
]

STATES = ["VALIDATE", "RESERVE", "CHARGE", "EMAIL"]


def events(path: Path) -> list[tuple[str, str, str, str]]:
    """(pid, event, run id, state) for every journal line, in order."""
    out = []
    for line in path.read_text().splitlines():
        pid, event, run_id, state, _at = line.split()
        out.append((pid, event, run_id, state))
    return out


def ask(store: Path | str, *calls: tuple[str, tuple[Any, ...], dict[str, Any]]) -> list[Any]:
    """Runs Client calls against the store (a path, or ``postgresql://…#SCHEMA``) in a fresh
    event loop."""

    async def go() -> list[Any]:
        async with open_store(str(store)) as s:
            client = cano.Client(s)
            return [await getattr(client, name)(*a, **kw) for name, a, kw in calls]

    return asyncio.run(go())


def enqueue(store: Path | str, *ids: str) -> None:
    ask(store, *[("enqueue", ("orders", "VALIDATE"), {"workflow_id": i}) for i in ids])


def test_a_killed_worker_s_run_is_finished_by_another_worker(
    tmp_path: Path, children: list[Child]
) -> None:
    store, log = tmp_path / "queue.db", tmp_path / "journal"
    enqueue(store, "order-1")
    first = spawn(children, "child_worker.py", store, log, "w1", "--hang", "CHARGE")
    assert first.wait_for("READY") == "READY serving w1"
    assert first.wait_for("READY") == "READY order-1 CHARGE"
    first.sigkill()

    [info] = ask(store, ("get", ("order-1",), {}))
    assert info.status is cano.RunStatus.RUNNING and info.owner == "w1"

    second = spawn(children, "child_worker.py", store, log, "w2", "--lease", "1")
    assert second.wait_for("READY") == "READY serving w2"
    [info] = ask(store, ("wait", ("order-1",), {"timeout": 30}))
    os.kill(second.proc.pid, signal.SIGTERM)
    assert second.finish() == "stopped"

    assert info.status is cano.RunStatus.COMPLETED and info.attempts == 2
    by_pid: dict[str, list[str]] = {}
    for pid, event, _run, state in events(log):
        by_pid.setdefault(pid, []).append(f"{event} {state}")
    killed, survivor = by_pid.values()
    assert killed == [
        "start VALIDATE",
        "end VALIDATE",
        "start RESERVE",
        "end RESERVE",
        "start CHARGE",
    ]
    # The new owner ran the state in flight again and the rest; no completed state twice.
    assert survivor == [e for s in STATES[2:] for e in (f"start {s}", f"end {s}")]
    [steps] = ask(store, ("steps", ("order-1",), {}))
    assert [s.state for s in steps] == [*STATES, "DONE"]


def test_a_frozen_worker_writes_nothing_after_the_takeover(
    tmp_path: Path, children: list[Child]
) -> None:
    store, log = tmp_path / "queue.db", tmp_path / "journal"
    enqueue(store, "order-2")
    # The frozen worker's CHARGE ends 1.5 s after it started: by then it is frozen, and when
    # it thaws it tries to go on to EMAIL — a write its lost lease must refuse.
    frozen = spawn(
        children, "child_worker.py", store, log, "w1", "--hang", "CHARGE", "--sleep", "1.5"
    )
    assert frozen.wait_for("READY") == "READY serving w1"
    assert frozen.wait_for("READY") == "READY order-2 CHARGE"
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        taker = spawn(children, "child_worker.py", store, log, "w2", "--lease", "1")
        assert taker.wait_for("READY") == "READY serving w2"
        [done] = ask(store, ("wait", ("order-2",), {"timeout": 30}))
        assert done.status is cano.RunStatus.COMPLETED and done.attempts == 2
        [steps_before] = ask(store, ("steps", ("order-2",), {}))
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    # Give the thawed worker time to finish CHARGE and try its next write.
    lines = len(events(log))
    for _ in range(100):
        asyncio.run(asyncio.sleep(0.05))
        mine = [e for e in events(log) if e[0] == str(frozen.proc.pid)]
        if ("end" in (e[1] for e in mine if e[3] == "CHARGE")) and len(events(log)) >= lines:
            break
    asyncio.run(asyncio.sleep(0.5))
    for child in (frozen, taker):
        os.kill(child.proc.pid, signal.SIGTERM)
        assert child.finish() == "stopped"

    frozen_events = [(e[1], e[3]) for e in events(log) if e[0] == str(frozen.proc.pid)]
    # Thawed, it either stopped the run itself (its lease could not have been renewed in
    # time) or finished CHARGE's code and had its next write refused by the store:
    assert frozen_events[-1] in (("start", "CHARGE"), ("end", "CHARGE"))
    assert ("start", "EMAIL") not in frozen_events  # ...but it moved on to nothing
    [info, steps] = ask(store, ("get", ("order-2",), {}), ("steps", ("order-2",), {}))
    assert info.status is cano.RunStatus.COMPLETED and info.attempts == 2
    assert [(s.sequence, s.state) for s in steps] == [(s.sequence, s.state) for s in steps_before]
    assert "abandoned run order-2" in frozen.stderr or "could not renew" in frozen.stderr


def test_a_queue_cap_holds_across_worker_processes(tmp_path: Path, children: list[Child]) -> None:
    store, log = tmp_path / "queue.db", tmp_path / "journal"
    ask(store, ("set_queue", ("default",), {"concurrency": 2}))
    ids = [f"capped-{i}" for i in range(6)]
    enqueue(store, *ids)
    workers = [
        spawn(
            children,
            "child_worker.py",
            store,
            log,
            f"w{n}",
            "--hang",
            "CHARGE",
            "--sleep",
            "0.3",
            "--concurrency",
            "3",
            "--lease",
            "5",
            "--poll",
            "0.05",
        )
        for n in (1, 2)
    ]
    for w in workers:
        assert w.wait_for("READY serving").startswith("READY serving")
    infos = ask(store, *[("wait", (i,), {"timeout": 60}) for i in ids])
    for w in workers:
        os.kill(w.proc.pid, signal.SIGTERM)
        assert w.finish() == "stopped"
    assert all(i.status is cano.RunStatus.COMPLETED for i in infos)
    # A run holds a slot from VALIDATE's start to EMAIL's end: never more than two at once.
    spans: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        _pid, _event, run_id, _state, at = line.split()
        spans.setdefault(run_id, []).append(float(at))
    edges = sorted([(min(t), 1) for t in spans.values()] + [(max(t), -1) for t in spans.values()])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2  # each process alone had three free slots


def test_a_redb_process_restarted_after_sigkill_finishes_its_runs_at_once(
    tmp_path: Path, children: list[Child]
) -> None:
    """redb serves the Workers of one process: the process started again after a SIGKILL
    takes over the runs the dead one held at once — no lease to wait out (it holds 60 s) —
    from their logs, and no completed state runs twice."""
    store, log = tmp_path / "queue.redb", tmp_path / "journal"
    enqueue(store, "order-1", "order-2")
    lease = ("--lease", "60", "--poll", "0.1")
    first = spawn(children, "child_worker.py", store, log, "w1", "--hang", "CHARGE", *lease)
    assert first.wait_for("READY") == "READY serving w1"
    hung = {first.wait_for("READY").split()[1] for _ in range(2)}
    assert hung == {"order-1", "order-2"}
    first.sigkill()

    infos = ask(store, ("get", ("order-1",), {}), ("get", ("order-2",), {}))
    assert [(i.status, i.owner, i.attempts) for i in infos] == [
        (cano.RunStatus.RUNNING, "w1", 1)
    ] * 2

    second = spawn(children, "child_worker.py", store, log, "w2", *lease)
    assert second.wait_for("READY") == "READY serving w2"
    for _ in range(400):  # well inside the 60 s lease
        finished = {e[2] for e in events(log) if e[1:4:2] == ("end", "EMAIL")}
        if finished == {"order-1", "order-2"}:
            break
        asyncio.run(asyncio.sleep(0.05))
    os.kill(second.proc.pid, signal.SIGTERM)
    assert second.finish() == "stopped"  # the file is free again

    for run_id in ("order-1", "order-2"):
        mine = [(e[0], f"{e[1]} {e[3]}") for e in events(log) if e[2] == run_id]
        killed = [what for pid, what in mine if pid == str(first.proc.pid)]
        survivor = [what for pid, what in mine if pid == str(second.proc.pid)]
        assert killed == [f"{e} {s}" for s in STATES[:2] for e in ("start", "end")] + [
            "start CHARGE"
        ]
        assert survivor == [f"{e} {s}" for s in STATES[2:] for e in ("start", "end")]
        [info, steps] = ask(store, ("get", (run_id,), {}), ("steps", (run_id,), {}))
        assert (info.status, info.attempts, info.owner) == (cano.RunStatus.COMPLETED, 2, None)
        assert [s.state for s in steps] == [*STATES, "DONE"]
