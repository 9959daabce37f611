"""The ``cano`` command: a crash-and-resume demo, checkpoint-store inspection, graphs.

::

    cano demo [--store PATH]
    cano runs list [--status S] [--name N] [--since 1h|ISO] [--limit N] [--json]
    cano runs get|steps|show ID [--json]
    cano runs cancel|clear ID
    cano runs prune --older-than 7d
    cano worker MODULE:ATTR [--concurrency N] [--queue Q]
    cano graph MODULE:ATTR [--format mermaid] [--initial STATE]
    cano --version

``--store PATH`` (default ``$CANO_STORE``) is a redb or SQLite file, or a
``sqlite:///ABSOLUTE/PATH`` URL. Bad arguments
print one line and exit 2; a missing or unreadable store exits 1 naming the file. User
errors never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cano import _demo as demo
from cano._cli_common import Failure, UsageError, load_target, table
from cano._cli_runs import add_commands, runs, ui, worker
from cano._core import __version__
from cano.errors import CanoError
from cano.store import CheckpointRow, RedbCheckpointStore
from cano.workflow import Workflow, state_label

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cano", description="cano: async workflows on finite state machines")
    parser.add_argument("--version", action="version", version=f"cano {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser(
        "demo", help="run a checkpointed workflow, crash it on purpose, and resume it"
    )
    demo.add_argument("--store", metavar="PATH", help="redb file for the checkpoint log")
    demo.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    demo.add_argument("--journal", help=argparse.SUPPRESS)

    add_commands(commands)

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
            return asyncio.run(runs(args))
        if args.command == "worker":
            return asyncio.run(worker(args))
        if args.command == "ui":
            return asyncio.run(ui(args))
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


# ----- graph ----------------------------------------------------------------------------


def _graph(args: argparse.Namespace) -> int:
    workflow = load_target(args.target, "graph")
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
        table(
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
