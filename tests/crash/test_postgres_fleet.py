"""A fleet of Worker processes on one PostgreSQL database: killed with SIGKILL, frozen with
SIGSTOP, and the database itself restarted under them.

Needs a PostgreSQL server: the tests start a throwaway one (``tests/pg_server.py``, from
Debian's ``postgresql`` package) or use ``CANO_PG_DSN``; without either they are skipped.
Each test works in a schema of its own. Every worker process notes in a shared journal when
each state's task starts and ends, so the tests prove what ran where.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.parse
from collections import Counter
from pathlib import Path

import cano
import pg_server
import pytest
from test_sigkill import Child, spawn
from test_worker_processes import STATES, ask, enqueue, events

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGKILL and SIGSTOP"),
    pytest.mark.timeout(120),
]

FAST = ("--lease", "2", "--poll", "0.1")


def serving(children: list[Child], pg: str, log: Path, name: str, *options: str) -> Child:
    child = spawn(children, "child_worker.py", pg, log, name, *options)
    assert child.wait_for("READY serving") == f"READY serving {name}"
    return child


def stop(*workers: Child) -> None:
    for w in workers:
        os.kill(w.proc.pid, signal.SIGTERM)
    for w in workers:
        assert w.finish() == "stopped"


def per_run(log: Path, run_id: str) -> list[str]:
    return [f"{e[1]} {e[3]}" for e in events(log) if e[2] == run_id]


def test_three_workers_finish_thirty_runs_exactly_once(
    pg: str, tmp_path: Path, children: list[Child]
) -> None:
    log = tmp_path / "journal"
    ids = [f"run-{i}" for i in range(30)]
    workers = [serving(children, pg, log, f"w{n}", "--concurrency", "4", *FAST) for n in range(3)]
    enqueue(pg, *ids)  # once the whole fleet is there
    infos = ask(pg, *[("wait", (i,), {"timeout": 60}) for i in ids])
    stop(*workers)
    assert {(i.status, i.attempts) for i in infos} == {(cano.RunStatus.COMPLETED, 1)}
    done = Counter((run, state, event) for _pid, event, run, state in events(log))
    assert len(done) == 30 * len(STATES) * 2 and set(done.values()) == {1}  # exactly once
    assert len({pid for pid, *_ in events(log)}) >= 2  # the fleet shared the work


def test_a_killed_worker_s_runs_are_finished_by_the_others(
    pg: str, tmp_path: Path, children: list[Child]
) -> None:
    log = tmp_path / "journal"
    ids = [f"order-{i}" for i in range(4)]
    enqueue(pg, *ids)
    victim = serving(children, pg, log, "w0", "--hang", "CHARGE", "--concurrency", "4", *FAST)
    hung = {victim.wait_for("READY").split()[1] for _ in ids}
    assert hung == set(ids)  # all four in flight in the victim
    victim.sigkill()

    others = [serving(children, pg, log, f"w{n}", *FAST) for n in (1, 2)]
    infos = ask(pg, *[("wait", (i,), {"timeout": 60}) for i in ids])
    stop(*others)
    assert {(i.status, i.attempts) for i in infos} == {(cano.RunStatus.COMPLETED, 2)}
    for run_id in ids:
        # Only CHARGE, in flight at the kill, ran twice; every finished state once.
        assert per_run(log, run_id) == [
            "start VALIDATE",
            "end VALIDATE",
            "start RESERVE",
            "end RESERVE",
            "start CHARGE",
            "start CHARGE",
            "end CHARGE",
            "start EMAIL",
            "end EMAIL",
        ]
        [steps] = ask(pg, ("steps", (run_id,), {}))
        assert [s.state for s in steps] == [*STATES, "DONE"]


def test_a_frozen_worker_writes_nothing_after_the_takeover(
    pg: str, tmp_path: Path, children: list[Child]
) -> None:
    log = tmp_path / "journal"
    enqueue(pg, "order-9")
    # CHARGE fails 2 s after it starts: by then the worker is frozen past its 1 s lease; when
    # it thaws, the failure would compensate RESERVE (a saga step) — which only the run's
    # owner may decide — and end the run, a write its lost lease must refuse.
    options = ("--hang", "CHARGE", "--sleep", "2", "--fail", "--lease", "1", "--poll", "0.1")
    frozen = serving(children, pg, log, "w1", "--saga", *options)
    assert frozen.wait_for("READY", timeout=30) == "READY order-9 CHARGE"
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        taker = serving(children, pg, log, "w2", "--saga", "--lease", "1", "--poll", "0.1")
        [done] = ask(pg, ("wait", ("order-9",), {"timeout": 60}))
        assert done.status is cano.RunStatus.COMPLETED and done.attempts == 2
        [before] = ask(pg, ("steps", ("order-9",), {}))
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    for _ in range(200):  # until the thawed worker has finished CHARGE and tried to go on
        mine = [e for e in events(log) if e[0] == str(frozen.proc.pid)]
        if ("fail", "CHARGE") in [(e[1], e[3]) for e in mine]:
            break
        asyncio.run(asyncio.sleep(0.05))
    asyncio.run(asyncio.sleep(0.5))
    stop(frozen, taker)
    frozen_events = [(e[1], e[3]) for e in events(log) if e[0] == str(frozen.proc.pid)]
    # Thawed, it either stopped the run itself (its lease could not have been renewed in
    # time) or let CHARGE fail and found, before compensating, that the run was not its own:
    assert frozen_events[-1] in (("start", "CHARGE"), ("fail", "CHARGE"))
    assert ("start", "EMAIL") not in frozen_events
    assert not [e for e in events(log) if e[1] == "undo"]  # nobody compensated anything
    [info, after] = ask(pg, ("get", ("order-9",), {}), ("steps", ("order-9",), {}))
    assert info.status is cano.RunStatus.COMPLETED and info.attempts == 2
    assert [(s.sequence, s.state) for s in after] == [(s.sequence, s.state) for s in before]
    assert "abandoned run order-9" in frozen.stderr or "could not renew" in frozen.stderr


def timed_events(log: Path) -> list[tuple[str, str, str, str, float]]:
    """(pid, event, run id, state, time.time()) for every journal line, in order."""
    out = []
    for line in log.read_text().splitlines():
        pid, event, run_id, state, at = line.split()
        out.append((pid, event, run_id, state, float(at)))
    return out


def test_a_worker_cut_off_its_database_stops_its_run_before_another_takes_it(
    pg: str, tmp_path: Path, children: list[Child]
) -> None:
    """Self-fencing across a network partition: the worker is alive, but its database
    answers nothing (a proxy between them frozen). Its lease cannot be renewed, so it stops
    the run itself before the lease can expire; only then may another worker take the run
    over. The two never run the state at once."""
    log = tmp_path / "journal"
    dsn, _, schema = pg.partition("#")
    where = urllib.parse.urlsplit(dsn)
    proxy = spawn(children, "tcp_proxy.py", where.hostname, where.port)
    port = proxy.wait_for("READY").split()[1]
    cut_off = where._replace(netloc=f"{where.username}@127.0.0.1:{port}").geturl() + "#" + schema
    enqueue(pg, "order-5")
    options = ("--hang", "CHARGE", "--note-cancel", "--lease", "3", "--poll", "0.5")
    partitioned = serving(children, cut_off, log, "w1", *options)
    assert partitioned.wait_for("READY", timeout=30) == "READY order-5 CHARGE"
    os.kill(proxy.proc.pid, signal.SIGSTOP)  # the partition: nothing comes back
    try:
        taker = serving(children, pg, log, "w2", "--lease", "3", "--poll", "0.2")
        [done] = ask(pg, ("wait", ("order-5",), {"timeout": 60}))
        assert done.status is cano.RunStatus.COMPLETED and done.attempts == 2
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
    stop(taker)
    os.kill(partitioned.proc.pid, signal.SIGTERM)
    partitioned.finish()
    mine = [e for e in timed_events(log) if e[0] == str(partitioned.proc.pid)]
    theirs = [e for e in timed_events(log) if e[0] == str(taker.proc.pid)]
    stopped = [e[4] for e in mine if e[1:4] == ("cancelled", "order-5", "CHARGE")]
    retaken = [e[4] for e in theirs if e[1:4] == ("start", "order-5", "CHARGE")]
    assert len(stopped) == 1 and len(retaken) == 1, (mine, theirs)
    assert stopped[0] < retaken[0], "the cut-off worker still ran CHARGE when it was taken"
    assert ("end", "CHARGE") not in [(e[1], e[3]) for e in mine]
    assert "could not renew its lease on run order-5 in time" in partitioned.stderr


def test_a_database_restart_strands_no_run(pg: str, tmp_path: Path, children: list[Child]) -> None:
    cluster = pg_server.test_cluster()
    if cluster is None:
        pytest.skip("restarts only the server the tests started (CANO_PG_DSN is outside)")
    log = tmp_path / "journal"
    ids = [f"r-{i}" for i in range(8)]
    enqueue(pg, *ids)
    options = ("--hang", "CHARGE", "--sleep", "1", "--concurrency", "4", *FAST)
    workers = [serving(children, pg, log, f"w{n}", *options) for n in (1, 2)]
    workers[0].wait_for("READY")  # runs are in flight...
    pg_server.pg_ctl(cluster, "restart", "-m", "immediate")  # ...when the server dies
    infos = ask(pg, *[("wait", (i,), {"timeout": 90}) for i in ids])
    stop(*workers)
    assert {i.status for i in infos} == {cano.RunStatus.COMPLETED}
    for run_id in ids:
        finished = [line for line in per_run(log, run_id) if line.startswith("end")]
        assert finished[-1] == "end EMAIL"
        # A state may run again only if it was in flight when its connection broke.
        assert finished.count("end VALIDATE") <= 2


def test_cano_runs_reads_a_live_fleet(
    pg: str, tmp_path: Path, children: list[Child], capsys: pytest.CaptureFixture[str]
) -> None:
    from cano.cli import main

    log = tmp_path / "journal"
    enqueue(pg, "live-1")
    busy = serving(children, pg, log, "w1", "--hang", "CHARGE", *FAST)
    assert busy.wait_for("READY") == "READY live-1 CHARGE"
    assert main(["runs", "list", "--store", pg, "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["workflow_id"], listed["status"], listed["owner"]) == ("live-1", "RUNNING", "w1")
    assert listed["state"] == "CHARGE" and listed["rows"] == 3
    assert main(["runs", "cancel", "live-1", "--store", pg]) == 0  # its worker stops it
    assert "asked to stop" in capsys.readouterr().out
    [info] = ask(pg, ("wait", ("live-1",), {"timeout": 30}))
    stop(busy)
    assert info.status is cano.RunStatus.CANCELLED
    assert main(["runs", "steps", "live-1", "--store", pg, "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [s["state"] for s in steps] == ["VALIDATE", "RESERVE", "CHARGE"]
