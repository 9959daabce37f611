"""Wait states with real processes: a waiting run outlives every process that ran it and
finishes after a signal sent from another process; a signal consumed before a crash is the
one handled after it (SQLite, and PostgreSQL when a server is available)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import cano
import pytest
from test_sigkill import Child, spawn
from test_worker_processes import ask, enqueue, events

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
    pytest.mark.timeout(120),
]

FAST = ("--lease", "1", "--poll", "0.1", "--wait", "CHARGE")


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or ``postgresql://…#SCHEMA`` (conftest's ``pg``)."""
    if request.param == "sqlite":
        return str(tmp_path / "waits.db")
    return str(request.getfixturevalue("pg"))


def waiting(spec: str, run_id: str) -> None:
    """Until the run's record says it is in its wait state (CHARGE)."""
    for _ in range(400):
        [info] = ask(spec, ("get", (run_id,), {}))
        if info is not None and info.state == "CHARGE":
            return
        asyncio.run(asyncio.sleep(0.05))
    raise AssertionError(f"{run_id} never reached its wait state")


def test_a_waiting_run_outlives_its_process_and_ends_on_a_signal_from_another(
    spec: str, tmp_path: Path, children: list[Child]
) -> None:
    log = tmp_path / "journal"
    enqueue(spec, "order-1")
    first = spawn(children, "child_worker.py", spec, log, "w1", *FAST)
    assert first.wait_for("READY") == "READY serving w1"
    waiting(spec, "order-1")
    first.sigkill()  # every process that ran it is gone
    ask(spec, ("signal", ("order-1", "go", {"n": 1}), {}))  # from this process
    second = spawn(children, "child_worker.py", spec, log, "w2", *FAST)
    [info] = ask(spec, ("wait", ("order-1",), {"timeout": 60}))
    os.kill(second.proc.pid, signal.SIGTERM)
    assert second.finish() == "stopped"
    assert info.status is cano.RunStatus.COMPLETED
    done = [(e[1], e[3]) for e in events(log) if e[1] in ("end", "signalled")]
    assert done == [
        ("end", "VALIDATE"),
        ("end", "RESERVE"),
        ("signalled", "CHARGE"),
        ("end", "EMAIL"),
    ]


def test_a_signal_consumed_before_a_crash_is_the_one_handled_after_it(
    spec: str, tmp_path: Path, children: list[Child]
) -> None:
    log = tmp_path / "journal"
    enqueue(spec, "order-2")
    first = spawn(children, "child_worker.py", spec, log, "w1", "--hang", "CHARGE", *FAST)
    assert first.wait_for("READY") == "READY serving w1"
    waiting(spec, "order-2")
    ask(spec, ("signal", ("order-2", "go", {"n": 1}), {}))
    assert first.wait_for("READY") == "READY order-2 CHARGE"  # consumed, now handling it
    first.sigkill()
    ask(spec, ("signal", ("order-2", "go", {"n": 2}), {}))  # a second one arrives
    second = spawn(children, "child_worker.py", spec, log, "w2", *FAST)
    [info] = ask(spec, ("wait", ("order-2",), {"timeout": 60}))
    os.kill(second.proc.pid, signal.SIGTERM)
    assert second.finish() == "stopped"
    assert info.status is cano.RunStatus.COMPLETED
    handled = [line.split()[-1] for line in log.read_text().splitlines() if " signalled " in line]
    assert handled == ["1", "1"]  # the same payload again, never the second one
