"""The ``cano`` command: demo, runs list/show/clear, graph, and its error handling."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.cli import main
from cano.store import CheckpointRow, RowKind


class Step(enum.Enum):
    FETCH = enum.auto()
    PARSE = enum.auto()
    DONE = enum.auto()


def _failing_log(path: Path, workflow_id: str = "run-7", *, sqlite: bool = False) -> None:
    """Leaves a kept log: FETCH ran, PARSE failed (in a redb or a SQLite store)."""

    async def fetch() -> Step:
        return Step.PARSE

    async def parse() -> Step:
        raise RuntimeError("parser crashed")

    async def go() -> None:
        opened = cano.SqliteCheckpointStore(path) if sqlite else cano.RedbCheckpointStore(path)
        with opened as store:
            wf = (
                cano.Workflow.bare()
                .register(Step.FETCH, fetch)
                .register(Step.PARSE, cano.task(parse, config=cano.TaskConfig.minimal()))
                .add_exit_state(Step.DONE)
                .with_checkpoint_store(store)
            )
            with pytest.raises(cano.TaskError):
                await wf.orchestrate(Step.FETCH, workflow_id=workflow_id)

    asyncio.run(go())


def test_demo_crashes_a_child_and_resumes(tmp_path: Path) -> None:
    store = tmp_path / "demo.redb"
    out = subprocess.run(
        [sys.executable, "-m", "cano", "demo", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "the worker died" in out.stdout
    assert "charged the card" in out.stdout
    assert "The card was charged 1 time(s); 5 distinct items were packed" in out.stdout


def test_runs_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.redb"
    _failing_log(store)
    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    expected = {"workflow_id": "run-7", "rows": 2, "last_state": "PARSE", "last_sequence": 1}
    assert {k: listed[k] for k in expected} == expected
    assert (listed["status"], listed["state"], listed["attempts"]) == ("FAILED", "PARSE", 1)
    assert main(["runs", "show", "run-7", "--store", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["sequence"], r["state"], r["kind"]) for r in rows] == [
        (0, "FETCH", "STATE_ENTRY"),
        (1, "PARSE", "STATE_ENTRY"),
    ]
    assert set(rows[0]) == {
        "workflow_id",
        "sequence",
        "state",
        "task_id",
        "kind",
        "output",
        "workflow_version",
    }
    assert main(["runs", "show", "run-7", "--store", str(store)]) == 0
    assert "PARSE" in capsys.readouterr().out


def test_runs_clear_then_show_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.redb"
    _failing_log(store)
    assert main(["runs", "clear", "run-7", "--store", str(store)]) == 0
    assert "cleared 2 rows" in capsys.readouterr().out
    assert main(["runs", "show", "run-7", "--store", str(store)]) == 1
    assert "no run 'run-7'" in capsys.readouterr().err


def test_missing_store_exits_1_without_creating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.redb"
    assert main(["runs", "list", "--store", str(missing)]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert not missing.exists()


def test_corrupt_store_exits_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.redb"
    bad.write_bytes(b"this is not a redb file" * 100)
    assert main(["runs", "list", "--store", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_runs_on_a_sqlite_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runs.db"
    _failing_log(path, sqlite=True)
    expected = {"workflow_id": "run-7", "rows": 2, "last_state": "PARSE", "last_sequence": 1}
    for spec in (f"sqlite://{path}", str(path)):  # a sqlite:/// URL, or a .db path
        assert main(["runs", "list", "--store", spec, "--json"]) == 0
        [listed] = json.loads(capsys.readouterr().out)
        # The keys every store prints, then the record's (SQLite keeps run records).
        assert {k: listed[k] for k in expected} == expected
        assert (listed["status"], listed["state"], listed["attempts"]) == ("FAILED", "PARSE", 1)
    assert main(["runs", "show", "run-7", "--store", f"sqlite://{path}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["sequence"], r["state"], r["kind"]) for r in rows] == [
        (0, "FETCH", "STATE_ENTRY"),
        (1, "PARSE", "STATE_ENTRY"),
    ]
    # A SQLite file is known by its header, whatever its name.
    renamed = path.rename(tmp_path / "checkpoints")
    assert main(["runs", "list", "--store", str(renamed)]) == 0
    assert "run-7" in capsys.readouterr().out
    assert main(["runs", "clear", "run-7", "--store", f"sqlite://{renamed}"]) == 0
    assert "cleared 2 rows" in capsys.readouterr().out
    assert main(["runs", "show", "run-7", "--store", f"sqlite://{renamed}"]) == 1
    assert "no run 'run-7'" in capsys.readouterr().err


def test_sqlite_store_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    for spec in (f"sqlite://{missing}", str(missing)):
        assert main(["runs", "list", "--store", spec]) == 1
        err = capsys.readouterr().err
        assert str(missing) in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing created, not even -wal/-shm files

    monkeypatch.chdir(tmp_path)  # sqlite:REL/PATH is relative to the working directory
    assert main(["runs", "list", "--store", "sqlite:rel.sqlite3"]) == 1
    assert "rel.sqlite3" in capsys.readouterr().err

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a sqlite file" * 100)
    assert main(["runs", "list", "--store", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "not a cano checkpoint store" in err

    foreign = tmp_path / "app.db"  # a SQLite database, but not a checkpoint store
    sqlite3.connect(foreign).execute("CREATE TABLE users (name TEXT)").connection.close()
    assert main(["runs", "list", "--store", f"sqlite://{foreign}"]) == 1
    assert "no cano_checkpoints table" in capsys.readouterr().err

    assert main(["runs", "list", "--store", "sqlite://"]) == 2
    assert main(["runs", "list", "--store", "postgresql://postgres@127.0.0.1:1/cano"]) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL store '127.0.0.1:1/cano': cannot connect" in err, err


def test_a_redb_file_named_db_is_still_redb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "runs.db"
    _failing_log(store)
    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["workflow_id"] == "run-7"


def test_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    assert main([]) == 2
    assert main(["graph", "no-colon"]) == 2


def test_graph_prints_mermaid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "my_flow.py").write_text(
        "import enum, cano\n"
        "class S(enum.Enum):\n    A = 1\n    B = 2\n"
        "async def a() -> S:\n    return S.B\n"
        "def build() -> cano.Workflow[S]:\n"
        "    return cano.Workflow.bare().register(S.A, a, to=[S.B]).add_exit_state(S.B)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "my_flow:build"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stateDiagram-v2") and "--> [*]" in out
    assert main(["graph", "my_flow:missing"]) == 1


def test_bare_cano_prints_the_usage_and_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cano")
    for command in ("demo", "runs", "graph"):
        assert command in err


def test_graph_draws_transitions_read_from_the_tasks_and_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "shop.py").write_text(
        "import enum, cano\n"
        "class S(enum.Enum):\n    CART = 1\n    PAY = 2\n    DONE = 3\n    FAILED = 4\n"
        "async def cart() -> S:\n    return S.PAY\n"
        "class Pay(cano.Task[S]):\n"
        "    async def run(self, res: cano.Resources) -> S:\n"
        "        return S.DONE if res else S.FAILED\n"
        "wf = cano.Workflow.bare().register(S.CART, cart).register(S.PAY, Pay())"
        ".add_exit_states([S.DONE, S.FAILED])\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "shop:wf"]) == 0
    out = capsys.readouterr().out
    ids = dict(re.findall(r'state "(\w+)" as (s\d+)', out))
    edges = set(re.findall(r"(s\d+|\[\*\]) --> (s\d+|\[\*\])", out))
    cart, pay, done, failed = ids["CART"], ids["PAY"], ids["DONE"], ids["FAILED"]
    assert {("[*]", cart), (cart, pay), (pay, done), (pay, failed)} <= edges
    assert ("[*]", pay) not in edges  # PAY is reached from CART: not a start
    assert main(["graph", "shop:wf", "--initial", "PAY"]) == 0
    assert f"[*] --> {pay}" in capsys.readouterr().out
    assert main(["graph", "shop:wf", "--initial", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err


def test_graph_of_a_module_that_fails_to_import_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('no config file')\n")
    (tmp_path / "factory.py").write_text("def build():\n    raise KeyError('db')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "broken:wf"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: no config file" in err and "Traceback" not in err
    assert main(["graph", "factory:build"]) == 1
    err = capsys.readouterr().err
    assert "factory:build() raised KeyError" in err and "Traceback" not in err


def test_a_closed_pipe_ends_the_demo_quietly(tmp_path: Path) -> None:
    # `cano demo | head -1`: the reader goes away after the first line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cano", "demo", "--store", str(tmp_path / "d.redb")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.wait(timeout=120)
    assert first.startswith(b"cano demo")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141)


def test_a_missing_relative_store_is_named_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "list", "--store", "typo.redb"]) == 1
    assert str(tmp_path / "typo.redb") in capsys.readouterr().err
    assert not (tmp_path / "typo.redb").exists()


def _records_store(path: Path) -> None:
    """A store (SQLite, or redb by its suffix) with one completed, one failed and one
    pending run."""

    class Flow(enum.Enum):
        A = 1
        B = 2

    async def ok(res: cano.Resources) -> Flow:
        return Flow.B

    async def broken(res: cano.Resources) -> Flow:
        raise ValueError("no stock")

    async def fill() -> None:
        opened: Any = (
            cano.RedbCheckpointStore(path)
            if path.suffix == ".redb"
            else cano.SqliteCheckpointStore(path)
        )
        async with opened as store:
            base = cano.Workflow[Flow](cano.Resources.empty(), name="shop")
            good = base.register(Flow.A, ok).add_exit_state(Flow.B).with_checkpoint_store(store)
            await good.orchestrate(Flow.A, workflow_id="good")
            bad = (
                cano.Workflow[Flow](cano.Resources.empty(), name="shop")
                .register(Flow.A, cano.task(config=cano.TaskConfig.minimal())(broken))
                .add_exit_state(Flow.B)
                .with_checkpoint_store(store)
            )
            with pytest.raises(cano.TaskError):
                await bad.orchestrate(Flow.A, workflow_id="bad")
            await cano.Client(store).enqueue("shop", "A", workflow_id="later", input={"n": 1})

    asyncio.run(fill())


@pytest.mark.parametrize("suffix", [".db", ".redb"])
def test_runs_get_steps_list_cancel_prune_on_records(
    suffix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / f"records{suffix}"
    _records_store(path)
    monkeypatch.setenv("CANO_STORE", str(path))  # --store defaults to it
    assert main(["runs", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["workflow_id"], r["status"]) for r in listed] == [
        ("later", "PENDING"),
        ("bad", "FAILED"),
        ("good", "COMPLETED"),
    ]
    assert main(["runs", "list", "--status", "failed,completed", "--since", "1h", "--json"]) == 0
    assert [r["workflow_id"] for r in json.loads(capsys.readouterr().out)] == ["bad", "good"]
    assert main(["runs", "list", "--status", "nonsense"]) == 2
    assert "PENDING" in capsys.readouterr().err
    assert main(["runs", "get", "bad", "--json"]) == 0
    bad = json.loads(capsys.readouterr().out)
    assert (bad["status"], bad["error_type"], bad["state"]) == ("FAILED", "TaskError", "A")
    assert "no stock" in bad["error"] and bad["finished_at"].endswith("+00:00")
    assert main(["runs", "get", "later"]) == 0
    assert '{"n": 1}' in capsys.readouterr().out
    assert main(["runs", "steps", "good", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [(s["state"], s["kind"]) for s in steps] == [("A", "STATE_ENTRY"), ("B", "STATE_ENTRY")]
    assert main(["runs", "steps", "good"]) == 0
    assert "STATE_ENTRY" in capsys.readouterr().out
    assert main(["runs", "cancel", "later"]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["runs", "prune", "--older-than", "1d"]) == 0
    assert "pruned 0 runs" in capsys.readouterr().out
    assert main(["runs", "prune", "--older-than", "0s"]) == 0
    assert "pruned 3 runs" in capsys.readouterr().out
    assert main(["runs", "get", "good"]) == 1
    assert main(["runs", "prune", "--older-than", "soon"]) == 2


def test_a_redb_log_without_a_record_is_still_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.redb"

    async def old_log() -> None:  # rows appended directly, as an earlier cano left them
        async with cano.RedbCheckpointStore(path) as store:
            row = CheckpointRow("old-1", 0, "FETCH", "t", RowKind.STATE_ENTRY, None, 0)
            await store.append(row)

    asyncio.run(old_log())
    assert main(["runs", "list", "--store", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"workflow_id": "old-1", "rows": 1, "last_state": "FETCH", "last_sequence": 0}
    ]
    assert main(["runs", "list", "--store", str(path)]) == 0
    assert "old-1" in capsys.readouterr().out
    assert main(["runs", "get", "old-1", "--store", str(path)]) == 1
    assert "no run 'old-1'" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cano {cano.__version__}"


def test_cano_worker_serves_a_store_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "shopflow.py").write_text(
        "import enum, cano\n"
        "class S(enum.Enum):\n    A = 1\n    B = 2\n"
        "async def a() -> S:\n    return S.B\n"
        "wf = cano.Workflow[S](cano.Resources.empty(), name='shop')"
        ".register(S.A, a).add_exit_state(S.B)\n"
    )
    path = tmp_path / "serve.db"

    async def enqueue_and_wait(action: str) -> Any:
        async with cano.SqliteCheckpointStore(path) as store:
            client = cano.Client(store)
            if action == "enqueue":
                return await client.enqueue("shop", "A", workflow_id="via-cli")
            return await client.wait("via-cli", timeout=60)

    asyncio.run(enqueue_and_wait("enqueue"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cano", "worker", "shopflow:wf", "--store", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = asyncio.run(enqueue_and_wait("wait"))
        assert info.status is cano.RunStatus.COMPLETED and info.final_state == "B"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "serving shop" in out and "stopped after" in out


def test_import_cano_does_not_load_sqlite_or_psycopg() -> None:
    code = (
        "import sys, cano\n"
        "assert 'sqlite3' not in sys.modules and 'psycopg' not in sys.modules\n"
        "assert cano.SqliteCheckpointStore.__name__ == 'SqliteCheckpointStore'\n"
        "assert 'sqlite3' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
