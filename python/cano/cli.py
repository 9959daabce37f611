"""The ``cano`` command: a crash-and-resume demo, checkpoint-store inspection, graphs.

::

    cano demo [--store PATH]
    cano runs list --store PATH [--json]
    cano runs show ID --store PATH [--json]
    cano runs clear ID --store PATH
    cano graph MODULE:ATTR [--format mermaid] [--initial STATE]

A store PATH is a redb or SQLite file, or a ``sqlite:///ABSOLUTE/PATH`` URL. Bad arguments
print one line and exit 2; a missing or unreadable store exits 1 naming the file. User
errors never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cano import _demo as demo
from cano._demo import describe_output
from cano.errors import CanoError, CheckpointError
from cano.store import CheckpointRow, RedbCheckpointStore
from cano.stores import SqliteCheckpointStore
from cano.workflow import Workflow, state_label

__all__ = ["main"]


class UsageError(Exception):
    """Bad arguments: exit 2."""


class Failure(Exception):
    """A user-facing failure: exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cano", description="cano: async workflows on finite state machines")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser(
        "demo", help="run a checkpointed workflow, crash it on purpose, and resume it"
    )
    demo.add_argument("--store", metavar="PATH", help="redb file for the checkpoint log")
    demo.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    demo.add_argument("--journal", help=argparse.SUPPRESS)

    runs = commands.add_parser("runs", help="inspect the runs kept in a checkpoint store")
    actions = runs.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    for name, text in (
        ("list", "list the runs that have a checkpoint log"),
        ("show", "show every row of one run's log"),
        ("clear", "delete one run's log"),
    ):
        action = actions.add_parser(name, help=text)
        if name != "list":
            action.add_argument("workflow_id", metavar="ID")
        action.add_argument(
            "--store",
            metavar="PATH",
            required=True,
            help="the store: a redb or SQLite file, or sqlite:///PATH",
        )
        if name != "clear":
            action.add_argument("--json", action="store_true", help="print JSON")

    graph = commands.add_parser("graph", help="print a workflow's graph")
    graph.add_argument(
        "target", metavar="MODULE:ATTR", help="a Workflow, or a function returning one"
    )
    graph.add_argument("--format", choices=["mermaid"], default="mermaid")
    graph.add_argument(
        "--initial",
        metavar="STATE",
        help="the state runs start in (default: states no edge reaches)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cano`` console script; returns the exit code."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help(sys.stderr)
        print("\ncano: a command is required", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
        if args.command == "demo":
            return _demo(args)
        if args.command == "runs":
            return asyncio.run(_runs(args))
        return _graph(args)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _reader_went_away()
    except (Failure, CanoError) as err:
        if _caused_by_a_closed_pipe(err):
            return _reader_went_away()
        print(f"cano: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _caused_by_a_closed_pipe(err: BaseException) -> bool:
    """True when a task failed because what reads our output closed it (``| head``)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, BrokenPipeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reader_went_away() -> int:
    """The reader of stdout closed it (``cano demo | head``): stop quietly, as Unix tools
    do. stdout is pointed at /dev/null so that flushing it at exit raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by the pipe


# ----- runs -----------------------------------------------------------------------------


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_REDB_MAGIC = b"redb"


def _open_store(spec: str, *, write: bool = False) -> RedbCheckpointStore | SqliteCheckpointStore:
    """The store named by ``--store``: ``sqlite:///ABS/PATH`` or ``sqlite:REL/PATH``, a
    ``postgresql://`` URL (not available yet), or a file path: a SQLite file (by its header,
    or by a .db/.sqlite/.sqlite3 name) or a redb file. Never creates anything; a redb file is
    opened read-only unless the command writes (so a full disk can still be inspected)."""
    if spec.startswith(("postgresql:", "postgres:")):
        scheme = spec.split(":", 1)[0]
        raise Failure(f"{scheme} checkpoint stores are not available in this version of cano")
    sqlite = spec.startswith("sqlite:")
    path = _sqlite_url_path(spec) if sqlite else spec
    if not Path(path).is_file():
        where = path if os.path.isabs(path) else f"{path} ({os.path.abspath(path)})"
        raise Failure(f"no checkpoint store at {where}: the file does not exist")
    if not sqlite:
        try:
            with open(path, "rb") as file:
                header = file.read(len(_SQLITE_MAGIC))
        except OSError as err:
            raise Failure(f"cannot read the checkpoint store {path}: {err}") from err
        sqlite = header == _SQLITE_MAGIC or (
            not header.startswith(_REDB_MAGIC) and path.lower().endswith(_SQLITE_SUFFIXES)
        )
    if sqlite:
        return SqliteCheckpointStore(path, create=False)
    try:
        if not write:
            try:
                return RedbCheckpointStore(path, read_only=True, create=False)
            except CheckpointError as err:
                if "not closed cleanly" not in str(err):
                    raise
                # Its process died: redb recovers the file when it is opened for writing.
        return RedbCheckpointStore(path, create=False)
    except CheckpointError as err:
        if "already open" in str(err):
            raise Failure(_held_by(path)) from err
        raise


def _held_by(path: str) -> str:
    """One line saying which process holds a redb file (Linux: from /proc/locks)."""
    holder = "another process"
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4242 08:01:123456 0 EOF"
                # (OFD locks show pid -1: they name no process.)
                if (
                    len(fields) >= 6
                    and fields[5].rsplit(":", 1)[-1] == str(inode)
                    and fields[4].isdigit()
                ):
                    holder = f"process {fields[4]}"
                    break
    except OSError:
        pass
    return (
        f"checkpoint store {path} is held by {holder}: a redb store belongs to one process "
        "at a time; inspect it when that process has stopped, or keep live runs in SQLite "
        "(SqliteCheckpointStore) or PostgreSQL for live inspection"
    )


def _sqlite_url_path(spec: str) -> str:
    """``sqlite:///var/runs.db`` -> ``/var/runs.db``; ``sqlite:runs.db`` -> ``runs.db``
    (and SQLAlchemy's ``sqlite:////var/runs.db`` -> ``/var/runs.db``). Percent-decoded."""
    rest = spec.removeprefix("sqlite:")
    rest = rest.removeprefix("//")
    if rest.startswith("//"):
        rest = "/" + rest.lstrip("/")
    path = urllib.parse.unquote(rest)
    if not path:
        raise UsageError(
            f"cano: --store {spec}: expected sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH"
        )
    return path


async def _runs(args: argparse.Namespace) -> int:
    with _open_store(args.store, write=args.action == "clear") as store:
        if args.action == "list":
            summaries = await store.runs_summary()
            if args.json:
                print(json.dumps(list(summaries)))
            elif not summaries:
                print(f"no runs in {args.store}")
            else:
                _table(
                    ["WORKFLOW ID", "ROWS", "LAST STATE", "LAST SEQ"],
                    [
                        [s["workflow_id"], str(s["rows"]), s["last_state"], str(s["last_sequence"])]
                        for s in summaries
                    ],
                )
            return 0
        rows = await store.load_run(args.workflow_id)
        if not rows:
            raise Failure(f"no run {args.workflow_id!r} in {args.store}")
        if args.action == "clear":
            await store.clear(args.workflow_id)
            print(f"cleared {len(rows)} rows of {args.workflow_id!r}")
            return 0
        if args.json:
            print(json.dumps([_row_json(r) for r in rows]))
        else:
            _table(
                ["SEQ", "KIND", "STATE", "TASK", "VERSION", "OUTPUT"], [_row_cells(r) for r in rows]
            )
        return 0


def _row_json(row: CheckpointRow) -> dict[str, Any]:
    output: Any = None
    if row.output is not None:
        try:
            output = json.loads(row.output)
        except ValueError:
            output = row.output.hex()
    return {
        "workflow_id": row.workflow_id,
        "sequence": row.sequence,
        "state": row.state,
        "task_id": row.task_id,
        "kind": row.kind.name,
        "output": output,
        "workflow_version": row.workflow_version,
    }


def _row_cells(row: CheckpointRow) -> list[str]:
    return [
        str(row.sequence),
        row.kind.name,
        row.state,
        row.task_id,
        str(row.workflow_version),
        describe_output(row.output),
    ]


def _table(header: list[str], rows: list[list[str]], *, indent: str = "") -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        print(indent + text)


# ----- graph ----------------------------------------------------------------------------


def _graph(args: argparse.Namespace) -> int:
    module_name, sep, attr = args.target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"cano graph: expected MODULE:ATTR, got {args.target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise Failure(f"cannot import {module_name!r}: {err}") from err
    except Exception as err:  # the user's module failed while importing
        raise Failure(f"importing {module_name!r} raised {type(err).__name__}: {err}") from err
    target = getattr(module, attr, None)
    if target is None:
        raise Failure(f"{module_name!r} has no attribute {attr!r}")
    if callable(target) and not isinstance(target, Workflow):
        try:
            workflow = target()
        except Exception as err:  # the user's factory failed
            raise Failure(f"{args.target}() raised {type(err).__name__}: {err}") from err
    else:
        workflow = target
    if not isinstance(workflow, Workflow):
        raise Failure(f"{args.target} is not a cano.Workflow (got {type(workflow).__qualname__})")
    initial = None
    if args.initial is not None:
        known = {state_label(s): s for s in (*workflow.registered_states, *workflow.exit_states)}
        if args.initial not in known:
            raise UsageError(
                f"cano graph: --initial {args.initial!r} is not a state of {args.target} "
                f"(states: {', '.join(sorted(known))})"
            )
        initial = known[args.initial]
    print(workflow.to_mermaid(initial), end="")
    return 0


# ----- demo -----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    if args.child:
        journal = demo.Journal(Path(args.journal))
        with RedbCheckpointStore(args.store) as store:
            asyncio.run(demo.build(store, journal, crash_at=3).orchestrate(demo.Order.RESERVE))
        return 0

    workdir = None
    if args.store is None:
        workdir = tempfile.mkdtemp(prefix="cano-demo-")
        store_path = Path(workdir) / "checkpoints.redb"
    else:
        store_path = Path(args.store)
        if store_path.exists():
            raise Failure(f"{store_path} already exists; the demo needs a fresh file")
    journal = demo.Journal(store_path.with_suffix(".journal"))
    journal.path.unlink(missing_ok=True)

    print("cano demo: an order workflow that survives a crash\n")
    print("  RESERVE -> CHARGE -> PACK (5 items, one checkpointed step each) -> SHIP -> DONE")
    print(f"  checkpoint log: {store_path} (redb, durable before every step)\n")
    print("1. A worker process starts the order and is killed (SIGKILL) while packing:")
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "cano",
            "demo",
            "--child",
            "--store",
            str(store_path),
            "--journal",
            str(journal.path),
        ],
        check=False,
    )
    if child.returncode == 0:
        raise Failure("the worker process was supposed to crash, but it finished")
    print(f"    -> the worker died (exit status {child.returncode})\n")

    print("2. What the checkpoint log kept:")
    with RedbCheckpointStore(store_path) as store:
        rows = asyncio.run(_load(store, demo.WORKFLOW_ID))
        _table(
            ["SEQ", "KIND", "STATE", "OUTPUT"],
            [[str(r.sequence), r.kind.name, r.state, demo.describe_output(r.output)] for r in rows],
            indent="    ",
        )
        effects_before = journal.effects()

        print("\n3. This process (a new one) resumes the run from the log:")
        final = asyncio.run(demo.build(store, journal, crash_at=None).resume_from(demo.WORKFLOW_ID))
        left = asyncio.run(_load(store, demo.WORKFLOW_ID))

    effects = journal.effects()
    print(f"\n4. The run finished in {final.name}. Side effects over both processes:")
    for effect in effects:
        print(f"    {effect}")
    charged = sum("charged" in e for e in effects)
    packed = sorted({e for e in effects if e.startswith("packed")})
    print(
        f"\n  The card was charged {charged} time(s); {len(packed)} distinct items were packed; "
        f"{len(effects) - len(effects_before)} steps ran after the crash."
    )
    print(f"  The log was cleared on success ({len(left)} rows left).")
    if charged != 1 or len(packed) != len(demo.ITEMS) or final is not demo.Order.DONE:
        raise Failure("the demo did not resume as expected")
    print(
        "\nNext: read examples/durable.py, or inspect a store with `cano runs list --store PATH`."
    )
    if workdir is not None:
        store_path.unlink(missing_ok=True)
        journal.path.unlink(missing_ok=True)
        os.rmdir(workdir)
    return 0


async def _load(store: RedbCheckpointStore, workflow_id: str) -> list[CheckpointRow]:
    return list(await store.load_run(workflow_id))


if __name__ == "__main__":
    raise SystemExit(main())
