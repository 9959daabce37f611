"""``cano runs …`` and ``cano worker``: what a store knows about its runs, and serving them.

A store is a redb or SQLite file, a ``sqlite:///ABSOLUTE/PATH`` URL, or ``$CANO_STORE``.
Both keep run records and answer with them — status, error, times — and step timelines; a
log without a record (written by an earlier cano) is listed with its rows only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

from cano._cli_common import Failure, UsageError, age_seconds, load_target, since_time, table
from cano._demo import describe_output
from cano.errors import CheckpointError
from cano.records import RunInfo, RunStatus, StepInfo, run_json, step_json
from cano.runs import Client
from cano.store import CheckpointRow, RedbCheckpointStore
from cano.stores import SqliteCheckpointStore
from cano.worker import Worker, until_signalled
from cano.workflow import Workflow

__all__ = ["add_commands", "row_cells", "runs", "ui", "worker"]

STORE_HELP = (
    "the store: a redb or SQLite file, sqlite:///PATH, or postgresql://…[#SCHEMA] "
    "(default: $CANO_STORE)"
)


def add_commands(commands: Any) -> None:
    """Adds ``runs`` and ``worker`` to the ``cano`` parser's subcommands."""
    parser_class = commands._parser_class
    runs_parser = commands.add_parser("runs", help="inspect the runs kept in a checkpoint store")
    actions = runs_parser.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
    actions.required = True

    def action(name: str, text: str, *, run_id: bool, json_out: bool) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=text)
        if run_id:
            sub.add_argument("workflow_id", metavar="ID")
        _store_argument(sub)
        if json_out:
            sub.add_argument("--json", action="store_true", help="print JSON")
        return sub

    listing = action("list", "list the runs: records, newest first", run_id=False, json_out=True)
    listing.add_argument("--status", action="append", metavar="S", help="PENDING, RUNNING, ...")
    listing.add_argument("--name", metavar="N", help="only runs of this workflow name")
    listing.add_argument("--since", metavar="AGE|ISO", help="created since: 1h, 7d, or ISO 8601")
    listing.add_argument("--limit", type=int, default=100, metavar="N")
    action("show", "show every row of one run's log", run_id=True, json_out=True)
    action("get", "show one run's record", run_id=True, json_out=True)
    action("steps", "show one run's step timeline", run_id=True, json_out=True)
    action(
        "cancel",
        "cancel a run (a running one stops at its next boundary)",
        run_id=True,
        json_out=False,
    )
    signal = action("signal", "send a signal to a run's wait state", run_id=True, json_out=False)
    signal.add_argument("name", metavar="NAME", help="the signal's name")
    signal.add_argument("--payload", metavar="JSON", help="its payload, as JSON (default null)")
    signal.add_argument("--dedup-key", metavar="K", help="a resend with the same key is ignored")
    action("clear", "delete one run's log and its record", run_id=True, json_out=False)
    prune = action("prune", "delete ended runs older than an age", run_id=False, json_out=False)
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")

    serve = commands.add_parser("worker", help="serve the runs of a store (Ctrl-C to stop)")
    serve.add_argument("target", metavar="MODULE:ATTR", help="a Workflow, or a list of them")
    _store_argument(serve)
    serve.add_argument("--concurrency", type=int, default=16, metavar="N")
    serve.add_argument("--queue", action="append", metavar="Q", help="queues to serve (default)")

    page = commands.add_parser(
        "ui", help="a local web page to watch and operate the runs of a store (cano[ui])"
    )
    _store_argument(page)
    page.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    page.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any)")
    page.add_argument(
        "--app", metavar="MODULE:ATTR", help="the workflow(s) whose graph run pages draw"
    )
    page.add_argument(
        "--allow-remote",
        action="store_true",
        help="serve a non-loopback address (needs a token in CANO_UI_TOKEN)",
    )


def _store_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("CANO_STORE") or None
    parser.add_argument(
        "--store", metavar="PATH", required=default is None, default=default, help=STORE_HELP
    )


# ----- opening a store -----------------------------------------------------------------


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_REDB_MAGIC = b"redb"


def _open_store(spec: str, *, write: bool = False) -> Any:
    """The store named by ``--store`` (to be entered with ``async with``): a
    ``postgresql://…`` URL (``#SCHEMA`` picks the schema, default ``cano``),
    ``sqlite:///ABS/PATH`` or ``sqlite:REL/PATH``, or a file path: a SQLite file (by its
    header, or by a .db/.sqlite/.sqlite3 name) or a redb file. Never creates a file; a redb
    file is opened read-only unless the command writes (so a full disk can be inspected)."""
    if spec.startswith(("postgresql:", "postgres:")):
        try:
            from cano.stores.postgres import PostgresCheckpointStore  # noqa: PLC0415
        except ImportError as err:
            raise Failure(str(err)) from None
        dsn, _, schema = spec.partition("#")
        return PostgresCheckpointStore(dsn, schema=schema or "cano")
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


# ----- runs ----------------------------------------------------------------------------


def _age(text: str, what: str) -> float:
    """Seconds in ``30m``, ``12h``, ``7d``..."""
    age = age_seconds(text)
    if age is None:
        raise UsageError(f"cano runs: {what} {text!r}: expected an age such as 30m, 12h or 7d")
    return age


def _since(text: str) -> datetime:
    when = since_time(text)
    if when is None:
        raise UsageError(f"cano runs: --since {text!r}: expected 1h, 7d or an ISO 8601 time")
    return when


def _statuses(values: list[str] | None) -> list[RunStatus] | None:
    if not values:
        return None
    chosen = []
    for value in values:
        for name in value.split(","):
            try:
                chosen.append(RunStatus[name.strip().upper()])
            except KeyError:
                names = ", ".join(s.name for s in RunStatus)
                raise UsageError(f"cano runs list: --status {name!r}: one of {names}") from None
    return chosen


async def runs(args: argparse.Namespace) -> int:
    """``cano runs ACTION``."""
    writes = args.action in ("clear", "cancel", "prune", "signal")
    async with _open_store(args.store, write=writes) as store:
        if args.action == "list":
            return await _list_records(store, args)
        client = Client(store)
        if args.action == "prune":
            gone = await client.prune(older_than=_age(args.older_than, "--older-than"))
            print(f"pruned {gone} runs that ended more than {args.older_than} ago")
            return 0
        if args.action == "get":
            info = await client.get(args.workflow_id)
            if info is None:
                raise Failure(f"no run {args.workflow_id!r} in {args.store}")
            if args.json:
                print(json.dumps(_info_json(info, None)))
            else:
                for key, value in _info_json(info, None).items():
                    shown = json.dumps(value) if isinstance(value, dict | list) else value
                    print(f"{key + ':':<18}{'' if shown is None else shown}")
            return 0
        if args.action == "steps":
            steps = await client.steps(args.workflow_id)
            if not steps and await client.get(args.workflow_id) is None:
                raise Failure(f"no run {args.workflow_id!r} in {args.store}")
            if args.json:
                print(json.dumps([step_json(s) for s in steps]))
            else:
                table(
                    ["SEQ", "KIND", "STATE", "TASK", "STARTED", "TOOK", "OUTPUT"],
                    [_step_cells(s) for s in steps],
                )
            return 0
        if args.action == "signal":
            try:
                payload = None if args.payload is None else json.loads(args.payload)
            except ValueError as err:
                raise UsageError(f"cano runs signal: --payload is not JSON: {err}") from None
            await client.signal(args.workflow_id, args.name, payload, dedup_key=args.dedup_key)
            print(f"sent {args.name!r} to {args.workflow_id!r}")
            return 0
        if args.action == "cancel":
            info = await client.cancel(args.workflow_id)
            verb = "cancelled" if info.status is RunStatus.CANCELLED else "asked to stop"
            print(f"{args.workflow_id!r} {verb} (status {info.status.name})")
            return 0
        rows = await store.load_run(args.workflow_id)
        if args.action == "clear":
            known = await client.get(args.workflow_id) is not None
            if not rows and not known:
                raise Failure(f"no run {args.workflow_id!r} in {args.store}")
            await store.clear(args.workflow_id)
            await store.delete_run(args.workflow_id)
            print(
                f"cleared {len(rows)} rows of {args.workflow_id!r}"
                + (" and its record" if known else "")
            )
            return 0
        if not rows:
            raise Failure(f"no run {args.workflow_id!r} in {args.store}")
        if args.json:
            print(json.dumps([_row_json(r) for r in rows]))
        else:
            table(
                ["SEQ", "KIND", "STATE", "TASK", "VERSION", "OUTPUT"], [row_cells(r) for r in rows]
            )
        return 0


async def _list_records(store: Any, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"cano runs list: --limit must be at least 1, got {args.limit}")
    infos = await Client(store).list(
        status=_statuses(args.status),
        workflow_name=args.name,
        since=None if args.since is None else _since(args.since),
        limit=args.limit,
    )
    logs = {s["workflow_id"]: s for s in await store.runs_summary()}
    # Logs without a record (written by an earlier cano): their rows are all there is.
    unrecorded = []
    if not (args.status or args.name or args.since) and len(infos) < args.limit:
        recorded = {i.workflow_id for i in infos}  # every record, with no filter
        unrecorded = [s for run_id, s in logs.items() if run_id not in recorded]
        unrecorded = unrecorded[: args.limit - len(infos)]
    if args.json:
        print(json.dumps([_info_json(i, logs.get(i.workflow_id)) for i in infos] + unrecorded))
    elif not infos and not unrecorded:
        print(f"no runs in {args.store}")
    else:
        table(
            ["WORKFLOW ID", "NAME", "STATUS", "STATE", "ATTEMPTS", "CREATED", "ERROR"],
            [
                [
                    i.workflow_id,
                    i.workflow_name or "",
                    i.status.name,
                    i.state or "",
                    str(i.attempts),
                    i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    _short(i.error or "", 60),
                ]
                for i in infos
            ]
            + [[s["workflow_id"], "", "-", s["last_state"], "", "", ""] for s in unrecorded],
        )
    return 0


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _info_json(info: RunInfo, log: Any) -> dict[str, Any]:
    """A record as JSON: the keys of ``runs list --json`` on any store, then the record's."""
    return {
        "workflow_id": info.workflow_id,
        "rows": log["rows"] if log else 0,
        "last_state": log["last_state"] if log else info.state,
        "last_sequence": log["last_sequence"] if log else None,
        **run_json(info),
    }


def _step_cells(step: StepInfo) -> list[str]:
    took = (
        ""
        if step.finished_at is None
        else f"{(step.finished_at - step.started_at).total_seconds():.3f}s"
    )
    output = "" if step.output is None else _short(json.dumps(step.output), 40)
    return [
        str(step.sequence),
        step.kind.name,
        step.state,
        step.task_id,
        step.started_at.strftime("%H:%M:%S.%f")[:-3],
        took,
        output,
    ]


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


def row_cells(row: CheckpointRow) -> list[str]:
    """One log row as table cells."""
    return [
        str(row.sequence),
        row.kind.name,
        row.state,
        row.task_id,
        str(row.workflow_version),
        describe_output(row.output),
    ]


# ----- worker --------------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> int:
    """``cano worker MODULE:ATTR``: serves until SIGINT or SIGTERM."""
    flows = _workflows(args.target, "worker")
    if args.concurrency < 1:
        raise UsageError(f"cano worker: --concurrency must be at least 1, got {args.concurrency}")
    async with _open_store(args.store, write=True) as store:
        serving = Worker(
            store, flows, concurrency=args.concurrency, queues=args.queue or ["default"]
        )
        names = ", ".join(sorted(w.name or "" for w in flows))
        print(f"cano worker {serving.worker_id}: serving {names} from {args.store} (Ctrl-C stops)")
        started = time.monotonic()
        await serving.run()
        print(f"cano worker {serving.worker_id}: stopped after {time.monotonic() - started:.1f}s")
    return 0


def _workflows(spec: str, command: str) -> list[Workflow[Any]]:
    """The Workflow, or list of them, named by ``MODULE:ATTR``."""
    target = load_target(spec, command)
    flows = [target] if isinstance(target, Workflow) else target
    if not isinstance(flows, list | tuple) or not all(isinstance(w, Workflow) for w in flows):
        raise Failure(f"{spec} is not a cano.Workflow or a list of them")
    return list(flows)


# ----- ui --------------------------------------------------------------------------------


async def ui(args: argparse.Namespace) -> int:
    """``cano ui``: serves the web page until SIGINT or SIGTERM."""
    try:
        from cano.ui import UiServer, check_host  # noqa: PLC0415
    except ImportError as err:
        raise Failure(f"cano ui needs the ui extra: pip install 'cano[ui]' ({err})") from None
    token = os.environ.get("CANO_UI_TOKEN") or None
    check_host(args.host, allow_remote=args.allow_remote, token=token)
    flows = _workflows(args.app, "ui") if args.app else []
    try:
        opened = _open_store(args.store, write=True)
    except Failure as err:
        if "is held by" in str(err):
            raise Failure(
                f"{err}. To watch a redb store's runs live, serve the UI from the process "
                "that holds it: Worker(store, workflows, ui=8765)"
            ) from None
        raise
    async with opened as store:
        server = UiServer(
            store,
            workflows=flows,
            host=args.host,
            port=args.port,
            token=token,
            allow_remote=args.allow_remote,
        )
        server.listen()
        print(f"cano ui: {server.url} (Ctrl-C stops)", flush=True)
        serving = asyncio.ensure_future(server.serve())
        try:
            await until_signalled(serving)
        finally:
            await server.stop()
            serving.cancel()
    return 0
